"""bfloat16 bundles on a CPU: the float32 graph that computes what a GPU computes with bfloat16.

Why: a precision is offered only with a measured error (docs/benchmarks.md), and ONNX Runtime's CPU
provider has no bfloat16 MatMul, Add, ... kernels; it does run Cast to and from BFLOAT16, exactly (round to
nearest even, as ml_dtypes). So the bf16 graph is rewritten into a float32 graph with bfloat16 storage:
- every bf16 tensor (initializer, Constant value) becomes float32 with the same values (bf16 -> float32 is
  exact: the 16 bits move to the top of the float32);
- every tensor typed bf16 becomes float32 and is rounded to bf16 right after the node that produces it
  (Cast to BFLOAT16, Cast back to FLOAT), so each op sees bf16 inputs and computes in float32, as a GPU
  kernel with bf16 storage and float32 accumulation does; a Cast to BFLOAT16 is that same pair;
- ops that only move or select values (Reshape, Transpose, Gather, Concat, ...) get no pair: their output
  is already bf16-valued;
- graph inputs and outputs keep their names and meaning: a bf16 KV cache (`past_keys`, `past_values`) is
  float32 holding bf16 values, and a bf16 graph input is rounded on entry.
ORT_ENABLE_ALL (the runtime's level) keeps the pairs (tests/export/test_bf16_emulation.py would fail
otherwise). Not modelled: kernels that fuse several ops and round only once (TensorRT), and the summation
order inside a MatMul.

Memory: the graph proto is read without its external data, tensors are converted one at a time in chunks
and streamed into `<graph>.onnx.data`, so a full-size graph (6.3 GB bf16, 12.5 GB float32) converts on a
24 GB machine.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from pi0edge.atomic import staged_dir, write_text_atomic
from pi0edge.errors import BundleError
from pi0edge.export.onnx.external_data import PAGE_BYTES, all_tensors
from pi0edge.manifest import MANIFEST_NAME, load_manifest, sha256_file

log = logging.getLogger(__name__)

EMULATED_PRECISION = "bfloat16"
CHUNK_BYTES = 64 << 20  # bf16 bytes converted at a time
EXTERNAL_MIN_BYTES = 4096  # converted tensors at least this big go to the external-data file
# Ops whose output values are among their inputs' values (or the constant's): bf16 in, bf16-valued out.
VALUE_PRESERVING_OPS = frozenset({
    "Constant", "ConstantOfShape", "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
    "Slice", "Gather", "GatherElements", "GatherND", "Concat", "Split", "Expand", "Tile", "Where", "Pad",
    "Neg", "Abs", "Max", "Min", "Relu",
})


@dataclass(frozen=True)
class GraphEmulation:
    """What emulate_graph wrote: the graph file and its data file (None: all tensors inline)."""

    graph_path: Path
    data_path: Path | None
    rounded_tensors: int  # node outputs (and graph inputs) given a Cast pair
    converted_tensors: int  # bf16 initializers and constants now float32


@dataclass(frozen=True)
class EmulationReport:
    bundle_dir: Path
    emulate_s: float
    bundle_bytes: int
    graphs: dict[str, GraphEmulation]


# --------------------------------------------------------------------------------------------------
# tensors


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns -> float32 with the same values (the bits become the float32's top half)."""
    return (bits.astype("<u4") << 16).view("<f4")


def _external_info(tensor) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _set_external(tensor, location: str, offset: int, length: int) -> None:
    import onnx

    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


class _DataWriter:
    """The emulated graph's one external-data file, written tensor by tensor with page-aligned offsets."""

    def __init__(self, path: Path):
        self.path, self.offset, self.used = path, 0, False
        self._file = open(path, "wb")

    def begin(self) -> int:
        pad = (-self.offset) % PAGE_BYTES
        self._file.write(b"\0" * pad)
        self.offset += pad
        self.used = True
        return self.offset

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        self._file.write(view)
        self.offset += len(view)

    def close(self) -> None:
        self._file.close()


def _read_chunks(path: Path, start: int, length: int | None):
    with open(path, "rb") as f:
        f.seek(start)
        left = length if length is not None else path.stat().st_size - start
        while left > 0:
            chunk = f.read(min(CHUNK_BYTES, left))
            if not chunk:
                raise BundleError(f"{path}: external data ends {left} bytes early")
            left -= len(chunk)
            yield chunk


