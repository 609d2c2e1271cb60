"""The export-time optimizations as switches of the one model (export/model/pi0.py).

Each switch either changes how a module computes (the same function, fewer or fused ops) or goes with a
weight transform in export/optimize.py that rewrites the float32 state dict for it; docs/export.md,
"Graph optimizations", says what each one does and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class OptimizeOptions:
    """Which export-time graph optimizations to apply; all but fuse_gate_up on by default.

    fuse_gate_up is off by default: on ONNX Runtime's CPU provider the Split copies the [tokens, 2 x mlp_dim]
    output, which costs more than the second GEMM saves (mid() pi0 on 2 cores: prefix 172 -> 168 ms, step
    7.45 -> 7.24 ms without it). unroll_loop is not a model switch: it writes the loop graph at export."""

    fold_norms: bool = True
    fuse_qkv: bool = True
    fuse_gate_up: bool = False
    precompute_time: bool = True
    fold_dt: bool = True
    fast_attention: bool = True
    step_only: bool = True
    fast_gelu: bool = True
    unroll_loop: bool = True

    def __post_init__(self):
        for f in fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"OptimizeOptions.{f.name} must be a bool, got {getattr(self, f.name)!r}")

    @classmethod
    def none(cls) -> OptimizeOptions:
        return cls(**{f.name: False for f in fields(cls)})

    @classmethod
    def only(cls, name: str) -> OptimizeOptions:
        """Exactly one optimization on (the parity tests switch each on alone)."""
        if name not in {f.name for f in fields(cls)}:
            raise ValueError(f"unknown optimization {name!r}; choose from {[f.name for f in fields(cls)]}")
        return cls(**{f.name: f.name == name for f in fields(cls)})

    @property
    def uses_step_index(self) -> bool:
        """The step graph indexes per-step tables: it takes step_index and is tied to one num_steps."""
        return self.precompute_time or self.fold_dt

    def manifest_entry(self, num_steps: int) -> dict:
        """bundle.yaml `optimizations`: the switches and, when the step graph is step-indexed, the only
        num_steps it can run (a runtime request for another count must be refused)."""
        return {**asdict(self), "fixed_num_steps": int(num_steps) if self.uses_step_index else None}


PLAIN = OptimizeOptions.none()  # the reference model: what checkpoints load into
DEFAULT_OPTIMIZE = OptimizeOptions()  # `pi0edge export`'s default: every optimization on but fuse_gate_up
