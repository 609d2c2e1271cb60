"""A fixed-rate clock in the manner of openpilot's `common/realtime.py` Ratekeeper.

The deadline is a monotonic time advanced by exactly one period per tick, so small oversleeps do not
accumulate into drift. Each tick sleeps until ~1 ms before the deadline (the OS may oversleep by a
scheduler quantum) and spins for the rest. Lateness is measured and counted, never hidden: a tick
whose work ran past its deadline is a deadline miss; when the loop falls more than one whole period
behind, the missed slots are skipped (counted) instead of being run back to back, because
executing a backlog of robot actions faster than real time is worse than dropping them.
"""

from __future__ import annotations

import time

from pi0edge.errors import ConfigError

from .quantiles import StreamQuantiles

# Sleep until this long before the deadline, then spin: time.sleep oversleeps by up to ~0.1-1 ms.
DEFAULT_SPIN_S = 0.001
# Timing errors are resolved to 1% of their size from 0.1 us to 100 s (about 2,100 bins, 17 KB each).
ERROR_RESOLUTION_S = 1e-7
ERROR_RANGE_S = 100.0


class Ratekeeper:
    """Keep a loop at `rate_hz`: call `keep_time()` once at the end of each tick's work."""

    def __init__(self, rate_hz: float, spin_s: float = DEFAULT_SPIN_S, clock=time.monotonic, sleep=time.sleep):
        if not rate_hz > 0:
            raise ConfigError(f"rate_hz must be > 0, got {rate_hz!r}")
        self.period_s = 1.0 / float(rate_hz)
        self.spin_s = float(spin_s)
        self._clock, self._sleep = clock, sleep
        self.frame = 0  # ticks completed
        self.deadline_misses = 0  # ticks whose work ended after their deadline
        self.skipped_ticks = 0  # whole periods dropped to resynchronise after a long stall
        self.remaining_s = 0.0  # last tick: deadline minus end of work (negative = late)
        # Per tick, kept as bounded statistics (a run may last days): how long after its deadline the
        # tick woke, and |wake-to-wake interval - period|.
        self.wake_error_s = StreamQuantiles(ERROR_RESOLUTION_S, ERROR_RANGE_S)
        self.period_error_s = StreamQuantiles(ERROR_RESOLUTION_S, ERROR_RANGE_S)
        self._deadline_s: float | None = None
        self._last_wake_s: float | None = None
        self._start_s = 0.0

    def start(self) -> float:
        """Start the schedule now; the first deadline is one period away. Returns the start time."""
        now = self._clock()
        self._deadline_s = now + self.period_s
        self._last_wake_s = self._start_s = now
        return now

    @property
    def elapsed_s(self) -> float:
        """From start() to the last wake-up: `frame` ticks took this long."""
        return 0.0 if self._last_wake_s is None else self._last_wake_s - self._start_s

    @property
    def deadline_s(self) -> float:
        if self._deadline_s is None:
            self.start()
        return self._deadline_s

    def keep_time(self) -> bool:
        """Wait for the current deadline, then schedule the next. Returns True when this tick was late."""
        deadline = self.deadline_s
        now = self._clock()
        self.remaining_s = deadline - now
        late = self.remaining_s < 0
        if late:
            self.deadline_misses += 1
            behind = int(-self.remaining_s // self.period_s)
            if behind >= 1:
                # More than a whole period late: drop the missed slots and realign to the grid.
                self.skipped_ticks += behind
                deadline += behind * self.period_s
        else:
            if self.remaining_s > self.spin_s:
                self._sleep(self.remaining_s - self.spin_s)
            while self._clock() < deadline:
                pass  # spin: the last ~1 ms is not left to the scheduler
        wake = self._clock()
        if not late:
            self.wake_error_s.add(max(0.0, wake - deadline))
        self.period_error_s.add(abs((wake - self._last_wake_s) - self.period_s))
        self._last_wake_s = wake
        self._deadline_s = deadline + self.period_s
        self.frame += 1
        return late
