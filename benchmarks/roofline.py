"""Roofline: predict per-stage latency of one chunk on a GPU before buying it.

    python benchmarks/roofline.py --model pi0 --cameras 3 [--bundle BUNDLE] [--bytes-per-param 2]

For each stage (prefix; one denoise step; the chunk = prefix + num_steps steps) it counts the FLOPs of
every matmul (2 * m * n * k, attention included) and the bytes that must cross the memory bus (weights
read once per stage, the KV cache read by every step and written by the prefix). With --bundle the
weight bytes are measured from the bundle's graph files instead of counted. A stage takes at least
max(FLOPs / peak FLOP/s, bytes / bandwidth); the table gives that bound per device. Real kernels reach
50-80 % of it; the published anchors in docs/benchmarks.md section 4 are the sanity check.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from pi0edge.export.config import GemmaConfig, Pi0Config, VisionConfig, full


@dataclass(frozen=True)
class Device:
    name: str
    dense_fp16_tflops: float  # tensor-core dense FP16/BF16 with FP32 accumulate, vendor figure
    bandwidth_gbs: float


# Vendor peak figures (dense, no sparsity).
DEVICES = (
    Device("Jetson Orin NX 16GB", 12.5, 102),
    Device("Jetson AGX Orin 64GB", 42.5, 205),
    Device("Jetson AGX Thor", 258, 273),
    Device("RTX 4090", 165, 1008),
    Device("L40S", 362, 864),
    Device("A100 80GB SXM", 312, 2039),
    Device("H100 SXM", 989, 3350),
)


@dataclass(frozen=True)
class StageCost:
    flops: float
    weight_bytes: float
    activation_bytes: float  # KV cache traffic

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.activation_bytes


def _gemma_layer_params(g: GemmaConfig) -> int:
    attn = g.width * (g.num_heads + 2 * g.num_kv_heads) * g.head_dim + g.num_heads * g.head_dim * g.width
    return attn + 3 * g.width * g.mlp_dim


def _vision_params(v: VisionConfig) -> int:
    per_layer = 4 * v.width * v.width + 2 * v.width * v.mlp_dim
    return 3 * v.patch_size**2 * v.width + v.depth * per_layer


def stage_costs(cfg: Pi0Config, bytes_per_param: float = 2.0) -> dict[str, StageCost]:
    """FLOPs and bytes of the prefix and of one denoise step, counted from the config."""
    v, g, e = cfg.vision, cfg.vlm, cfg.expert
    n_img = cfg.num_cameras * v.tokens_per_image
    t = cfg.prefix_len
    s = cfg.suffix_len
    vision_flops = 2 * _vision_params(v) * n_img + cfg.num_cameras * v.depth * 4 * v.tokens_per_image**2 * v.width
    projector = 2 * v.width * g.width * n_img
    vlm_flops = g.depth * (2 * _gemma_layer_params(g) * t + 4 * t * t * g.num_heads * g.head_dim)
    kv_bytes = 2 * g.depth * t * g.num_kv_heads * g.head_dim * bytes_per_param
    prefix = StageCost(vision_flops + projector + vlm_flops,
                       (_vision_params(v) + v.width * g.width + g.depth * _gemma_layer_params(g)) * bytes_per_param,
                       kv_bytes)
    expert_flops = e.depth * (2 * _gemma_layer_params(e) * s + 4 * s * (t + s) * e.num_heads * e.head_dim)
    io_flops = 2 * s * e.width * cfg.action_dim * 2
    step_weights = e.depth * _gemma_layer_params(e) + 2 * cfg.action_dim * e.width
    if cfg.is_pi05:  # adaRMS modulations (3 per norm) unless precomputed per step
        step_weights += (2 * e.depth + 1) * e.width * 3 * e.width
    step = StageCost(expert_flops + io_flops, step_weights * bytes_per_param, kv_bytes)
    return {"prefix": prefix, "step": step}


def predict_ms(cost: StageCost, device: Device) -> float:
    return max(cost.flops / (device.dense_fp16_tflops * 1e12), cost.bytes / (device.bandwidth_gbs * 1e9)) * 1e3


def measured_weight_bytes(bundle: Path) -> dict[str, float]:
    """Graph file sizes (weights dominate them): prefix.onnx(+.data), denoise_step.onnx(+.data)."""
    sizes = {}
    for stage, stem in (("prefix", "prefix.onnx"), ("step", "denoise_step.onnx")):
        sizes[stage] = sum(p.stat().st_size for p in bundle.glob(stem + "*"))
    return sizes


def table(cfg: Pi0Config, costs: dict[str, StageCost]) -> str:
    p, s = costs["prefix"], costs["step"]
    n = cfg.num_steps
    lines = [f"{cfg.model_type}, {cfg.num_cameras} camera(s), {n} steps: prefix {p.flops / 1e12:.2f} TFLOP "
             f"/ {p.bytes / 1e9:.2f} GB; step {s.flops / 1e9:.0f} GFLOP / {s.bytes / 1e9:.2f} GB",
             "",
             "| device | FP16 TFLOPS | GB/s | prefix ms | step ms | chunk ms | bound |",
             "|---|---|---|---|---|---|---|"]
    for d in DEVICES:
        pm, sm = predict_ms(p, d), predict_ms(s, d)
        bound = "memory" if s.bytes / (d.bandwidth_gbs * 1e9) > s.flops / (d.dense_fp16_tflops * 1e12) else "compute"
        lines.append(f"| {d.name} | {d.dense_fp16_tflops:g} | {d.bandwidth_gbs:g} | {pm:.1f} | {sm:.2f} | "
                     f"{pm + n * sm:.1f} | steps {bound}-bound |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("pi0", "pi05"), default="pi0")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--bytes-per-param", type=float, default=2.0, help="2 for fp16/bf16, 1 for fp8/int8")
    parser.add_argument("--bundle", type=Path, help="measure weight bytes from this bundle's graph files")
    args = parser.parse_args()
    cfg = full(args.model)
    cfg = replace(cfg, cameras=cfg.cameras[: args.cameras] if args.cameras <= 3 else
                  tuple(f"camera_{i}" for i in range(args.cameras)))
    costs = stage_costs(cfg, args.bytes_per_param)
    if args.bundle:
        measured = measured_weight_bytes(args.bundle)
        costs = {k: replace(c, weight_bytes=measured[k]) for k, c in costs.items()}
    print(table(cfg, costs))


if __name__ == "__main__":
    main()