def _convert_tensor(tensor, source_dir: Path, out: _DataWriter) -> bool:
    """bf16 tensors -> float32 (same values); every external tensor moves into `out`. -> whether converted."""
    import onnx

    is_bf16 = tensor.data_type == onnx.TensorProto.BFLOAT16
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = _external_info(tensor)
        length = int(info["length"]) if "length" in info else None
        start = out.begin()
        for chunk in _read_chunks(source_dir / info["location"], int(info.get("offset", 0)), length):
            out.write(_bf16_to_f32(np.frombuffer(chunk, "<u2")) if is_bf16 else chunk)
        _set_external(tensor, out.path.name, start, out.offset - start)
    elif is_bf16:
        if tensor.raw_data:
            bits = np.frombuffer(tensor.raw_data, "<u2")
        else:  # ONNX keeps non-raw bf16 in int32_data, one value each
            bits = np.asarray(tensor.int32_data, np.int64).astype("<u2")
        values = _bf16_to_f32(bits)
        tensor.ClearField("raw_data")
        tensor.ClearField("int32_data")
        if values.nbytes >= EXTERNAL_MIN_BYTES:
            start = out.begin()
            out.write(values)
            _set_external(tensor, out.path.name, start, values.nbytes)
        else:
            tensor.raw_data = values.tobytes()
    else:
        return False
    if is_bf16:
        tensor.data_type = onnx.TensorProto.FLOAT
    return is_bf16


# --------------------------------------------------------------------------------------------------
# graph


def _tensor_types(model) -> dict[str, int]:
    """Every tensor's element type, by ONNX type inference on a data-free skeleton of the graph (the
    initializers become typed inputs, so no weight is copied)."""
    import onnx
    from onnx import helper

    graph = model.graph
    declared = {i.name for i in graph.input}
    inputs = list(graph.input) + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                  for t in graph.initializer if t.name not in declared]
    skeleton = helper.make_model(helper.make_graph(graph.node, graph.name, inputs, graph.output),
                                 opset_imports=model.opset_import, ir_version=model.ir_version)
    inferred = onnx.shape_inference.infer_shapes(skeleton).graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.value_info, *inferred.input, *inferred.output)}
    return {name: t for name, t in types.items() if t}


def _check_supported(graph, where: Path) -> None:
    import onnx

    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise BundleError(f"{where}: node {node.name!r} ({node.op_type}) has a subgraph; bf16 emulation "
                                  "handles flat graphs only")
            if attr.name == "dtype" and attr.i == onnx.TensorProto.BFLOAT16:
                raise BundleError(f"{where}: node {node.name!r} ({node.op_type}) makes bf16 values from "
                                  "its dtype attribute; not handled by bf16 emulation")


def _unique(name: str, suffix: str, taken: set[str]) -> str:
    out, k = f"{name}{suffix}", 1
    while out in taken:
        out, k = f"{name}{suffix}{k}", k + 1
    taken.add(out)
    return out


def _rounding_pair(src: str, dst: str, taken: set[str]) -> list:
    """src (float32) -> bf16 -> dst (float32 holding the bf16 value)."""
    import onnx
    from onnx import helper

    mid = _unique(dst, "/bf16", taken)
    return [helper.make_node("Cast", [src], [mid], name=_unique(dst, "/to_bf16", taken), to=onnx.TensorProto.BFLOAT16),
            helper.make_node("Cast", [mid], [dst], name=_unique(dst, "/from_bf16", taken), to=onnx.TensorProto.FLOAT)]


def _round_bf16_tensors(graph, types: dict[str, int], where: Path) -> int:
    """Rewrite the nodes so every bf16-typed tensor is float32, rounded to bf16 after its producer. -> pairs."""
    import onnx
    from onnx import helper

    bf16, f32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT
    taken = {o for n in graph.node for o in n.output} | {i for n in graph.node for i in n.input}
    taken |= {v.name for v in (*graph.input, *graph.output)} | {n.name for n in graph.node}
    nodes, pairs = [], 0
    renamed = {}  # bf16 graph inputs -> their rounded copy
    for value in graph.input:
        if value.type.tensor_type.elem_type == bf16:
            value.type.tensor_type.elem_type = f32
            renamed[value.name] = _unique(value.name, "/rounded", taken)
            nodes += _rounding_pair(value.name, renamed[value.name], taken)
            pairs += 1
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        for name in node.output:
            if name and name not in types:
                raise BundleError(f"{where}: ONNX type inference gives no type for {name!r} (output of "
                                  f"{node.op_type} {node.name!r}); cannot tell whether it is bf16")
        for attr in node.attribute:
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == bf16:
                raise BundleError(f"{where}: {node.op_type} {node.name!r} still holds a bf16 value")  # converted first
        rounded = [i for i, name in enumerate(node.output) if name and types[name] == bf16]
        if node.op_type in VALUE_PRESERVING_OPS:
            rounded = []
        if node.op_type == "Cast" and rounded:  # a Cast to BFLOAT16 is the pair's first half: add the second
            final = node.output[0]
            node.output[0] = _unique(final, "/bf16", taken)
            nodes += [node, helper.make_node("Cast", [node.output[0]], [final], to=f32,
                                             name=_unique(final, "/from_bf16", taken))]
            pairs += 1
            continue
        nodes.append(node)
        for i in rounded:
            final = node.output[i]
            node.output[i] = _unique(final, "/f32", taken)
            nodes += _rounding_pair(node.output[i], final, taken)
        pairs += len(rounded)
    for value in (*graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type == bf16:
            value.type.tensor_type.elem_type = f32
    new_nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]
    del graph.node[:]
    graph.node.extend(new_nodes)
    return pairs


