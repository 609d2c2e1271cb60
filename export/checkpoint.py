"""Checkpoint loading: a LeRobot or openpi-PyTorch directory -> Pi0Model with weights, stats and tokenizer.

Formats (MODEL.md, "Checkpoint formats a user will hold"):
- LeRobot `save_pretrained`: config.json ("type": "pi0"/"pi05"), model.safetensors with keys under
  `model.` (some published checkpoints lack it), normalizer statistics in
  `policy_{pre,post}processor_step_*_{normalizer,unnormalizer}_processor.safetensors`.
- openpi PyTorch (converted): the same module names without `model.`, a small config.json,
  statistics in `assets/<asset_id>/norm_stats.json`.

Safetensors only: a pickled `.bin`/`.pt` can run code when loaded, so it is refused, never opened.
Weights load lazily: the model is built on the `meta` device and its parameters are assigned the
memory-mapped tensors safetensors returns, so a 13 GB checkpoint costs its own pages and no second copy.
The parts live beside this module: safetensors_io.py (headers, the one hashing/NaN-scan/convert pass),
checkpoint_config.py (sizes from shapes and config.json), checkpoint_stats.py (normalization statistics).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pi0edge.errors import CheckpointError
from pi0edge.export.checkpoint_config import (
    CONFIG_FILE,
    GEMMA_VARIANTS,
    SIGLIP_SO400M_HEADS,
    SIGLIP_SO400M_WIDTH,
    SIZES_KEY,
    _read_config,
    detect_config,
    sizes_record,
)
from pi0edge.export.checkpoint_stats import (
    DEFAULT_NORM_KIND,
    LEGACY_STATS_KEYS,
    LEGACY_STATS_PREFIXES,
    LEROBOT_NORM_KINDS,
    _lerobot_stats,
    _openpi_stats,
    _robot_dims,
)
from pi0edge.export.config import Pi0Config
from pi0edge.export.safetensors_io import (
    FLOAT_DTYPES,
    MAX_HEADER_BYTES,
    SAFETENSORS_DTYPES,
    SCAN_CHUNK_BYTES,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    TensorInfo,
    _scan_files,
    read_safetensors_header,
)
from pi0edge.normalization import NormStats

__all__ = [
    "CONFIG_FILE", "DEFAULT_NORM_KIND", "EMBED_NAME", "FLOAT_DTYPES", "GEMMA_VARIANTS", "IGNORED_KEYS",
    "IGNORED_PREFIXES", "LAYOUTS", "LEGACY_STATS_KEYS", "LEGACY_STATS_PREFIXES", "LEROBOT_MODEL_PREFIX",
    "LEROBOT_NORM_KINDS", "MAX_HEADER_BYTES", "PICKLE_SUFFIXES", "PREFIXES", "SAFETENSORS_DTYPES",
    "SCAN_CHUNK_BYTES", "SIGLIP_SO400M_HEADS", "SIGLIP_SO400M_WIDTH", "SIZES_KEY", "TIED_EMBEDDING_KEYS",
    "TOKENIZER_FILES", "TOP_LEVEL_MODULES", "WEIGHTS_FILE", "WEIGHTS_INDEX_FILE", "LoadedCheckpoint", "TensorInfo",
    "checkpoint_key", "detect_config", "detect_layout", "find_tokenizer", "load_checkpoint", "map_keys",
    "model_name", "read_safetensors_header", "sizes_record",
]

LAYOUTS = ("lerobot", "openpi")
TOKENIZER_FILES = ("tokenizer.model", "paligemma_tokenizer.model", "assets/tokenizer.model")
LEROBOT_MODEL_PREFIX = "model."  # LeRobot wraps the openpi module as `policy.model`
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# Checkpoint prefix -> ours. The first four are the current transformers layout (what the writer uses);
# the last three are transformers < 4.52, where PaliGemma had no inner `.model.`.
PREFIXES = (
    ("paligemma_with_expert.paligemma.model.vision_tower.vision_model.", "vision."),
    ("paligemma_with_expert.paligemma.model.multi_modal_projector.", "projector."),
    ("paligemma_with_expert.paligemma.model.language_model.", "vlm."),
    ("paligemma_with_expert.gemma_expert.model.", "expert."),
    ("paligemma_with_expert.paligemma.vision_tower.vision_model.", "vision."),
    ("paligemma_with_expert.paligemma.multi_modal_projector.", "projector."),
    ("paligemma_with_expert.paligemma.language_model.model.", "vlm."),
)
TOP_LEVEL_MODULES = ("action_in_proj.", "action_out_proj.", "state_proj.", "action_time_mlp_in.",
                     "action_time_mlp_out.", "time_mlp_in.", "time_mlp_out.")
# PaliGemma's LM head is tied to the text embedding: the only copy when save_model dropped the other.
TIED_EMBEDDING_KEYS = ("paligemma_with_expert.paligemma.lm_head.weight",
                       "paligemma_with_expert.paligemma.language_model.lm_head.weight")
EMBED_NAME = "vlm.embed_tokens.weight"
# Present in real checkpoints, unused by Pi0: the expert's LM head and embedding, SigLIP's MAP head.
IGNORED_KEYS = ("paligemma_with_expert.gemma_expert.lm_head.weight",
                "paligemma_with_expert.gemma_expert.model.embed_tokens.weight")
IGNORED_PREFIXES = ("paligemma_with_expert.paligemma.model.vision_tower.vision_model.head.",
                    "paligemma_with_expert.paligemma.vision_tower.vision_model.head.")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What load_checkpoint returns: the model with its weights and everything export needs beside it."""

    config: Pi0Config
    model: Any  # Pi0Model, weights assigned (memory-mapped when lazy)
    norm_stats: NormStats | None
    tokenizer_path: Path | None
    layout: str  # "lerobot" | "openpi"
    source_sha256: str | None  # sha256 of the weight file(s) in order; None with hash_weights=False
    robot_state_dim: int
    robot_action_dim: int
    camera_names: tuple[str, ...]
    weights_files: tuple[Path, ...]
    weights_bytes: int  # total size of the weight files


