"""Random-weight openpi JAX checkpoints, written with orbax as openpi writes them: tests and benchmarks.

openpi's released and trained checkpoints are orbax PyTree checkpoints (`params/`, the item
`{"params": tree}`) beside `assets/<asset_id>/norm_stats.json`. This writer packs our random weights
(random_checkpoint.py: the same values a LeRobot checkpoint of the same seed holds) into openpi's tree
with openpi's einsum conventions, written here from openpi's modules (gemma.py, siglip.py, pi0.py) and
checked against `openpi_shapes`; it never uses the loader's table, so a loader that maps a tree wrongly
does not agree with it by construction.

Needs JAX and orbax-checkpoint (the `dev` extra); each packed array is handed to JAX and dropped, so
the writer holds about one copy of the weights in the stored dtype.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pi0edge.errors import require
from pi0edge.export.checkpoint.openpi_tree import EXPERT, openpi_shapes
from pi0edge.export.config import FAST_MODEL_TYPE, PRESETS, Pi0Config, Pi0FastConfig
from pi0edge.export.random_checkpoint import (
    DEFAULT_ASSET_ID,
    parameter_shapes,
    random_chunks,
    random_norm_stats,
    write_openpi_stats,
)

Get = Callable[[str], torch.Tensor]  # our parameter name -> its value


def _siglip(get: Get, cfg: Pi0Config) -> dict[str, Callable[[], torch.Tensor]]:
    """SigLIP (siglip.py, scan=True): nn.Conv HWIO kernel, learned posemb [1, P, W], MultiHeadDotProductAttention
    kernels [W, heads, head_dim] / out [heads, head_dim, W], nn.Dense kernels [in, out]."""
    v, enc = cfg.vision, "PaliGemma/img/Transformer/encoderblock"
    layer = "vision.encoder.layers.{}."

    def stack(fn):
        return lambda: torch.stack([fn(layer.format(i)) for i in range(v.depth)])

    tree = {"PaliGemma/img/embedding/kernel":  # [W, 3, p, p] -> HWIO
            lambda: get("vision.embeddings.patch_embedding.weight").permute(2, 3, 1, 0),
            "PaliGemma/img/embedding/bias": lambda: get("vision.embeddings.patch_embedding.bias"),
            "PaliGemma/img/pos_embedding": lambda: get("vision.embeddings.position_embedding.weight")[None],
            "PaliGemma/img/Transformer/encoder_norm/scale": lambda: get("vision.post_layernorm.weight"),
            "PaliGemma/img/Transformer/encoder_norm/bias": lambda: get("vision.post_layernorm.bias"),
            "PaliGemma/img/head/kernel": lambda: get("projector.linear.weight").T,
            "PaliGemma/img/head/bias": lambda: get("projector.linear.bias")}
    for j, norm in ((0, "layer_norm1"), (1, "layer_norm2")):
        tree[f"{enc}/LayerNorm_{j}/scale"] = stack(lambda p, n=norm: get(p + n + ".weight"))
        tree[f"{enc}/LayerNorm_{j}/bias"] = stack(lambda p, n=norm: get(p + n + ".bias"))
    attn = f"{enc}/MultiHeadDotProductAttention_0"
    for jax_name, ours in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        tree[f"{attn}/{jax_name}/kernel"] = stack(
            lambda p, o=ours: get(p + f"self_attn.{o}.weight").T.reshape(v.width, v.num_heads, v.head_dim))
        tree[f"{attn}/{jax_name}/bias"] = stack(
            lambda p, o=ours: get(p + f"self_attn.{o}.bias").reshape(v.num_heads, v.head_dim))
    tree[f"{attn}/out/kernel"] = stack(
        lambda p: get(p + "self_attn.out_proj.weight").T.reshape(v.num_heads, v.head_dim, v.width))
    tree[f"{attn}/out/bias"] = stack(lambda p: get(p + "self_attn.out_proj.bias"))
    for j, fc in ((0, "fc1"), (1, "fc2")):
        tree[f"{enc}/MlpBlock_0/Dense_{j}/kernel"] = stack(lambda p, f=fc: get(p + f"mlp.{f}.weight").T)
        tree[f"{enc}/MlpBlock_0/Dense_{j}/bias"] = stack(lambda p, f=fc: get(p + f"mlp.{f}.bias"))
    return tree


def _gemma(get: Get, g, ours: str, suffix: str, adarms: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """One Gemma of the mixture (gemma.py, layers scanned): q_einsum [N, D, H] ("BTD,NDH->BTNH"), kv_einsum
    [2, K, D, H], attn_vec_einsum [N, H, D] ("BTNH,NHD->BTD"), gating_einsum [2, D, F] (gate, up), linear [F, D],
    RMSNorm `scale`, or with adaRMS only its Dense_0 (kernel [D, 3D]: scale, shift, gate)."""
    layers = "PaliGemma/llm/layers"
    n, k, h, d = g.num_heads, g.num_kv_heads, g.head_dim, g.width

    def stack(fn):
        return lambda: torch.stack([fn(f"{ours}.layers.{i}.") for i in range(g.depth)])

    def heads(weight: torch.Tensor, count: int) -> torch.Tensor:  # [count * H, D] -> [count, D, H]
        return weight.reshape(count, h, d).permute(0, 2, 1)

    tree = {
        f"{layers}/attn/q_einsum{suffix}/w": stack(lambda p: heads(get(p + "self_attn.q_proj.weight"), n)),
        f"{layers}/attn/kv_einsum{suffix}/w": stack(lambda p: torch.stack(
            [heads(get(p + "self_attn.k_proj.weight"), k), heads(get(p + "self_attn.v_proj.weight"), k)])),
        f"{layers}/attn/attn_vec_einsum{suffix}/w": stack(
            lambda p: get(p + "self_attn.o_proj.weight").T.reshape(n, h, d)),
        f"{layers}/mlp{suffix}/gating_einsum": stack(lambda p: torch.stack([get(p + "mlp.gate_proj.weight").T,
                                                                           get(p + "mlp.up_proj.weight").T])),
        f"{layers}/mlp{suffix}/linear": stack(lambda p: get(p + "mlp.down_proj.weight").T),
    }
    for jax_norm, norm in (("pre_attention_norm", "input_layernorm"), ("pre_ffw_norm", "post_attention_layernorm")):
        if adarms:
            tree[f"{layers}/{jax_norm}{suffix}/Dense_0/kernel"] = stack(
                lambda p, m=norm: get(p + m + ".dense.weight").T)
            tree[f"{layers}/{jax_norm}{suffix}/Dense_0/bias"] = stack(lambda p, m=norm: get(p + m + ".dense.bias"))
        else:
            tree[f"{layers}/{jax_norm}{suffix}/scale"] = stack(lambda p, m=norm: get(p + m + ".weight"))
    final = f"PaliGemma/llm/final_norm{suffix}"
    if adarms:
        tree[f"{final}/Dense_0/kernel"] = lambda: get(f"{ours}.norm.dense.weight").T
        tree[f"{final}/Dense_0/bias"] = lambda: get(f"{ours}.norm.dense.bias")
    else:
        tree[f"{final}/scale"] = lambda: get(f"{ours}.norm.weight")
    return tree


def openpi_tree(get: Get, cfg: Pi0Config | Pi0FastConfig) -> dict[str, Callable[[], torch.Tensor]]:
    """openpi path -> a function packing our weights into it (pi0.py: the projections are nnx.Linear)."""
    tree = _siglip(get, cfg) | {"PaliGemma/llm/embedder/input_embedding": lambda: get("vlm.embed_tokens.weight")}
    tree |= _gemma(get, cfg.vlm, "vlm", "", adarms=False)
    if cfg.model_type == FAST_MODEL_TYPE:  # pi0_fast.py: the PaliGemma alone
        return tree
    tree |= _gemma(get, cfg.expert, "expert", EXPERT, adarms=cfg.is_pi05)
    heads = ["action_in_proj", "action_out_proj"]
    heads += ["time_mlp_in", "time_mlp_out"] if cfg.is_pi05 else ["state_proj", "action_time_mlp_in",
                                                                   "action_time_mlp_out"]
    for head in heads:
        tree[f"{head}/kernel"] = lambda m=head: get(f"{m}.weight").T
        tree[f"{head}/bias"] = lambda m=head: get(f"{m}.bias")
    return tree


def _numpy(value: torch.Tensor) -> np.ndarray:
    if value.dtype == torch.bfloat16:
        import ml_dtypes

        return value.contiguous().view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return value.contiguous().numpy()


def write_orbax_checkpoint(out_dir: str | Path, cfg: Pi0Config | Pi0FastConfig, *, seed: int = 0,
                           dtype: str = "float32",
                           value_suffix: bool = False, asset_id: str = DEFAULT_ASSET_ID,
                           robot_state_dim: int | None = None, robot_action_dim: int | None = None,
                           use_ocdbt: bool = True, use_zarr3: bool = False) -> Path:
    """Write `out_dir/params` (orbax, as openpi's training saves it) and assets/<asset_id>/norm_stats.json.

    The weights are random_checkpoint's for (cfg, seed, dtype). value_suffix: every leaf ends in "value",
    as openpi's save_state writes an nnx.State (released checkpoints have plain leaves). use_ocdbt /
    use_zarr3: orbax's storage options (openpi keeps orbax's defaults: OCDBT, zarr v2)."""
    jax, ocp = require("jax", "dev", "writing an orbax checkpoint"), require("orbax.checkpoint", "dev",
                                                                            "writing an orbax checkpoint")
    shapes = parameter_shapes(cfg)

    def get(name: str) -> torch.Tensor:
        return torch.cat(list(random_chunks(name, shapes[name], seed, dtype))).reshape(shapes[name])

    expected = openpi_shapes(cfg)
    nested: dict = {}
    for path, pack in openpi_tree(get, cfg).items():
        value = pack()
        if tuple(value.shape) != expected[path]:
            raise AssertionError(f"packed {path} as {list(value.shape)}, openpi declares {list(expected[path])}")
        node = nested
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        array = jax.numpy.asarray(_numpy(value))  # openpi saves jax.Arrays
        node[leaf] = {"value": array} if value_suffix else array
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=use_ocdbt, use_zarr3=use_zarr3)
    with ocp.Checkpointer(handler) as checkpointer:
        checkpointer.save((out_dir / "params").resolve(), {"params": nested})
    state_dim = robot_state_dim or cfg.state_dim
    action_dim = robot_action_dim or cfg.action_dim
    write_openpi_stats(out_dir, random_norm_stats(state_dim, seed, "state"),
                       random_norm_stats(action_dim, seed, "action"), asset_id)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pi0edge.export.random_orbax",
                                     description="Write a random-weight openpi JAX (orbax) checkpoint directory.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--model", choices=("pi0", "pi05", FAST_MODEL_TYPE), default="pi0")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = PRESETS[args.preset](args.model)
    start_s = time.perf_counter()
    write_orbax_checkpoint(args.out, cfg, seed=args.seed, dtype=args.dtype)
    params = sum(math.prod(s) for s in parameter_shapes(cfg).values())
    print(f"wrote {args.preset} {args.model} ({params / 1e6:.1f} M parameters, {args.dtype}) as an openpi JAX "
          f"checkpoint to {args.out} in {time.perf_counter() - start_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
