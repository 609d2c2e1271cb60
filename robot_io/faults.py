"""Which faults hold the arm now, and the safety events that record them.

A lasting fault (stale_frame, arm_error, estop) holds until its condition clears, which is recorded
as a `recovered` event; it is recorded once while it lasts, however many ticks it lasts. A one-off
fault (bad_chunk, inference_timeout, policy_error) holds until a chunk from a fresh observation is
accepted. Kinds and what the arm does: docs/control_loop.md, "Safety behaviour".
"""

from __future__ import annotations

import logging
import time

from .safety import SafetyEvent

log = logging.getLogger(__name__)


class Faults:
    def __init__(self, events: list[SafetyEvent]):
        self.events = events  # in order; shared with LoopStats
        self.active: set[str] = set()  # lasting faults that hold now
        self.one_off: str | None = None  # the one-off fault that holds until a fresh chunk arrives

    def event(self, tick: int, kind: str, reason: str) -> None:
        self.events.append(SafetyEvent(tick, time.monotonic(), kind, reason))
        log.warning("safety: tick %d: %s: %s", tick, kind, reason)

    def fault(self, tick: int, kind: str, reason: str, lasting: bool = True) -> None:
        if kind not in self.active:
            self.event(tick, kind, reason)
        if lasting:
            self.active.add(kind)
        else:
            self.one_off = kind

    def clear(self, tick: int, kind: str, reason: str) -> None:
        """The lasting fault `kind` no longer holds (a `recovered` event if it did)."""
        if kind in self.active:
            self.active.discard(kind)
            self.event(tick, "recovered", reason)

    def fresh_chunk_accepted(self) -> None:
        self.one_off = None

    def hold_reasons(self) -> list[str]:
        return sorted(self.active | ({self.one_off} if self.one_off else set()))