# ---- key names ---------------------------------------------------------------------------------------


def checkpoint_key(name: str, *, model_prefix: bool = False) -> str:
    """Our parameter name -> the checkpoint's (current transformers layout), optionally under `model.`."""
    for theirs, ours in PREFIXES[:4]:
        if name.startswith(ours):
            name = theirs + name[len(ours):]
            break
    return LEROBOT_MODEL_PREFIX + name if model_prefix else name


def model_name(key: str) -> str | None:
    """Checkpoint key -> our parameter name; "" for a known-unused tensor, None for an unknown one."""
    bare = key[len(LEROBOT_MODEL_PREFIX):] if key.startswith(LEROBOT_MODEL_PREFIX) else key
    if bare in TIED_EMBEDDING_KEYS:
        return EMBED_NAME
    if bare in IGNORED_KEYS or bare.startswith(IGNORED_PREFIXES) or key.startswith(LEGACY_STATS_PREFIXES):
        return ""
    for theirs, ours in PREFIXES:
        if bare.startswith(theirs):
            return ours + bare[len(theirs):]
    return bare if bare.startswith(TOP_LEVEL_MODULES) else None


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"{shown} and {len(keys) - n} more" if len(keys) > n else shown


def map_keys(infos: dict[str, TensorInfo]) -> dict[str, TensorInfo]:
    """Checkpoint tensors -> ours; the tied LM head stands in for the text embedding only when it is absent."""
    mapped: dict[str, TensorInfo] = {}
    tied: TensorInfo | None = None
    unexpected: list[str] = []
    for key, info in infos.items():
        name = model_name(key)
        if name is None:
            unexpected.append(key)
        elif name == EMBED_NAME and key.endswith("lm_head.weight"):
            tied = info
        elif name:
            if name in mapped:
                raise CheckpointError(f"{info.file}: tensors '{mapped[name].key}' and '{key}' are the same parameter "
                                      f"'{name}' under two names")
            mapped[name] = info
    if unexpected:
        first = infos[unexpected[0]].file
        raise CheckpointError(f"{first}: {len(unexpected)} unexpected tensors that no Pi0/Pi0.5 parameter matches: "
                              f"{_few(unexpected)}")
    if EMBED_NAME not in mapped and tied is not None:
        mapped[EMBED_NAME] = tied
    return mapped


