"""Random-weight checkpoints in the layouts a user holds (LeRobot, openpi PyTorch), from tiny to full size.

No model hub is reachable, so the demo and the tests make their own checkpoints. A full-size pi0 is
~3.3 B parameters (13 GB in float32) and this must run on a 24 GB machine, so the model is never built:
parameter shapes come from a Pi0Model on the `meta` device, and each tensor is generated in 64 MB chunks
and streamed into a safetensors file whose header is written first (8-byte little-endian header length,
JSON header, raw little-endian data). Peak memory is a few chunks, whatever the size.

Values: every tensor has its own numpy generator seeded by (seed, parameter name), so a tensor does not
depend on layout, key prefix or write order, and `random_state_dict` regenerates exactly what was written.
Matrices ~ N(0, 0.02), biases ~ N(0, 0.01), Gemma RMSNorm weights ~ N(0, 0.02) (they act as 1 + w),
SigLIP LayerNorm weights ~ 1 + N(0, 0.02): activations stay finite at full size in 16-bit, and no two
parameters are equal, so a loader that swaps two tensors is caught.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pi0edge.export.checkpoint import (
    CONFIG_FILE,
    DEFAULT_NORM_KIND,
    GEMMA_VARIANTS,
    SIZES_KEY,
    TIED_EMBEDDING_KEYS,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    TensorInfo,
    checkpoint_key,
    detect_config,
    sizes_record,
)
from pi0edge.export.checkpoint.stats import openpi_norm_kind
from pi0edge.export.config import FAST_MODEL_TYPE, PRESETS, GemmaConfig, Pi0Config, Pi0FastConfig
from pi0edge.export.fast_checkpoint import lerobot_fast_config, openpi_fast_config, write_test_fast_tokenizer
from pi0edge.export.tokenizer import train_test_tokenizer

DTYPES = {"float32": (torch.float32, "F32"), "bfloat16": (torch.bfloat16, "BF16"), "float16": (torch.float16, "F16")}
CHUNK_ELEMS = 1 << 24  # 64 MB of float32 per generated chunk
MATRIX_STD, BIAS_STD, NORM_STD = 0.02, 0.01, 0.02
LAYER_NORM_WEIGHTS = ("layer_norm1.weight", "layer_norm2.weight", "post_layernorm.weight")  # SigLIP: x * w
DEFAULT_ASSET_ID = "robot"
LEROBOT_NORM_MODES = {"mean_std": "MEAN_STD", "quantile": "QUANTILES"}
# LeRobot's processor pipelines put the normalizer at these steps (pi0.5 normalizes before tokenizing state).
PREPROCESSOR_NORMALIZER_STEP = {"pi0": 5, "pi05": 2, FAST_MODEL_TYPE: 3}


def parameter_shapes(cfg: Pi0Config | Pi0FastConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes, in module order, from a model on the `meta` device (no memory)."""
    from pi0edge.export.checkpoint.loader import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def _init(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of a parameter's random init."""
    if name.endswith(LAYER_NORM_WEIGHTS):
        return 1.0, NORM_STD
    if name.endswith(".bias"):
        return 0.0, BIAS_STD
    return 0.0, NORM_STD if len(shape) == 1 else MATRIX_STD


def random_chunks(name: str, shape: tuple[int, ...], seed: int = 0, dtype: str = "float32") -> Iterator[torch.Tensor]:
    """The flat values of one parameter, in chunks of at most CHUNK_ELEMS, generated in float32 and cast."""
    torch_dtype = DTYPES[dtype][0]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    mean, std = _init(name, shape)
    total = math.prod(shape)
    for start in range(0, total, CHUNK_ELEMS):
        values = rng.standard_normal(min(CHUNK_ELEMS, total - start), dtype=np.float32)
        values *= np.float32(std)
        if mean:
            values += np.float32(mean)
        chunk = torch.from_numpy(values)
        yield chunk if torch_dtype == torch.float32 else chunk.to(torch_dtype)


def random_state_dict(cfg: Pi0Config, seed: int = 0, dtype: str = "float32") -> dict[str, torch.Tensor]:
    """Every parameter exactly as write_random_checkpoint writes it, under our names (small configs only)."""
    return {name: torch.cat(list(random_chunks(name, shape, seed, dtype))).reshape(shape)
            for name, shape in parameter_shapes(cfg).items()}


# ---- safetensors, streamed ----------------------------------------------------------------------------


def write_safetensors_stream(path: Path, entries: list[tuple[str, tuple[int, ...], str]], seed: int, dtype: str,
                             names: dict[str, str]) -> int:
    """Write `entries` (checkpoint key, shape, our name) as one safetensors file; returns its size in bytes.

    The header goes first with every offset computed from the shapes; then each tensor's chunks are
    written as they are generated. Written to a temporary name and renamed, so an interrupted write
    never leaves a plausible-looking file.
    """
    torch_dtype, st_dtype = DTYPES[dtype]
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    header: dict = {"__metadata__": {"format": "pt", "writer": "pi0edge.export.random_checkpoint"}}
    offset = 0
    for key, shape, _ in entries:
        nbytes = math.prod(shape) * itemsize
        header[key] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as safetensors itself writes
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key, shape, _ in entries:
            written = 0
            for chunk in random_chunks(names[key], shape, seed, dtype):
                data = chunk.contiguous().view(torch.uint8).numpy()  # raw little-endian bytes, no copy
                f.write(data)
                written += data.nbytes
            assert written == math.prod(shape) * itemsize, key
    os.replace(tmp, path)
    return 8 + len(blob) + offset


def _write_weights(out_dir: Path, entries: list[tuple[str, tuple[int, ...], str]], seed: int, dtype: str,
                   max_shard_bytes: int | None) -> list[Path]:
    names = {key: name for key, _, name in entries}
    if max_shard_bytes is None:
        write_safetensors_stream(out_dir / WEIGHTS_FILE, entries, seed, dtype, names)
        return [out_dir / WEIGHTS_FILE]
    itemsize = torch.empty((), dtype=DTYPES[dtype][0]).element_size()
    shards: list[list] = [[]]
    size = 0
    for entry in entries:
        nbytes = math.prod(entry[1]) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    files, weight_map = [], {}
    for i, shard in enumerate(shards):
        path = out_dir / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors_stream(path, shard, seed, dtype, names)
        files.append(path)
        weight_map.update({key: path.name for key, _, _ in shard})
    total = sum(math.prod(s) * itemsize for _, s, _ in entries)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / WEIGHTS_INDEX_FILE).write_text(json.dumps(index, indent=2))
    return files


