"""Capture-to-command latency: how old the image behind each joint command is (docs/control_loop.md,
"Latency").

A chunk's path is a timeline of instants on the monotonic clock, each at or after the one before:

    capture      the oldest of the observation's camera frames was exposed (the camera's timestamp)
    received     the host got that frame (camera_base.Frame.received_s)
    observed     the tick handed the observation to inference
    start        the inference worker (thread or process) called policy.infer
    preprocess   \
    prefix        > start plus the policy's own stage timings (runtime ChunkTimings), where it reports them
    denoise      /
    end          policy.infer returned
    command      the first row of the chunk went to the arm

Between two marks is a span (named by the mark it ends at: `camera` for capture -> received, then
`to_tick`, `handoff`, `preprocess`, `prefix`, `denoise`, `postprocess`, `to_command`); the spans add up to
capture -> command. Per chunk the account also keeps the frame age at inference (start - capture); per
executed tick, the staleness of the row executed (command time - capture of the chunk it came from). All
in bounded memory: StreamQuantiles per figure, and the last few timelines for the Chrome trace.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from .quantiles import StreamQuantiles

RESOLUTION_MS, RANGE_MS = 1e-3, 1e6  # kept to 1% from 1 us to 1000 s
KEPT_TIMELINES = 256  # the Chrome trace shows the last this many chunks
# The policy's stage timings (ms) that split start -> end, in order; the last span (to end) is postprocess.
STAGES = (("preprocess", "preprocess_ms"), ("prefix", "prefix_ms"), ("denoise", "denoise_ms"))
FRAME_AGE, CAPTURE_TO_COMMAND, STALENESS = "frame_age_at_inference", "capture_to_command", "staleness_at_execution"


@dataclass
class ChunkTimeline:
    """One chunk from its frames' capture to its first command; instants in time.monotonic seconds (NaN: not yet)."""

    obs_tick: int
    capture_s: float
    received_s: float
    observed_s: float
    start_s: float = math.nan
    end_s: float = math.nan
    stages_ms: dict[str, float] = field(default_factory=dict)  # the policy's ChunkTimings (ms)
    command_s: float = math.nan

    @classmethod
    def of_frames(cls, obs_tick: int, frames, observed_s: float) -> ChunkTimeline:
        """From the frames an observation was made of (camera_base.Frame): the oldest one sets the age."""
        oldest = min(frames, key=lambda f: f.timestamp_s)
        return cls(obs_tick, oldest.timestamp_s, oldest.arrival_s, observed_s)

    def marks(self) -> list[tuple[str, float]]:
        """(span name, the instant it ends at) from capture on, each at or after the one before.

        Stage ends are the start plus the policy's own stage timings, capped at `end` (the stages are
        timed inside infer, on another clock call than the worker's)."""
        marks = [("capture", self.capture_s), ("camera", self.received_s), ("to_tick", self.observed_s),
                 ("handoff", self.start_s)]
        stage_end = self.start_s
        if all(key in self.stages_ms for _, key in STAGES):
            for name, key in STAGES:
                stage_end = min(stage_end + float(self.stages_ms[key]) / 1e3, self.end_s)
                marks.append((name, stage_end))
            marks.append(("postprocess", self.end_s))
        else:  # a policy that reports its total only (a remote server, a test double)
            marks.append(("inference", self.end_s))
        marks.append(("to_command", self.command_s))
        out, last = [], -math.inf
        for name, instant in marks:
            last = max(last, instant)
            out.append((name, last))
        return out

    def spans_ms(self) -> dict[str, float]:
        marks = self.marks()
        return {name: (t - prev) * 1e3 for (_, prev), (name, t) in zip(marks, marks[1:], strict=False)}

    @property
    def frame_age_at_inference_ms(self) -> float:
        return (self.start_s - self.capture_s) * 1e3

    @property
    def capture_to_command_ms(self) -> float:
        return (self.command_s - self.capture_s) * 1e3


