"""RealSense factory calibration: the intrinsics of each stream and the extrinsics between them, read
from a connected device (by serial) or a recording (.bag / .db3 playback), converted to the camera and
transform files the rest of calibration writes.

Model mapping: librealsense's brown_conrady (and `none`) is OpenCV/ROS plumb_bob with the same coefficient
order (k1 k2 p1 p2 k3); kannala_brandt4 is equidistant (k1..k4). inverse_ and modified_brown_conrady differ
from plumb_bob; with all-zero coefficients (D4xx colour) that does not matter, otherwise a note says the
written plumb_bob is an approximation. ftheta (T265) has no ROS equivalent and is skipped with a note."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pi0edge.calibration.camera import CameraModel
from pi0edge.calibration.errors import CalibrationError
from pi0edge.calibration.transforms import Transform, as_rotation, make_transform


def _rs():
    from pi0edge.errors import require

    return require("pyrealsense2", "realsense", "RealSense factory calibration")


@dataclass(frozen=True, eq=False)
class RealSenseCalibration:
    serial: str
    name: str
    firmware: str
    streams: dict[str, CameraModel]  # 'color', 'depth', 'infrared_1', ...
    native_models: dict[str, str]  # librealsense distortion model name per stream
    extrinsics: dict[tuple[str, str], Transform]  # (from, to) -> pose of 'from' in 'to' (p_to = T @ p_from)
    depth_scale_m: float | None = None
    notes: list[str] = field(default_factory=list)


def stream_key(profile) -> str:
    """'color', 'depth', 'infrared_1'...: the index only where a stream type has several (infrared)."""
    kind = profile.stream_type().name
    return f"{kind}_{profile.stream_index()}" if profile.stream_index() > 0 else kind


def camera_from_intrinsics(intrinsics, name: str, notes: list[str] | None = None) -> CameraModel | None:
    """An rs.intrinsics -> CameraModel (P = [K | 0], as the RealSense ROS wrapper publishes)."""
    notes = notes if notes is not None else []
    model = intrinsics.model.name
    k = np.array([[intrinsics.fx, 0.0, intrinsics.ppx], [0.0, intrinsics.fy, intrinsics.ppy], [0.0, 0.0, 1.0]])
    coeffs = np.asarray(list(intrinsics.coeffs), float)
    if model == "kannala_brandt4":
        distortion_model, dist = "equidistant", coeffs[:4]
    elif model == "ftheta":
        notes.append(f"{name}: ftheta distortion has no ROS/OpenCV equivalent; stream skipped")
        return None
    else:
        distortion_model, dist = "plumb_bob", coeffs[:5]
        if model in ("inverse_brown_conrady", "modified_brown_conrady") and np.any(dist):
            notes.append(
                f"{name}: librealsense model {model} written as plumb_bob with the same coefficients, "
                "which is an approximation of it"
            )
    p = np.zeros((3, 4))
    p[:, :3] = k
    return CameraModel(int(intrinsics.width), int(intrinsics.height), k, dist, distortion_model, name, p)


def transform_from_extrinsics(extrinsics, from_frame: str, to_frame: str) -> Transform:
    """rs.extrinsics maps points from the 'from' stream to the 'to' stream: p_to = R p_from + t, with the
    rotation stored column-major (librealsense's rs2_extrinsics)."""
    rotation = np.asarray(list(extrinsics.rotation), float).reshape(3, 3).T
    rotation = as_rotation(rotation, f"extrinsics {from_frame} -> {to_frame}")
    return Transform(to_frame, from_frame, make_transform(rotation, list(extrinsics.translation)))


def _pick(profiles, resolution: tuple[int, int] | None):
    video = [p.as_video_stream_profile() for p in profiles if p.is_video_stream_profile()]
    if resolution is not None:
        video = [p for p in video if (p.width(), p.height()) == resolution]
    if not video:
        return None
    defaults = [p for p in video if p.is_default()]
    return (defaults or video)[0]


def read_device_calibration(
    serial: str | None = None,
    recording: Path | str | None = None,
    resolution: tuple[int, int] | None = None,
    prefix: str | None = None,
) -> RealSenseCalibration:
    """Factory calibration of a connected device (serial, or the only one connected) or of a recording.
    With several profiles per stream (live devices), the default one is used, or the one at `resolution`."""
    rs = _rs()
    device, source = _open_device(rs, serial, recording)

    def info(key) -> str:
        return device.get_info(key) if device.supports(key) else ""

    dev_serial = info(rs.camera_info.serial_number) or "unknown"
    prefix = prefix or f"realsense_{dev_serial}"
    streams: dict[str, CameraModel] = {}
    native: dict[str, str] = {}
    chosen = {}
    notes: list[str] = []
    depth_scale = None
    for sensor in device.query_sensors():
        if sensor.is_depth_sensor():
            depth_scale = float(sensor.as_depth_sensor().get_depth_scale())
        by_stream: dict[str, list] = {}
        for profile in sensor.get_stream_profiles():
            by_stream.setdefault(stream_key(profile), []).append(profile)
        for key, profiles in by_stream.items():
            profile = _pick(profiles, resolution)
            if profile is None:
                continue
            intrinsics = profile.get_intrinsics()
            camera = camera_from_intrinsics(intrinsics, f"{prefix}_{key}", notes)
            if camera is not None:
                streams[key], native[key], chosen[key] = camera, intrinsics.model.name, profile
    if not streams:
        raise CalibrationError(
            f"RealSense {source}: no video stream with intrinsics"
            + (f" at {resolution[0]}x{resolution[1]}" if resolution else "")
        )
    return RealSenseCalibration(
        dev_serial,
        info(rs.camera_info.name),
        info(rs.camera_info.firmware_version),
        streams,
        native,
        _extrinsics(chosen, prefix),
        depth_scale,
        notes,
    )


def _open_device(rs, serial: str | None, recording: Path | str | None):
    """(device, what to call it in errors): a recording played back, or the connected device asked for."""
    ctx = rs.context()
    if recording is not None:
        path = Path(recording)
        if not path.is_file():
            raise CalibrationError(f"RealSense recording {path} does not exist")
        try:
            device = ctx.load_device(str(path))
            device.as_playback().set_real_time(False)
        except RuntimeError as exc:
            raise CalibrationError(f"RealSense recording {path} cannot be played back: {exc}") from None
        return device, str(path)
    devices = list(ctx.query_devices())
    serials = [d.get_info(rs.camera_info.serial_number) for d in devices]
    if not devices:
        raise CalibrationError("no RealSense device is connected (pass --recording FILE to read a recording)")
    if serial is None:
        if len(devices) > 1:
            raise CalibrationError(f"several RealSense devices connected ({', '.join(serials)}): pass --serial")
        return devices[0], "device"
    if serial not in serials:
        raise CalibrationError(f"no RealSense device with serial {serial}; connected: {', '.join(serials)}")
    return devices[serials.index(serial)], "device"


def _extrinsics(chosen: dict, prefix: str) -> dict[tuple[str, str], Transform]:
    """Between every pair of the chosen stream profiles that has a registered relation."""
    extrinsics = {}
    for a, b in ((a, b) for a in chosen for b in chosen if a != b):
        try:
            ext = chosen[a].get_extrinsics_to(chosen[b])
        except RuntimeError:
            continue  # streams without a registered relation (e.g. some recordings)
        extrinsics[(a, b)] = transform_from_extrinsics(
            ext, f"{prefix}_{a}_optical_frame", f"{prefix}_{b}_optical_frame"
        )
    return extrinsics
