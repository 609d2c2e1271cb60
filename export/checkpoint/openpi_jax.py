"""An openpi JAX checkpoint's tree -> our tensors: names and shapes first, then one stored array at a time.

`mapped_infos` gives the loader what a safetensors header gives it (our name -> TensorInfo with our
shape), so sizes, model type and the shape checks run on the same code as the other layouts;
`read_weights` then reads each stored array once, cuts the scanned ones into layers, converts each slice
into its own tensor and drops the stored array before the next (peak: the model plus one stored array).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from pi0edge.errors import CheckpointError
from pi0edge.export.checkpoint.openpi_tree import Row, openpi_shapes, tree_rows
from pi0edge.export.checkpoint.orbax_io import StoredArray, read_array
from pi0edge.export.checkpoint.safetensors_io import SAFETENSORS_DTYPES, TensorInfo
from pi0edge.export.config import Pi0Config, Pi0FastConfig

HASH_CHUNK_BYTES = 1 << 24
FINITE_CHUNK_ELEMS = 1 << 24


def _layers(row: Row, array: StoredArray) -> list[int | None]:
    return list(range(array.shape[0])) if row[1] else [None]


def _key(path: str, layer: int | None) -> str:
    return path if layer is None else f"{path}[{layer}]"


def mapped_infos(params_dir: Path, arrays: dict[str, StoredArray], model_type: str) -> dict[str, TensorInfo]:
    """Our parameter name -> TensorInfo (key: the tree path and layer, shape: ours), computed on the meta
    device (no data read). A tree array of the wrong rank for its transform is named here."""
    infos = {}
    for row in tree_rows(model_type):
        array = arrays[row[0]]
        meta = torch.empty(array.shape, device="meta")
        for layer in _layers(row, array):
            for ours, transform in row[2]:
                try:
                    shape = tuple(transform(meta if layer is None else meta[layer]).shape)
                except (IndexError, RuntimeError) as exc:
                    raise CheckpointError(f"{params_dir}: array '{row[0]}' has shape {list(array.shape)}, which is "
                                          f"not openpi's layout for it ({exc})") from exc
                name = ours.format(i=layer)
                infos[name] = TensorInfo(params_dir, _key(row[0], layer), array.dtype, shape)
    return infos


def check_shapes(params_dir: Path, arrays: dict[str, StoredArray], cfg: Pi0Config | Pi0FastConfig,
                 model_type: str) -> None:
    """Every stored array against the shape openpi's modules give it for the model the tree describes."""
    for path, shape in openpi_shapes(cfg, model_type).items():
        if arrays[path].shape != shape:
            raise CheckpointError(f"{params_dir}: array '{path}' has shape {list(arrays[path].shape)}, expected "
                                  f"{list(shape)} for the openpi {model_type} model the other arrays describe")


def _torch(values: np.ndarray) -> torch.Tensor:
    """numpy -> torch without a copy; bfloat16 (ml_dtypes, which torch.from_numpy refuses) through its bits."""
    if values.dtype.name == "bfloat16":
        return torch.from_numpy(values.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(values)


def _finite(values: torch.Tensor) -> bool:
    """No NaN/Inf, scanned in chunks: isfinite over a whole 1.2 G-element stack would allocate 1.2 GB of bools."""
    return all(bool(torch.isfinite(chunk).all()) for chunk in values.reshape(-1).split(FINITE_CHUNK_ELEMS))


def read_weights(params_dir: Path, arrays: dict[str, StoredArray], model_type: str, *,
                 dtype: torch.dtype | None, check_finite: bool) -> dict[str, torch.Tensor]:
    """Our parameter name -> its own tensor in `dtype` (None: the stored dtype), one stored array at a time."""
    state = {}
    for row in tree_rows(model_type):
        array = arrays[row[0]]
        stored = _torch(np.ascontiguousarray(read_array(params_dir, array)))
        if check_finite and not _finite(stored):
            raise CheckpointError(f"{params_dir}: array '{row[0]}' contains NaN or Inf; the checkpoint is corrupt "
                                  "(--no-finite-check exports it anyway)")
        target_dtype = SAFETENSORS_DTYPES[array.dtype][0] if dtype is None else dtype
        for layer in _layers(row, array):
            for ours, transform in row[2]:
                value = transform(stored if layer is None else stored[layer])
                # A tensor of its own (never a view that would keep the whole stored array alive).
                state[ours.format(i=layer)] = torch.empty(value.shape, dtype=target_dtype).copy_(value)
        del stored
    return state


def hash_params(params_dir: Path) -> str:
    """sha256 over the params folder's files in path order (each relative path, then its bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in params_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(params_dir)).encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()
