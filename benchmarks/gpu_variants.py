"""The variants benchmarks/gpu_latency.py times: eager torch per dtype and the runtime per backend option set.

Each variant is a callable -> {stage: ms}; they run round-robin (`measure`) so that load falls on all alike.
Peak GPU memory: for eager torch, the weights plus torch.cuda.max_memory_allocated's rise during its calls;
for ONNX Runtime (whose allocations torch does not see), the device's used memory that torch has not reserved
(cuda mem info), before loading the variant and after its first chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

# (variant name, backend, Policy options); IO binding is always on (runtime/backends/ort.py binds every input
# and output to device buffers); "CUDA graph on" captures the prefix and the whole Euler loop, "off" runs the
# same loop graph without capture
RUNTIME_VARIANTS = {
    "ort-cuda": [("ort-cuda fp16, IO binding, CUDA graph on", "ort-cuda", {"enable_cuda_graph": True}),
                 ("ort-cuda fp16, IO binding, CUDA graph off", "ort-cuda", {})],
    "ort-cpu": [("ort-cpu, loop graph", "ort-cpu", {})],
}
EAGER_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
STAGES = ("chunk_ms", "prefix_ms", "denoise_ms", "infer_ms", "preprocess_ms")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def nontorch_gpu_mb(device: str) -> float | None:
    """Device memory in use that torch's allocator does not hold (ONNX Runtime's arenas, CUDA graphs)."""
    if not device.startswith("cuda"):
        return None
    free, total = torch.cuda.mem_get_info()
    return (total - free - torch.cuda.memory_reserved()) / 2**20


def eager_runner(model, observation: dict, noise: torch.Tensor, device: str) -> tuple[Callable, dict]:
    """-> (run: one chunk -> stage times, state: {"actions": last output, "peak_gpu_mb": ...}).

    The prefix is timed by wrapping this instance's `prefix` (sample_actions, the reference code path, is
    unchanged; one synchronize is added between the prefix and the loop)."""
    state: dict = {"actions": None, "peak_gpu_mb": None}
    marks: dict[str, float] = {}
    prefix = type(model).prefix.__get__(model)  # the method itself, also when a runner wrapped it before

    def timed_prefix(*args, **kwargs):
        out = prefix(*args, **kwargs)
        synchronize(device)
        marks["prefix_end"] = time.perf_counter()
        return out

    model.prefix = timed_prefix  # an instance attribute: shadows the method for this copy only
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20

    def run() -> dict:
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            actions = model.sample_actions(observation, noise)
        synchronize(device)
        end = time.perf_counter()
        if cuda:
            rise_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
            state["peak_gpu_mb"] = round(max(state["peak_gpu_mb"] or 0.0, weights_mb + rise_mb), 1)
        state["actions"] = actions
        return {"chunk_ms": (end - start) * 1e3, "prefix_ms": (marks["prefix_end"] - start) * 1e3,
                "denoise_ms": (end - marks["prefix_end"]) * 1e3}

    return run, state


def policy_runner(policy, observation, noise: np.ndarray) -> Callable:
    def run() -> dict:
        t = policy.infer(observation, noise=noise).timings_ms
        return {"chunk_ms": t["prefix_ms"] + t["denoise_ms"] + t["postprocess_ms"], "infer_ms": t["total_ms"],
                "prefix_ms": t["prefix_ms"], "denoise_ms": t["denoise_ms"], "preprocess_ms": t["preprocess_ms"]}
    return run


def measure(variants: dict, warmup: int, iters: int, errors: dict[str, str],
            deadline_s: float | None = None) -> dict[str, list[dict]]:
    """Round-robin: warm-up rounds, then up to `iters` timed rounds of every variant, stopping early when
    another round would pass `deadline_s` (time.perf_counter()). A variant that fails (a CUDA graph that cannot
    be captured, say) is dropped with its error recorded: one device call is precious."""
    samples = {name: [] for name in variants}
    for i in range(warmup + iters):
        round_start = time.perf_counter()
        for name, run in list(variants.items()):
            try:
                result = run()
            except Exception as exc:  # noqa: BLE001
                errors[name] = f"{type(exc).__name__}: {exc}"
                print(f"{name} failed: {errors[name]}", flush=True)
                del variants[name], samples[name]
                continue
            if i >= warmup:
                samples[name].append(result)
        round_s = time.perf_counter() - round_start
        if deadline_s is not None and i >= warmup and time.perf_counter() + round_s > deadline_s:
            break
    return samples


def summarize(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {"p50": round(float(np.median(arr)), 3), "p99": round(float(np.percentile(arr, 99)), 3),
            "min": round(float(arr.min()), 3), "n": int(arr.size)}
