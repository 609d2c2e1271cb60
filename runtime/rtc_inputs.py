"""`RtcGuidance` -> the RTC variant's graph inputs (docs/model.md, "Real-time chunking"): the leftover
normalized and zero-padded into model space, the prefix weights, beta. No guidance (the first chunk) is W = 0,
which makes the guided step compute exactly the plain one."""

from __future__ import annotations

import math

import numpy as np

from pi0edge.errors import ConfigError, ObservationError
from pi0edge.normalization import NormStats, pad_to
from pi0edge.rtc import DEFAULT_MAX_GUIDANCE_WEIGHT, prefix_weights
from pi0edge.runtime.types import RtcGuidance


def rtc_feeds(guidance: RtcGuidance | None, batch: int, horizon: int, action_dim: int, norm_stats: NormStats
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (leftover Y [B, H, A], prefix weights W [B, H], beta [B]), float32."""
    leftover = np.zeros((batch, horizon, action_dim), np.float32)
    weights = np.zeros((batch, horizon), np.float32)
    beta = np.full(batch, DEFAULT_MAX_GUIDANCE_WEIGHT, np.float32)
    if guidance is None:
        return leftover, weights, beta
    if not isinstance(guidance, RtcGuidance):
        raise ObservationError(f"guidance must be a pi0edge.runtime.RtcGuidance, got {type(guidance).__name__}")
    rows = _checked_leftover(guidance.leftover, batch, norm_stats.action.dim)
    n = min(rows.shape[1], horizon)  # a longer leftover has nothing to pull beyond the horizon
    leftover[:, :n] = pad_to(norm_stats.normalize_actions(rows[:, :n]), action_dim)
    beta_value = guidance.max_guidance_weight
    if not isinstance(beta_value, (int, float)) or not math.isfinite(beta_value) or beta_value <= 0:
        raise ConfigError(f"rtc max_guidance_weight must be a finite number > 0, got {beta_value!r}")
    beta[:] = beta_value
    # LeRobot clamps the execution horizon to the leftover's length: past it there is nothing to pull towards
    execution_horizon = min(guidance.execution_horizon, rows.shape[1]) if isinstance(
        guidance.execution_horizon, (int, np.integer)) else guidance.execution_horizon
    weights[:] = prefix_weights(guidance.schedule, guidance.inference_delay, execution_horizon, horizon)
    return leftover, weights, beta


def _checked_leftover(leftover, batch: int, robot_action_dim: int) -> np.ndarray:
    rows = np.asarray(leftover, np.float32)
    if rows.ndim == 2:
        rows = rows[None]  # one observation
    if rows.ndim != 3 or rows.shape[0] != batch or rows.shape[2] != robot_action_dim:
        raise ObservationError(f"rtc leftover has shape {np.shape(leftover)}, expected [n, {robot_action_dim}] for one "
                               f"observation, [{batch}, n, {robot_action_dim}] for {batch}, in robot units")
    if not np.isfinite(rows).all():
        raise ObservationError("rtc leftover holds NaN or infinite values")
    return rows
