"""`pi0edge check`: a robot YAML against a bundle's deployment record and this machine's devices, without
moving the arm (docs/control_loop.md, "Binding the robot to the policy"). `pi0edge run` runs the same check
first and refuses on any failure.

Each finding names the field it is about (a robot YAML field such as `cameras.front.serial`, or a bundle
field such as `normalization`) and is pass, fail, warn (legal but probably not meant) or unknown (the bundle
or the machine cannot say: an older bundle, a V4L2 camera's modes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pi0edge.deployment import PROMPT_FORMATS, stats_sha256
from pi0edge.errors import BundleError
from pi0edge.manifest import TOKENIZER_NAME, Manifest, load_manifest, sha256_file
from pi0edge.normalization import NormStats

from .check_report import CheckReport
from .config import CameraConfig, RobotConfig
from .device_check import DEFAULT_MODE, check_devices
from .devices import DeviceProbe

Z_99 = 2.326  # a normal distribution's 1st..99th percentile is mean +- Z_99 std (docs/model.md, "Start state")
EMPTY_CAMERA_PREFIX = "empty_camera_"  # LeRobot's cameras trained empty (config.json empty_cameras)


def check_binding(config: RobotConfig, bundle_dir: str | Path | None, devices: DeviceProbe | None = None,
                  report: CheckReport | None = None) -> tuple[CheckReport, Manifest | None]:
    """Everything that needs no arm: devices present and able, cameras and joints bound, hashes.
    bundle_dir None (a remote policy): the devices only."""
    report = report if report is not None else CheckReport()
    check_devices(config, devices or DeviceProbe(), report)
    if bundle_dir is None:
        report.add("bundle", "unknown", "no bundle given: only the devices were checked")
    manifest = _load(Path(bundle_dir), report) if bundle_dir is not None else None
    if manifest is not None:
        _check_cameras(config, manifest, report)
        _check_joints(config, manifest, report)
        _check_hashes(config, manifest, report)
    return report, manifest


# ---- the bundle ---------------------------------------------------------------------------------------


def _load(bundle_dir: Path, report: CheckReport) -> Manifest | None:
    tokenizer = bundle_dir / TOKENIZER_NAME
    if bundle_dir.is_dir() and not tokenizer.is_file():
        report.add("tokenizer.file", "fail", f"{tokenizer} is missing: nothing is downloaded at run time; re-export "
                                             "the bundle or copy its tokenizer back")
        return None
    try:
        # The graphs' hashes are checked where the model loads (hashing gigabytes twice would delay the start).
        manifest = load_manifest(bundle_dir, verify_checksums=False)
    except BundleError as exc:
        report.add("bundle", "fail", str(exc))
        return None
    listed = manifest.files.get(manifest.tokenizer_file)
    if listed is None or sha256_file(manifest.path(manifest.tokenizer_file)) != listed:
        report.add("tokenizer.file", "fail", f"{manifest.path(manifest.tokenizer_file)}: sha256 differs from the "
                                             "bundle's files list: replaced or corrupted; re-export the bundle")
        return None
    return manifest


def _check_cameras(config: RobotConfig, m: Manifest, report: CheckReport) -> None:
    bound = {c.model_camera: c for c in config.cameras}
    for cam in config.cameras:
        if cam.model_camera not in m.cameras:
            report.add(f"cameras.{cam.robot_id}.model_camera", "fail", f"{cam.model_camera!r} is not a camera of the "
                                                                        f"policy (it has {list(m.cameras)})")
    for name in config.binding.masked_cameras:
        if name not in m.cameras:
            report.add("binding.masked_cameras", "warn", f"{name!r} is not a camera of the policy {list(m.cameras)}")
    trained = {c.name: c.trained_hw for c in m.deployment.cameras} if m.deployment is not None else {}
    for i, name in enumerate(m.cameras):
        if name in bound:
            report.add(f"cameras.{bound[name].robot_id}.model_camera", "pass", f"feeds policy camera {name} "
                                                                               f"(input {i})")
            _check_size(bound[name], name, trained.get(name), report)
        elif name in config.binding.masked_cameras or name.startswith(EMPTY_CAMERA_PREFIX):
            report.add("binding.masked_cameras", "pass", f"policy camera {name} (input {i}) is fed masked")
        else:
            report.add("cameras", "fail", f"policy camera {name!r} (input {i} of {list(m.cameras)}) has no robot "
                                          f"camera: bind one (cameras.<id>.model_camera: {name}) or, if the robot has "
                                          "none, list it in binding.masked_cameras")


def _check_size(cam: CameraConfig, name: str, trained_hw: tuple[int, int] | None, report: CheckReport) -> None:
    where = f"cameras.{cam.robot_id}.width/height"
    default = DEFAULT_MODE.get(cam.spec["kind"], (None, None, None))
    width, height = cam.spec.get("width", default[0]), cam.spec.get("height", default[1])
    if trained_hw is None or width is None or height is None:
        report.add(where, "unknown", "the bundle records no training image size for this camera" if trained_hw is None
                   else "the YAML gives no width/height: the camera's own size is used")
        return
    trained_h, trained_w = trained_hw
    if width * trained_h != height * trained_w:
        report.add(where, "fail", f"{width}x{height}, but policy camera {name} was trained on {trained_w}x{trained_h}: "
                                  "another aspect ratio pads differently (resize-with-pad); is this the right camera?")
    else:
        report.add(where, "pass", f"{width}x{height}, the aspect ratio of {name}'s training images "
                                  f"{trained_w}x{trained_h}")


def _check_joints(config: RobotConfig, m: Manifest, report: CheckReport) -> None:
    joints = config.joints
    for key, index, dim, what in (("state_index", joints.state_index, m.robot_state_dim, "state"),
                                  ("action_index", joints.action_index, m.robot_action_dim, "action")):
        beyond = [i for i in index if i >= dim]
        unbound = sorted(set(range(dim)) - set(index))
        if beyond:
            report.add(f"joints.{key}", "fail", f"{list(index)} reaches past the policy's {dim} {what} dims")
        elif unbound and what == "state":
            report.add(f"joints.{key}", "fail", f"policy state dims {unbound} get no joint: the policy, trained on "
                                                f"{dim} state dims, would read 0 there")
        elif unbound:
            report.add(f"joints.{key}", "warn", f"policy action dims {unbound} drive no joint")
        else:
            report.add(f"joints.{key}", "pass", f"{len(index)} joints bound to the policy's {dim} {what} dims")
    record = m.deployment
    for attr, label in (("names", "joints.names"), ("units", "joints.units")):
        _compare_per_joint(config, record, attr, label, report)


def _compare_per_joint(config: RobotConfig, record, attr: str, label: str, report: CheckReport) -> None:
    """joints.names / joints.units against the bundle's state and action names / units, where both exist."""
    joints, ours = config.joints, getattr(config.joints, attr)
    theirs = [(what, getattr(vec, attr), index) for what, vec, index in (
        ("state", record.state, joints.state_index), ("action", record.action, joints.action_index))
        if getattr(vec, attr) is not None] if record is not None else []
    if ours is None or not theirs:
        missing = f"the YAML gives no {label}" if ours is None else f"the bundle records no {attr}"
        report.add(label, "unknown", f"{missing}: not compared")
        return
    wrong = [f"{label}[{j}] = {ours[j]!r} is policy {what} dim {index[j]}, trained as {trained[index[j]]!r}"
             for what, trained, index in theirs for j in range(joints.dof)
             if index[j] < len(trained) and trained[index[j]] != ours[j]]
    report.add(label, "fail" if wrong else "pass", "; ".join(wrong) if wrong else f"match the bundle's {attr}")


