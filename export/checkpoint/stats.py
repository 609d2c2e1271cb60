"""Normalization statistics of a checkpoint, and the robot vector lengths they imply.

LeRobot: `policy_{pre,post}processor_step_*_{normalizer,unnormalizer}_processor.safetensors`, or for
LeRobot < 0.4 the normalizer buffers inside the weights. openpi: `assets/<asset_id>/norm_stats.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pi0edge.errors import CheckpointError
from pi0edge.export.checkpoint.layouts import CONFIG_FILE, LEGACY_STATS_KEYS
from pi0edge.export.checkpoint.safetensors_io import TensorInfo, read_safetensors_header
from pi0edge.export.config import FAST_MODEL_TYPE, Pi0Config
from pi0edge.normalization import NormStats, NormStatsError

LEROBOT_NORM_KINDS = {"MEAN_STD": "mean_std", "QUANTILES": "quantile"}
DEFAULT_NORM_KIND = {"pi0": "mean_std", "pi05": "quantile", FAST_MODEL_TYPE: "mean_std"}  # LeRobot's defaults


def openpi_norm_kind(model_type: str) -> str:
    """openpi's rule: quantile normalization for every model but pi0 (Pi0-FAST included)."""
    return "mean_std" if model_type == "pi0" else "quantile"


def _lerobot_kind(raw: dict, model_type: str, source: Path) -> str:
    mapping = raw.get("normalization_mapping") or {}
    kinds = set()
    for feature in ("STATE", "ACTION"):
        mode = mapping.get(feature)
        if mode is None:
            kinds.add(DEFAULT_NORM_KIND[model_type])
        elif mode in LEROBOT_NORM_KINDS:
            kinds.add(LEROBOT_NORM_KINDS[mode])
        else:
            raise CheckpointError(f"{source}: normalization_mapping {feature} = {mode!r} is not supported "
                                  f"(supported: {', '.join(LEROBOT_NORM_KINDS)})")
    if len(kinds) > 1:
        raise CheckpointError(f"{source}: normalization_mapping uses different modes for STATE and ACTION "
                              f"({mapping}); pi0edge needs one kind for both")
    return kinds.pop()


def _load_stats_file(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    read_safetensors_header(path)  # a clear message for a broken file before safetensors' own
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).to(torch.float32).numpy() for k in f.keys()}


def _legacy_lerobot_stats(infos: dict[str, TensorInfo], first: str, second: str) -> dict[str, dict] | None:
    """LeRobot < 0.4: `normalize_inputs.buffer_observation_state.mean` etc. inside model.safetensors."""
    from safetensors import safe_open

    vectors = {}
    for feature, prefixes in LEGACY_STATS_KEYS.items():
        prefix = next((p for p in prefixes if p + first in infos and p + second in infos), None)
        if prefix is None:
            return None
        vectors[feature] = {}
        for stat in (first, second):
            info = infos[prefix + stat]
            with safe_open(str(info.file), framework="pt") as f:
                vectors[feature][stat] = f.get_tensor(info.key).to(torch.float32).numpy()
    return vectors


