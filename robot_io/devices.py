"""What cameras this machine has, for `pi0edge check`: RealSense devices by serial with the color modes
they offer, and whether a device path exists. `DeviceProbe` is the seam: the check asks it, never the
hardware directly, so the check's logic is tested with a given enumeration (tests/robot_io/test_contract_check.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class RealSenseDevice:
    serial: str
    name: str  # e.g. "Intel RealSense D435"
    color_modes: frozenset[tuple[int, int, int]]  # (width, height, fps) of its rgb8 color stream profiles


class DeviceProbe:
    """This machine's devices: RealSense enumeration through pyrealsense2, paths through the filesystem."""

    def realsense_devices(self) -> dict[str, RealSenseDevice]:
        """Connected RealSense devices by serial. Raises MissingExtraError without pyrealsense2."""
        from pi0edge.errors import require

        rs = require("pyrealsense2", "realsense", "checking RealSense serials")
        devices = {}
        for device in rs.context().query_devices():
            serial = device.get_info(rs.camera_info.serial_number)
            modes = set()
            for sensor in device.query_sensors():
                for profile in sensor.get_stream_profiles():
                    if (profile.stream_type() == rs.stream.color and profile.format() == rs.format.rgb8
                            and profile.is_video_stream_profile()):
                        video = profile.as_video_stream_profile()
                        modes.add((video.width(), video.height(), profile.fps()))
            devices[serial] = RealSenseDevice(serial, device.get_info(rs.camera_info.name), frozenset(modes))
        return devices

    def path_exists(self, path: str) -> bool:
        return os.path.exists(path)
