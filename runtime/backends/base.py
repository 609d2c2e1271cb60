"""The backend interface: every call and attribute `Policy` uses. No inheritance tree: a backend is any object
with these members; `Policy` wraps what is common (preprocessing, timing, validation).

Per chunk: `run_prefix` once (the KV cache stays in the backend's own buffers), `set_noise`, then either
`run_loop` (all Euler steps in one call, when `whole_loop` is true) or `run_step(k)` for each step k (x_t
ping-pongs between two buffers inside the backend), then `read_actions`. Buffers are allocated in
`prepare(batch)` and reused while the batch size is unchanged.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str  # "ort-cpu", "ort-cuda", "ort-trt", "tensorrt"
    device: str  # "cpu" or "cuda"
    whole_loop: bool  # True: Policy calls run_loop once per chunk, never run_step
    providers: tuple[str, ...]  # what really computes: ORT's providers as the sessions report them, or ("tensorrt",)

    def prepare(self, batch: int, times: np.ndarray, dt: float) -> None:
        """Allocate and bind every buffer for this batch size and step schedule (idempotent)."""

    def run_prefix(self, images: np.ndarray, image_masks: np.ndarray, tokens: np.ndarray,
                   token_masks: np.ndarray) -> None:
        """Fill the KV cache for the batch."""

    def set_noise(self, noise: np.ndarray, state: np.ndarray | None) -> None:
        """x_0 = noise [B, H, A] float32; state [B, S] for pi0 (None for pi0.5)."""

    def set_guidance(self, leftover: np.ndarray, prefix_weights: np.ndarray, max_guidance_weight: np.ndarray) -> None:
        """An `export --rtc` bundle's guidance inputs for this chunk: leftover [B, H, A], prefix weights [B, H],
        beta [B], float32 (docs/model.md, "Real-time chunking"). Called per chunk on RTC bundles only."""

    def run_step(self, step: int) -> None:
        """One Euler step at times[step]: x <- x + dt * v(x, t)."""

    def run_loop(self) -> None:
        """All Euler steps of the prepared schedule (whole_loop backends)."""

    def read_actions(self) -> np.ndarray:
        """The current x [B, H, A] as a host float32 array (one copy per chunk)."""

    def read_kv(self) -> tuple[np.ndarray, np.ndarray]:
        """The prefix's (past_keys, past_values) as host arrays: debugging only, a copy of the whole cache."""

    def read_prefix_mask(self) -> np.ndarray:
        """The prefix's mask [B, T] bool as a host array: debugging only."""

    def synchronize(self) -> None:
        """Wait for queued device work (for honest timings); a no-op on CPU."""

    def close(self) -> None: ...