def lerobot_stats(root: Path, raw: dict, model_type: str, infos: dict[str, TensorInfo]
                   ) -> tuple[NormStats | None, str]:
    pre = sorted(root.glob("policy_preprocessor_step_*_normalizer_processor.safetensors"))
    post = sorted(root.glob("policy_postprocessor_step_*_unnormalizer_processor.safetensors"))
    looked = ("policy_preprocessor_step_*_normalizer_processor.safetensors, "
              "policy_postprocessor_step_*_unnormalizer_processor.safetensors and LeRobot < 0.4 normalizer buffers "
              "(normalize_inputs.buffer_observation_state.*) in the weights")
    kind = _lerobot_kind(raw, model_type, root / CONFIG_FILE)
    first, second = ("mean", "std") if kind == "mean_std" else ("q01", "q99")
    if not pre and not post:
        vectors = _legacy_lerobot_stats(infos, first, second)
        if vectors is None:
            return None, looked
        where = f"{root}: normalizer buffers in the weights"
    else:
        # State from the preprocessor; action from the postprocessor (what unnormalizes), else the preprocessor.
        sources = {"observation.state": pre[:1] or post[:1], "action": post[:1] + pre[:1]}
        vectors = {}
        for feature, paths in sources.items():
            tried = []
            for path in paths:
                stats = _load_stats_file(path)
                if f"{feature}.{first}" in stats and f"{feature}.{second}" in stats:
                    vectors[feature] = {first: stats[f"{feature}.{first}"], second: stats[f"{feature}.{second}"]}
                    break
                tried.append(f"{path.name} (keys: {sorted(stats)[:8]})")
            else:
                raise CheckpointError(f"{root}: no '{feature}.{first}'/'{feature}.{second}' statistics for {kind} "
                                      f"normalization in {'; '.join(tried) or looked}")
        where = f"{root}: normalizer statistics"
    try:
        return NormStats.from_arrays(kind, "lerobot", vectors["observation.state"], vectors["action"]), looked
    except NormStatsError as exc:
        raise CheckpointError(f"{where} are unusable: {exc}") from exc


def openpi_stats(root: Path, model_type: str, asset_id: str | None) -> tuple[NormStats | None, str]:
    looked = "assets/<asset_id>/norm_stats.json"
    if asset_id is not None:
        paths = [root / "assets" / asset_id / "norm_stats.json"]
        paths = [p for p in paths if p.is_file()]
        looked = f"assets/{asset_id}/norm_stats.json"
    else:
        # openpi names an asset folder by its asset_id or, without one, the dataset's repo_id: "org/name" nests
        paths = sorted(root.glob("assets/**/norm_stats.json"))
    if not paths:
        return None, looked
    if len(paths) > 1:
        found = [str(p.relative_to(root)) for p in paths]
        raise CheckpointError(f"{root}: several statistics files {found}; choose one with --asset-id")
    path = paths[0]
    kind = openpi_norm_kind(model_type)
    first, second = ("mean", "std") if kind == "mean_std" else ("q01", "q99")
    try:
        stats = json.loads(path.read_text())["norm_stats"]
        vectors = {}
        for name in ("state", "actions"):
            entry = stats[name]
            for key in (first, second):
                if entry.get(key) is None:
                    raise CheckpointError(f"{path}: norm_stats.{name} has no '{key}', needed for {kind} "
                                          f"normalization of {model_type}")
            vectors[name] = entry
        return NormStats.from_arrays(kind, "openpi", vectors["state"], vectors["actions"]), looked
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: expected {{\"norm_stats\": {{\"state\": ..., \"actions\": ...}}}}, "
                              f"missing {exc}") from exc
    except (NormStatsError, ValueError) as exc:
        raise CheckpointError(f"{path}: statistics are unusable: {exc}") from exc


def robot_dims(raw: dict, cfg: Pi0Config, stats: NormStats | None, source: Path) -> tuple[int, int]:
    """Robot vector lengths: the statistics' length, checked against config.json's feature shapes."""
    features = {**(raw.get("input_features") or {}), **(raw.get("output_features") or {})}
    dims = []
    for feature, stat_vec, model_dim in (("observation.state", stats and stats.state, cfg.state_dim),
                                         ("action", stats and stats.action, cfg.action_dim)):
        shape = (features.get(feature) or {}).get("shape")
        from_config = int(shape[0]) if shape else None
        dim = stat_vec.dim if stat_vec else (from_config or model_dim)
        if from_config is not None and stat_vec and from_config != stat_vec.dim:
            raise CheckpointError(f"{source}: {feature} shape {shape} disagrees with its statistics' length "
                                  f"{stat_vec.dim}")
        if dim > model_dim:
            raise CheckpointError(f"{source}: {feature} has {dim} dims, more than the model's {model_dim}")
        dims.append(dim)
    return dims[0], dims[1]
