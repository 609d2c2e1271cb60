"""load_checkpoint: a LeRobot, openpi-PyTorch or openpi JAX directory -> Pi0Model with weights, stats and tokenizer.

Weights load lazily: the model is built on the `meta` device and its parameters are assigned the
memory-mapped tensors safetensors returns, so a 13 GB checkpoint costs its own pages and no second copy.
The steps live beside this module: layouts.py (files and key names), safetensors_io.py (headers, the one
hashing/NaN-scan/convert pass), config.py (sizes from shapes and config.json), stats.py (normalization
statistics); an openpi JAX (orbax) checkpoint goes through orbax_io.py (the store) and openpi_jax.py
(its tree -> our names and tensors), then the same config, checks and statistics.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pi0edge.errors import CheckpointError
from pi0edge.export.checkpoint.config import SIZES_KEY, detect_config, read_config
from pi0edge.export.checkpoint.features import TrainedFeatures, trained_features
from pi0edge.export.checkpoint.layouts import (
    CONFIG_FILE,
    LEROBOT_MODEL_PREFIX,
    checkpoint_key,
    detect_layout,
    few,
    find_tokenizer,
    map_keys,
    weight_files,
)
from pi0edge.export.checkpoint.openpi_jax import check_shapes, hash_params, mapped_infos, read_weights
from pi0edge.export.checkpoint.openpi_tree import check_paths, detect_model_type, tree_sizes
from pi0edge.export.checkpoint.orbax_io import find_params_dir, list_arrays
from pi0edge.export.checkpoint.safetensors_io import (
    FLOAT_DTYPES,
    SAFETENSORS_DTYPES,
    WEIGHTS_INDEX_FILE,
    TensorInfo,
    read_safetensors_header,
    scan_files,
)
from pi0edge.export.checkpoint.stats import lerobot_stats, openpi_stats, robot_dims
from pi0edge.export.config import Pi0Config, Pi0FastConfig
from pi0edge.normalization import NormStats

SUPPORTED_TYPES = ("pi0", "pi05", "pi0_fast")  # LeRobot config.json "type"
OPENPI_JAX_LAYOUT = "openpi-jax"
# What an openpi JAX checkpoint does not record (openpi's training config holds it): field -> CLI flag.
OPENPI_SETTINGS = {"action_horizon": "--action-horizon", "max_token_len": "--max-token-len",
                   "action_dim": "--action-dim"}


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What load_checkpoint returns: the model with its weights and everything export needs beside it."""

    config: Pi0Config | Pi0FastConfig
    model: Any  # Pi0Model or Pi0FastModel, weights assigned (memory-mapped when lazy)
    norm_stats: NormStats | None
    tokenizer_path: Path | None
    layout: str  # "lerobot" | "openpi" | "openpi-jax"
    source_sha256: str | None  # sha256 of the weight file(s) in order; None with hash_weights=False
    robot_state_dim: int
    robot_action_dim: int
    camera_names: tuple[str, ...]
    weights_files: tuple[Path, ...]
    weights_bytes: int  # total size of the weight files
    # camera image sizes, state/action names (LeRobot config.json features)
    features: TrainedFeatures = field(default_factory=TrainedFeatures)


def load_checkpoint(path: str | Path, *, dtype: torch.dtype | None = torch.float32, lazy: bool = True,
                    hash_weights: bool = True, check_finite: bool = True, require_stats: bool = True,
                    asset_id: str | None = None, settings: dict | None = None) -> LoadedCheckpoint:
    """Load a LeRobot, openpi-PyTorch or openpi JAX checkpoint directory (or its model.safetensors).

    dtype: the model's parameter dtype; None keeps the stored one. A tensor is converted (copied) only
    when its stored dtype differs. lazy: parameters stay memory-mapped views of the file (no second
    copy); lazy=False copies them into memory. check_finite: scan every tensor for NaN/Inf in chunks.
    require_stats: raise when no normalization statistics are found (else norm_stats is None).
    asset_id: which openpi assets/<asset_id>/norm_stats.json to use when there are several.
    settings: what an openpi JAX checkpoint does not record (OPENPI_SETTINGS: action_horizon, max_token_len).
    """
    root = _checkpoint_dir(path)
    params_dir = find_params_dir(root)
    if params_dir is not None:
        return _load_openpi_jax(root if params_dir != root else root.parent, params_dir, dtype=dtype,
                                hash_weights=hash_weights, check_finite=check_finite, require_stats=require_stats,
                                asset_id=asset_id, settings=settings or {})
    if settings:
        flags = ", ".join(OPENPI_SETTINGS.get(k, k) for k in settings)
        raise CheckpointError(f"{root}: {flags} are for openpi JAX checkpoints, which do not record them; this "
                              f"checkpoint's {CONFIG_FILE} gives them")
    files, weight_map = weight_files(root)
    raw = read_config(root)
    layout = _layout(root, raw)
    infos = _read_headers(root, files, weight_map)
    mapped = map_keys(infos)
    cfg = detect_config(raw, mapped, source=str(root / CONFIG_FILE), weights=", ".join(str(f) for f in files))
    with torch.device("meta"):
        model = build_model(cfg)
    model_prefix = bool(infos) and all(k.startswith(LEROBOT_MODEL_PREFIX) for k in infos)
    needed = _check_tensors(model, mapped, cfg, where=files[0] if len(files) == 1 else root,
                            model_prefix=model_prefix)
    digest = hashlib.sha256() if hash_weights else None
    state = _read_weights(files, needed, dtype=dtype, lazy=lazy, digest=digest, check_finite=check_finite)
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)  # weights for inference and export, never trained here
    model.eval()
    stats = _norm_stats(root, raw, layout, cfg, infos, asset_id=asset_id, require_stats=require_stats)
    state_dim, action_dim = robot_dims(raw, cfg, stats, root / CONFIG_FILE)
    return LoadedCheckpoint(
        config=cfg, model=model, norm_stats=stats, tokenizer_path=find_tokenizer(root), layout=layout,
        source_sha256=digest.hexdigest() if digest is not None else None, robot_state_dim=state_dim,
        robot_action_dim=action_dim, camera_names=cfg.cameras, weights_files=tuple(files),
        weights_bytes=sum(f.stat().st_size for f in files), features=trained_features(raw))


