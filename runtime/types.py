"""What goes into and comes out of a policy: plain numpy, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from pi0edge.rtc import DEFAULT_MAX_GUIDANCE_WEIGHT, DEFAULT_SCHEDULE


@dataclass(frozen=True)
class Observation:
    """One robot's observation.

    images: robot-agnostic camera name (the bundle's, e.g. "base_0_rgb") -> uint8 HxWx3 RGB frame of
    any size; a camera the bundle knows but the dict lacks is fed masked. state: the robot's state
    vector in robot units (length = the bundle's robot state dim). prompt: the task in plain text.
    """

    images: dict[str, np.ndarray]
    state: np.ndarray
    prompt: str


class ChunkTimings(TypedDict, total=False):
    """Per-stage wall time of one `Policy.infer` call, in milliseconds (a plain dict at run time, so the
    control loop and the benchmarks read it as before). A test double may fill only `total_ms`."""

    preprocess_ms: float
    prefix_ms: float  # the prefix graph, KV cache written
    step_ms: list[float]  # one per Euler step; empty when the whole loop runs as one call
    denoise_ms: float  # all steps
    postprocess_ms: float  # crop and unnormalize (Pi0-FAST: and the tokens read back into actions)
    total_ms: float
    # Pi0-FAST (its prefix_ms includes filling the decode cache; step_ms is empty, denoise_ms 0)
    token_ms: list[float]  # one decode_step call per action token after the first
    decode_ms: float  # all decode steps
    tokens: int  # tokens decoded for this chunk


class PolicyInputs(TypedDict):
    """`Policy.preprocess`: the prefix graph's four inputs (core/contract.py names) and the step graph's
    state, batched. state is None for pi0.5 (its state is written into the prompt tokens)."""

    images: np.ndarray  # [B, N_cam, S, S, 3] uint8
    image_masks: np.ndarray  # [B, N_cam] bool
    tokens: np.ndarray  # [B, L] int64
    token_masks: np.ndarray  # [B, L] bool
    state: np.ndarray | None  # [B, state_dim] float32, normalized and zero-padded (pi0)


@dataclass(frozen=True)
class RtcGuidance:
    """Real-time chunking's inputs to one `Policy.infer` (docs/model.md, "Real-time chunking"; an `export --rtc`
    bundle only).

    leftover: the executing chunk's rows from the one that executes at this observation's tick on, [n, robot
    action dim] in robot units (or [B, n, robot action dim]); the runtime normalizes it and zero-pads it to
    [H, model action dim]. Row i of the new chunk is pulled towards leftover row i with the prefix weight W_i:
    1 for i < inference_delay (rows that execute while the chunk is computed), 0 from execution_horizon on
    (clamped to n), and between them by `schedule` (zeros, ones, linear, exp). max_guidance_weight: beta, the
    clip of the guidance weight."""

    leftover: np.ndarray
    inference_delay: int  # d, in control ticks
    execution_horizon: int  # s, in control ticks
    schedule: str = DEFAULT_SCHEDULE
    max_guidance_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT


@dataclass(frozen=True)
class ActionChunk:
    """actions: [H, robot_action_dim] float32 in robot units (batch 1), or [B, H, robot_action_dim].

    timings_ms: per-stage wall time of this call (ChunkTimings). malformed: Pi0-FAST only, None when every row's
    tokens read back into a chunk; else why not (per row for a batch), and those rows are NaN."""

    actions: np.ndarray
    timings_ms: ChunkTimings = field(default_factory=dict)
    malformed: str | None = None


@dataclass(frozen=True)
class ChunkInternals:
    """What a chunk computed on the way to its actions (`Policy.infer_internals`), for debugging and parity
    checks against another implementation: host copies, batch axis always present.

    normalized_actions: [B, H, action_dim] float32, the Euler loop's result in the model's normalized space,
    before the crop to the robot's dims and the unnormalization. past_keys / past_values: the prefix's KV
    cache, [layers, B, T, kv_heads, head_dim] in the bundle's precision. prefix_mask: [B, T] bool. Pi0-FAST: the
    whole decode cache after the chunk, [layers, B, slots, kv_heads, head_dim], and its valid slots [B, slots];
    normalized_actions: the read-back chunk in the FAST tokenizer's width."""

    normalized_actions: np.ndarray
    past_keys: np.ndarray
    past_values: np.ndarray
    prefix_mask: np.ndarray
