"""Which ONNX Runtime providers really start on this machine: each one runs a tiny graph (y = x + x) and must
report itself first in the session's providers (ONNX Runtime falls back to the CPU provider silently).

The graph is ~100 bytes of ONNX protobuf written here by hand, not read from package data nor built with
`onnx`: the robot computer has no `onnx` (runtime/ never imports it), and bytes in the code cannot go
missing from a wheel. Wire format: protobuf's, fields from onnx.proto (ModelProto, GraphProto, NodeProto,
ValueInfoProto, TypeProto.Tensor, TensorShapeProto).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

# The providers pi0edge's backends use, fastest first; others an onnxruntime build lists are not probed.
PROBED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROBE_SHAPE = (1, 4)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes | int | str) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _float_tensor_value(name: str, shape: tuple[int, ...]) -> bytes:
    dims = b"".join(_field(1, _field(1, d)) for d in shape)  # TensorShapeProto.dim.dim_value
    tensor_type = _field(1, 1) + _field(2, dims)  # elem_type FLOAT = 1, shape
    return _field(1, name) + _field(2, _field(1, tensor_type))  # ValueInfoProto: name, type.tensor_type


def tiny_add_model() -> bytes:
    """ONNX model bytes: y = Add(x, x), x and y float32 PROBE_SHAPE; IR version 7, opset 13 (every provider
    pi0edge uses runs it)."""
    node = _field(1, "x") + _field(1, "x") + _field(2, "y") + _field(3, "add") + _field(4, "Add")
    graph = (_field(1, node) + _field(2, "pi0edge_probe") + _field(11, _float_tensor_value("x", PROBE_SHAPE))
             + _field(12, _float_tensor_value("y", PROBE_SHAPE)))
    opset = _field(1, "") + _field(2, 13)
    return _field(1, 7) + _field(2, "pi0edge") + _field(7, graph) + _field(8, opset)


@dataclass(frozen=True)
class ProviderProbe:
    provider: str
    started: bool  # the session ran with this provider first, and computed y = 2x
    time_ms: float  # session creation + one run
    detail: str  # the providers the session reported, or the error


def probe_provider(ort, provider: str) -> ProviderProbe:
    x = np.arange(np.prod(PROBE_SHAPE), dtype=np.float32).reshape(PROBE_SHAPE)
    t0 = time.perf_counter()
    try:
        session = ort.InferenceSession(tiny_add_model(), providers=[provider])
        (y,) = session.run(None, {"x": x})
        got = list(session.get_providers())
    except Exception as exc:  # noqa: BLE001 - whatever the provider says while failing is the diagnosis
        return ProviderProbe(provider, False, (time.perf_counter() - t0) * 1e3, f"{type(exc).__name__}: {exc}")
    elapsed_ms = (time.perf_counter() - t0) * 1e3
    started = bool(got) and got[0] == provider and np.array_equal(y, 2 * x)
    detail = f"session providers {got}" + ("" if started else f": fell back, {provider} did not initialise")
    return ProviderProbe(provider, started, elapsed_ms, detail)


def probe_providers() -> list[ProviderProbe]:
    """Every provider of PROBED_PROVIDERS this onnxruntime offers, started on the tiny graph."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [probe_provider(ort, p) for p in PROBED_PROVIDERS if p in available]