def build_model(cfg: Pi0Config | Pi0FastConfig):
    """The model a config describes: Pi0Model (pi0, pi0.5) or Pi0FastModel (Pi0-FAST)."""
    if isinstance(cfg, Pi0FastConfig):
        from pi0edge.export.model.pi0fast import Pi0FastModel

        return Pi0FastModel(cfg)
    from pi0edge.export.model import Pi0Model

    return Pi0Model(cfg)


def _checkpoint_dir(path: str | Path) -> Path:
    root = Path(path)
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory does not exist")
    return root


def _layout(root: Path, raw: dict) -> str:
    layout = detect_layout(root, raw)
    if layout == "lerobot" and raw.get("type") not in (None, *SUPPORTED_TYPES):
        raise CheckpointError(f"{root / CONFIG_FILE}: policy type {raw.get('type')!r} is not supported "
                              f"(supported: {', '.join(repr(t) for t in SUPPORTED_TYPES)})")
    return layout


def _read_headers(root: Path, files: list[Path], weight_map: dict[str, str] | None) -> dict[str, TensorInfo]:
    """Every tensor of every weight file, each in one file only, where the shard index says it is."""
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
    return infos


def _check_tensors(model, mapped: dict[str, TensorInfo], cfg: Pi0Config, *, where: Path,
                   model_prefix: bool) -> dict[str, TensorInfo]:
    """The model's parameters (ours -> TensorInfo): each present, none extra, each of its shape and a float."""
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    missing = [checkpoint_key(n, model_prefix=model_prefix) for n in expected if n not in mapped]
    if missing:
        raise CheckpointError(f"{where}: {len(missing)} tensors the {cfg.model_type} model needs are missing: "
                              f"{few(missing)}")
    unexpected = [mapped[n] for n in mapped if n not in expected]
    if unexpected:
        raise CheckpointError(f"{unexpected[0].file}: {len(unexpected)} unexpected tensors for a {cfg.model_type} "
                              f"model of these sizes: {few([i.key for i in unexpected])}")
    for name, shape in expected.items():
        info = mapped[name]
        if info.shape != shape:
            raise CheckpointError(f"{info.file}: tensor '{info.key}' has shape {list(info.shape)}, expected "
                                  f"{list(shape)} for the model the other tensors and config.json describe")
        if info.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{info.file}: tensor '{info.key}' has dtype {info.dtype}, expected a float type")
    return {name: mapped[name] for name in expected}


def _read_weights(files: list[Path], needed: dict[str, TensorInfo], *, dtype: torch.dtype | None, lazy: bool,
                  digest: Any | None, check_finite: bool) -> dict[str, torch.Tensor]:
    """Our parameter name -> tensor, after the one pass that hashes, scans and converts."""
    # Same dtype and lazy: a view of the file's memory map (no copy; pages load when used). Otherwise the
    # tensor is allocated in its final dtype and filled by the scan, never through the map, so converting
    # a 13 GB float32 file to float16 costs the float16 bytes and not the float32 pages too.
    targets: dict[str, torch.Tensor] = {}
    for info in needed.values():
        stored = SAFETENSORS_DTYPES[info.dtype][0]
        if (dtype is not None and stored != dtype) or not lazy:
            targets[info.key] = torch.empty(info.shape, dtype=stored if dtype is None else dtype)
    scan_files(files, list(needed.values()), digest=digest, check_finite=check_finite, targets=targets)
    views = _memory_mapped({name: info for name, info in needed.items() if info.key not in targets})
    return {name: targets[info.key] if info.key in targets else views[name] for name, info in needed.items()}


