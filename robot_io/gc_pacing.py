"""Garbage collection in the loop's slack, not in the middle of a tick.

CPython's cyclic collector runs whenever allocations cross a threshold, that is at an arbitrary point of a
tick. Measured in this loop (benchmarks/loop_timing.py with a tiny bundle, 2-core machine under load):
about 2.6 collections a second, 0.36 ms on average, up to 8 ms. openpilot's real-time processes turn
the collector off. Here, for the length of a run: the objects alive at the start are frozen (never
scanned again), automatic collection is off, and the loop collects the young generations once a second
and everything once a minute right after a tick's work, where the rest of the period absorbs it.
Reference counting still frees everything that is not in a cycle at once. Undone when the run ends.
"""

from __future__ import annotations

import gc
import math

YOUNG_EVERY_S = 1.0  # generations 0 and 1: what the loop's own ticks allocate
FULL_EVERY_S = 60.0  # generation 2: long-lived cycles, e.g. a fault's exception and its traceback


class GcPacer:
    """`start()` at the beginning of a run, `after_tick(now)` after each tick's work, `stop()` at the end."""

    def __init__(self, young_every_s: float = YOUNG_EVERY_S, full_every_s: float = FULL_EVERY_S):
        self.young_every_s, self.full_every_s = young_every_s, full_every_s
        self._was_enabled: bool | None = None
        self._next_young_s = self._next_full_s = math.inf
        self.collections = 0

    def start(self, now: float) -> GcPacer:
        self._was_enabled = gc.isenabled()
        # No collection first: with torch or a model in the process a full one takes 100s of ms, and the
        # cameras' first frames would be stale by the first tick. Garbage frozen here waits for stop().
        gc.freeze()
        gc.disable()
        self._next_young_s, self._next_full_s = now + self.young_every_s, now + self.full_every_s
        return self

    def after_tick(self, now: float) -> None:
        if now >= self._next_full_s:
            gc.collect(2)
            self._next_full_s = now + self.full_every_s
            self._next_young_s = now + self.young_every_s
            self.collections += 1
        elif now >= self._next_young_s:
            gc.collect(1)
            self._next_young_s = now + self.young_every_s
            self.collections += 1

    def stop(self) -> None:
        if self._was_enabled is None:
            return
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()
        self._was_enabled = None
