"""What one run of the loop did: `LoopStats`, printed as the live status line and the final summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .latency import CAPTURE_TO_COMMAND, LatencyAccount
from .safety import SafetyEvent


@dataclass
class LoopStats:
    """What one run did. Times in ms unless the name says otherwise."""

    rate_hz: float
    strategy: str
    ticks: int = 0
    duration_s: float = 0.0
    period_error_ms_p50: float = float("nan")  # |wake-to-wake interval - period|
    period_error_ms_p99: float = float("nan")
    period_error_ms_max: float = float("nan")
    deadline_misses: int = 0  # ticks whose work ran past the deadline
    skipped_ticks: int = 0  # whole periods dropped after a long stall
    inferences: int = 0
    inference_latency_ms_p50: float = float("nan")
    inference_latency_ms_p99: float = float("nan")
    rejected_chunks: int = 0
    discarded_chunks: int = 0  # arrived after a fault or a timeout: their observation was too old
    skipped_actions: int = 0  # chunk rows dropped because the inference delay had covered them
    executed_ticks: int = 0  # ticks that moved toward a policy action
    waiting_ticks: int = 0  # ticks with no action yet (first chunk, sync pause): arm holds
    hold_ticks: int = 0  # ticks held because of a fault
    clipped_ticks: int = 0  # a target was outside the joint limits (clipped)
    clamped_ticks: int = 0  # a step exceeded the velocity limit (clamped)
    events: list[SafetyEvent] = field(default_factory=list)
    stop_reason: str = ""
    latency: LatencyAccount = field(default_factory=LatencyAccount)  # capture -> command, per chunk and per row

    @property
    def achieved_rate_hz(self) -> float:
        return self.ticks / self.duration_s if self.duration_s > 0 else 0.0

    def event_counts(self) -> dict[str, int]:
        return dict(Counter(e.kind for e in self.events))

    def status_line(self) -> str:
        events = ", ".join(f"{k} {v}" for k, v in self.event_counts().items()) or "none"
        age = self.latency.p50_ms(CAPTURE_TO_COMMAND)
        return (f"{self.achieved_rate_hz:5.1f}/{self.rate_hz:g} Hz | infer p50 {self.inference_latency_ms_p50:6.1f} ms "
                f"| capture->command p50 {age:6.1f} ms | misses {self.deadline_misses} | holds {self.hold_ticks} "
                f"| safety events: {events}")

    def summary(self) -> str:
        lines = [
            f"control loop: {self.ticks} ticks in {self.duration_s:.2f} s = {self.achieved_rate_hz:.2f} Hz "
            f"(target {self.rate_hz:g} Hz), strategy {self.strategy}, stopped: {self.stop_reason}",
            f"  period error ms: p50 {self.period_error_ms_p50:.3f}  p99 {self.period_error_ms_p99:.3f}  "
            f"max {self.period_error_ms_max:.3f}; deadline misses {self.deadline_misses}, "
            f"skipped ticks {self.skipped_ticks}",
            f"  inference: {self.inferences} chunks, latency ms p50 {self.inference_latency_ms_p50:.1f} "
            f"p99 {self.inference_latency_ms_p99:.1f}; rejected {self.rejected_chunks}, "
            f"discarded {self.discarded_chunks}, actions skipped for delay {self.skipped_actions}",
            f"  ticks: executing {self.executed_ticks}, waiting {self.waiting_ticks}, held on fault {self.hold_ticks}; "
            f"position clipped {self.clipped_ticks}, velocity clamped {self.clamped_ticks}",
        ]
        lines += self.latency.summary_lines()
        counts = self.event_counts()
        lines.append("  safety events: " + (", ".join(f"{k} x{v}" for k, v in counts.items()) if counts else "none"))
        for event in self.events[:10]:
            lines.append(f"    tick {event.tick}: {event.kind}: {event.reason}")
        if len(self.events) > 10:
            lines.append(f"    ... {len(self.events) - 10} more")
        return "\n".join(lines)
