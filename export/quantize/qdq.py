"""The Q/DQ graph writer: a float32 graph -> the same graph with INT8 / FP8 GEMMs, streamed tensor by tensor.

Math: docs/model.md, "Quantization". Every MatMul / Gemm whose weight is a float32 initializer (and that is
not kept float32) gets:
- its weight stored QUANTIZED (int8 or float8e4m3fn initializer, one scale per output channel) behind a
  DequantizeLinear (axis = the output channel);
- its activation input behind QuantizeLinear/DequantizeLinear with one calibrated scale per tensor (one pair
  per activation tensor, shared by the GEMMs that read it).
Everything else, the attention products included, stays float32, as do the graph I/O and the KV cache.

Memory: the graph is read without its external data; each weight is read alone (np.memmap at its offset in
the data file), quantized and written to the new data file before the next is read; tensors that stay float32
are copied file to file in blocks. So the writer holds about one weight tensor at a time, whatever the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pi0edge.errors import BundleError

# Largest magnitude of each mode's quantized type: symmetric int8 uses [-127, 127] (TensorRT's weight range,
# no zero point); float8e4m3fn's largest finite value is 448.
QMAX = {"int8": 127.0, "fp8": 448.0}
GEMM_OPS = frozenset({"MatMul", "Gemm"})
# ONNX opset 19 is the first with float8 QuantizeLinear/DequantizeLinear; every exported graph has it.
MIN_OPSET = 19
# External tensors start on 4 KiB boundaries, as the exporter writes them (ORT can map them page-aligned).
ALIGN_BYTES = 4096
COPY_BLOCK_BYTES = 64 << 20

TensorReader = Callable[[Any], np.ndarray]  # an initializer TensorProto -> its float32 array


@dataclass(frozen=True)
class QuantizedGemm:
    """One GEMM to quantize: its activation input, its weight initializer and that weight's output axis."""

    node: str
    activation: str
    weight: str
    weight_axis: int  # MatMul [K, N]: 1; Gemm transB=1 [N, K]: 0


@dataclass(frozen=True)
class WriteReport:
    quantized_gemms: int
    quantized_weights: int
    weight_bytes_read: int  # float32 bytes of the quantized weights: each read once


def plan_gemms(model, keep_float: set[str] | frozenset = frozenset()) -> list[QuantizedGemm]:
    """The GEMMs of `model` (loaded without external data) to quantize: a float32 2-D initializer as the
    weight (input 1), the activation as input 0, not named in keep_float, and a weight read by nothing else."""
    import onnx

    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    planned = []
    for node in model.graph.node:
        if node.op_type not in GEMM_OPS or not node.name or node.name in keep_float or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        if weight is None or weight.data_type != onnx.TensorProto.FLOAT or len(weight.dims) != 2:
            continue
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        if attrs.get("transA", 0):
            continue
        planned.append(QuantizedGemm(node.name, node.input[0], weight.name, 0 if attrs.get("transB", 0) else 1))
    weight_uses: dict[str, int] = {}
    for g in planned:
        weight_uses[g.weight] = weight_uses.get(g.weight, 0) + 1
    # a weight that some other op reads too (a tied embedding) stays float32 for all of them
    return [g for g in planned if weight_uses[g.weight] == readers[g.weight]]


