"""Camera reads with a time bound: each camera is read on its own thread, so a driver stuck in `read()`
(a USB hiccup, a network camera that stopped answering) costs a tick at most `timeout_s`, never the clock.

The loop asks every camera at once (`request`), then collects them against one deadline (`collect`).
A read that has not returned by then gives no frame this tick, and no new read is issued while it
hangs: the loop keeps the last frame it has, whose age the stale-frame watchdog checks, so a read that
stays blocked becomes a `stale_frame` fault after `stale_frame_s` (docs/control_loop.md, "Safety behaviour").
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .camera_base import Frame


@dataclass(frozen=True)
class ReadOutcome:
    frame: Frame | None = None  # None: the read raised (error) or has not returned (blocked_s > 0)
    error: BaseException | None = None  # what read() raised
    blocked_s: float = 0.0  # how long the read in flight has been running without returning


class CameraReader:
    """Reads one camera (anything with `read() -> Frame`) on a daemon thread, one read at a time."""

    def __init__(self, name: str, camera):
        self.name, self.camera = name, camera
        self._cv = threading.Condition()
        self._in_flight = False  # a read was requested and has not returned
        self._todo = False  # the thread has not picked the request up yet
        self._requested_s = 0.0
        self._outcome = ReadOutcome()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)

    def start(self) -> CameraReader:
        self._thread.start()
        return self

    def request(self) -> bool:
        """Start a read unless the previous one is still running. Returns True when a read started."""
        with self._cv:
            if self._in_flight:
                return False  # do not pile reads onto a driver that hangs
            self._in_flight, self._todo = True, True
            self._requested_s = time.monotonic()
            self._cv.notify_all()
            return True

    def collect(self, deadline_s: float) -> ReadOutcome:
        """The outcome of the read in flight, waiting for it until `deadline_s` (time.monotonic) at most."""
        with self._cv:
            self._cv.wait_for(lambda: not self._in_flight, timeout=max(0.0, deadline_s - time.monotonic()))
            if self._in_flight:
                return ReadOutcome(blocked_s=time.monotonic() - self._requested_s)
            return self._outcome

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._todo or self._stop)
                if self._stop:
                    return
                self._todo = False
            try:
                outcome = ReadOutcome(frame=self.camera.read())
            except BaseException as exc:  # noqa: BLE001 - any driver error becomes a camera fault in the loop,
                # even one that would only end this thread (a KeyboardInterrupt here is a driver's, not Ctrl-C)
                outcome = ReadOutcome(error=exc)
            with self._cv:
                self._outcome, self._in_flight = outcome, False
                self._cv.notify_all()

    def stop(self, timeout_s: float = 0.2) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=timeout_s)  # a read stuck in the driver is left behind (daemon thread)