# ---- weight files and layout --------------------------------------------------------------------------


def _weight_files(root: Path) -> tuple[list[Path], dict[str, str] | None]:
    """model.safetensors, or the shards its index names (with its weight map); pickles are refused by name."""
    index = root / WEIGHTS_INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index (expected a 'weight_map' object): "
                                  f"{exc!r}") from exc
        for shard in shards:
            if not (root / shard).is_file():
                raise CheckpointError(f"{index}: shard '{shard}' is listed but missing from {root}")
        return [root / shard for shard in shards], weight_map
    if (root / WEIGHTS_FILE).is_file():
        return [root / WEIGHTS_FILE], None
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{root}: found {', '.join(pickles)} but no {WEIGHTS_FILE}: only safetensors are "
                              "supported (pickled checkpoints can run code when loaded); convert with "
                              "safetensors.torch.save_file")
    raise _unknown_layout(root, f"no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}")


def _unknown_layout(root: Path, why: str) -> CheckpointError:
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:20]
    return CheckpointError(
        f"{root}: unknown checkpoint layout ({why}). Found: {found or 'no files'}. Expected LeRobot (config.json with "
        "\"type\": \"pi0\"/\"pi05\", model.safetensors, policy_preprocessor_step_*_normalizer_processor.safetensors) "
        "or openpi PyTorch (model.safetensors, config.json, assets/<asset_id>/norm_stats.json)")


def detect_layout(root: Path, raw: dict) -> str:
    if "type" in raw or any(root.glob("policy_*processor*.safetensors")):
        return "lerobot"
    if any(root.glob("assets/*/norm_stats.json")) or "action_horizon" in raw or "paligemma_variant" in raw:
        return "openpi"
    raise _unknown_layout(root, "neither a LeRobot config.json/processor files nor openpi assets were found")


def find_tokenizer(root: Path) -> Path | None:
    return next((root / name for name in TOKENIZER_FILES if (root / name).is_file()), None)


