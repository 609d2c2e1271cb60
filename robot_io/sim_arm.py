"""SimArm: a simulated position-controlled arm (the `sim` kind of the robot YAML)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from pi0edge.errors import ConfigError

from .arm_base import Arm, ArmLimits


class SimArm(Arm):
    """A position-controlled arm with first-order dynamics: dx/dt = (target - x) / time_constant_s.

    The state is integrated analytically on each read (no thread, so no scheduling noise of its own).
    A command takes effect `latency_s` after it is sent; readings carry Gaussian `noise_std`. The arm
    physically cannot pass its limits (position clipped, speed capped at max_velocity_per_s).
    clock: seconds, monotonic; a stepped simulation passes its own (docs/control_loop.md, "Chunk joins").
    """

    def __init__(self, dof: int = 6, time_constant_s: float = 0.05, latency_s: float = 0.0, noise_std: float = 0.0,
                 initial: np.ndarray | None = None, limits: ArmLimits | None = None, seed: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.limits = limits or ArmLimits.uniform(dof)
        if self.limits.dof != dof:
            raise ConfigError(f"sim arm: limits have {self.limits.dof} joints, dof is {dof}")
        self.time_constant_s, self.latency_s = float(time_constant_s), float(latency_s)
        self.noise_std = float(noise_std)
        self._x = np.zeros(dof) if initial is None else np.asarray(initial, dtype=np.float64).reshape(dof).copy()
        self._target = self._x.copy()
        self._pending: deque[tuple[float, np.ndarray]] = deque()  # (effective time, target)
        self._clock = clock
        self._t = clock()
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        self.commands_received = 0
        self.last_command: np.ndarray | None = None

    def _advance(self, now: float) -> None:
        # Integrate piecewise between the moments pending commands take effect.
        while True:
            t_next = self._pending[0][0] if self._pending and self._pending[0][0] <= now else now
            dt = t_next - self._t
            if dt > 0:
                step = (self._target - self._x) * (1.0 - np.exp(-dt / self.time_constant_s))
                max_step = self.limits.max_velocity_per_s * dt
                self._x = np.clip(self._x + np.clip(step, -max_step, max_step), self.limits.lower, self.limits.upper)
                self._t = t_next
            if self._pending and self._pending[0][0] <= now:
                self._target = self._pending.popleft()[1]
                continue
            return

    def read_state(self) -> np.ndarray:
        with self._lock:
            self._advance(self._clock())
            x = self._x.copy()
        if self.noise_std:
            x += self._rng.normal(0.0, self.noise_std, size=x.shape)
        return x

    def true_state(self) -> np.ndarray:
        """The noiseless position (tests)."""
        with self._lock:
            self._advance(self._clock())
            return self._x.copy()

    def command(self, positions) -> None:
        positions = self._check(positions)
        with self._lock:
            now = self._clock()
            self._advance(now)
            self._pending.append((now + self.latency_s, positions.copy()))
            self.commands_received += 1
            self.last_command = positions.copy()
