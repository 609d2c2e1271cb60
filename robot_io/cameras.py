"""Cameras behind one small interface: `open()`, `read() -> Frame` (the latest frame), `close()`.

`read()` never blocks on the device: the control loop calls it every tick. Each frame carries the
time it was captured on `time.monotonic`'s clock. A camera that stops delivering keeps returning its
last frame with that frame's OLD timestamp, so the loop's stale-frame watchdog can see the freeze.

Kinds (the `kind` field of a camera spec): `synthetic` (a pattern, an image folder or a video file),
`opencv` (a V4L2 device index/path or a video file, via OpenCV), `realsense` (live by serial number,
or playback of a recording; see realsense.py) and `aloha` (a camera of the gym-aloha arm; arms.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np

from pi0edge.errors import ConfigError, require

from .camera_base import Camera, Frame
from .errors import CameraError
from .specs import checked_kind

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SYNTHETIC_PATTERNS = ("gradient", "checker", "noise", "solid")


def _to_rgb_u8(image: np.ndarray, where: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise CameraError(f"{where}: expected uint8 HxWx3 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


class SyntheticCamera(Camera):
    """A camera without hardware: a moving pattern, the images of a folder, or the frames of a video.

    Frames are produced at `fps` (a new frame only when 1/fps has passed since the last one, like a
    real camera). `freeze()` stops delivery: the last frame keeps its old timestamp (for watchdog tests).
    `delay_s`: each frame arrives this long after its capture (its timestamp is the read time minus
    delay_s), as a camera with a slow sensor or transport; the latency accounting's known input.
    """

    def __init__(
        self,
        width: int = 224,
        height: int = 224,
        fps: float = 30.0,
        pattern: str = "gradient",
        folder: str | None = None,
        video: str | None = None,
        name: str = "synthetic",
        seed: int = 0,
        delay_s: float = 0.0,
    ):
        super().__init__()
        self.width, self.height, self.fps, self.pattern = int(width), int(height), float(fps), pattern
        self.folder, self.video, self.name = folder, video, name
        self.delay_s = float(delay_s)
        self._rng = np.random.default_rng(seed)
        self._images: list[np.ndarray] | None = None
        self._frozen = threading.Event()
        self._index = 0
        self._next_s = 0.0

    def _open(self) -> None:
        if self.folder is not None:
            self._images = _load_folder(Path(self.folder), self.name)
        elif self.video is not None:
            self._images = _load_video(Path(self.video), self.name)
        self._next_s = time.monotonic()

    def freeze(self) -> None:
        self._frozen.set()

    def unfreeze(self) -> None:
        self._frozen.clear()

    def _make(self, index: int) -> np.ndarray:
        if self._images is not None:
            return self._images[index % len(self._images)]
        h, w = self.height, self.width
        if self.pattern == "gradient":
            # A diagonal gradient that scrolls by 4 px per frame, so successive frames differ.
            ramp = (np.arange(w)[None, :] + np.arange(h)[:, None] + 4 * index) % 256
            return np.stack([ramp, np.full_like(ramp, 128), 255 - ramp], axis=2).astype(np.uint8)
        if self.pattern == "checker":
            cells = ((np.arange(h)[:, None] // 16 + np.arange(w)[None, :] // 16 + index) % 2).astype(np.uint8) * 255
            return np.repeat(cells[:, :, None], 3, axis=2)
        if self.pattern == "noise":
            return self._rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        return np.full((h, w, 3), (index * 8) % 256, dtype=np.uint8)  # solid

    def _read(self) -> Frame | None:
        if self._frozen.is_set():
            return None
        now = time.monotonic()
        if self._last is not None and now < self._next_s:
            return None
        # Catch up to the frame grid without bursting: one new frame per read at most.
        self._next_s = max(self._next_s + 1.0 / self.fps, now)
        frame = Frame(self._make(self._index), now - self.delay_s, self._index, received_s=now)
        self._index += 1
        return frame


def _load_folder(folder: Path, name: str) -> list[np.ndarray]:
    if not folder.is_dir():
        raise CameraError(f"camera {name!r}: image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CameraError(f"camera {name!r}: no {'/'.join(IMAGE_SUFFIXES)} images in {folder}")
    cv2 = require("cv2", "calib", "reading an image folder")
    images = []
    for path in files:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CameraError(f"camera {name!r}: cannot decode {path}")
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return images


def _load_video(path: Path, name: str, max_frames: int = 10_000) -> list[np.ndarray]:
    if not path.is_file():
        raise CameraError(f"camera {name!r}: video {path} does not exist")
    cv2 = require("cv2", "calib", "reading a video file")
    cap = cv2.VideoCapture(str(path))
    images = []
    try:
        while len(images) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not images:
        raise CameraError(f"camera {name!r}: no frames decoded from {path}")
    return images


class OpenCVCamera(Camera):
    """A V4L2 device (index or /dev/videoN) or a video file through cv2.VideoCapture.

    A grab thread reads continuously (cap.read() blocks for up to a frame period) and keeps only the
    latest frame, stamped with time.monotonic() when it was returned by the driver.
    """

    def __init__(self, device: int | str = 0, width: int | None = None, height: int | None = None,
                 fps: float | None = None, name: str = "opencv", loop_file: bool = False):
        super().__init__()
        self.device, self.width, self.height, self.fps, self.name = device, width, height, fps, name
        self.loop_file = loop_file
        self._cap = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._new: Frame | None = None
        self.error: str | None = None  # why the grab thread stopped, if it did

    def _open(self) -> None:
        cv2 = require("cv2", "calib", "OpenCV cameras")
        source = self.device
        cap = cv2.VideoCapture(source, cv2.CAP_V4L2) if isinstance(source, int) else cv2.VideoCapture(str(source))
        if not cap.isOpened():
            raise CameraError(f"camera {self.name!r}: cannot open OpenCV source {source!r}")
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap
        self._stop.clear()
        self._thread = threading.Thread(target=self._grab, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def _grab(self) -> None:
        cv2 = require("cv2", "calib", "OpenCV cameras")
        index = 0
        is_file = not isinstance(self.device, int) and Path(str(self.device)).is_file()
        period_s = 1.0 / self.fps if (is_file and self.fps) else 0.0
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            if not ok:
                if is_file and self.loop_file:
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                self.error = "source stopped delivering frames"
                return  # read() keeps returning the last frame with its old timestamp
            frame = Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), time.monotonic(), index)
            index += 1
            with self._lock:
                self._new = frame
            if period_s:
                time.sleep(period_s)  # a file decodes faster than real time: pace it like a camera

    def _read(self) -> Frame | None:
        with self._lock:
            frame, self._new = self._new, None
        return frame

    def _close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._cap is not None:
            self._cap.release()


# --- specs (YAML `cameras.<id>` blocks and open_camera) ---------------------------------------------

_COMMON_KEYS = {"kind", "model_camera", "width", "height", "fps", "name"}
_KIND_KEYS = {
    "synthetic": {"pattern", "folder", "video", "seed", "delay_s"},
    "opencv": {"device", "loop_file"},
    "realsense": {"serial", "file", "repeat"},
    "aloha": {"camera"},
}


def validate_camera_spec(spec: Mapping, where: str = "camera") -> Mapping:
    """Check a camera spec; errors name `where.<field>` and the value. Returns a read-only copy."""
    kind = checked_kind(spec, where, _KIND_KEYS, _COMMON_KEYS)
    for key in ("width", "height"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ConfigError(f"{where}.{key}: must be a positive integer, got {value!r}")
    fps = spec.get("fps")
    if fps is not None and (not isinstance(fps, (int, float)) or isinstance(fps, bool) or fps <= 0):
        raise ConfigError(f"{where}.fps: must be a positive number, got {fps!r}")
    if kind == "synthetic":
        sources = [k for k in ("folder", "video") if spec.get(k) is not None]
        if len(sources) > 1:
            raise ConfigError(f"{where}: give at most one of folder/video, got {sources}")
        pattern = spec.get("pattern", "gradient")
        if pattern not in SYNTHETIC_PATTERNS:
            raise ConfigError(f"{where}.pattern: must be one of {list(SYNTHETIC_PATTERNS)}, got {pattern!r}")
        delay = spec.get("delay_s", 0.0)
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay < float("inf"):
            raise ConfigError(f"{where}.delay_s: must be a number of seconds >= 0, got {delay!r}")
    elif kind == "opencv":
        device = spec.get("device", 0)
        if not isinstance(device, (int, str)) or isinstance(device, bool):
            raise ConfigError(f"{where}.device: must be a device index or a path, got {device!r}")
    elif kind == "realsense":
        if (spec.get("serial") is None) == (spec.get("file") is None):
            raise ConfigError(f"{where}: give exactly one of serial (live) or file (playback), got "
                              f"serial={spec.get('serial')!r} file={spec.get('file')!r}")
    elif kind == "aloha":
        if not isinstance(spec.get("camera", "top"), str):
            raise ConfigError(f"{where}.camera: must be a gym-aloha camera name, got {spec.get('camera')!r}")
    return MappingProxyType(dict(spec))


def open_camera(spec: Mapping, arm=None) -> Camera:
    """Make and open a camera from a spec (see validate_camera_spec). `arm` serves `aloha` cameras."""
    spec = validate_camera_spec(spec)
    kind, name = spec["kind"], spec.get("name", spec.get("kind"))
    if kind == "synthetic":
        camera: Camera = SyntheticCamera(
            width=spec.get("width", 224), height=spec.get("height", 224), fps=spec.get("fps", 30.0),
            pattern=spec.get("pattern", "gradient"), folder=spec.get("folder"), video=spec.get("video"),
            name=name, seed=spec.get("seed", 0), delay_s=spec.get("delay_s", 0.0))
    elif kind == "opencv":
        camera = OpenCVCamera(device=spec.get("device", 0), width=spec.get("width"), height=spec.get("height"),
                              fps=spec.get("fps"), name=name, loop_file=bool(spec.get("loop_file", False)))
    elif kind == "realsense":
        from .realsense import RealSenseCamera

        camera = RealSenseCamera(serial=spec.get("serial"), file=spec.get("file"), width=spec.get("width", 640),
                                 height=spec.get("height", 480), fps=spec.get("fps", 30), name=name,
                                 repeat=bool(spec.get("repeat", False)))
    else:  # aloha
        if arm is None or not hasattr(arm, "camera"):
            raise ConfigError(f"camera {name!r}: kind 'aloha' needs the arm to be of kind 'aloha'")
        camera = arm.camera(spec.get("camera", "top"))
    return camera.open()
