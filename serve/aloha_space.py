"""openpi's ALOHA `adapt_to_pi` conversion (docs/model.md, "ALOHA joint space"): the pi base models were
trained on joint signs and a gripper representation other than the ALOHA runtime's, so openpi's
AlohaInputs / AlohaOutputs (src/openpi/policies/aloha_policy.py) convert the state in and the actions out.
The state is [left arm 6 joints, left gripper, right arm 6 joints, right gripper]; the grippers are 6 and 13.
"""

from __future__ import annotations

import numpy as np

ALOHA_DIM = 14
GRIPPERS = [6, 13]
JOINT_FLIP = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1], dtype=np.float64)

# The ALOHA runtime's puppet gripper: linear position (m) open / closed, and joint angle (rad) open / closed.
GRIPPER_LINEAR_M = (0.01844, 0.05800)
GRIPPER_JOINT_RAD = (-0.6213, 1.4910)
# Interbotix's gripper linkage (m), which turns the servo angle into the fingers' linear position.
GRIPPER_ARM_LENGTH_M, GRIPPER_HORN_RADIUS_M = 0.036, 0.022
# pi's gripper: encoder counts 2405..3110 of 4096 with 2048 as zero, in radians.
PI_GRIPPER_RAD = (0.5476, 1.6296)


def _normalize(x, bounds):
    low, high = bounds
    return (x - low) / (high - low)


def _unnormalize(x, bounds):
    low, high = bounds
    return x * (high - low) + low


def gripper_to_pi(value: np.ndarray) -> np.ndarray:
    """ALOHA's normalized linear gripper position -> pi's normalized gripper angle."""
    linear_m = _unnormalize(value, GRIPPER_LINEAR_M)
    # The inverse of the linkage's angle -> linear position (law of cosines), clipped into arcsin's domain.
    arm, horn = GRIPPER_ARM_LENGTH_M, GRIPPER_HORN_RADIUS_M
    angle_rad = np.arcsin(np.clip((horn**2 + linear_m**2 - arm**2) / (2 * horn * linear_m), -1.0, 1.0))
    return _normalize(angle_rad, PI_GRIPPER_RAD)


def gripper_from_pi(value: np.ndarray) -> np.ndarray:
    """pi's gripper action (radians from pi's zero) -> ALOHA's normalized gripper joint command. Not the
    inverse of gripper_to_pi: the model's gripper actions are angles, not normalized positions."""
    return _normalize(value + PI_GRIPPER_RAD[0], GRIPPER_JOINT_RAD)


def state_to_pi(state: np.ndarray) -> np.ndarray:
    """[14] ALOHA state -> the state the pi model was trained on (AlohaInputs, adapt_to_pi)."""
    out = JOINT_FLIP * np.asarray(state, dtype=np.float64)
    out[GRIPPERS] = gripper_to_pi(out[GRIPPERS])
    return out


def actions_from_pi(actions: np.ndarray) -> np.ndarray:
    """[H, 14] model actions -> ALOHA commands (AlohaOutputs, adapt_to_pi); the dtype is kept."""
    out = JOINT_FLIP.astype(actions.dtype) * actions
    out[:, GRIPPERS] = gripper_from_pi(out[:, GRIPPERS])
    return out