class LatencyAccount:
    """p50/p99 of each span and figure over a run, in fixed memory."""

    def __init__(self, kept_timelines: int = KEPT_TIMELINES):
        self._figures: dict[str, StreamQuantiles] = {}  # a dozen names at most: bounded
        self.recent: deque[ChunkTimeline] = deque(maxlen=kept_timelines)

    def _add(self, name: str, value_ms: float) -> None:
        if name not in self._figures:
            self._figures[name] = StreamQuantiles(RESOLUTION_MS, RANGE_MS)
        self._figures[name].add(max(0.0, value_ms))  # a clock step backwards reads as 0, never a crash

    def add_chunk(self, timeline: ChunkTimeline) -> None:
        """A chunk whose first row was just commanded (timeline complete)."""
        for name, ms in timeline.spans_ms().items():
            self._add(name, ms)
        self._add(FRAME_AGE, timeline.frame_age_at_inference_ms)
        self._add(CAPTURE_TO_COMMAND, timeline.capture_to_command_ms)
        self.recent.append(timeline)

    def add_row(self, staleness_ms: float) -> None:
        """One executed tick: how old the frame behind the executed row is."""
        self._add(STALENESS, staleness_ms)

    def p50_ms(self, name: str) -> float:
        """One figure's median (NaN before any value): the live status line reads this, not every figure."""
        figure = self._figures.get(name)
        return math.nan if figure is None else figure.quantile(50)

    @property
    def chunks(self) -> int:
        figure = self._figures.get(CAPTURE_TO_COMMAND)
        return 0 if figure is None else figure.count

    def figures(self) -> dict[str, dict[str, float]]:
        """name -> {p50, p99, max, count} in ms: the headline figures first, then the spans in timeline order."""
        heads = [n for n in (CAPTURE_TO_COMMAND, FRAME_AGE, STALENESS) if n in self._figures]
        names = heads + [n for n in self._figures if n not in heads]
        return {n: {"p50": self._figures[n].quantile(50), "p99": self._figures[n].quantile(99),
                    "max": self._figures[n].max, "count": self._figures[n].count} for n in names}

    def summary_lines(self) -> list[str]:
        figures = self.figures()
        if not figures:
            return ["  latency: no chunk executed"]
        heads = (CAPTURE_TO_COMMAND, FRAME_AGE, STALENESS)

        def line(names) -> str:
            return ", ".join(f"{n} {figures[n]['p50']:.1f}/{figures[n]['p99']:.1f}" for n in names if n in figures)

        return [f"  latency ms p50/p99 ({self.chunks} chunks): " + line(heads),
                "    spans: " + line(n for n in figures if n not in heads)]

    def chrome_trace(self) -> dict:
        """The kept chunks as Chrome-trace complete events (us from the first capture): one row per chunk
        (capture -> command) and a row of its spans, so successive chunks overlap as they did."""
        if not self.recent:
            return {"traceEvents": [], "displayTimeUnit": "ms"}
        origin = self.recent[0].capture_s
        events = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "pi0edge loop latency"}}]
        for i, timeline in enumerate(self.recent):
            marks = timeline.marks()
            tid = 2 * (i % 2)  # alternate rows: a chunk computed while the last one executes does not hide it
            events.append({"name": f"chunk from tick {timeline.obs_tick}", "ph": "X", "pid": 1, "tid": tid,
                           "cat": "chunk", "ts": (marks[0][1] - origin) * 1e6,
                           "dur": timeline.capture_to_command_ms * 1e3})
            for (_, prev), (name, instant) in zip(marks, marks[1:], strict=False):
                events.append({"name": name, "ph": "X", "pid": 1, "tid": tid + 1, "cat": "span",
                               "ts": (prev - origin) * 1e6, "dur": (instant - prev) * 1e6})
        return {"traceEvents": events, "displayTimeUnit": "ms"}
