"""Shared helpers: a small robot YAML (3-joint sim arm, one synthetic camera) and quick loop runs."""

from __future__ import annotations

import copy

import pytest

from pi0edge.robot_io.config import RobotConfig, robot_config_from_dict
from pi0edge.robot_io.fake_policy import FakePolicy

# Generous timing bounds: the machines are shared (other test suites run beside these).
RATE_TOLERANCE = 0.8  # achieved rate must be at least this fraction of the target


def base_config_dict() -> dict:
    return {
        "rate_hz": 50,
        "cameras": {"front": {"model_camera": "base_0_rgb", "kind": "synthetic", "width": 32, "height": 32,
                              "fps": 60}},
        "arm": {"kind": "sim", "dof": 3, "time_constant_s": 0.02, "max_velocity_per_s": 5.0},
        "joints": {"names": ["a", "b", "c"], "action_index": [0, 1, 2], "state_index": [0, 1, 2]},
        "chunking": {"strategy": "async", "n_execute": 5},
        "safety": {"lower": [-1.0, -1.0, -1.0], "upper": [1.0, 1.0, 1.0], "max_velocity_per_s": 2.0,
                   "stale_frame_s": 0.2, "inference_timeout_s": 0.5},
        "estop": {"signal": False},
    }


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def make_config(**override) -> RobotConfig:
    return robot_config_from_dict(merge(base_config_dict(), override))


def make_policy(**kwargs) -> FakePolicy:
    kwargs.setdefault("robot_state_dim", 3)
    kwargs.setdefault("robot_action_dim", 3)
    kwargs.setdefault("action_horizon", 10)
    return FakePolicy(**kwargs)


@pytest.fixture
def config() -> RobotConfig:
    return make_config()