def quantize_weight(w: np.ndarray, axis: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (quantized weight: int8 or ml_dtypes.float8_e4m3fn, float32 scale per output channel along `axis`).
    w ~= q * scale (docs/model.md, "Quantization"); an all-zero channel gets scale 1."""
    amax = np.abs(w).max(axis=1 - axis)
    scale = np.where(amax > 0, amax / QMAX[mode], 1.0).astype(np.float32)
    scaled = w / (scale[:, None] if axis == 0 else scale[None, :])
    np.clip(scaled, -QMAX[mode], QMAX[mode], out=scaled)
    if mode == "int8":
        return np.rint(scaled).astype(np.int8), scale
    import ml_dtypes

    return scaled.astype(ml_dtypes.float8_e4m3fn), scale


def activation_scale(amax: float, mode: str) -> np.float32:
    """Per-tensor scale from the calibrated max |x| (max calibration: no activation is clipped)."""
    return np.float32(amax / QMAX[mode] if amax > 0 else 1.0)


def external_location(tensor) -> dict[str, str] | None:
    """The tensor's external-data entries (location, offset, length), or None when its data is inline."""
    import onnx

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    return {e.key: e.value for e in tensor.external_data}


def file_tensor_reader(base_dir: Path) -> TensorReader:
    """Reads one float32 initializer: an external one as a read-only np.memmap of its own bytes only."""
    from onnx import numpy_helper

    def read(tensor) -> np.ndarray:
        where = external_location(tensor)
        if where is None:
            return numpy_helper.to_array(tensor)
        return np.memmap(base_dir / where["location"], dtype=np.float32, mode="r",
                         offset=int(where.get("offset", 0)), shape=tuple(tensor.dims))
    return read


class _DataWriter:
    """The new graph's external-data file, written tensor by tensor."""

    def __init__(self, path: Path, source_dir: Path):
        self.path, self.source_dir = path, source_dir
        self.file = open(path, "wb")  # noqa: SIM115 (closed by write_qdq_graph)

    def _start(self, tensor) -> int:
        import onnx

        offset = -self.file.tell() % ALIGN_BYTES
        self.file.write(b"\0" * offset)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        return self.file.tell()

    def _finish(self, tensor, offset: int) -> None:
        for key, value in (("location", self.path.name), ("offset", str(offset)),
                           ("length", str(self.file.tell() - offset))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value

    def write_array(self, tensor, array: np.ndarray) -> None:
        tensor.ClearField("raw_data")
        offset = self._start(tensor)
        self.file.write(np.ascontiguousarray(array).view(np.uint8).data)
        self._finish(tensor, offset)

    def copy_external(self, tensor) -> None:
        """A float32-kept tensor's bytes, source data file -> this one, in blocks (never held whole)."""
        where = external_location(tensor)
        src_offset, length = int(where.get("offset", 0)), int(where["length"])
        offset = self._start(tensor)
        with open(self.source_dir / where["location"], "rb") as src:
            src.seek(src_offset)
            while length > 0:
                block = src.read(min(COPY_BLOCK_BYTES, length))
                if not block:
                    raise BundleError(f"{self.source_dir / where['location']}: ends inside tensor {tensor.name}")
                self.file.write(block)
                length -= len(block)
        self._finish(tensor, offset)


def write_qdq_graph(src: Path, dst: Path, gemms: list[QuantizedGemm], activation_amax: dict[str, float], mode: str,
                    *, reader: TensorReader | None = None) -> WriteReport:
    """src graph -> dst graph (and `<dst>.data` when src has external data) with the planned GEMMs quantized."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise BundleError(f"{src}: ONNX opset {opset}; quantized graphs need opset {MIN_OPSET}+ (float8 Q/DQ): "
                          "re-export the bundle with this pi0edge")
    missing = sorted({g.activation for g in gemms} - set(activation_amax))
    if missing:
        raise BundleError(f"{src}: no calibrated range for {missing[:3]} ({len(missing)} activations)")
    external = any(external_location(t) is not None for t in model.graph.initializer)
    data = _DataWriter(dst.with_name(dst.name + ".data"), src.parent) if external else None
    try:
        read_bytes = _write_initializers(model, {g.weight: g.weight_axis for g in gemms}, mode,
                                         reader or file_tensor_reader(src.parent), data)
    finally:
        if data is not None:
            data.file.close()
    _insert_qdq_nodes(model, gemms, activation_amax, mode)
    onnx.save(model, str(dst))
    return WriteReport(len(gemms), len({g.weight for g in gemms}), read_bytes)


def _typed_tensor(name: str, array: np.ndarray):
    """A TensorProto of int8 / float8e4m3fn / float32 data, inline."""
    import onnx

    dtype = {"int8": onnx.TensorProto.INT8, "float8_e4m3fn": onnx.TensorProto.FLOAT8E4M3FN,
             "float32": onnx.TensorProto.FLOAT}[array.dtype.name]
    tensor = onnx.TensorProto(name=name, data_type=dtype, dims=array.shape)
    tensor.raw_data = np.ascontiguousarray(array).view(np.uint8).tobytes()
    return tensor


def _write_initializers(model, weight_axes: dict[str, int], mode: str, reader: TensorReader,
                        data: _DataWriter | None) -> int:
    """Replace each planned weight by its quantized tensor + scale; stream every external tensor into `data`.
    -> float32 bytes read for quantization."""
    out, read_bytes = [], 0
    for tensor in model.graph.initializer:
        if tensor.name in weight_axes:
            weight = reader(tensor)
            read_bytes += weight.nbytes
            q, scale = quantize_weight(weight, weight_axes[tensor.name], mode)
            del weight  # one float32 weight at a time
            quantized = _typed_tensor(tensor.name + "_quantized", q)
            if data is not None and external_location(tensor) is not None:
                data.write_array(quantized, q)
            out += [quantized, _typed_tensor(tensor.name + "_scale", scale)]
        else:
            if data is not None and external_location(tensor) is not None:
                data.copy_external(tensor)
            out.append(tensor)
    del model.graph.initializer[:]
    model.graph.initializer.extend(out)
    return read_bytes


def _zero_point(mode: str) -> np.ndarray:
    if mode == "int8":
        return np.zeros((), np.int8)
    import ml_dtypes

    return np.zeros((), ml_dtypes.float8_e4m3fn)


def _insert_qdq_nodes(model, gemms: list[QuantizedGemm], activation_amax: dict[str, float], mode: str) -> None:
    """Weight DequantizeLinear and activation QuantizeLinear/DequantizeLinear before each planned GEMM (the node
    list stays topologically sorted: each pair is emitted just before the first GEMM that reads it)."""
    from onnx import helper

    by_node = {g.node: g for g in gemms}
    emitted: set[str] = set()
    nodes, extra = [], []
    for node in model.graph.node:
        g = by_node.get(node.name)
        if g is not None:
            w_dq, x_dq = g.weight + "_dequantized", g.activation + "_dequantized"
            if g.weight not in emitted:
                emitted.add(g.weight)
                nodes.append(helper.make_node("DequantizeLinear", [g.weight + "_quantized", g.weight + "_scale"],
                                              [w_dq], name=g.weight + "_DequantizeLinear", axis=g.weight_axis))
            if g.activation not in emitted:
                emitted.add(g.activation)
                scale, zero = g.activation + "_scale", g.activation + "_zero_point"
                extra += [_typed_tensor(scale, np.asarray(activation_scale(activation_amax[g.activation], mode))),
                          _typed_tensor(zero, _zero_point(mode))]
                nodes += [helper.make_node("QuantizeLinear", [g.activation, scale, zero], [g.activation + "_quantized"],
                                           name=g.activation + "_QuantizeLinear"),
                          helper.make_node("DequantizeLinear", [g.activation + "_quantized", scale, zero], [x_dq],
                                           name=g.activation + "_DequantizeLinear")]
            node.input[0], node.input[1] = x_dq, w_dq
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(extra)
