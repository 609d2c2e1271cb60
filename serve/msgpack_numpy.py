"""openpi's msgpack-numpy wire encoding (openpi_client/msgpack_numpy.py), written here so the server does not
depend on openpi_client: an ndarray travels as {b"__ndarray__": True, b"data", b"dtype", b"shape"}, a numpy
scalar as {b"__npgeneric__": True, b"data", b"dtype"}; the keys are bytes, as openpi packs them.
Object, void and complex dtypes are refused (openpi never pickles)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pi0edge.errors import ObservationError, require

UNSUPPORTED_KINDS = ("V", "O", "c")


def _msgpack():
    return require("msgpack", "serve", "pi0edge serve")


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in UNSUPPORTED_KINDS:
        raise TypeError(f"unsupported dtype: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _unpack_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in UNSUPPORTED_KINDS:
            raise ValueError(f"unsupported dtype: {dtype}")
        return np.ndarray(buffer=obj[b"data"], dtype=dtype, shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def packb(obj: Any) -> bytes:
    return _msgpack().packb(obj, default=_pack_default)


def unpackb(data: bytes) -> Any:
    """Bytes -> object; a frame that is not valid msgpack-numpy raises ObservationError saying so."""
    msgpack = _msgpack()
    try:
        return msgpack.unpackb(data, object_hook=_unpack_hook)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise ObservationError(f"the message is not openpi msgpack-numpy: {type(exc).__name__}: {exc}") from exc