# ---- config.json and statistics --------------------------------------------------------------------


def _variant(gemma: GemmaConfig, fallback: str) -> str:
    return next((name for name, v in GEMMA_VARIANTS.items() if v == gemma), fallback)


def lerobot_config(cfg: Pi0Config, *, robot_state_dim: int, robot_action_dim: int, dtype: str, norm_kind: str) -> dict:
    """config.json as LeRobot's PI0Config / PI05Config `save_pretrained` writes it."""
    side = cfg.vision.image_size
    mode = LEROBOT_NORM_MODES[norm_kind]
    images = {f"observation.images.{cam}": {"type": "VISUAL", "shape": [3, side, side]} for cam in cfg.cameras}
    if isinstance(cfg, Pi0FastConfig):
        return lerobot_fast_config(cfg, images, _variant(cfg.vlm, "custom"), robot_state_dim=robot_state_dim,
                                   robot_action_dim=robot_action_dim, dtype=dtype, norm_mode=mode)
    return {
        "type": cfg.model_type, "n_obs_steps": 1,
        "input_features": {**images, "observation.state": {"type": "STATE", "shape": [robot_state_dim]}},
        "output_features": {"action": {"type": "ACTION", "shape": [robot_action_dim]}},
        "device": "cpu", "use_amp": False, "push_to_hub": False, "repo_id": None, "private": None, "tags": None,
        "license": None, "pretrained_path": None,
        "paligemma_variant": _variant(cfg.vlm, "custom"), "action_expert_variant": _variant(cfg.expert, "custom"),
        "dtype": dtype, "chunk_size": cfg.action_horizon, "n_action_steps": cfg.action_horizon,
        "max_state_dim": cfg.state_dim, "max_action_dim": cfg.action_dim, "num_inference_steps": cfg.num_steps,
        "time_sampling_beta_alpha": 1.5, "time_sampling_beta_beta": 1.0, "time_sampling_scale": 0.999,
        "time_sampling_offset": 0.001, "min_period": cfg.min_period, "max_period": cfg.max_period,
        "rtc_config": None, "image_resolution": [side, side], "empty_cameras": 0,
        "tokenizer_max_length": cfg.max_token_len,
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": mode, "ACTION": mode},
        "gradient_checkpointing": False, "compile_model": False, "compile_mode": "max-autotune",
        "freeze_vision_encoder": False, "train_expert_only": False,
        "optimizer_lr": 2.5e-5, "optimizer_betas": [0.9, 0.95], "optimizer_eps": 1e-8,
        "optimizer_weight_decay": 0.01, "optimizer_grad_clip_norm": 1.0,
        "scheduler_warmup_steps": 1000, "scheduler_decay_steps": 30000, "scheduler_decay_lr": 2.5e-6,
    }


