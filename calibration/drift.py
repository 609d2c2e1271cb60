"""Has the camera moved since calibration? A reference file holds the intrinsics, the board and the
board's pose in the camera frame from one reference view; a fresh view of the same (unmoved) board gives
the camera's motion since then, in mm and degrees.

The control loop calls `check_drift(image, reference_path)` at start-up; `pi0edge calibrate check` is the
same for scripts (exit code 0 pass, 1 fail, 2 error)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pi0edge.calibration.boards import BoardSpec, board_from_dict
from pi0edge.calibration.camera import CameraModel, board_pose
from pi0edge.calibration.detect import BoardDetector, NotFound
from pi0edge.calibration.errors import BoardNotFoundError, CalibrationFileError, ImageError
from pi0edge.calibration.outputs import write_files_atomically
from pi0edge.calibration.transforms import Transform, invert, pose_difference
from pi0edge.calibration.yaml_io import read_yaml_file

REFERENCE_FORMAT = "pi0edge-camera-reference"
REFERENCE_VERSION = 1
MIN_CORNERS = 8  # fewer make the pose (rotation especially) too noisy for a millimetre-level check


@dataclass(frozen=True)
class DriftThresholds:
    # defaults sit well above the pose noise of a board filling a fair part of the view (~0.1-0.5 mm,
    # ~0.02-0.1 deg) and well below a move that changes what the policy sees
    max_mm: float = 2.0
    max_deg: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_mm", "max_deg"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise CalibrationFileError(f"drift threshold '{name}' must be a positive number, got {value!r}")


@dataclass(frozen=True)
class DriftResult:
    passed: bool
    translation_mm: float  # camera centre displacement since the reference view
    rotation_deg: float  # camera rotation since the reference view
    thresholds: DriftThresholds
    message: str
    corners: int = 0
    reprojection_rms_px: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "translation_mm": self.translation_mm,
            "rotation_deg": self.rotation_deg,
            "max_mm": self.thresholds.max_mm,
            "max_deg": self.thresholds.max_deg,
            "corners": self.corners,
            "reprojection_rms_px": self.reprojection_rms_px,
            "message": self.message,
        }


@dataclass(frozen=True, eq=False)
class Reference:
    camera: CameraModel
    board: BoardSpec
    T_camera_board: np.ndarray
    thresholds: DriftThresholds
    path: Path


def _board_pose(camera: CameraModel, board: BoardSpec, image: np.ndarray, name: str):
    image = np.asarray(image)
    if image.shape[1] != camera.width or image.shape[0] != camera.height:
        raise ImageError(
            f"{name} is {image.shape[1]}x{image.shape[0]} but the calibration is for {camera.width}x{camera.height}"
        )
    detection = BoardDetector(board).find(image, name)
    if isinstance(detection, NotFound):
        raise BoardNotFoundError(f"{name}: board not found: {detection.reason}")
    if detection.count < MIN_CORNERS:
        raise BoardNotFoundError(
            f"{name}: board not found ({detection.count} corners, need {MIN_CORNERS}): {board.describe()}"
        )
    pose, rms_px = board_pose(camera, detection.image_points_px, detection.object_points_m)
    return pose, rms_px, detection.count


def reference_text(
    camera: CameraModel,
    board: BoardSpec,
    image: np.ndarray,
    image_name: str = "reference",
    intrinsics_source: str | None = None,
    thresholds: DriftThresholds = DriftThresholds(),
) -> str:
    import yaml

    pose, rms_px, corners = _board_pose(camera, board, image, image_name)
    data = {
        "format": REFERENCE_FORMAT,
        "version": REFERENCE_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reference_image": image_name,
        "intrinsics_source": intrinsics_source,
        # intrinsics stored by value: the check must not change meaning if the intrinsics file is redone
        "camera": camera.to_dict(),
        "board": board.to_dict(),
        "T_camera_board": Transform(f"{camera.name}_optical_frame", "calibration_board", pose).to_dict(),
        "corners": corners,
        "reprojection_rms_px": rms_px,
        "thresholds": {"max_mm": thresholds.max_mm, "max_deg": thresholds.max_deg},
    }
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=1000)


def save_reference(
    camera: CameraModel,
    board: BoardSpec,
    image: np.ndarray,
    path: Path | str,
    image_name: str = "reference",
    intrinsics_source: str | None = None,
    thresholds: DriftThresholds = DriftThresholds(),
) -> Path:
    text = reference_text(camera, board, image, image_name, intrinsics_source, thresholds)
    write_files_atomically({Path(path): text})
    return Path(path)


def load_reference(path: Path | str) -> Reference:
    path = Path(path)
    data = read_yaml_file(path, "reference")
    if not isinstance(data, dict) or data.get("format") != REFERENCE_FORMAT:
        raise CalibrationFileError(f"reference file {path}: 'format' is not {REFERENCE_FORMAT!r}")
    if data.get("version") != REFERENCE_VERSION:
        raise CalibrationFileError(f"reference file {path}: unknown version {data.get('version')!r}")
    for key in ("camera", "board", "T_camera_board"):
        if key not in data:
            raise CalibrationFileError(f"reference file {path}: missing field '{key}'")
    camera = CameraModel.from_dict(data["camera"], source=f"reference file {path}")
    board = board_from_dict(data["board"], source=f"reference file {path}")
    pose = Transform.from_dict(data["T_camera_board"], source=f"reference file {path}, T_camera_board").matrix
    limits = data.get("thresholds") or {}
    thresholds = DriftThresholds(
        float(limits.get("max_mm", DriftThresholds.max_mm)), float(limits.get("max_deg", DriftThresholds.max_deg))
    )
    return Reference(camera, board, pose, thresholds, path)


def measure_drift(reference: Reference, image: np.ndarray, name: str = "image") -> tuple[float, float, int, float]:
    """(translation mm, rotation deg, corners, rms px) of the camera's motion since the reference view."""
    pose, rms_px, corners = _board_pose(reference.camera, reference.board, image, name)
    # board fixed in the world: camera motion = T_cam_board_ref @ inv(T_cam_board_now) (new camera in the old frame)
    translation_mm, rotation_deg = pose_difference(invert(reference.T_camera_board), invert(pose))
    return translation_mm, rotation_deg, corners, rms_px


def check_drift(
    image: np.ndarray, reference_path: Path | str, max_mm: float | None = None, max_deg: float | None = None
) -> DriftResult:
    """Compare a fresh view (uint8 RGB or grey at the calibrated size; a cv2.imread image is BGR: read files with
    sources.read_image) with the stored reference.

    Thresholds default to the reference file's (`thresholds:`), else DriftThresholds(). Raises a
    CalibrationError subclass when the check cannot be made (no board, wrong size, bad file)."""
    reference = load_reference(reference_path)
    thresholds = DriftThresholds(
        reference.thresholds.max_mm if max_mm is None else max_mm,
        reference.thresholds.max_deg if max_deg is None else max_deg,
    )
    translation_mm, rotation_deg, corners, rms_px = measure_drift(reference, image)
    passed = translation_mm <= thresholds.max_mm and rotation_deg <= thresholds.max_deg
    verdict = "PASS" if passed else "FAIL: the camera moved since calibration"
    message = (
        f"{verdict} (camera '{reference.camera.name}': {translation_mm:.2f} mm, {rotation_deg:.3f} deg; "
        f"limits {thresholds.max_mm:g} mm, {thresholds.max_deg:g} deg)"
    )
    if not passed:
        message += "; put it back or recalibrate (intrinsics unchanged? then hand-eye and a new reference)"
    return DriftResult(passed, translation_mm, rotation_deg, thresholds, message, corners, rms_px)