def _check_hashes(config: RobotConfig, m: Manifest, report: CheckReport) -> None:
    record, binding = m.deployment, config.binding
    stats_now, tokenizer_now = stats_sha256(m.norm_stats), m.files.get(m.tokenizer_file)
    if record is None:
        report.add("deployment", "unknown", "the bundle was written before bundles recorded what the policy was "
                                            "trained with (training image sizes, names, hashes): re-export it")
    elif record.prompt_format != PROMPT_FORMATS[m.model_type]:
        report.add("deployment.prompt_format", "fail", f"the policy was trained on prompts {record.prompt_format!r}, "
                                                       f"this runtime writes {PROMPT_FORMATS[m.model_type]!r}")
    for name, now, recorded, pinned, pin_field in (
            ("normalization", stats_now, record and record.stats_sha256, binding.stats_sha256, "binding.stats_sha256"),
            ("tokenizer.file", tokenizer_now, record and record.tokenizer_sha256, binding.tokenizer_sha256,
             "binding.tokenizer_sha256")):
        if recorded and recorded != now:
            report.add(name, "fail", f"sha256 {now[:16]}... differs from {recorded[:16]}... recorded at export: "
                                     "edited or replaced after export; re-export the bundle")
        elif pinned and pinned != now:
            report.add(pin_field, "fail", f"this robot was set up with {pinned[:16]}..., the bundle has {now[:16]}... "
                                          "(another dataset's statistics or another tokenizer?)")
        else:
            report.add(name, "pass" if recorded or pinned else "unknown",
                       f"sha256 {now}" + ("" if recorded or pinned else " (nothing to compare with)"))


# ---- the arm's start state ----------------------------------------------------------------------------


def state_bounds(stats: NormStats, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Per robot state dim, the range the start state may be in (docs/model.md, "Start state")."""
    a, b = stats.state.a.astype(np.float64), stats.state.b.astype(np.float64)
    low, high = (a - Z_99 * b, a + Z_99 * b) if stats.kind == "mean_std" else (a, b)
    spread = margin * (high - low)
    return low - spread, high + spread


def check_start_state(config: RobotConfig, m: Manifest, state, report: CheckReport) -> None:
    """The arm's measured joints (arm order) against the statistics' range; reads nothing, moves nothing."""
    state = np.asarray(state, dtype=np.float64).reshape(-1)
    joints = config.joints
    if state.size != joints.dof or not np.isfinite(state).all():
        report.add("joints.names", "fail", f"the arm reports {state.tolist()}, not {joints.dof} finite positions")
        return
    low, high = state_bounds(m.norm_stats, config.binding.state_margin)
    outside = [f"{joints.names[j]} = {state[j]:.4g} (state dim {k}: [{low[k]:.4g}, {high[k]:.4g}])"
               for j, k in enumerate(joints.state_index) if k < low.size and not low[k] <= state[j] <= high[k]]
    if outside:
        report.add("state", "fail", f"the arm starts outside the statistics' range widened by binding.state_margin "
                                    f"{config.binding.state_margin}: {'; '.join(outside)}; wrong joint order or "
                                    "units, another dataset's statistics, or move the arm into its working range")
    else:
        report.add("state", "pass", f"all {joints.dof} joints within the statistics' range "
                                    f"(margin {config.binding.state_margin})")
