"""Where calibration images come from: a folder of image files, or a live camera / recording through a
camera opener the caller passes in (the CLI passes robot_io's `open_camera`; this module does not import
robot_io, which itself imports calibration)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pi0edge.calibration.errors import CalibrationFileError, ImageError

log = logging.getLogger(__name__)

# spec -> a context manager whose read() returns a frame with an RGB (or grey) `.image`, as robot_io's cameras
CameraOpener = Callable[[dict[str, Any]], Any]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")


def _cv2():
    from pi0edge.errors import require

    return require("cv2", "calib", "camera calibration")


def list_images(folder: Path | str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"image folder {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_image(path: Path | str) -> np.ndarray:
    """RGB or grey uint8, in the channel order of robot_io's frames (OpenCV decodes files as BGR); a clear error
    for a missing, empty, truncated or undecodable file."""
    cv2 = _cv2()
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if not data:
        raise ImageError(f"image {path} is empty (0 bytes)")
    # libjpeg decodes a truncated JPEG with grey fill and only a warning on stderr: check the end marker.
    if path.suffix.lower() in (".jpg", ".jpeg") and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise ImageError(f"image {path} is corrupted: the JPEG data is truncated (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"image {path} is corrupted or not an image OpenCV can decode")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0))
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def iter_folder(folder: Path | str) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, image) for every image in the folder; all must have the size of the first."""
    size: tuple[int, int] | None = None
    first: Path | None = None
    for path in list_images(folder):
        image = read_image(path)
        this = (image.shape[1], image.shape[0])
        if size is None:
            size, first = this, path
        elif this != size:
            raise ImageError(
                f"image {path} is {this[0]}x{this[1]} but {first.name} is {size[0]}x{size[1]}: "
                "all views must come from one camera at one resolution"
            )
        yield path.name, image


def parse_camera_spec(text: str) -> dict[str, Any]:
    """A robot_io camera spec: a YAML/JSON mapping (passed through as-is, e.g. `{kind: opencv, device: 0,
    width: 1280, height: 720}`), or the short form `KIND:ARG`: `opencv:0`, `opencv:/dev/video2`,
    `realsense:123456789012` (serial), `realsense:recording.bag` (file), `synthetic:FOLDER`."""
    import yaml

    from pi0edge.yaml_io import DuplicateKeyError, load_yaml

    try:
        data = load_yaml(text)
    except DuplicateKeyError as exc:  # a mapping, but an ambiguous one: not a KIND:ARG string
        raise CalibrationFileError(f"camera spec {text!r}: {exc}") from None
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict):
        return data
    kind, sep, arg = text.strip().partition(":")
    kind = kind.strip().lower()
    if not sep or not kind:
        raise CalibrationFileError(f"camera spec {text!r}: expected KIND:ARG (e.g. opencv:0) or a YAML mapping")
    arg = arg.strip()
    if kind == "opencv":
        return {"kind": "opencv", "device": int(arg) if arg.isdigit() else arg}
    if kind == "realsense":
        if arg.lower().endswith((".bag", ".db3")):
            return {"kind": "realsense", "file": arg}
        return {"kind": "realsense", "serial": arg} if arg else {"kind": "realsense"}
    if kind == "synthetic":
        return {"kind": "synthetic", "folder": arg}
    return {"kind": kind}


def grab_frame(spec: dict[str, Any], open_camera: CameraOpener, settle_frames: int = 5) -> np.ndarray:
    """One RGB frame, after letting auto-exposure settle for a few frames."""
    with open_camera(spec) as camera:
        frame = None
        for _ in range(settle_frames + 1):
            frame = camera.read()
        return np.asarray(frame.image)


def capture_views(
    spec: dict[str, Any],
    open_camera: CameraOpener,
    accept: Callable[[np.ndarray], bool],
    count: int,
    timeout_s: float,
    save_dir: Path | None = None,
) -> list[tuple[str, np.ndarray]]:
    """Frames from a live camera that `accept` takes (board seen, pose new enough), up to count or timeout.
    Accepted frames can be saved (as PNG, RGB->BGR) so the calibration can be rerun from the folder."""
    cv2 = _cv2()
    views: list[tuple[str, np.ndarray]] = []
    deadline = time.monotonic() + timeout_s
    with open_camera(spec) as camera:
        while len(views) < count and time.monotonic() < deadline:
            image = np.asarray(camera.read().image)
            if not accept(image):
                continue
            name = f"view_{len(views):03d}.png"
            views.append((name, image))
            log.info("captured %s (%d/%d)", name, len(views), count)
            if save_dir is not None:
                save_dir.mkdir(parents=True, exist_ok=True)
                bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
                cv2.imwrite(str(save_dir / name), bgr)
    if len(views) < count:
        log.warning("captured %d of %d views before the %g s timeout", len(views), count, timeout_s)
    return views
