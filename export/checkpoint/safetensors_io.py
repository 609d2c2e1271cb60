"""Safetensors files without trusting them: header parsing and the one sequential pass over the data.

`read_safetensors_header` validates a header (length, JSON, dtypes, offsets inside the file, no overlaps)
without reading tensor data. `scan_files` makes one sequential pass of plain reads (page cache, not this
process's memory) that hashes the files, scans every tensor for NaN/Inf and fills the tensors that must
change dtype, which so cost only their new bytes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pi0edge.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"  # a checkpoint's weights in one file, or shards named by the index
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"

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


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors header: where it lives and what it claims to be."""

    file: Path
    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int = 0  # absolute byte offsets of the data in the file
    end: int = 0


def _looks_pickled(head: bytes) -> bool:
    """A pickle (protocol 2+: 0x80, then the protocol) or a zip (torch.save's format since 1.6: "PK\\x03\\x04")."""
    return head[:1] == b"\x80" or head[:2] == b"PK"


def _header_bytes(path: Path, size: int) -> tuple[int, bytes]:
    """The header length and the JSON header's bytes. The length is little-endian, so its low byte comes
    first and may be 0x80 or spell "PK": a file is called a pickle only when its header is not valid safetensors."""
    with path.open("rb") as f:
        head = f.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        plausible = header_len is not None and header_len <= min(size - 8, MAX_HEADER_BYTES)
        raw = f.read(header_len) if plausible else b""
    if not raw.startswith(b"{") and _looks_pickled(head):
        raise CheckpointError(f"{path}: this is a pickled PyTorch file, not safetensors; pi0edge only loads "
                              "safetensors (pickles can run code). Convert it with safetensors.torch.save_file")
    if header_len is None:
        raise CheckpointError(f"{path}: truncated or not a safetensors file ({size} bytes, shorter than the "
                              "8-byte header length)")
    if not plausible:
        raise CheckpointError(f"{path}: truncated or not a safetensors file (header length {header_len} bytes, "
                              f"file {size} bytes)")
    return header_len, raw


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header (8-byte little-endian length, JSON) without reading data."""
    size = path.stat().st_size
    header_len, raw = _header_bytes(path, size)
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


def scan_files(files: list[Path], infos: list[TensorInfo], *, digest: Any | None, check_finite: bool,
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
                                      "(--no-finite-check exports it anyway)")
            if flat is not None:
                flat[elem:elem + values.numel()].copy_(values)  # converts dtype when they differ
            elem += values.numel()
            pos += n
    if digest is not None:
        size = file.stat().st_size
        while pos < size:
            pos += read(size, "the end of the file")
