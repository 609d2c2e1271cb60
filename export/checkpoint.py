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
One sequential pass of plain reads (page cache, not this process's memory) hashes the files, scans every
tensor for NaN/Inf and fills the tensors that must change dtype, which so cost only their new bytes.
Sizes come from the tensor shapes; config.json fills in what shapes cannot say (heads, horizon, prompt
length, cameras) and is checked against them: a contradiction is an error naming both.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pi0edge.contract import DEFAULT_CAMERAS
from pi0edge.errors import CheckpointError
from pi0edge.export.config import GemmaConfig, Pi0Config, VisionConfig
from pi0edge.normalization import NormStats, NormStatsError

LAYOUTS = ("lerobot", "openpi")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.model", "paligemma_tokenizer.model", "assets/tokenizer.model")
LEROBOT_MODEL_PREFIX = "model."  # LeRobot wraps the openpi module as `policy.model`
# config.json key under which pi0edge's writer records sizes that no published variant name describes.
SIZES_KEY = "pi0edge_config"
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
# LeRobot < 0.4 kept its normalizer buffers beside the weights (read as statistics, not parameters).
LEGACY_STATS_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")
LEGACY_STATS_KEYS = {"observation.state": ("normalize_inputs.buffer_observation_state.",),
                     "action": ("unnormalize_outputs.buffer_action.", "normalize_targets.buffer_action.")}

# safetensors dtype names -> (torch dtype, bytes per element); only the float ones are model weights.
SAFETENSORS_DTYPES = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
SCAN_CHUNK_BYTES = 1 << 24  # one 16 MB read buffer for hashing, NaN/Inf scanning and copying

# Gemma variants by name (openpi `gemma.get_config`): width, depth, mlp, heads, kv heads, head dim.
GEMMA_VARIANTS = {
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
}
for _name in ("gemma_2b", "gemma_300m"):
    GEMMA_VARIANTS[_name + "_lora"] = GEMMA_VARIANTS[_name]
SIGLIP_SO400M_WIDTH, SIGLIP_SO400M_HEADS = 1152, 16
LEROBOT_NORM_KINDS = {"MEAN_STD": "mean_std", "QUANTILES": "quantile"}
DEFAULT_NORM_KIND = {"pi0": "mean_std", "pi05": "quantile"}  # LeRobot defaults and openpi's rule alike


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors header: where it lives and what it claims to be."""

    file: Path
    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int = 0  # absolute byte offsets of the data in the file
    end: int = 0


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


# ---- safetensors files -------------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header (8-byte little-endian length, JSON) without reading data."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if head[:2] == b"PK" or head[:1] == b"\x80":
            raise CheckpointError(f"{path}: this is a pickled PyTorch file, not safetensors; pi0edge only loads "
                                  "safetensors (pickles can run code). Convert it with safetensors.torch.save_file")
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated or not a safetensors file ({size} bytes, shorter than the "
                                  "8-byte header length)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(f"{path}: truncated or not a safetensors file (header length {header_len} bytes, "
                                  f"file {size} bytes)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
    data_bytes = size - 8 - header_len
    infos = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
            start, end = int(start), int(end)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: header entry of tensor '{key}' is malformed ({exc!r})") from exc
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor '{key}' has unknown dtype {dtype!r}")
        nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]
        if end - start != nbytes or start < 0:
            raise CheckpointError(f"{path}: tensor '{key}' declares shape {list(shape)} {dtype} ({nbytes} bytes) but "
                                  f"its data_offsets span {end - start} bytes")
        if end > data_bytes:
            raise CheckpointError(f"{path}: truncated: tensor '{key}' ends at data byte {end} but the file holds "
                                  f"only {data_bytes} bytes of data")
        infos[key] = TensorInfo(path, key, dtype, shape, 8 + header_len + start, 8 + header_len + end)
    spans = sorted(infos.values(), key=lambda i: (i.start, i.end))
    for a, b in zip(spans, spans[1:], strict=False):
        if b.start < a.end:
            raise CheckpointError(f"{path}: tensors '{a.key}' and '{b.key}' overlap in the data section")
    return infos


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


def _scan_files(files: list[Path], infos: list[TensorInfo], *, digest: Any | None, check_finite: bool,
                targets: dict[str, torch.Tensor]) -> None:
    """One sequential pass over the weight files with plain reads (page cache, not this process's RSS).

    Per chunk: hash the bytes (the whole files, in order, when `digest` is given), scan for NaN/Inf,
    and copy/convert into the in-memory tensor `targets[key]` when the tensor is not memory-mapped.
    Chunks are tensor-relative and a multiple of 8 bytes, so no element is ever split.
    """
    buf = bytearray(SCAN_CHUNK_BYTES)
    for file in files:
        todo = sorted((i for i in infos if i.file == file), key=lambda i: i.start)
        if digest is None:
            todo = [i for i in todo if check_finite or i.key in targets]
        if digest is not None or todo:
            with open(file, "rb", buffering=0) as f:
                _scan_file(f, file, todo, buf, digest=digest, check_finite=check_finite, targets=targets)


def _scan_file(f, file: Path, todo: list[TensorInfo], buf: bytearray, *, digest: Any | None, check_finite: bool,
               targets: dict[str, torch.Tensor]) -> None:
    view = memoryview(buf)
    pos = 0

    def read(upto: int, what: str) -> int:
        n = f.readinto(view[:min(len(buf), upto - pos)])
        if not n:
            raise CheckpointError(f"{file}: truncated while reading {what} (at byte {pos})")
        if digest is not None:
            digest.update(view[:n])
        return n

    for info in todo:
        if digest is None:  # bytes between tensors (header, padding) only matter to the hash
            f.seek(info.start)
            pos = info.start
        while pos < info.start:
            pos += read(info.start, "the header")
        dtype, itemsize = SAFETENSORS_DTYPES[info.dtype]
        target = targets.get(info.key)
        flat = target.view(-1) if target is not None else None
        elem = 0
        while pos < info.end:
            n = read(info.end, f"tensor '{info.key}'")
            if n % itemsize:
                raise CheckpointError(f"{file}: short read inside tensor '{info.key}' (at byte {pos})")
            values = torch.frombuffer(buf, dtype=dtype, count=n // itemsize)
            if check_finite and not bool(torch.isfinite(values).all()):
                raise CheckpointError(f"{file}: tensor '{info.key}' contains NaN or Inf; the checkpoint is corrupt "
                                      "(pass check_finite=False to load it anyway)")
            if flat is not None:
                flat[elem:elem + values.numel()].copy_(values)  # converts dtype when they differ
            elem += values.numel()
            pos += n
    if digest is not None:
        size = file.stat().st_size
        while pos < size:
            pos += read(size, "the end of the file")


# ---- config: tensor shapes first, config.json for what shapes cannot say ------------------------------


def _read_config(root: Path) -> dict:
    path = root / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return raw


def detect_layout(root: Path, raw: dict) -> str:
    if "type" in raw or any(root.glob("policy_*processor*.safetensors")):
        return "lerobot"
    if any(root.glob("assets/*/norm_stats.json")) or "action_horizon" in raw or "paligemma_variant" in raw:
        return "openpi"
    raise _unknown_layout(root, "neither a LeRobot config.json/processor files nor openpi assets were found")


def _layer_count(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for name in shapes if (m := pattern.match(name))}
    return max(indices) + 1 if indices else 0


class _ConfigReader:
    """Reads sizes from shapes and checks each against what config.json (or a variant name) claims."""

    def __init__(self, raw: dict, keys: dict[str, TensorInfo], source: str, weights: str):
        self.raw, self.keys, self.source, self.weights = raw, keys, source, weights
        self.shapes = {name: info.shape for name, info in keys.items()}
        block = raw.get(SIZES_KEY)
        self.block: dict = block if isinstance(block, dict) else {}

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise CheckpointError(f"{self.weights}: missing tensor '{checkpoint_key(name)}' (our '{name}'), needed "
                                  "to tell the model's sizes")
        return self.shapes[name]

    def agree(self, field: str, from_shape: int, name: str, claimed: Any, where: str) -> int:
        if claimed is not None and claimed != from_shape:
            info = self.keys[name]
            raise CheckpointError(f"{where} gives {field} = {claimed!r}, but tensor '{info.key}' in {info.file} has "
                                  f"shape {list(info.shape)}, which gives {from_shape}; the config does not match "
                                  "these weights")
        return from_shape

    def claim(self, *path: str) -> tuple[Any, str]:
        """A value from the pi0edge block, e.g. claim("vlm", "width") -> (value or None, where it came from)."""
        node: Any = self.block
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        return node, f"{self.source} {SIZES_KEY}.{'.'.join(path)}"

    def vision(self) -> VisionConfig:
        patch = self.shape("vision.embeddings.patch_embedding.weight")  # [w, 3, patch, patch]
        tokens, _ = self.shape("vision.embeddings.position_embedding.weight")  # [patches per image, w]
        side = math.isqrt(tokens)
        if side * side != tokens or len(patch) != 4 or patch[2] != patch[3]:
            raise CheckpointError(f"vision tower: position embedding of {tokens} patches / patch kernel {list(patch)} "
                                  "is not a square image grid")
        width, patch_size = patch[0], patch[2]
        image_size = side * patch_size
        res = self.raw.get("image_resolution")
        if isinstance(res, list | tuple) and len(res) == 2:
            self.agree("image size", image_size, "vision.embeddings.position_embedding.weight", res[0],
                       f"{self.source} image_resolution")
        values = {"width": width, "depth": _layer_count(self.shapes, "vision.encoder.layers."),
                  "mlp_dim": self.shape("vision.encoder.layers.0.mlp.fc1.weight")[0], "patch_size": patch_size,
                  "image_size": image_size}
        patch_key, fc1_key = "vision.embeddings.patch_embedding.weight", "vision.encoder.layers.0.mlp.fc1.weight"
        evidence = {"width": patch_key, "patch_size": patch_key, "depth": fc1_key, "mlp_dim": fc1_key,
                    "image_size": "vision.embeddings.position_embedding.weight"}
        for field, value in values.items():
            self.agree(f"vision {field}", value, evidence[field], *self.claim("vision", field))
        heads, _ = self.claim("vision", "num_heads")
        if heads is None:
            if width != SIGLIP_SO400M_WIDTH:
                raise CheckpointError(f"{self.source}: the vision tower is {width} wide (not SigLIP So400m's 1152), "
                                      "so its number of heads cannot be told from shapes; add "
                                      f"{SIZES_KEY}.vision.num_heads")
            heads = SIGLIP_SO400M_HEADS
        eps, _ = self.claim("vision", "layer_norm_eps")
        return self._build(VisionConfig, values, num_heads=heads, layer_norm_eps=eps)

    def gemma(self, stack: str, variant_field: str) -> GemmaConfig:
        q_out, width = self.shape(f"{stack}.layers.0.self_attn.q_proj.weight")
        kv_out, _ = self.shape(f"{stack}.layers.0.self_attn.k_proj.weight")
        values = {"width": width, "depth": _layer_count(self.shapes, f"{stack}.layers."),
                  "mlp_dim": self.shape(f"{stack}.layers.0.mlp.gate_proj.weight")[0]}
        variant_name = self.raw.get(variant_field)
        variant = GEMMA_VARIANTS.get(variant_name) if isinstance(variant_name, str) else None
        if self.claim(stack, "width")[0] is not None:
            claimed = {f.name: self.claim(stack, f.name) for f in fields(GemmaConfig)}
        elif variant is not None:
            where = f"{self.source} {variant_field}={variant_name!r}"
            claimed = {f.name: (getattr(variant, f.name), where) for f in fields(GemmaConfig)}
        else:
            # No size record: every Pi0 Gemma is multi-query (one kv head), which pins the head layout.
            claimed = {"num_kv_heads": (1, "multi-query default"), "head_dim": (kv_out, "multi-query default"),
                       "num_heads": (q_out // kv_out, "multi-query default")}
        for field in ("width", "depth", "mlp_dim"):
            evidence = f"{stack}.layers.0.self_attn.q_proj.weight" if field == "width" else (
                f"{stack}.layers.0.mlp.gate_proj.weight")
            self.agree(f"{stack} {field}", values[field], evidence, *claimed.get(field, (None, "")))
        heads, kv_heads, head_dim = (claimed[f][0] for f in ("num_heads", "num_kv_heads", "head_dim"))
        if None in (heads, kv_heads, head_dim):
            raise CheckpointError(f"{self.source}: {SIZES_KEY}.{stack} lacks num_heads/num_kv_heads/head_dim")
        self.agree(f"{stack} num_heads * head_dim", q_out, f"{stack}.layers.0.self_attn.q_proj.weight",
                   heads * head_dim, claimed["num_heads"][1])
        self.agree(f"{stack} num_kv_heads * head_dim", kv_out, f"{stack}.layers.0.self_attn.k_proj.weight",
                   kv_heads * head_dim, claimed["num_kv_heads"][1])
        extra = {f: claimed[f][0] for f in ("rms_norm_eps", "rope_base") if f in claimed}
        return self._build(GemmaConfig, values, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, **extra)

    def _build(self, cls, values: dict, **more):
        kwargs = {**values, **{k: v for k, v in more.items() if v is not None}}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.source}: sizes read from the weights do not form a valid model: "
                                  f"{exc}") from exc

    def first(self, *candidates: tuple[Any, str], default: Any = None) -> Any:
        return next((value for value, _ in candidates if value is not None), default)

    def model_type(self) -> str:
        pi0, pi05 = "action_time_mlp_in.weight" in self.shapes, "time_mlp_in.weight" in self.shapes
        if pi0 == pi05:
            what = "both" if pi0 else "neither"
            raise CheckpointError(f"weights have {what} of 'action_time_mlp_in.weight' (pi0) and 'time_mlp_in.weight' "
                                  "(pi0.5): cannot tell the model type")
        from_weights = "pi05" if pi05 else "pi0"
        evidence = self.keys["time_mlp_in.weight" if pi05 else "action_time_mlp_in.weight"]
        pi05_flag = self.raw.get("pi05")  # some openpi exports record openpi's Pi0Config.pi05
        flag = None if pi05_flag is None else ("pi05" if pi05_flag else "pi0")
        for claimed, where in (self.claim("model_type"), (self.raw.get("type"), f"{self.source} type"),
                               (flag, f"{self.source} pi05")):
            if claimed is not None and claimed != from_weights:
                raise CheckpointError(f"{where} is {claimed!r} but {evidence.file} holds '{evidence.key}', a "
                                      f"{from_weights} tensor; the config does not match these weights")
        return from_weights

    def cameras(self) -> tuple[str, ...]:
        claimed, _ = self.claim("cameras")
        if claimed:
            return tuple(claimed)
        features = self.raw.get("input_features") or {}
        names = [k.removeprefix("observation.images.") for k, v in features.items()
                 if k.startswith("observation.images.") and isinstance(v, dict) and v.get("type") == "VISUAL"]
        names += [f"empty_camera_{i}" for i in range(int(self.raw.get("empty_cameras") or 0))]
        return tuple(names) or DEFAULT_CAMERAS

    def config(self) -> Pi0Config:
        model_type = self.model_type()
        vision, vlm, expert = self.vision(), self.gemma("vlm", "paligemma_variant"), self.gemma(
            "expert", "action_expert_variant")
        vocab, embed_width = self.shape(EMBED_NAME)
        self.agree("vlm width", embed_width, EMBED_NAME, vlm.width, "the VLM's q_proj input width")
        self.agree("vocab_size", vocab, EMBED_NAME, *self.claim("vocab_size"))
        raw = self.raw
        action_dim = self.shape("action_in_proj.weight")[1]
        for claimed in (self.claim("action_dim"), (raw.get("max_action_dim"), f"{self.source} max_action_dim"),
                        (raw.get("action_dim"), f"{self.source} action_dim")):
            self.agree("action_dim", action_dim, "action_in_proj.weight", *claimed)
        state_claims = (self.claim("state_dim"), (raw.get("max_state_dim"), f"{self.source} max_state_dim"))
        if model_type == "pi0":
            state_dim = self.shape("state_proj.weight")[1]
            for claimed in state_claims:
                self.agree("state_dim", state_dim, "state_proj.weight", *claimed)
        else:  # pi0.5 has no state projection: the state is in the prompt, padded like openpi to action_dim
            state_dim = self.first(*state_claims, default=action_dim)
        horizon = self.first(self.claim("action_horizon"), (raw.get("chunk_size"), ""),
                             (raw.get("action_horizon"), ""), default=50)
        token_len = self.first(self.claim("max_token_len"), (raw.get("tokenizer_max_length"), ""),
                               default=200 if model_type == "pi05" else 48)
        more = {k: self.first(self.claim(k), (raw.get(k), "")) for k in ("min_period", "max_period")}
        try:
            return Pi0Config(
                model_type=model_type, vision=vision, vlm=vlm, expert=expert, vocab_size=vocab, action_dim=action_dim,
                state_dim=int(state_dim), action_horizon=int(horizon), max_token_len=int(token_len),
                num_steps=int(self.first(self.claim("num_steps"), (raw.get("num_inference_steps"), ""), default=10)),
                cameras=self.cameras(), **{k: float(v) for k, v in more.items() if v is not None})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.source}: the configuration read from it and the weights is invalid: "
                                  f"{exc}") from exc


def detect_config(raw: dict, infos: dict[str, TensorInfo], *, source: str = CONFIG_FILE,
                  weights: str = WEIGHTS_FILE) -> Pi0Config:
    """The Pi0Config of mapped tensors `infos` (ours -> TensorInfo) and config.json contents `raw`.

    source / weights: how messages name config.json and the weight file(s)."""
    return _ConfigReader(raw, infos, source, weights).config()


def sizes_record(cfg: Pi0Config) -> dict:
    """The config.json block that records sizes no variant name describes (read back by detect_config)."""
    record = asdict(cfg)
    record["cameras"] = list(cfg.cameras)
    return record


# ---- normalization statistics ---------------------------------------------------------------------


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


def _lerobot_stats(root: Path, raw: dict, model_type: str, infos: dict[str, TensorInfo]
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


def _openpi_stats(root: Path, model_type: str, asset_id: str | None) -> tuple[NormStats | None, str]:
    looked = "assets/<asset_id>/norm_stats.json"
    if asset_id is not None:
        paths = [root / "assets" / asset_id / "norm_stats.json"]
        paths = [p for p in paths if p.is_file()]
        looked = f"assets/{asset_id}/norm_stats.json"
    else:
        paths = sorted(root.glob("assets/*/norm_stats.json"))
    if not paths:
        return None, looked
    if len(paths) > 1:
        found = [str(p.relative_to(root)) for p in paths]
        raise CheckpointError(f"{root}: several statistics files {found}; choose one with asset_id=")
    path = paths[0]
    kind = DEFAULT_NORM_KIND[model_type]  # openpi: quantile norm for every model but pi0
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


def _robot_dims(raw: dict, cfg: Pi0Config, stats: NormStats | None, source: Path) -> tuple[int, int]:
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
    raw = _read_config(root)
    files, weight_map = _weight_files(root)
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
