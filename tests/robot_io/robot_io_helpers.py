"""Shared helpers: a small robot YAML (3-joint sim arm, one synthetic camera) and quick loop runs."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from pi0edge.robot_io.arms import Arm, SimArm
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


class DriverArm(Arm):
    """A sim arm behind a driver the test can break while the loop runs.

    read_hook() / command_hook() run before each call: they may raise (a driver fault), and read_hook
    may return a value the driver reports instead of the state. `restart(initial)` replaces the arm by
    a fresh one at `initial` (a driver restarted after the arm moved). `commands` holds, per command
    the arm received, (positions, the arm's measured state then)."""

    def __init__(self, inner: SimArm):
        self.inner, self.limits = inner, inner.limits
        self.read_hook: Callable[[], object] | None = None
        self.command_hook: Callable[[], None] | None = None
        self.commands: list[tuple[np.ndarray, np.ndarray]] = []
        self.restarted_at_command: int | None = None

    def read_state(self):
        if self.read_hook is not None:
            reported = self.read_hook()
            if reported is not None:
                return reported
        return self.inner.read_state()

    def command(self, positions) -> None:
        if self.command_hook is not None:
            self.command_hook()
        self.commands.append((np.array(positions, dtype=np.float64), self.inner.true_state()))
        self.inner.command(positions)

    def restart(self, initial) -> None:
        self.inner = SimArm(dof=self.inner.dof, time_constant_s=self.inner.time_constant_s, initial=initial,
                            limits=self.limits)
        self.restarted_at_command = len(self.commands)
        self.read_hook = self.command_hook = None


def raising(exc: BaseException) -> Callable[[], None]:
    def hook():
        raise exc

    return hook


def after(seconds: float, fn: Callable[[], None]) -> threading.Thread:
    """Run fn() on a daemon thread after `seconds` (a fault injected while the loop runs)."""

    def run():
        time.sleep(seconds)
        fn()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread

