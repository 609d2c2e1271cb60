"""The camera devices a robot YAML binds, against this machine (`DeviceProbe`): present, each bound once, able
to deliver the size and rate asked for. Part of `pi0edge check` (contract_check.py)."""

from __future__ import annotations

from pi0edge.errors import MissingExtraError

from .check_report import CheckReport
from .config import CameraConfig, RobotConfig
from .devices import DeviceProbe

# The size a camera kind delivers when the YAML gives none (cameras.py, realsense.py defaults).
DEFAULT_MODE = {"realsense": (640, 480, 30), "synthetic": (224, 224, 30)}


def _device_of(cam: CameraConfig) -> tuple[str, str] | None:
    """(field, value) naming the physical device a camera opens, or None for one without a device."""
    if cam.spec["kind"] == "realsense" and cam.spec.get("serial") is not None:
        return "serial", str(cam.spec["serial"])
    device = cam.spec.get("device", 0)
    if cam.spec["kind"] == "opencv" and (isinstance(device, int) or device.startswith("/dev/")):
        return "device", str(device)
    return None  # a synthetic or simulated camera, a recording, a video file: several cameras may read one


def check_devices(config: RobotConfig, probe: DeviceProbe, report: CheckReport) -> None:
    realsense: dict | None = None
    owner: dict[tuple[str, str], str] = {}
    for cam in config.cameras:
        spec, where = cam.spec, f"cameras.{cam.robot_id}"
        device = _device_of(cam)
        if device is not None and device in owner:
            report.add(f"{where}.{device[0]}", "fail", f"{device[1]} is also bound to cameras.{owner[device]}: one "
                                                       "device cannot feed two policy cameras")
            continue
        if device is not None:
            owner[device] = cam.robot_id
        for key in ("file", "folder", "video"):
            if isinstance(spec.get(key), str) and not probe.path_exists(spec[key]):
                report.add(f"{where}.{key}", "fail", f"{spec[key]} does not exist")
        if spec["kind"] == "realsense" and spec.get("serial") is not None:
            if realsense is None:
                try:
                    realsense = probe.realsense_devices()
                except MissingExtraError as exc:
                    report.add(f"{where}.serial", "fail", str(exc))
                    continue
            _check_realsense(cam, realsense, report)
        elif spec["kind"] == "opencv":
            _check_v4l(cam, probe, report)


def _check_realsense(cam: CameraConfig, connected: dict, report: CheckReport) -> None:
    where, serial = f"cameras.{cam.robot_id}", str(cam.spec["serial"])
    device = connected.get(serial)
    if device is None:
        report.add(f"{where}.serial", "fail", f"no RealSense with serial {serial} is connected (connected: "
                                              f"{sorted(connected) or 'none'})")
        return
    default_width, default_height, default_fps = DEFAULT_MODE["realsense"]
    width, height = cam.spec.get("width", default_width), cam.spec.get("height", default_height)
    fps = cam.spec.get("fps", default_fps)
    if (width, height, fps) not in device.color_modes:
        offered = ", ".join(f"{w}x{h}@{f}" for w, h, f in sorted(device.color_modes)) or "none"
        report.add(f"{where}.width/height/fps", "fail", f"{device.name} {serial} has no {width}x{height} rgb8 color "
                                                         f"stream at {fps} fps (it offers {offered}); is this the "
                                                         "serial of the camera meant here?")
        return
    report.add(f"{where}.serial", "pass", f"{device.name} {serial} connected, {width}x{height} at {fps} fps")


def _check_v4l(cam: CameraConfig, probe: DeviceProbe, report: CheckReport) -> None:
    where, device = f"cameras.{cam.robot_id}", cam.spec.get("device", 0)
    if isinstance(device, int) or not device.startswith("/dev/"):
        if isinstance(device, int):
            report.add(f"{where}.device", "warn", f"index {device} (allow_unstable_device): may change on replug")
        return  # a video file: checked as a path above when named `video`; here OpenCV opens it
    if not probe.path_exists(device):
        report.add(f"{where}.device", "fail", f"{device} does not exist: is the camera plugged in? "
                                              "(ls -l /dev/v4l/by-id/)")
        return
    report.add(f"{where}.device", "pass", f"{device} present")
    report.add(f"{where}.width/height/fps", "unknown", "a V4L2 camera's modes are not enumerated here; it opens "
                                                       "with the nearest mode it has")