def emulate_graph(src: Path, dst: Path) -> GraphEmulation:
    """bf16 graph file src (with its external data beside it) -> float32 emulation dst (+ dst.data)."""
    import onnx

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    _check_supported(model.graph, src)
    types = _tensor_types(model)
    data = _DataWriter(dst.parent / f"{dst.name}.data")
    try:
        converted = sum(_convert_tensor(t, src.parent, data) for t in all_tensors(model.graph))
    finally:
        data.close()
    pairs = _round_bf16_tensors(model.graph, types, src)
    if not data.used:
        data.path.unlink()
    onnx.save_model(model, str(dst))
    onnx.checker.check_model(str(dst))
    log.info("%s -> %s: %d bf16 tensors rounded, %d converted", src, dst, pairs, converted)
    return GraphEmulation(dst, data.path if data.used else None, pairs, converted)


# --------------------------------------------------------------------------------------------------
# bundle


def _graph_files(bundle_dir: Path, graph_file: str) -> set[str]:
    """The graph file and the external-data files it names."""
    import onnx

    model = onnx.load(str(bundle_dir / graph_file), load_external_data=False)
    files = {graph_file}
    for tensor in all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.add(_external_info(tensor)["location"])
    return files


def write_emulated_bundle(bundle_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                          verify_checksums: bool = True) -> EmulationReport:
    """A bfloat16 bundle -> a float32 bundle for ort-cpu whose graphs emulate bf16 (module docstring).

    bundle.yaml says `precision: float32` (what the graphs are, so every backend loads them) and
    `emulates: bfloat16`; the KV cache's dtype is float32 in the graph I/O. Other files are copied."""
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    manifest = load_manifest(bundle_dir, verify_checksums=verify_checksums)
    manifest.require_flow_graphs("the bfloat16 emulation")
    if manifest.precision != EMULATED_PRECISION:
        raise BundleError(f"{bundle_dir}: precision is {manifest.precision!r}; only {EMULATED_PRECISION} bundles "
                          "are emulated")
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} already exists; pass overwrite=True to replace it")
    start = time.perf_counter()
    raw = manifest.to_document()
    graph_files = {name: entry.file for name, entry in manifest.graphs.items()}
    graph_owned = set().union(*(_graph_files(bundle_dir, f) for f in graph_files.values()))
    with staged_dir(out_dir) as staging:
        results = {name: emulate_graph(bundle_dir / file, staging / file) for name, file in graph_files.items()}
        for name in raw["files"]:
            if name not in graph_owned:
                shutil.copyfile(bundle_dir / name, staging / name)
        for entry in raw["graphs"].values():
            for io in (*entry["inputs"], *entry["outputs"]):
                if io["dtype"] == EMULATED_PRECISION:
                    io["dtype"] = "float32"
        raw["precision"] = "float32"
        raw["emulates"] = EMULATED_PRECISION  # float32 graphs computing what bf16 graphs compute
        raw["emulated_from"] = str(bundle_dir.resolve())
        raw["files"] = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        write_text_atomic(staging / MANIFEST_NAME, yaml.safe_dump(raw, sort_keys=False))
        load_manifest(staging, verify_checksums=False)  # the reader accepts what we wrote
    results = {name: GraphEmulation(out_dir / r.graph_path.name, r.data_path and out_dir / r.data_path.name,
                                    r.rounded_tensors, r.converted_tensors) for name, r in results.items()}
    size = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    return EmulationReport(out_dir, time.perf_counter() - start, size, results)