def _memory_mapped(needed: dict[str, TensorInfo]) -> dict[str, torch.Tensor]:
    """Views of the files' memory maps, through safetensors (one handle per file)."""
    from safetensors import safe_open

    handles, state = {}, {}
    for name, info in needed.items():
        try:
            if info.file not in handles:
                handles[info.file] = safe_open(str(info.file), framework="pt")
            state[name] = handles[info.file].get_tensor(info.key)
        except Exception as exc:  # safetensors raises its own error types; name the file and key
            raise CheckpointError(f"{info.file}: cannot read tensor '{info.key}': {exc}") from exc
    return state


def _norm_stats(root: Path, raw: dict, layout: str, cfg: Pi0Config, infos: dict[str, TensorInfo], *,
                asset_id: str | None, require_stats: bool) -> NormStats | None:
    if layout == "lerobot":
        stats, looked = lerobot_stats(root, raw, cfg.model_type, infos)
    else:
        stats, looked = openpi_stats(root, cfg.model_type, asset_id)
    if stats is None and require_stats:
        raise CheckpointError(f"{root}: no normalization statistics for this {layout} checkpoint: looked for {looked} "
                              "(the bundle needs them: add the dataset's statistics to the checkpoint folder)")
    return stats


# ---- openpi JAX (orbax) ---------------------------------------------------------------------------------


def _load_openpi_jax(root: Path, params_dir: Path, *, dtype: torch.dtype | None, hash_weights: bool,
                     check_finite: bool, require_stats: bool, asset_id: str | None, settings: dict
                     ) -> LoadedCheckpoint:
    """The tree read by name and shape, checked against openpi's layout, then the shared config, model and
    statistics steps; weights converted one stored array at a time (openpi_jax.py)."""
    arrays = list_arrays(params_dir)
    model_type = detect_model_type(set(arrays), str(params_dir))
    check_paths(set(arrays), model_type, str(params_dir))
    raw = _openpi_jax_config(root, settings, tree_sizes({p: a.shape for p, a in arrays.items()}, model_type))
    if model_type == "pi0_fast":  # the tree tells it; config.py takes Pi0-FAST only when the config names it
        raw["model_type"] = model_type
    mapped = mapped_infos(params_dir, arrays, model_type)
    cfg = detect_config(raw, mapped, source=f"{root} (openpi JAX tree and settings)", weights=str(params_dir))
    check_shapes(params_dir, arrays, cfg, model_type)
    with torch.device("meta"):
        model = build_model(cfg)
    _check_tensors(model, mapped, cfg, where=params_dir, model_prefix=False)
    state = read_weights(params_dir, arrays, model_type, dtype=dtype, check_finite=check_finite)
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    model.eval()
    stats = _norm_stats(root, raw, "openpi", cfg, {}, asset_id=asset_id, require_stats=require_stats)
    state_dim, action_dim = robot_dims(raw, cfg, stats, root / CONFIG_FILE)
    files = tuple(sorted(p for p in params_dir.rglob("*") if p.is_file()))
    return LoadedCheckpoint(
        config=cfg, model=model, norm_stats=stats, tokenizer_path=find_tokenizer(root), layout=OPENPI_JAX_LAYOUT,
        source_sha256=hash_params(params_dir) if hash_weights else None, robot_state_dim=state_dim,
        robot_action_dim=action_dim, camera_names=cfg.cameras, weights_files=files,
        weights_bytes=sum(f.stat().st_size for f in files), features=trained_features(raw))


def _openpi_jax_config(root: Path, settings: dict, sizes: dict) -> dict:
    """The config fields detect_config reads: a config.json beside params/ if any, the sizes the tree's einsum
    shapes tell, and the settings given on the command line (which must agree with config.json)."""
    raw = read_config(root) if (root / CONFIG_FILE).is_file() else {}
    unknown = sorted(set(settings) - set(OPENPI_SETTINGS))
    if unknown:
        raise CheckpointError(f"unknown openpi settings {unknown}; known: {sorted(OPENPI_SETTINGS)}")
    for name, value in settings.items():
        if value is not None and raw.get(name, value) != value:
            raise CheckpointError(f"{OPENPI_SETTINGS[name]} {value} but {root / CONFIG_FILE} gives {name} = "
                                  f"{raw[name]!r}; drop one of them")
        if value is not None:
            raw[name] = value
    if raw.get("action_horizon") is None:
        raise CheckpointError(f"{root}: an openpi JAX checkpoint does not record its action horizon (openpi's "
                              "training config does): pass --action-horizon N (e.g. pi0_base 50, pi0_droid 10, "
                              "pi05_droid 15, pi05_libero 10; docs/export.md, \"openpi JAX checkpoints\")")
    return {**raw, SIZES_KEY: {**sizes, **(raw.get(SIZES_KEY) or {})}}
