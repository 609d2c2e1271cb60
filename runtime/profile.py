"""`pi0edge profile`: where every millisecond of a chunk goes.

Runs a policy on synthetic observations (camera-sized frames, a state inside the statistics, a prompt),
discards warm-up chunks, and reports per-stage latency (preprocess, prefix, each denoise step,
postprocess, total; Pi0-FAST: prefix, ms per token, the decode loop, and tokens per chunk) as p50/p95/p99,
peak host memory and, on a GPU, device memory. Writes JSON and a Chrome-trace file (chrome://tracing,
Perfetto: the "traceEvents" JSON format, complete events "X").
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pi0edge.manifest import write_text_atomic
from pi0edge.runtime.types import Observation

PERCENTILES = (50, 95, 99)
SYNTHETIC_FRAME_HW = (480, 640)  # a typical camera frame: exercises resize-with-pad


def synthetic_observation(policy, seed: int = 0, prompt: str = "pick up the red cube and place it in the bowl"
                          ) -> Observation:
    rng = np.random.default_rng(seed)
    images = {name: rng.integers(0, 256, (*SYNTHETIC_FRAME_HW, 3), dtype=np.uint8) for name in policy.camera_names}
    stats = policy.manifest.norm_stats.state
    if policy.manifest.norm_stats.kind == "mean_std":
        state = stats.a + stats.b * rng.standard_normal(stats.dim).astype(np.float32)
    else:
        state = stats.a + (stats.b - stats.a) * rng.uniform(0, 1, stats.dim).astype(np.float32)
    return Observation(images=images, state=state.astype(np.float32), prompt=prompt)


def peak_host_memory_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def device_memory_mb(device_id: int = 0) -> float | None:
    """Used device memory through cuda-python where there is a GPU, else None."""
    try:
        from cuda.bindings import runtime as cudart  # noqa: PLC0415
    except ImportError:
        return None
    try:
        err, free, total = cudart.cudaMemGetInfo()
    except Exception:  # no driver on this machine
        return None
    return (total - free) / (1 << 20) if int(err) == 0 else None


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, np.float64)
    return {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES} | {"mean": float(arr.mean())}


@dataclass(frozen=True)
class ProfileResult:
    bundle: str
    backend: str  # the backend that ran (auto resolved)
    providers: tuple[str, ...]  # where it ran, as ONNX Runtime reports it (requested provider first)
    iters: int
    warmup: int
    stages_ms: dict[str, dict[str, float]]
    peak_host_mb: float
    device_mb: float | None
    machine: dict
    chunks: list[dict]  # raw timings per measured chunk, with start offsets for the trace
    tokens_per_chunk: dict[str, float] | None = None  # Pi0-FAST: action tokens decoded per chunk

    def to_json(self) -> dict:
        return {"bundle": self.bundle, "backend": self.backend, "providers": list(self.providers),
                "iters": self.iters, "warmup": self.warmup,
                "stages_ms": self.stages_ms, "peak_host_memory_mb": self.peak_host_mb,
                "device_memory_mb": self.device_mb, "machine": self.machine,
                **({"tokens_per_chunk": self.tokens_per_chunk} if self.tokens_per_chunk else {})}

    def table(self) -> str:
        lines = [f"{'stage':<14}" + "".join(f"{k:>10}" for k in ("p50", "p95", "p99", "mean")) + "   (ms)"]
        for stage, stats in self.stages_ms.items():
            lines.append(f"{stage:<14}" + "".join(f"{stats[k]:>10.2f}" for k in ("p50", "p95", "p99", "mean")))
        if self.tokens_per_chunk:
            lines.append(f"{'tokens/chunk':<14}" + "".join(f"{self.tokens_per_chunk[k]:>10.1f}"
                                                           for k in ("p50", "p95", "p99", "mean")))
        mem = f"peak host memory {self.peak_host_mb:.0f} MB"
        if self.device_mb is not None:
            mem += f", device memory in use {self.device_mb:.0f} MB"
        return "\n".join(lines + [mem])

    def chrome_trace(self) -> dict:
        """Complete ("X") events in microseconds, one row per stage kind, chunks laid end to end."""
        events = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": f"pi0edge {self.backend}"}}]
        for i, chunk in enumerate(self.chunks):
            ts = chunk["start_us"]
            events.append({"name": f"chunk {i}", "ph": "X", "pid": 1, "tid": 0, "ts": ts,
                           "dur": chunk["total_ms"] * 1e3, "cat": "chunk"})
            cursor = ts
            stages = [("preprocess", chunk["preprocess_ms"]), ("prefix", chunk["prefix_ms"])]
            if "token_ms" in chunk:  # Pi0-FAST: one decode step per token
                stages += [(f"token {k + 1}", ms) for k, ms in enumerate(chunk["token_ms"])]
            else:
                stages += [(f"step {k}", ms) for k, ms in enumerate(chunk["step_ms"])] or [("denoise loop",
                                                                                          chunk["denoise_ms"])]
            stages += [("postprocess", chunk["postprocess_ms"])]
            for name, ms in stages:
                events.append({"name": name, "ph": "X", "pid": 1, "tid": 1, "ts": cursor, "dur": ms * 1e3,
                               "cat": "stage"})
                cursor += ms * 1e3
        return {"traceEvents": events, "displayTimeUnit": "ms"}


def profile_policy(policy, iters: int = 20, warmup: int = 3, seed: int = 0, num_steps: int | None = None
                   ) -> ProfileResult:
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    obs = synthetic_observation(policy, seed)
    for _ in range(warmup):
        policy.infer(obs, num_steps=num_steps)
    chunks = []
    origin = time.perf_counter()
    for _ in range(iters):
        start_us = (time.perf_counter() - origin) * 1e6
        timings = dict(policy.infer(obs, num_steps=num_steps).timings_ms)
        timings["start_us"] = start_us
        chunks.append(timings)
    stages = {"preprocess": [c["preprocess_ms"] for c in chunks], "prefix": [c["prefix_ms"] for c in chunks]}
    tokens = None
    if "token_ms" in chunks[0]:  # Pi0-FAST: the decode loop, per token and whole
        stages["ms per token"] = [c["decode_ms"] / max(len(c["token_ms"]), 1) for c in chunks]
        stages["decode (all)"] = [c["decode_ms"] for c in chunks]
        tokens = percentiles([c["tokens"] for c in chunks])
    else:
        for k in range(len(chunks[0]["step_ms"])):
            stages[f"step {k}"] = [c["step_ms"][k] for c in chunks]
        stages["denoise (all)"] = [c["denoise_ms"] for c in chunks]
    stages["postprocess"] = [c["postprocess_ms"] for c in chunks]
    stages["total"] = [c["total_ms"] for c in chunks]
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "python": platform.python_version()}
    return ProfileResult(bundle=str(policy.manifest.bundle_dir), backend=policy.backend_name,
                         providers=policy.providers, iters=iters,
                         warmup=warmup, stages_ms={k: percentiles(v) for k, v in stages.items()},
                         peak_host_mb=peak_host_memory_mb(), device_mb=device_memory_mb(), machine=machine,
                         chunks=chunks, tokens_per_chunk=tokens)


def write_json(path: str | Path, payload: dict) -> None:
    write_text_atomic(Path(path), json.dumps(payload, indent=2) + "\n")
