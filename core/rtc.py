"""Real-time chunking (docs/model.md, "Real-time chunking"): the prefix weights over the horizon and the
guidance weight's schedule over the Euler time. Numpy only; the guidance weight is plain arithmetic, so the
export applies the same function to torch tensors inside the graphs.
"""

from __future__ import annotations

import math

import numpy as np

from pi0edge.errors import ConfigError

SCHEDULES = ("zeros", "ones", "linear", "exp")
DEFAULT_SCHEDULE = "linear"  # LeRobot's RTCConfig default
DEFAULT_MAX_GUIDANCE_WEIGHT = 10.0  # beta; LeRobot's RTCConfig default
DEFAULT_EXECUTION_HORIZON = 10  # s, rows of the leftover to blend with; LeRobot's RTCConfig default


def unclipped_guidance_weight(t):
    """g(t) before the clip at beta: (t^2 + (1 - t)^2) / (t (1 - t)), with t the model's time (1 = noise).
    Infinite at t = 1 (the first step), where min(beta, g) gives beta. Works on numpy arrays and torch tensors."""
    one_minus_t = 1 - t
    return (t * t + one_minus_t * one_minus_t) / (t * one_minus_t)


def guidance_weights(times: np.ndarray, max_guidance_weight: float) -> np.ndarray:
    """min(beta, g(t)) for each Euler step's t, float32 (the graphs compute the same from their own t)."""
    with np.errstate(divide="ignore"):
        raw = unclipped_guidance_weight(np.asarray(times, np.float32))
    return np.minimum(np.float32(max_guidance_weight), raw).astype(np.float32)


def prefix_weights(schedule: str, inference_delay: int, execution_horizon: int, horizon: int) -> np.ndarray:
    """W [horizon] float32: how strongly row i of the new chunk is pulled to the previous chunk's leftover.
    Rows before d = min(inference_delay, execution_horizon) (executing while the chunk is computed) get 1,
    rows from execution_horizon on get 0, and in between: zeros 0, ones 1, linear a ramp 1 -> 0 (ends
    excluded), exp the ramp r times (e^r - 1) / (e - 1)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"rtc schedule {schedule!r}: choose one of {list(SCHEDULES)}")
    for name, value in (("inference_delay", inference_delay), ("execution_horizon", execution_horizon)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"rtc {name} must be an integer >= 0 (control ticks), got {value!r}")
    end = min(int(execution_horizon), horizon)
    start = min(int(inference_delay), end)
    weights = np.zeros(horizon, np.float64)
    weights[:start] = 1.0
    if schedule == "ones":
        weights[start:end] = 1.0
    elif schedule in ("linear", "exp") and end > start:
        ramp = np.linspace(1.0, 0.0, end - start + 2)[1:-1]
        weights[start:end] = ramp if schedule == "linear" else ramp * np.expm1(ramp) / (math.e - 1)
    return weights.astype(np.float32)
