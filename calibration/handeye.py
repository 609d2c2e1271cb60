"""Hand-eye calibration (AX = XB) with every method OpenCV has, and how far they agree.

eye-in-hand: the camera rides on the gripper; the result is the camera's pose in the gripper frame
  (T_gripper_camera) and, as a by-product, the board's pose in the robot base frame.
eye-to-hand: the camera is fixed and the board rides on the gripper; the result is the camera's pose in
  the base frame (T_base_camera), and the board's pose in the gripper frame. OpenCV solves this case when
  given base-to-gripper poses in place of gripper-to-base (its documented trick)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from pi0edge.calibration.errors import CalibrationError, CalibrationFileError
from pi0edge.calibration.transforms import invert, pose_difference, pose_from_fields, rotation_angle_deg

SETUPS = ("eye-in-hand", "eye-to-hand")
METHODS = ("tsai", "park", "horaud", "andreff", "daniilidis")
MIN_POSES = 3  # two motions with non-parallel axes is the mathematical minimum
MIN_TRUSTED_POSES = 10
MAX_AGREEMENT_MM = 2.0  # methods disagreeing by more than this say the data is noisy or degenerate
MAX_AGREEMENT_DEG = 0.5
MIN_TRUSTED_ROTATION_DEG = 30.0  # largest rotation between two gripper poses; small rotations leave t unobservable
# No arm's gripper is this far from its base; a pose further out is millimetres written as metres.
MAX_GRIPPER_DISTANCE_M = 5.0


@dataclass(frozen=True, eq=False)
class RobotPose:
    T_base_gripper: np.ndarray  # 4x4, metres: the gripper's pose in the base frame
    image: str | None = None  # the image this pose belongs to, when the file names it


@dataclass(frozen=True, eq=False)
class MethodResult:
    name: str
    transform: np.ndarray  # 4x4: T_gripper_camera (eye-in-hand) or T_base_camera (eye-to-hand)
    # the board pose each view implies should be one pose: its spread is this method's fit to the data
    target: np.ndarray
    spread_mm: float
    spread_deg: float


@dataclass(frozen=True, eq=False)
class HandEyeResult:
    setup: str
    methods: dict[str, MethodResult]
    chosen: str
    max_disagreement_mm: float
    max_disagreement_deg: float
    pairwise: list[dict] = field(default_factory=list)
    views_used: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def transform(self) -> np.ndarray:
        return self.methods[self.chosen].transform

    @property
    def target(self) -> np.ndarray:
        return self.methods[self.chosen].target


def _cv2():
    from pi0edge.errors import require

    return require("cv2", "calib", "hand-eye calibration")


def read_robot_poses(path: Path | str) -> list[RobotPose]:
    """Gripper-to-base poses, one per image, from YAML/JSON (a list, or a mapping with 'poses') or CSV with a
    header `image,x,y,z,qx,qy,qz,qw` (metres; the image column is optional)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationFileError(f"cannot read pose file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if path.suffix.lower() == ".csv":
        return _read_csv(text, path)
    import yaml

    from pi0edge.yaml_io import load_yaml

    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise CalibrationFileError(f"pose file {path}: not valid YAML/JSON: {exc}") from None
    if isinstance(data, dict):
        data = data.get("poses")
    if not isinstance(data, list) or not data:
        raise CalibrationFileError(f"pose file {path}: expected a non-empty list of poses (or a 'poses' list)")
    poses = []
    for i, entry in enumerate(data):
        where = f"pose file {path}, pose {i}"
        if not isinstance(entry, dict):
            raise CalibrationFileError(f"{where}: expected a mapping, got {type(entry).__name__}")
        image = entry.get("image")
        given = next((key for key in ("matrix", "translation_m", "translation_mm") if key in entry), "translation")
        pose = _in_reach(pose_from_fields(entry, where), where, given)
        poses.append(RobotPose(pose, None if image is None else str(image)))
    return poses


def _in_reach(pose: np.ndarray, where: str, fields: str) -> np.ndarray:
    distance_m = float(np.linalg.norm(pose[:3, 3]))
    if distance_m > MAX_GRIPPER_DISTANCE_M:
        raise CalibrationFileError(
            f"{where}: the gripper would be {distance_m:.1f} m from the base ({fields} "
            f"{[round(float(v), 4) for v in pose[:3, 3]]}), beyond any arm's reach ({MAX_GRIPPER_DISTANCE_M:g} m): "
            "millimetres given as metres? Divide by 1000, or in YAML/JSON write translation_mm"
        )
    return pose


def _read_csv(text: str, path: Path) -> list[RobotPose]:
    rows = list(csv.DictReader(io.StringIO(text)))
    needed = ("x", "y", "z", "qx", "qy", "qz", "qw")
    if not rows:
        raise CalibrationFileError(f"pose file {path}: no rows under the header")
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        raise CalibrationFileError(f"pose file {path}: CSV header lacks column(s) {', '.join(missing)}")
    poses = []
    for i, row in enumerate(rows, start=2):
        where = f"pose file {path}, line {i}"
        try:
            values = [float(row[c]) for c in needed]
        except (TypeError, ValueError):
            raise CalibrationFileError(f"{where}: x,y,z,qx,qy,qz,qw must be numbers, got {row}") from None
        pose = pose_from_fields({"translation_m": values[:3], "quaternion_xyzw": values[3:]}, where)
        pose = _in_reach(pose, where, "x,y,z")
        poses.append(RobotPose(pose, (row.get("image") or "").strip() or None))
    return poses


def match_poses(image_names: Sequence[str], poses: Sequence[RobotPose], source: str) -> dict[str, np.ndarray]:
    """image name -> T_base_gripper: by the file's image names when given, else in order."""
    if all(p.image for p in poses):
        by_name = {Path(p.image).name: p.T_base_gripper for p in poses}
        missing = [n for n in image_names if n not in by_name]
        if missing:
            raise CalibrationFileError(f"{source}: no robot pose for image(s) {', '.join(missing)}")
        return {n: by_name[n] for n in image_names}
    if any(p.image for p in poses):
        raise CalibrationFileError(f"{source}: either every pose names its image or none does")
    if len(poses) != len(image_names):
        raise CalibrationFileError(
            f"{source}: {len(poses)} poses for {len(image_names)} images; without image names they pair in order, "
            "so the counts must match"
        )
    return dict(zip(image_names, (p.T_base_gripper for p in poses), strict=True))


def _spread(poses: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
    """Mean pose (rotation projected back onto SO(3)) and the RMS distance of the poses from it."""
    t_mean = np.mean([p[:3, 3] for p in poses], axis=0)
    u, _, vt = np.linalg.svd(np.sum([p[:3, :3] for p in poses], axis=0))
    r_mean = u @ np.diag([1, 1, np.linalg.det(u @ vt)]) @ vt
    mean = np.eye(4)
    mean[:3, :3], mean[:3, 3] = r_mean, t_mean
    diffs = [pose_difference(mean, p) for p in poses]
    return mean, math.sqrt(np.mean([d[0] ** 2 for d in diffs])), math.sqrt(np.mean([d[1] ** 2 for d in diffs]))


def solve_hand_eye(
    T_base_gripper: Sequence[np.ndarray],
    T_camera_target: Sequence[np.ndarray],
    setup: str = "eye-in-hand",
    method: str = "consensus",
    view_names: Sequence[str] | None = None,
    min_trusted_views: int = MIN_TRUSTED_POSES,
) -> HandEyeResult:
    """Run every OpenCV method on paired (robot pose, board pose) views and pick one (see _choose); fewer than
    min_trusted_views views is a warning."""
    if setup not in SETUPS:
        raise CalibrationError(f"setup {setup!r} is not one of {', '.join(SETUPS)}")
    if method != "consensus" and method not in METHODS:
        raise CalibrationError(f"method {method!r} is not one of consensus, {', '.join(METHODS)}")
    n = len(T_base_gripper)
    if n != len(T_camera_target):
        raise CalibrationError(f"{n} robot poses but {len(T_camera_target)} board poses")
    if n < MIN_POSES:
        raise CalibrationError(f"hand-eye needs at least {MIN_POSES} views with the board found, got {n}")
    robot = [np.asarray(p, float) for p in T_base_gripper]
    if setup == "eye-to-hand":
        robot = [invert(p) for p in robot]  # OpenCV's trick: base-to-gripper in place of gripper-to-base
    board = [np.asarray(p, float) for p in T_camera_target]
    methods = _run_methods(robot, board)
    pairwise = []
    for a, b in combinations(methods, 2):
        mm, deg = pose_difference(methods[a].transform, methods[b].transform)
        pairwise.append({"a": a, "b": b, "translation_mm": mm, "rotation_deg": deg})
    max_mm = max((p["translation_mm"] for p in pairwise), default=0.0)
    max_deg = max((p["rotation_deg"] for p in pairwise), default=0.0)
    chosen = _choose(methods, pairwise, method)
    names = list(view_names) if view_names is not None else []
    warnings = _warnings(robot, max_mm, max_deg, min_trusted_views)
    return HandEyeResult(setup, methods, chosen, max_mm, max_deg, pairwise, names, warnings)


def _run_methods(robot: list[np.ndarray], board: list[np.ndarray]) -> dict[str, MethodResult]:
    """Every OpenCV method on (gripper, board) pose pairs; a method returning NaN is left out."""
    cv2 = _cv2()
    methods: dict[str, MethodResult] = {}
    for name in METHODS:
        try:
            r, t = cv2.calibrateHandEye(
                [p[:3, :3] for p in robot],
                [p[:3, 3] for p in robot],
                [p[:3, :3] for p in board],
                [p[:3, 3] for p in board],
                method=getattr(cv2, f"CALIB_HAND_EYE_{name.upper()}"),
            )
        except cv2.error as exc:
            raise CalibrationError(f"OpenCV hand-eye ({name}) failed: {exc.err}") from None
        x = np.eye(4)
        x[:3, :3], x[:3, 3] = r, t.reshape(3)
        if not np.isfinite(x).all():
            continue  # a method can return NaN on degenerate motion; the others still count
        # the fixed board pose each view implies: T_base_target (in hand) or T_gripper_target (to hand)
        target, spread_mm, spread_deg = _spread([g @ x @ b for g, b in zip(robot, board, strict=True)])
        methods[name] = MethodResult(name, x, target, spread_mm, spread_deg)
    if not methods:
        raise CalibrationError("every hand-eye method failed (degenerate robot motion?)")
    return methods


def _choose(methods: dict[str, MethodResult], pairwise: list[dict], method: str) -> str:
    """'consensus' picks the medoid: the method whose result is closest to all the others (translation mm +
    10 x rotation deg, i.e. 1 deg ~ 10 mm at a ~0.6 m lever arm), so one method failing on degenerate data
    cannot be picked."""
    if method == "consensus":

        def cost(name: str) -> float:
            return sum(p["translation_mm"] + 10.0 * p["rotation_deg"] for p in pairwise if name in (p["a"], p["b"]))

        return min(methods, key=cost)
    if method in methods:
        return method
    raise CalibrationError(f"method {method} returned no finite result on this data")


def _warnings(robot: list[np.ndarray], max_mm: float, max_deg: float, min_trusted_views: int) -> list[str]:
    warnings = []
    if len(robot) < min_trusted_views:
        warnings.append(f"only {len(robot)} views (want >= {min_trusted_views})")
    if max_mm > MAX_AGREEMENT_MM or max_deg > MAX_AGREEMENT_DEG:
        warnings.append(
            f"methods disagree by up to {max_mm:.2f} mm / {max_deg:.3f} deg (want <= {MAX_AGREEMENT_MM} mm / "
            f"{MAX_AGREEMENT_DEG} deg): noisy poses, a wrong pose convention, or too little rotation"
        )
    max_rot = max(rotation_angle_deg(invert(a) @ b) for a, b in combinations(robot, 2))
    if max_rot < MIN_TRUSTED_ROTATION_DEG:
        warnings.append(
            f"the gripper rotated at most {max_rot:.1f} deg between views (want >= {MIN_TRUSTED_ROTATION_DEG:.0f}): "
            "rotate about different axes"
        )
    return warnings


@dataclass(frozen=True)
class HandEyeFrames:
    """Frame names of the result (parent -> child) and of the by-product board pose."""

    parent: str
    child: str
    target_parent: str
    target_child: str


def frames_for(setup: str, base: str, gripper: str, camera: str, target: str) -> HandEyeFrames:
    """eye-in-hand: T_gripper_camera and the board in the base; eye-to-hand: T_base_camera and the board in
    the gripper."""
    if setup == "eye-in-hand":
        return HandEyeFrames(gripper, camera, base, target)
    return HandEyeFrames(base, camera, gripper, target)
