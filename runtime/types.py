"""What goes into and comes out of a policy: plain numpy, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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


@dataclass(frozen=True)
class ActionChunk:
    """actions: [H, robot_action_dim] float32 in robot units (batch 1), or [B, H, robot_action_dim].

    timings_ms: per-stage wall time of this call: preprocess_ms, prefix_ms, step_ms (list, one per
    denoise step), postprocess_ms, total_ms.
    """

    actions: np.ndarray
    timings_ms: dict = field(default_factory=dict)