# ---- the loader ---------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path, *, dtype: torch.dtype | None = torch.float32, lazy: bool = True,
                    hash_weights: bool = True, check_finite: bool = True, require_stats: bool = True,
                    asset_id: str | None = None) -> LoadedCheckpoint:
    """Load a LeRobot or openpi-PyTorch checkpoint directory (or its model.safetensors).

    dtype: the model's parameter dtype; None keeps the stored one. A tensor is converted (copied) only
    when its stored dtype differs. lazy: parameters stay memory-mapped views of the file (no second
    copy); lazy=False copies them into memory. check_finite: scan every tensor for NaN/Inf in chunks.
    require_stats: raise when no normalization statistics are found (else norm_stats is None).
    asset_id: which openpi assets/<asset_id>/norm_stats.json to use when there are several.
    """
    from safetensors import safe_open

    from pi0edge.export.model import Pi0Model

    root = Path(path)
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory does not exist")
    files, weight_map = _weight_files(root)
    raw = _read_config(root)
    layout = detect_layout(root, raw)
    if layout == "lerobot" and raw.get("type") not in (None, "pi0", "pi05"):
        raise CheckpointError(f"{root / CONFIG_FILE}: policy type {raw.get('type')!r} is not supported "
                              "(supported: 'pi0', 'pi05')")

    infos: dict[str, TensorInfo] = {}
    for file in files:
        for key, info in read_safetensors_header(file).items():
            if key in infos:
                raise CheckpointError(f"{file}: tensor '{key}' is also in {infos[key].file}")
            infos[key] = info
    for key, shard in (weight_map or {}).items():
        if key not in infos or infos[key].file.name != shard:
            raise CheckpointError(f"{root / WEIGHTS_INDEX_FILE}: tensor '{key}' is mapped to {shard}, which does not "
                                  "hold it")
    mapped = map_keys(infos)
    model_prefix = bool(infos) and all(k.startswith(LEROBOT_MODEL_PREFIX) for k in infos)
    cfg = detect_config(raw, mapped, source=str(root / CONFIG_FILE), weights=", ".join(str(f) for f in files))

    with torch.device("meta"):
        model = Pi0Model(cfg)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    missing = [checkpoint_key(n, model_prefix=model_prefix) for n in expected if n not in mapped]
    if missing:
        raise CheckpointError(f"{files[0] if len(files) == 1 else root}: {len(missing)} tensors the {cfg.model_type} "
                              f"model needs are missing: {_few(missing)}")
    unexpected = [mapped[n] for n in mapped if n not in expected]
    if unexpected:
        raise CheckpointError(f"{unexpected[0].file}: {len(unexpected)} unexpected tensors for a {cfg.model_type} "
                              f"model of these sizes: {_few([i.key for i in unexpected])}")
    for name, shape in expected.items():
        info = mapped[name]
        if info.shape != shape:
            raise CheckpointError(f"{info.file}: tensor '{info.key}' has shape {list(info.shape)}, expected "
                                  f"{list(shape)} for the model the other tensors and config.json describe")
        if info.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{info.file}: tensor '{info.key}' has dtype {info.dtype}, expected a float type")

    # Same dtype and lazy: a view of the file's memory map (no copy; pages load when used). Otherwise the
    # tensor is allocated in its final dtype and filled by the scan, never through the map, so converting
    # a 13 GB float32 file to float16 costs the float16 bytes and not the float32 pages too.
    targets: dict[str, torch.Tensor] = {}
    for name in expected:
        info = mapped[name]
        stored = SAFETENSORS_DTYPES[info.dtype][0]
        if (dtype is not None and stored != dtype) or not lazy:
            targets[info.key] = torch.empty(info.shape, dtype=stored if dtype is None else dtype)
    digest = hashlib.sha256() if hash_weights else None
    _scan_files(files, [mapped[n] for n in expected], digest=digest, check_finite=check_finite, targets=targets)

    handles = {}
    state = {}
    for name in expected:
        info = mapped[name]
        if info.key in targets:
            state[name] = targets[info.key]
            continue
        try:
            if info.file not in handles:
                handles[info.file] = safe_open(str(info.file), framework="pt")
            state[name] = handles[info.file].get_tensor(info.key)
        except Exception as exc:  # safetensors raises its own error types; name the file and key
            raise CheckpointError(f"{info.file}: cannot read tensor '{info.key}': {exc}") from exc
    del handles
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)  # weights for inference and export, never trained here
    model.eval()

    if layout == "lerobot":
        stats, looked = _lerobot_stats(root, raw, cfg.model_type, infos)
    else:
        stats, looked = _openpi_stats(root, cfg.model_type, asset_id)
    if stats is None and require_stats:
        raise CheckpointError(f"{root}: no normalization statistics for this {layout} checkpoint: looked for {looked} "
                              "(pass require_stats=False to load without them)")
    state_dim, action_dim = _robot_dims(raw, cfg, stats, root / CONFIG_FILE)
    return LoadedCheckpoint(
        config=cfg, model=model, norm_stats=stats, tokenizer_path=find_tokenizer(root), layout=layout,
        source_sha256=digest.hexdigest() if digest is not None else None, robot_state_dim=state_dim,
        robot_action_dim=action_dim, camera_names=cfg.cameras, weights_files=tuple(files),
        weights_bytes=sum(f.stat().st_size for f in files))
