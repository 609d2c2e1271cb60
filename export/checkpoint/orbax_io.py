"""Orbax checkpoints read without JAX or orbax: each array is a zarr array in a tensorstore key-value store.

What orbax's PyTreeCheckpointer writes into a `params/` folder (docs/export.md, "openpi JAX checkpoints"):
`_METADATA` (the tree's key paths), `_CHECKPOINT_METADATA`, and the arrays, one zarr array per leaf
under the key `<path joined by '.'>/` (`.zarray` for zarr v2, `zarr.json` for zarr v3), stored in an OCDBT
database (`manifest.ocdbt`, `d/`, `ocdbt.process_*/`) or, in orbax before OCDBT, as plain folders.
tensorstore reads both, one array at a time, so the reader holds at most one stored array beyond what
it keeps.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pi0edge.errors import CheckpointError, require

PARAMS_DIR = "params"  # openpi: <checkpoint>/params (the orbax item) beside <checkpoint>/assets
ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "commit_success.txt")
ZARR_METADATA = {b".zarray": "zarr", b"zarr.json": "zarr3"}  # metadata key -> tensorstore driver
# zarr dtype names -> safetensors' (the names the rest of the loader speaks)
ZARR_DTYPES = {"<f4": "F32", "float32": "F32", "bfloat16": "BF16", "<f2": "F16", "float16": "F16",
               "<f8": "F64", "float64": "F64"}


@dataclass(frozen=True)
class StoredArray:
    """One leaf of an orbax tree: its key in the store, '/'-joined tree path, shape and dtype."""

    key: str  # e.g. "params.PaliGemma.llm.layers.mlp.linear"
    path: str  # e.g. "PaliGemma/llm/layers/mlp/linear" (openpi's own spelling, without "params/")
    shape: tuple[int, ...]
    dtype: str  # safetensors name: F32, BF16, F16, F64
    driver: str  # tensorstore driver: zarr or zarr3


def is_orbax_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in ORBAX_MARKERS)


def find_params_dir(root: Path) -> Path | None:
    """<root>/params when it is an orbax checkpoint, root itself when it is one; else None."""
    if (root / PARAMS_DIR).is_dir():
        if not is_orbax_dir(root / PARAMS_DIR):
            raise CheckpointError(f"{root / PARAMS_DIR}: a params folder that is not an orbax checkpoint (none of "
                                  f"{', '.join(ORBAX_MARKERS)}); an openpi JAX checkpoint holds params/ as orbax "
                                  "writes it and assets/<asset_id>/norm_stats.json")
        return root / PARAMS_DIR
    return root if is_orbax_dir(root) else None


def _kvstore_spec(params_dir: Path) -> dict:
    base = {"driver": "file", "path": str(params_dir.resolve()) + "/"}
    return {"driver": "ocdbt", "base": base} if (params_dir / "manifest.ocdbt").is_file() else base


def _tensorstore():
    return require("tensorstore", "openpi", "reading an openpi JAX (orbax) checkpoint")


def list_arrays(params_dir: Path) -> dict[str, StoredArray]:
    """Every array of the checkpoint by tree path, from the zarr metadata alone (no tensor data is read).

    openpi's training saves an nnx.State whose every path ends in "value"; that suffix is dropped, as
    openpi's restore_params does, so both spellings give the same paths."""
    ts = _tensorstore()
    try:
        kv = ts.KvStore.open(_kvstore_spec(params_dir)).result()
        keys = kv.list().result()
    except Exception as exc:  # tensorstore raises ValueError subclasses with its own texts
        raise CheckpointError(f"{params_dir}: cannot open the orbax checkpoint's store: {exc}") from exc
    arrays = {}
    for key in keys:
        name, _, leaf = key.rpartition(b"/")
        if leaf not in ZARR_METADATA:
            continue
        arrays[name.decode()] = _array_info(params_dir, name.decode(), kv.read(key).result().value,
                                            ZARR_METADATA[leaf])
    if not arrays:
        raise CheckpointError(f"{params_dir}: an orbax checkpoint without arrays (no zarr '.zarray' or 'zarr.json' "
                              "in its store); was it written completely?")
    if all(a.path.endswith("/value") for a in arrays.values()):
        arrays = {k: _replace_path(a, a.path.removesuffix("/value")) for k, a in arrays.items()}
    return {a.path: a for a in arrays.values()}


def _replace_path(a: StoredArray, path: str) -> StoredArray:
    return StoredArray(a.key, path, a.shape, a.dtype, a.driver)


def _array_info(params_dir: Path, key: str, raw: bytes, driver: str) -> StoredArray:
    try:
        meta = json.loads(raw)
        shape = tuple(int(d) for d in meta["shape"])
        dtype = meta["dtype"] if driver == "zarr" else meta["data_type"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{params_dir}: array '{key}' has unreadable zarr metadata ({exc!r})") from exc
    if dtype not in ZARR_DTYPES:
        raise CheckpointError(f"{params_dir}: array '{key}' has dtype {dtype!r}; model weights must be a float type "
                              f"({', '.join(sorted(ZARR_DTYPES))})")
    path = key.removeprefix(PARAMS_DIR + ".").replace(".", "/")
    return StoredArray(key, path, shape, ZARR_DTYPES[dtype], driver)


@functools.cache
def _read_context():
    """One chunk decoded and one file read at a time: orbax chunks a scanned stack into a few chunks of up to
    ~1 GiB, and decoding them concurrently holds each one's buffer beside the array being filled (the full-size
    VLM gating_einsum, 2.25 GiB: peak 4.7 GiB read concurrently, 3.65 GiB one at a time, no slower)."""
    return _tensorstore().Context({"data_copy_concurrency": {"limit": 1}, "file_io_concurrency": {"limit": 1}})


def read_array(params_dir: Path, array: StoredArray) -> np.ndarray:
    """One array's values (bfloat16 as ml_dtypes.bfloat16), read whole."""
    ts = _tensorstore()
    spec = {"driver": array.driver, "kvstore": {**_kvstore_spec(params_dir), "path": array.key + "/"}}
    if spec["kvstore"]["driver"] == "file":
        spec["kvstore"]["path"] = str(params_dir.resolve() / array.key) + "/"
    try:
        values = ts.open(spec, open=True, read=True, context=_read_context()).result().read().result()
    except Exception as exc:  # a missing or corrupt chunk: name the array
        raise CheckpointError(f"{params_dir}: cannot read array '{array.path}': {exc}") from exc
    if tuple(values.shape) != array.shape:
        raise CheckpointError(f"{params_dir}: array '{array.path}' read as shape {list(values.shape)}, its metadata "
                              f"says {list(array.shape)}")
    return values
