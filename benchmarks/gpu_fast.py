"""benchmarks/gpu_latency.py's Pi0-FAST row: eager torch (`Pi0FastModel.generate`, its own KV cache) against the
runtime's decode loop (prefix graph + one decode_step call per token, runtime/fast_decode.py), on the same
preprocessed arrays. Both decode the whole --fast-tokens budget (no end marker counts: random weights would
stop at different places), so a chunk is the prefix + a fixed number of tokens on every side. The table's
"denoise ms" column holds the decode loop; "max abs error" is left empty (the outputs are tokens): the record
has the share of tokens equal to eager float32's instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from gpu_variants import synchronize

from pi0edge import contract as c

# (variant name, backend, Policy options): the decode loop takes no loop-graph or CUDA-graph options
FAST_RUNTIME_VARIANTS = {"ort-cuda": [("ort-cuda fp16, decode loop", "ort-cuda", {})],
                         "ort-cpu": [("ort-cpu, decode loop", "ort-cpu", {})]}
NO_END: tuple[int, ...] = ()  # decode the whole budget
PREFIX_INPUTS = (c.IMAGES, c.IMAGE_MASKS, c.TOKENS, c.TOKEN_MASKS)


def fast_eager_runner(model, observation: dict, device: str) -> tuple[Callable, dict]:
    """-> (run: one chunk -> stage times, state: {"tokens": the last chunk's ids}). The prefix is timed by
    wrapping this instance's `prefix`, as gpu_variants.eager_runner does."""
    state: dict = {"tokens": None, "peak_gpu_mb": None}
    marks: dict[str, float] = {}
    prefix = type(model).prefix.__get__(model)

    def timed_prefix(*args, **kwargs):
        out = prefix(*args, **kwargs)
        synchronize(device)
        marks["prefix_end"] = time.perf_counter()
        return out

    model.prefix = timed_prefix
    feeds = {k: observation[k] for k in PREFIX_INPUTS}

    def run() -> dict:
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            state["tokens"] = model.generate(feeds, NO_END).cpu().numpy()
        synchronize(device)
        end = time.perf_counter()
        return {"chunk_ms": (end - start) * 1e3, "prefix_ms": (marks["prefix_end"] - start) * 1e3,
                "denoise_ms": (end - marks["prefix_end"]) * 1e3}

    return run, state


def fast_policy_runner(policy, feeds: dict, state: dict) -> Callable:
    """One chunk of the runtime's decode loop on the policy's own preprocessed arrays (tokens kept in state)."""
    arrays = {k: np.asarray(feeds[k]) for k in PREFIX_INPUTS}
    rng = np.random.default_rng(0)

    def run() -> dict:
        start = time.perf_counter()
        decoded = policy.fast.decoder.decode(arrays, np.array(NO_END, np.int64), 0.0, rng)
        state["tokens"] = decoded.token_ids
        return {"chunk_ms": (time.perf_counter() - start) * 1e3, "prefix_ms": decoded.prefix_ms,
                "denoise_ms": float(sum(decoded.token_ms)), "ms_per_token": float(np.mean(decoded.token_ms))}

    return run


def token_agreement(tokens: np.ndarray, reference: np.ndarray | None) -> float | None:
    """The share of positions where a variant chose eager float32's token (1.0: the same sequence)."""
    if reference is None or tokens is None or tokens.shape != reference.shape:
        return None
    return float((tokens == reference).mean())
