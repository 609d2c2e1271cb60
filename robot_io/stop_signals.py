"""SIGTERM and SIGHUP end a run the way Ctrl-C does: final hold, summary, episode saved.

systemd and `docker stop` send SIGTERM, a dropped ssh session SIGHUP; by default either kills the
process at once, leaving the arm at whatever it was last told and no episode. While the loop runs,
their handler only records the signal; the loop sees it at the next tick and ends the run normally.
Python runs signal handlers on the main thread only, so they are installed only when the loop runs
there, and the previous handlers are restored when it ends. A signal the process was told to ignore
(SIG_IGN, e.g. SIGHUP under `nohup`) stays ignored.
"""

from __future__ import annotations

import signal
import threading

TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class TerminationSignals:
    def __init__(self) -> None:
        self.received: str | None = None  # the name of the first termination signal received
        self._previous: dict[int, object] = {}

    def install(self) -> TerminationSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in TERMINATION_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
