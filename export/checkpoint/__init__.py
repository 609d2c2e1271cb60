"""Checkpoints: a LeRobot, openpi-PyTorch or openpi JAX directory -> Pi0Model with weights, stats and tokenizer.

The entry point is `load_checkpoint` (loader.py). One concept per module, imported in this order and never
back: safetensors_io.py (headers, the one hashing/NaN-scan/convert pass), layouts.py (which files, key
names), config.py (sizes from shapes and config.json), stats.py (normalization statistics), orbax_io.py
(an orbax store read with tensorstore), openpi_tree.py (openpi's JAX tree and its table onto ours),
openpi_jax.py (that tree -> our names, shapes and tensors), loader.py.
The formats it reads are in docs/export.md, "Checkpoints it reads".
"""

from pi0edge.export.checkpoint.config import (
    GEMMA_VARIANTS,
    SIGLIP_SO400M_HEADS,
    SIGLIP_SO400M_WIDTH,
    SIZES_KEY,
    detect_config,
    sizes_record,
)
from pi0edge.export.checkpoint.layouts import (
    CONFIG_FILE,
    EMBED_NAME,
    IGNORED_KEYS,
    IGNORED_PREFIXES,
    LAYOUTS,
    LEGACY_STATS_KEYS,
    LEGACY_STATS_PREFIXES,
    LEROBOT_MODEL_PREFIX,
    PICKLE_SUFFIXES,
    PREFIXES,
    TIED_EMBEDDING_KEYS,
    TOKENIZER_FILES,
    TOP_LEVEL_MODULES,
    checkpoint_key,
    detect_layout,
    find_tokenizer,
    map_keys,
    model_name,
)
from pi0edge.export.checkpoint.loader import LoadedCheckpoint, load_checkpoint
from pi0edge.export.checkpoint.safetensors_io import (
    FLOAT_DTYPES,
    MAX_HEADER_BYTES,
    SAFETENSORS_DTYPES,
    SCAN_CHUNK_BYTES,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    TensorInfo,
    read_safetensors_header,
)
from pi0edge.export.checkpoint.stats import DEFAULT_NORM_KIND, LEROBOT_NORM_KINDS

__all__ = [
    "CONFIG_FILE", "DEFAULT_NORM_KIND", "EMBED_NAME", "FLOAT_DTYPES", "GEMMA_VARIANTS", "IGNORED_KEYS",
    "IGNORED_PREFIXES", "LAYOUTS", "LEGACY_STATS_KEYS", "LEGACY_STATS_PREFIXES", "LEROBOT_MODEL_PREFIX",
    "LEROBOT_NORM_KINDS", "MAX_HEADER_BYTES", "PICKLE_SUFFIXES", "PREFIXES", "SAFETENSORS_DTYPES",
    "SCAN_CHUNK_BYTES", "SIGLIP_SO400M_HEADS", "SIGLIP_SO400M_WIDTH", "SIZES_KEY", "TIED_EMBEDDING_KEYS",
    "TOKENIZER_FILES", "TOP_LEVEL_MODULES", "WEIGHTS_FILE", "WEIGHTS_INDEX_FILE", "LoadedCheckpoint", "TensorInfo",
    "checkpoint_key", "detect_config", "detect_layout", "find_tokenizer", "load_checkpoint", "map_keys",
    "model_name", "read_safetensors_header", "sizes_record",
]
