"""Intel RealSense color cameras through pyrealsense2: live by serial number, or playback of a recording.

Frames arrive on librealsense's thread through a callback that copies the color image and stamps it
with time.monotonic() on arrival. Where the frame's metadata gives its capture time on the host's
wall clock (timestamp domain global_time or system_time), the capture timestamp is that moment moved
onto the monotonic clock, and arrival is kept as `received_s`: the difference is the camera's own
latency in the capture-to-command accounting (latency.py). A hardware-clock timestamp is not on any
host clock: those frames are stamped at arrival. `read()` returns the latest. Playback runs in real time (librealsense's
non-real-time pipeline playback stalls once nobody pulls frames from it); with `repeat: false` a
finished recording behaves like a camera that stopped: its last frame keeps its old timestamp.

`record_synthetic()` writes a recording from numpy images with a software device + recorder, so the
tests (and users without a camera) can make recordings offline. librealsense 2.59 records only `.db3`
and still plays old `.bag` files.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pi0edge.errors import require

from .camera_base import Camera, Frame
from .errors import CameraError

_PURPOSE = "Intel RealSense cameras"


def _rs():
    try:
        return require("pyrealsense2", "realsense", _PURPOSE)
    except ImportError as exc:
        # pyrealsense2's wheel loads libusb at import: say so rather than a bare "cannot open shared object".
        if "libusb" in str(exc.__cause__ or exc):
            raise CameraError("pyrealsense2 cannot load libusb: apt-get install -y libusb-1.0-0") from exc
        raise


class RealSenseCamera(Camera):
    """Color stream of a RealSense: `serial` for a live camera, `file` for a recording (.db3 or .bag)."""

    def __init__(self, serial: str | None = None, file: str | None = None, width: int = 640, height: int = 480,
                 fps: int = 30, name: str = "realsense", repeat: bool = False):
        super().__init__()
        if (serial is None) == (file is None):
            raise CameraError(f"camera {name!r}: give exactly one of serial or file")
        self.serial, self.file, self.width, self.height, self.fps = serial, file, width, height, int(fps)
        self.name, self.repeat = name, repeat
        self._pipeline = None
        self._lock = threading.Lock()
        self._new: Frame | None = None
        self._index = 0

    def _open(self) -> None:
        rs = _rs()
        cfg = rs.config()
        if self.file is not None:
            if not Path(self.file).is_file():
                raise CameraError(f"camera {self.name!r}: recording {self.file} does not exist")
            cfg.enable_device_from_file(str(self.file), repeat_playback=self.repeat)
            # A recording has the streams it has: take its color stream whatever its resolution.
            cfg.enable_stream(rs.stream.color)
        else:
            cfg.enable_device(str(self.serial))
            cfg.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        pipeline = rs.pipeline()
        try:
            pipeline.start(cfg, self._on_frame)
        except RuntimeError as exc:
            source = self.file or f"serial {self.serial}"
            raise CameraError(f"camera {self.name!r}: cannot start RealSense ({source}): {exc}") from exc
        self._pipeline = pipeline

    def _on_frame(self, frame) -> None:
        # librealsense's thread: copy out now (the frame's buffer returns to the pool after the callback).
        now = time.monotonic()
        color = frame.as_frameset().get_color_frame() if frame.is_frameset() else frame
        if not color or not color.is_video_frame():
            return
        image = np.asanyarray(color.get_data())
        fmt = color.get_profile().format()
        rs = _rs()
        if fmt == rs.format.bgr8:
            image = image[:, :, ::-1]
        elif fmt == rs.format.rgba8:
            image = image[:, :, :3]
        elif fmt != rs.format.rgb8:
            return  # not a color format we convert; the watchdog will report the camera as stale
        capture_s = _capture_monotonic_s(color, now, rs)
        with self._lock:
            self._new = Frame(np.array(image, dtype=np.uint8, copy=True), capture_s, self._index, received_s=now)
            self._index += 1

    def _read(self) -> Frame | None:
        with self._lock:
            frame, self._new = self._new, None
        return frame

    def _close(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError as exc:  # already stopped (playback ended): nothing left to release
                if "stop() cannot be called before start()" not in str(exc):
                    raise
            self._pipeline = None


# A metadata capture time further back than this is a clock that is not what it claims: use arrival.
MAX_CAMERA_LATENCY_S = 1.0


def _capture_monotonic_s(frame, arrival_s: float, rs) -> float:
    """The frame's capture time on the monotonic clock, from its metadata where it is a host wall-clock time."""
    try:
        domain = frame.get_frame_timestamp_domain()
        wall_ms = float(frame.get_timestamp())
    except (AttributeError, RuntimeError):
        return arrival_s
    if domain not in (rs.timestamp_domain.global_time, rs.timestamp_domain.system_time):
        return arrival_s
    latency_s = time.time() - wall_ms / 1e3  # how long ago it was captured, on the wall clock
    return arrival_s - latency_s if 0.0 <= latency_s <= MAX_CAMERA_LATENCY_S else arrival_s


def record_synthetic(path: str | Path, images: Sequence[np.ndarray], fps: int = 30) -> Path:
    """Write `images` (uint8 HxWx3 RGB, all one size) as a RealSense color recording (`.db3`)."""
    rs = _rs()
    path = Path(path)
    if path.suffix != ".db3":
        raise CameraError(f"{path}: librealsense {rs.__version__} records only .db3 files")
    if not images:
        raise CameraError("record_synthetic: no images")
    height, width = images[0].shape[:2]
    device = rs.software_device()
    sensor = device.add_sensor("Color")
    intrinsics = rs.intrinsics()
    intrinsics.width, intrinsics.height = width, height
    intrinsics.ppx, intrinsics.ppy, intrinsics.fx, intrinsics.fy = width / 2, height / 2, float(width), float(width)
    intrinsics.model, intrinsics.coeffs = rs.distortion.none, [0.0] * 5
    stream = rs.video_stream()
    stream.type, stream.index, stream.uid = rs.stream.color, 0, 0
    stream.width, stream.height, stream.fps, stream.bpp = width, height, fps, 3
    stream.fmt, stream.intrinsics = rs.format.rgb8, intrinsics
    profile = sensor.add_video_stream(stream)
    recorder = rs.recorder(str(path), device)
    sink = rs.syncer()
    sensor.open(profile)
    sensor.start(sink)
    try:
        for index, image in enumerate(images):
            if image.shape != (height, width, 3) or image.dtype != np.uint8:
                raise CameraError(f"record_synthetic: image {index} is {image.dtype} {image.shape}, "
                                  f"expected uint8 {(height, width, 3)}")
            frame = rs.software_video_frame()
            frame.pixels = np.ascontiguousarray(image)
            frame.bpp, frame.stride = 3, width * 3
            frame.timestamp, frame.domain = index * 1000.0 / fps, rs.timestamp_domain.hardware_clock
            frame.frame_number, frame.profile = index, profile.as_video_stream_profile()
            sensor.on_video_frame(frame)
            time.sleep(1.0 / fps)  # the recorder stamps by arrival; keep the recording's timing real
    finally:
        sensor.stop()
        sensor.close()
        del recorder  # the file is finalised when the recorder is released
    return path
