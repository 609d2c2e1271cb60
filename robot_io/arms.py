"""Arms behind one interface: `read_state()` (joint positions), `command(positions)`, `limits`, `close()`.

Positions are in the arm's own units (radians for revolute joints, whatever the driver uses for
grippers); the robot YAML maps them to the model's state/action dims. Kinds: `sim` (here), `aloha`
(MuJoCo ALOHA of gym-aloha, aloha.py) and `net` (a driver in another process, net_arm.py).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from pi0edge.errors import ConfigError

from .errors import ArmError
from .specs import checked_kind


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


class SimArm(Arm):
    """A position-controlled arm with first-order dynamics: dx/dt = (target - x) / time_constant_s.

    The state is integrated analytically on each read (no thread, so no scheduling noise of its own).
    A command takes effect `latency_s` after it is sent; readings carry Gaussian `noise_std`. The arm
    physically cannot pass its limits (position clipped, speed capped at max_velocity_per_s).
    """

    def __init__(self, dof: int = 6, time_constant_s: float = 0.05, latency_s: float = 0.0, noise_std: float = 0.0,
                 initial: np.ndarray | None = None, limits: ArmLimits | None = None, seed: int = 0):
        self.limits = limits or ArmLimits.uniform(dof)
        if self.limits.dof != dof:
            raise ConfigError(f"sim arm: limits have {self.limits.dof} joints, dof is {dof}")
        self.time_constant_s, self.latency_s = float(time_constant_s), float(latency_s)
        self.noise_std = float(noise_std)
        self._x = np.zeros(dof) if initial is None else np.asarray(initial, dtype=np.float64).reshape(dof).copy()
        self._target = self._x.copy()
        self._pending: deque[tuple[float, np.ndarray]] = deque()  # (effective time, target)
        self._t = time.monotonic()
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
            self._advance(time.monotonic())
            x = self._x.copy()
        if self.noise_std:
            x += self._rng.normal(0.0, self.noise_std, size=x.shape)
        return x

    def true_state(self) -> np.ndarray:
        """The noiseless position (tests)."""
        with self._lock:
            self._advance(time.monotonic())
            return self._x.copy()

    def command(self, positions) -> None:
        positions = self._check(positions)
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            self._pending.append((now + self.latency_s, positions.copy()))
            self.commands_received += 1
            self.last_command = positions.copy()


# --- specs (YAML `arm` block) ------------------------------------------------------------------------

_ARM_KEYS = {
    "sim": {"dof", "time_constant_s", "latency_s", "noise_std", "initial", "seed", "lower", "upper",
            "max_velocity_per_s"},
    "aloha": {"task", "cameras", "seed"},
    "net": {"address", "timeout_s", "retries"},
}


def _number(spec: Mapping, key: str, where: str, default: float, minimum: float = 0.0) -> float:
    value = spec.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{where}.{key}: must be a number >= {minimum}, got {value!r}")
    return float(value)


def validate_arm_spec(spec: Mapping, where: str = "arm") -> Mapping:
    """Check an arm spec; errors name `where.<field>` and the value. Returns a read-only copy."""
    kind = checked_kind(spec, where, _ARM_KEYS, {"kind"})
    if kind == "sim":
        dof = spec.get("dof", 6)
        if not isinstance(dof, int) or isinstance(dof, bool) or dof <= 0:
            raise ConfigError(f"{where}.dof: must be a positive integer, got {dof!r}")
        tau = _number(spec, "time_constant_s", where, 0.05)
        if tau <= 0:
            raise ConfigError(f"{where}.time_constant_s: must be > 0, got {tau!r}")
        _number(spec, "latency_s", where, 0.0)
        _number(spec, "noise_std", where, 0.0)
        for key in ("initial", "lower", "upper", "max_velocity_per_s"):
            value = spec.get(key)
            if value is None:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "initial":
                continue
            if not isinstance(value, list) or len(value) != dof or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{where}.{key}: must be a list of {dof} numbers, got {value!r}")
    elif kind == "aloha":
        cams = spec.get("cameras", ["top"])
        if not isinstance(cams, list) or not all(isinstance(c, str) for c in cams):
            raise ConfigError(f"{where}.cameras: must be a list of gym-aloha camera names, got {cams!r}")
    elif kind == "net":
        address = spec.get("address")
        if not isinstance(address, str) or "://" not in address:
            raise ConfigError(f"{where}.address: must be a ZeroMQ address like tcp://127.0.0.1:5555, got {address!r}")
        if _number(spec, "timeout_s", where, 0.1) <= 0:
            raise ConfigError(f"{where}.timeout_s: must be > 0, got {spec.get('timeout_s')!r}")
    return MappingProxyType(dict(spec))


def _vector(value, dof: int, default: float) -> np.ndarray:
    if value is None:
        return np.full(dof, default)
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (dof,)).copy()


def open_arm(spec: Mapping) -> Arm:
    """Make an arm from a spec (see validate_arm_spec)."""
    spec = validate_arm_spec(spec)
    kind = spec["kind"]
    if kind == "sim":
        dof = spec.get("dof", 6)
        limits = ArmLimits(_vector(spec.get("lower"), dof, -np.pi), _vector(spec.get("upper"), dof, np.pi),
                           _vector(spec.get("max_velocity_per_s"), dof, 2.0))
        return SimArm(dof=dof, time_constant_s=spec.get("time_constant_s", 0.05), latency_s=spec.get("latency_s", 0.0),
                      noise_std=spec.get("noise_std", 0.0), initial=spec.get("initial"), limits=limits,
                      seed=spec.get("seed", 0))
    if kind == "aloha":
        from .aloha import AlohaArm

        return AlohaArm(task=spec.get("task", "gym_aloha/AlohaTransferCube-v0"),
                        cameras=tuple(spec.get("cameras", ["top"])), seed=spec.get("seed", 0))
    from .net_arm import NetArm

    return NetArm(spec["address"], timeout_s=spec.get("timeout_s", 0.1), retries=spec.get("retries", 1))
