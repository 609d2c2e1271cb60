"""Checkpoint layouts: which files a LeRobot or openpi-PyTorch directory holds and how its keys map to ours.

Formats (docs/model.md, "Checkpoint formats a user will hold"; for users docs/export.md, "Checkpoints it reads"):
- LeRobot `save_pretrained`: config.json ("type": "pi0"/"pi05"), model.safetensors with keys under
  `model.` (some published checkpoints lack it), normalizer statistics in
  `policy_{pre,post}processor_step_*_{normalizer,unnormalizer}_processor.safetensors`.
- openpi PyTorch (converted): the same module names without `model.`, a small config.json,
  statistics in `assets/<asset_id>/norm_stats.json`.

Safetensors only: a pickled `.bin`/`.pt` can run code when loaded, so it is refused, never opened.
"""

from __future__ import annotations

import json
from pathlib import Path

from pi0edge.errors import CheckpointError
from pi0edge.export.checkpoint.safetensors_io import WEIGHTS_FILE, WEIGHTS_INDEX_FILE, TensorInfo

CONFIG_FILE = "config.json"
# LeRobot < 0.4 kept its normalizer buffers beside the weights (read as statistics, not parameters).
LEGACY_STATS_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")
LEGACY_STATS_KEYS = {"observation.state": ("normalize_inputs.buffer_observation_state.",),
                     "action": ("unnormalize_outputs.buffer_action.", "normalize_targets.buffer_action.")}

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


def few(keys: list[str], n: int = 5) -> str:
    """The first n keys and how many more: a message names what is wrong without listing thousands."""
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
                              f"{few(unexpected)}")
    if EMBED_NAME not in mapped and tied is not None:
        mapped[EMBED_NAME] = tied
    return mapped


# ---- weight files and layout --------------------------------------------------------------------------


def weight_files(root: Path) -> tuple[list[Path], dict[str, str] | None]:
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
    raise unknown_layout(root, f"no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}")


def unknown_layout(root: Path, why: str) -> CheckpointError:
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:20]
    return CheckpointError(
        f"{root}: unknown checkpoint layout ({why}). Found: {found or 'no files'}. Expected LeRobot (config.json with "
        "\"type\": \"pi0\"/\"pi05\", model.safetensors, policy_preprocessor_step_*_normalizer_processor.safetensors) "
        "or openpi PyTorch (model.safetensors, config.json, assets/<asset_id>/norm_stats.json), or openpi JAX "
        "(params/ as orbax writes it, assets/<asset_id>/norm_stats.json)")


def detect_layout(root: Path, raw: dict) -> str:
    """"lerobot" or "openpi", from config.json's fields and the files beside it."""
    if "type" in raw or any(root.glob("policy_*processor*.safetensors")):
        return "lerobot"
    if any(root.glob("assets/*/norm_stats.json")) or "action_horizon" in raw or "paligemma_variant" in raw:
        return "openpi"
    raise unknown_layout(root, "neither a LeRobot config.json/processor files nor openpi assets were found")


def find_tokenizer(root: Path) -> Path | None:
    """The first of TOKENIZER_FILES the checkpoint holds, or None."""
    return next((root / name for name in TOKENIZER_FILES if (root / name).is_file()), None)
