"""Camera reads off the loop thread: each camera is polled by a thread of its own, and the tick takes
the latest outcome without waiting, so a driver stuck in `read()` (a USB hiccup, a network camera that
stopped answering) never stalls the clock.

The loop then keeps the last frame it has, whose age the stale-frame watchdog checks: a read that
stays blocked becomes a `stale_frame` fault after `stale_frame_s`, and a read that raised is one at
once (docs/control_loop.md, "Safety behaviour"). Polling twice per loop period keeps a frame at most
half a period older than a read in the tick would have been.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .camera_base import Frame


@dataclass(frozen=True)
class ReadOutcome:
    frame: Frame | None = None  # the latest frame read (None: none yet)
    error: BaseException | None = None  # what the last finished read raised (None: it returned a frame)
    blocked_s: float = 0.0  # how long the read in flight has been running


class CameraReader:
    """Polls one camera (anything with `read() -> Frame`) every `poll_s` on a daemon thread."""

    def __init__(self, name: str, camera, poll_s: float):
        self.name, self.camera, self.poll_s = name, camera, float(poll_s)
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._error: BaseException | None = None
        self._read_started_s: float | None = None
        self._stop = threading.Event()
        self._first_read_done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)

    def start(self) -> CameraReader:
        self._thread.start()
        return self

    def wait_first_read(self, timeout_s: float) -> bool:
        """Wait (at the start of a run, not in a tick) until the first read has finished, timeout_s at most."""
        return self._first_read_done.wait(timeout_s)

    def latest(self) -> ReadOutcome:
        with self._lock:
            started = self._read_started_s
            blocked_s = 0.0 if started is None else time.monotonic() - started
            return ReadOutcome(self._frame, self._error, blocked_s)

    def _read_once(self) -> None:
        with self._lock:
            self._read_started_s = time.monotonic()
        try:
            frame, error = self.camera.read(), None
        except BaseException as exc:  # noqa: BLE001 - any driver error becomes a camera fault in the loop, even
            frame, error = None, exc  # one that would end this thread (here a KeyboardInterrupt is a driver's)
        with self._lock:
            self._read_started_s = None
            self._error = error
            if frame is not None:
                self._frame = frame
        self._first_read_done.set()

    def _run(self) -> None:
        self._read_once()
        while not self._stop.wait(self.poll_s):
            self._read_once()

    def stop(self, timeout_s: float = 0.2) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)  # a read stuck in the driver is left behind (daemon thread)
