"""The arm interface: `read_state()` (joint positions), `command(positions)`, `limits`, `close()`.

Positions are in the arm's own units (radians for revolute joints, whatever the driver uses for
grippers); the robot YAML maps them to the model's state/action dims. Its own module so that every
arm kind (sim_arm.py, aloha.py, net_arm.py) and the server wrapping one (net_server.py) import it
without importing the factory in arms.py, which imports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pi0edge.errors import ConfigError

from .errors import ArmError


@dataclass(frozen=True)
class ArmLimits:
    """What the arm itself can do (the YAML's safety limits may only be tighter). Arrays of length dof."""

    lower: np.ndarray
    upper: np.ndarray
    max_velocity_per_s: np.ndarray

    def __post_init__(self):
        for name in ("lower", "upper", "max_velocity_per_s"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        if not (self.lower.shape == self.upper.shape == self.max_velocity_per_s.shape):
            raise ConfigError(f"arm limits: lower/upper/max_velocity_per_s lengths differ: "
                              f"{self.lower.size}/{self.upper.size}/{self.max_velocity_per_s.size}")
        if np.any(self.lower >= self.upper):
            raise ConfigError(f"arm limits: lower must be < upper, got lower={self.lower} upper={self.upper}")
        if np.any(self.max_velocity_per_s <= 0):
            raise ConfigError(f"arm limits: max_velocity_per_s must be > 0, got {self.max_velocity_per_s}")

    @property
    def dof(self) -> int:
        return int(self.lower.size)

    @classmethod
    def uniform(cls, dof: int, position: float = np.pi, velocity_per_s: float = 2.0) -> ArmLimits:
        return cls(np.full(dof, -position), np.full(dof, position), np.full(dof, velocity_per_s))


class Arm:
    """Interface. `command` sets a position target and returns at once; the arm moves toward it."""

    limits: ArmLimits

    @property
    def dof(self) -> int:
        return self.limits.dof

    def read_state(self) -> np.ndarray:
        raise NotImplementedError

    def command(self, positions: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Arm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, positions) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.float64).reshape(-1)
        if positions.size != self.dof:
            raise ArmError(f"{type(self).__name__}: command has {positions.size} positions, arm has {self.dof} joints")
        return positions
