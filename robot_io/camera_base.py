"""The camera interface every kind implements: `Camera` (open / read the latest `Frame` / close) and `Frame`.

Its own module so that the camera kinds (cameras.py, realsense.py, aloha.py) all import it without
importing each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import CameraError


@dataclass(frozen=True)
class Frame:
    """One color frame. image: uint8 HxWx3 RGB; timestamp_s: capture time (time.monotonic clock); index: 0, 1, ...

    received_s: when the host got it (time.monotonic clock); None: at its capture time, for cameras that
    know no earlier moment than their own arrival. The difference is the camera's own latency (sensor,
    transport, driver), the first span of the capture-to-command accounting (latency.py)."""

    image: np.ndarray
    timestamp_s: float
    index: int
    received_s: float | None = None

    @property
    def arrival_s(self) -> float:
        return self.timestamp_s if self.received_s is None else self.received_s

    def age_s(self, now_s: float | None = None) -> float:
        return (time.monotonic() if now_s is None else now_s) - self.timestamp_s


class Camera:
    """Base class. Subclasses implement `_open`, `_read` (-> Frame or None when no new frame) and `_close`."""

    name = "camera"

    def __init__(self) -> None:
        self._last: Frame | None = None
        self._opened = False

    def open(self) -> Camera:
        if not self._opened:
            self._open()
            self._opened = True
        return self

    def read(self) -> Frame:
        """The latest frame. Raises CameraError while the camera has never delivered one."""
        if not self._opened:
            raise CameraError(f"camera {self.name!r}: read() before open()")
        frame = self._read()
        if frame is not None:
            self._last = frame
        if self._last is None:
            raise CameraError(f"camera {self.name!r}: no frame received yet")
        return self._last

    def wait_first_frame(self, timeout_s: float = 5.0) -> Frame:
        """Block until the first frame arrived (startup only, never in the loop)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.read()
            except CameraError:
                if time.monotonic() > deadline:
                    raise CameraError(f"camera {self.name!r}: no frame within {timeout_s:.1f} s") from None
                time.sleep(0.005)

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._close()

    def __enter__(self) -> Camera:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # subclass hooks
    def _open(self) -> None:
        pass

    def _read(self) -> Frame | None:
        raise NotImplementedError

    def _close(self) -> None:
        pass
