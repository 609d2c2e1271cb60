"""The robot YAML's `arm` block: `validate_arm_spec` and the factory `open_arm`.

Kinds: `sim` (sim_arm.py), `aloha` (MuJoCo ALOHA of gym-aloha, aloha.py) and `net` (a driver in
another process, net_arm.py). The interface they share is in arm_base.py; `Arm`, `ArmLimits` and
`SimArm` are re-exported here for callers of `pi0edge.robot_io.arms`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from pi0edge.errors import ConfigError

from .arm_base import Arm, ArmLimits
from .net_keys import read_key
from .sim_arm import SimArm
from .specs import checked_kind

__all__ = ["Arm", "ArmLimits", "SimArm", "open_arm", "validate_arm_spec"]


# --- specs (YAML `arm` block) ------------------------------------------------------------------------

NET_KEY_FIELDS = ("server_public_key", "client_secret_key")  # key file paths; CURVE when given
_ARM_KEYS = {
    "sim": {"dof", "time_constant_s", "latency_s", "noise_std", "initial", "seed", "lower", "upper",
            "max_velocity_per_s"},
    "aloha": {"task", "cameras", "seed"},
    "net": {"address", "timeout_s", "retries", "server_public_key", "client_secret_key"},
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
        retries = spec.get("retries", 1)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ConfigError(f"{where}.retries: must be an integer >= 0, got {retries!r}")
        _net_keys(spec, where)
    return MappingProxyType(dict(spec))


def _net_keys(spec: Mapping, where: str) -> tuple[bytes, bytes] | None:
    """The net arm's CURVE keys (server public, client secret) from their files, or None for no CURVE."""
    paths = {key: spec.get(key) for key in NET_KEY_FIELDS}
    for key, path in paths.items():
        if path is not None and not isinstance(path, str):
            raise ConfigError(f"{where}.{key}: must be the path of a key file, got {path!r}")
    given = [key for key, path in paths.items() if path is not None]
    if not given:
        return None
    if len(given) == 1:
        missing = next(key for key in NET_KEY_FIELDS if key not in given)
        raise ConfigError(f"{where}.{missing}: needed with {where}.{given[0]} (CURVE uses both)")
    return tuple(read_key(paths[key], f"{where}.{key}") for key in NET_KEY_FIELDS)


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

    keys = _net_keys(spec, "arm") or (None, None)
    return NetArm(spec["address"], timeout_s=spec.get("timeout_s", 0.1), retries=spec.get("retries", 1),
                  server_public_key=keys[0], client_secret_key=keys[1])
