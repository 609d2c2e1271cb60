"""State/action normalization (docs/model.md, "Normalization"), numpy only, shared by export and runtime.

Two conventions exist in the wild and a bundle records which one its checkpoint used:
- openpi:  mean_std `(x - mean) / (std + 1e-6)`; quantile `(x - q01) / (q99 - q01 + 1e-6) * 2 - 1`.
- lerobot: mean_std `(x - mean) / (std + 1e-8)`, inverse `x * std + mean`; quantile
  `2 (x - q01) / d - 1` with d = q99 - q01 and a zero d replaced by 1e-8, inverse `(x + 1) d / 2 + q01`.
Statistics cover the robot's real dims; vectors are padded to the model width after normalizing and
cropped back before unnormalizing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("mean_std", "quantile")
CONVENTIONS = ("openpi", "lerobot")
STAT_KEYS = {"mean_std": ("mean", "std"), "quantile": ("q01", "q99")}
DEFAULT_EPS = {"openpi": 1e-6, "lerobot": 1e-8}


class NormStatsError(ValueError):
    """Statistics that cannot be used: missing keys, wrong lengths, non-finite values."""


@dataclass(frozen=True)
class VectorStats:
    """Statistics of one vector (state or action): the two arrays of its kind, float32 [dim]."""

    a: np.ndarray  # mean or q01
    b: np.ndarray  # std or q99

    @property
    def dim(self) -> int:
        return int(self.a.shape[0])


@dataclass(frozen=True)
class NormStats:
    kind: str
    convention: str
    state: VectorStats
    action: VectorStats
    eps: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise NormStatsError(f"normalization kind must be one of {KINDS}, got {self.kind!r}")
        if self.convention not in CONVENTIONS:
            raise NormStatsError(f"normalization convention must be one of {CONVENTIONS}, got {self.convention!r}")
        for name, vec in (("state", self.state), ("action", self.action)):
            if vec.a.shape != vec.b.shape or vec.a.ndim != 1:
                raise NormStatsError(f"{name} statistics have mismatched shapes {vec.a.shape} and {vec.b.shape}")
            if not (np.isfinite(vec.a).all() and np.isfinite(vec.b).all()):
                raise NormStatsError(f"{name} statistics contain NaN or Inf")

    @classmethod
    def from_arrays(cls, kind: str, convention: str, state: dict, action: dict, eps: float | None = None
                    ) -> NormStats:
        """state/action: {"mean": ..., "std": ...} or {"q01": ..., "q99": ...} (extra keys ignored)."""
        if kind not in KINDS:
            raise NormStatsError(f"normalization kind must be one of {KINDS}, got {kind!r}")
        first, second = STAT_KEYS[kind]

        def vec(name: str, d: dict) -> VectorStats:
            missing = [k for k in (first, second) if k not in d]
            if missing:
                raise NormStatsError(f"{name} statistics lack {missing} (have {sorted(d)}) for {kind} normalization")
            return VectorStats(np.asarray(d[first], np.float32).reshape(-1),
                               np.asarray(d[second], np.float32).reshape(-1))

        return cls(kind, convention, vec("state", state), vec("action", action),
                   DEFAULT_EPS.get(convention, 1e-6) if eps is None else float(eps))

    # ---- manifest form --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        first, second = STAT_KEYS[self.kind]
        return {"kind": self.kind, "convention": self.convention, "eps": self.eps,
                "state": {first: self.state.a.tolist(), second: self.state.b.tolist()},
                "action": {first: self.action.a.tolist(), second: self.action.b.tolist()}}

    @classmethod
    def from_dict(cls, d: dict) -> NormStats:
        try:
            return cls.from_arrays(d["kind"], d["convention"], d["state"], d["action"], d.get("eps"))
        except (KeyError, TypeError) as exc:
            raise NormStatsError(f"normalization entry is malformed: missing {exc}") from exc

    # ---- the math -------------------------------------------------------------------------------

    def _forward(self, x: np.ndarray, v: VectorStats) -> np.ndarray:
        a, b = v.a, v.b
        if self.kind == "mean_std":
            return (x - a) / (b + self.eps)
        if self.convention == "openpi":
            return (x - a) / (b - a + self.eps) * 2.0 - 1.0
        d = b - a
        return 2.0 * (x - a) / np.where(d == 0, self.eps, d) - 1.0

    def _inverse(self, y: np.ndarray, v: VectorStats) -> np.ndarray:
        a, b = v.a, v.b
        if self.kind == "mean_std":
            return y * (b + self.eps) + a if self.convention == "openpi" else y * b + a
        if self.convention == "openpi":
            return (y + 1.0) / 2.0 * (b - a + self.eps) + a
        return (y + 1.0) * (b - a) / 2.0 + a

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        """[..., robot_state_dim] robot units -> normalized, same shape, float32."""
        return self._forward(np.asarray(state, np.float32), self.state).astype(np.float32)

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """[..., robot_action_dim] robot units -> normalized, float32 (real-time chunking's leftover)."""
        return self._forward(np.asarray(actions, np.float32), self.action).astype(np.float32)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """[..., robot_action_dim] normalized -> robot units, float32."""
        return self._inverse(np.asarray(actions, np.float32), self.action).astype(np.float32)


def pad_to(x: np.ndarray, width: int) -> np.ndarray:
    """Zero-pad the last axis to the model width (openpi `pad_to_dim`)."""
    if x.shape[-1] > width:
        raise NormStatsError(f"vector of length {x.shape[-1]} is longer than the model width {width}")
    pad = [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])]
    return np.pad(x, pad)