def openpi_config(cfg: Pi0Config, *, dtype: str) -> dict:
    """config.json as openpi's convert_jax_model_to_pytorch.py writes it."""
    if isinstance(cfg, Pi0FastConfig):
        return openpi_fast_config(cfg, _variant(cfg.vlm, "custom"), dtype=dtype)
    return {"action_dim": cfg.action_dim, "action_horizon": cfg.action_horizon,
            "paligemma_variant": _variant(cfg.vlm, "custom"), "action_expert_variant": _variant(cfg.expert, "custom"),
            "precision": dtype}


def _with_sizes_if_needed(raw: dict, cfg: Pi0Config, shapes: dict[str, tuple[int, ...]]) -> dict:
    """Add the pi0edge sizes block only when the published fields alone would not give back `cfg`."""
    from pi0edge.errors import CheckpointError

    infos = {name: TensorInfo(Path(WEIGHTS_FILE), checkpoint_key(name), "F32", shape) for name, shape in shapes.items()}
    try:
        if detect_config(raw, infos) == cfg:
            return raw
    except CheckpointError:
        pass
    return {**raw, SIZES_KEY: sizes_record(cfg)}


def random_norm_stats(dim: int, seed: int, feature: str) -> dict[str, np.ndarray]:
    """Plausible statistics of one robot vector: mean, std, q01, q99, min, max (float32 [dim])."""
    rng = np.random.default_rng([seed, zlib.crc32(feature.encode())])
    mean = rng.normal(0.0, 0.5, dim).astype(np.float32)
    std = rng.uniform(0.2, 1.5, dim).astype(np.float32)
    return {"mean": mean, "std": std, "q01": mean - np.float32(2.3) * std, "q99": mean + np.float32(2.3) * std,
            "min": mean - 3 * std, "max": mean + 3 * std}


