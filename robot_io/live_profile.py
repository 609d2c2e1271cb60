"""`pi0edge profile --live`: the control loop on a robot YAML (the simulated arm for the demo robot), reporting
the capture-to-command latency (latency.py) rather than the model's time alone.

Lives in robot_io because it runs the loop; `pi0edge profile` (runtime/cli.py, the application layer)
calls it, so the runtime library never imports robot_io.
"""

from __future__ import annotations

import math
from pathlib import Path

from .loop import run_loop
from .stats import LoopStats

DEFAULT_LIVE_PROMPT = "pick up the cube"


def profile_live(config_path: str | Path, bundle: str, backend: str = "ort-cpu", duration_s: float = 10.0,
                 prompt: str = DEFAULT_LIVE_PROMPT, threads: int | None = None) -> LoopStats:
    """Run the loop of `config_path` with `bundle` for duration_s (as `pi0edge run` does) and return its stats."""
    from .config import load_robot_config
    from .policy_spec import PolicyHandle, PolicySpec

    config = load_robot_config(config_path)
    return run_loop(config, PolicyHandle(PolicySpec(bundle, backend, threads=threads)), prompt, duration_s)


def latency_table(stats: LoopStats) -> str:
    """One row per figure: the headline figures, then the spans from capture to command in order."""
    figures = stats.latency.figures()
    lines = [f"{'capture -> command (ms)':<26}{'p50':>10}{'p99':>10}{'max':>10}{'count':>8}"]
    for name, f in figures.items():
        lines.append(f"{name:<26}{f['p50']:>10.2f}{f['p99']:>10.2f}{f['max']:>10.2f}{f['count']:>8d}")
    if not figures:
        lines.append("(no chunk executed: see the loop summary above for why)")
    return "\n".join(lines)


def live_json(stats: LoopStats) -> dict:
    def finite(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return {"ticks": stats.ticks, "duration_s": stats.duration_s, "rate_hz": stats.rate_hz,
            "achieved_rate_hz": stats.achieved_rate_hz, "strategy": stats.strategy, "stop_reason": stats.stop_reason,
            "deadline_misses": stats.deadline_misses, "inferences": stats.inferences,
            "latency_ms": {name: {k: finite(float(v)) for k, v in f.items()}
                           for name, f in stats.latency.figures().items()}}