def _write_lerobot_stats(out_dir: Path, cfg: Pi0Config, state: dict, action: dict, norm_kind: str) -> None:
    from safetensors.numpy import save_file

    step = PREPROCESSOR_NORMALIZER_STEP[cfg.model_type]
    pre_file = f"policy_preprocessor_step_{step}_normalizer_processor.safetensors"
    post_file = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    flat_state = {f"observation.state.{k}": v for k, v in state.items()}
    flat_action = {f"action.{k}": v for k, v in action.items()}
    save_file({**flat_state, **flat_action}, str(out_dir / pre_file))
    save_file(flat_action, str(out_dir / post_file))
    mode = LEROBOT_NORM_MODES[norm_kind]
    norm_map = {"VISUAL": "IDENTITY", "STATE": mode, "ACTION": mode}
    normalizer = {"registry_name": "normalizer_processor", "config": {"eps": 1e-8, "norm_map": norm_map},
                  "state_file": pre_file}
    tokenize = {"registry_name": "tokenizer_processor",
                "config": {"tokenizer_name": "google/paligemma-3b-pt-224", "max_length": cfg.max_token_len}}
    device = {"registry_name": "device_processor", "config": {"device": "cpu"}}
    if cfg.model_type == "pi0":
        middle = [{"registry_name": "pi0_new_line_processor", "config": {}}, tokenize, device, normalizer]
    elif cfg.model_type == FAST_MODEL_TYPE:
        relative = {"registry_name": "relative_actions_processor", "config": {"enabled": False}}
        middle = [relative, normalizer, {"registry_name": "pi0_fast_prepare_state_tokenizer_processor_step",
                                         "config": {}}, tokenize, device]
    else:
        middle = [normalizer, {"registry_name": "pi05_prepare_state_tokenizer_processor_step", "config": {}},
                  tokenize, device]
    steps = [{"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
             {"registry_name": "to_batch_processor", "config": {}}, *middle]
    assert steps[step] is normalizer  # the file name's step index is the step's place in the pipeline
    pre = {"name": "policy_preprocessor", "steps": steps}
    post = {"name": "policy_postprocessor", "steps": [
        {"registry_name": "unnormalizer_processor", "config": {"eps": 1e-8, "norm_map": norm_map},
         "state_file": post_file},
        {"registry_name": "device_processor", "config": {"device": "cpu"}},
    ]}
    (out_dir / "policy_preprocessor.json").write_text(json.dumps(pre, indent=2))
    (out_dir / "policy_postprocessor.json").write_text(json.dumps(post, indent=2))


def write_openpi_stats(out_dir: Path, state: dict, action: dict, asset_id: str) -> None:
    keep = ("mean", "std", "q01", "q99")
    stats = {"norm_stats": {"state": {k: state[k].tolist() for k in keep},
                            "actions": {k: action[k].tolist() for k in keep}}}
    path = out_dir / "assets" / asset_id / "norm_stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats, indent=2))


# ---- the writer ------------------------------------------------------------------------------------


def write_random_checkpoint(out_dir: str | Path, cfg: Pi0Config | Pi0FastConfig, *, layout: str = "lerobot",
                            seed: int = 0, dtype: str = "float32", with_model_prefix: bool = True,
                            tie_embedding: bool = False, tokenizer: bool = True, norm_kind: str | None = None,
                            robot_state_dim: int | None = None, robot_action_dim: int | None = None,
                            max_shard_bytes: int | None = None, asset_id: str = DEFAULT_ASSET_ID) -> Path:
    """Write a random-weight checkpoint directory as a user would hold it; returns out_dir.

    layout "lerobot": config.json, model.safetensors (keys under `model.` unless with_model_prefix=False),
    policy_{pre,post}processor*.{json,safetensors}; "openpi": model.safetensors without `model.`,
    config.json, assets/<asset_id>/norm_stats.json. tie_embedding: store the text embedding only as
    the tied `paligemma.lm_head.weight`, as safetensors' save_model does. tokenizer: train a small
    SentencePiece tokenizer.model (PaliGemma's ids), and for Pi0-FAST fit a FAST tokenizer into fast_tokenizer/
    (export/fast_checkpoint.py). norm_kind: "mean_std" | "quantile", LeRobot only
    (default: the model type's; openpi's kind always follows the model type). robot_*_dim: the robot's
    vector lengths (default: the model widths). max_shard_bytes: write a sharded checkpoint with
    model.safetensors.index.json.
    """
    if layout not in ("lerobot", "openpi"):
        raise ValueError(f"layout must be 'lerobot' or 'openpi', got {layout!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    openpi_kind = openpi_norm_kind(cfg.model_type)
    norm_kind = norm_kind or (openpi_kind if layout == "openpi" else DEFAULT_NORM_KIND[cfg.model_type])
    if norm_kind not in LEROBOT_NORM_MODES:
        raise ValueError(f"norm_kind must be 'mean_std' or 'quantile', got {norm_kind!r}")
    if layout == "openpi" and norm_kind != openpi_kind:
        raise ValueError(f"openpi's normalization kind follows the model type ({openpi_kind} "
                         f"for {cfg.model_type}), got {norm_kind!r}")
    state_dim = cfg.state_dim if robot_state_dim is None else robot_state_dim
    action_dim = cfg.action_dim if robot_action_dim is None else robot_action_dim
    if not (0 < state_dim <= cfg.state_dim and 0 < action_dim <= cfg.action_dim):
        raise ValueError(f"robot dims ({state_dim}, {action_dim}) must be within the model's "
                         f"({cfg.state_dim}, {cfg.action_dim})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    shapes = parameter_shapes(cfg)
    model_prefix = with_model_prefix and layout == "lerobot"
    entries = []
    for name, shape in shapes.items():
        key = checkpoint_key(name, model_prefix=model_prefix)
        if tie_embedding and name == "vlm.embed_tokens.weight":
            key = ("model." if model_prefix else "") + TIED_EMBEDDING_KEYS[0]
        entries.append((key, shape, name))
    _write_weights(out_dir, entries, seed, dtype, max_shard_bytes)

    if layout == "lerobot":
        raw = lerobot_config(cfg, robot_state_dim=state_dim, robot_action_dim=action_dim, dtype=dtype,
                             norm_kind=norm_kind)
    else:
        raw = openpi_config(cfg, dtype=dtype)
    (out_dir / CONFIG_FILE).write_text(json.dumps(_with_sizes_if_needed(raw, cfg, shapes), indent=2))

    state, action = random_norm_stats(state_dim, seed, "state"), random_norm_stats(action_dim, seed, "action")
    if layout == "lerobot":
        _write_lerobot_stats(out_dir, cfg, state, action, norm_kind)
    else:
        write_openpi_stats(out_dir, state, action, asset_id)
    if tokenizer:
        train_test_tokenizer(out_dir / "tokenizer.model", cfg.vocab_size)
        if isinstance(cfg, Pi0FastConfig):
            # LeRobot tokenizes the robot's actions, openpi the model-wide padded ones
            write_test_fast_tokenizer(out_dir / "fast_tokenizer", cfg, action_dim if layout == "lerobot" else
                                      cfg.action_dim, seed)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pi0edge.export.random_checkpoint",
                                     description="Write a random-weight Pi0/Pi0.5 checkpoint directory.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--model", choices=("pi0", "pi05", FAST_MODEL_TYPE), default="pi0")
    parser.add_argument("--layout", choices=("lerobot", "openpi"), default="lerobot")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--robot-state-dim", type=int)
    parser.add_argument("--robot-action-dim", type=int)
    parser.add_argument("--norm-kind", choices=sorted(LEROBOT_NORM_MODES))
    parser.add_argument("--no-model-prefix", action="store_true", help="LeRobot keys without the `model.` prefix")
    parser.add_argument("--tie-embedding", action="store_true", help="store the text embedding only as lm_head")
    parser.add_argument("--no-tokenizer", action="store_true")
    parser.add_argument("--max-shard-mb", type=int, help="shard the weights into files of at most this size")
    args = parser.parse_args(argv)
    cfg = PRESETS[args.preset](args.model)
    start_s = time.perf_counter()
    try:
        out = write_random_checkpoint(
            args.out, cfg, layout=args.layout, seed=args.seed, dtype=args.dtype,
            with_model_prefix=not args.no_model_prefix, tie_embedding=args.tie_embedding,
            tokenizer=not args.no_tokenizer, norm_kind=args.norm_kind, robot_state_dim=args.robot_state_dim,
            robot_action_dim=args.robot_action_dim,
            max_shard_bytes=args.max_shard_mb << 20 if args.max_shard_mb else None)
    except ValueError as exc:
        parser.error(str(exc))
    params = sum(math.prod(s) for s in parameter_shapes(cfg).values())
    weights_bytes = sum(p.stat().st_size for p in out.glob("model*.safetensors"))
    print(f"wrote {args.preset} {args.model} ({params / 1e6:.1f} M parameters, {weights_bytes / 2**30:.2f} GiB "
          f"{args.dtype}) in {args.layout} layout to {out} in {time.perf_counter() - start_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
