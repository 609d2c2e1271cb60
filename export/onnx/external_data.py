"""ONNX external data (torch-free): the tensors a graph holds, and one page-aligned `.onnx.data` per graph.

A graph over protobuf's 2 GiB keeps its weights outside the .onnx file. The TorchScript exporter spills one
file per tensor; the bundle keeps one `<graph>.onnx.data` with every tensor page-aligned, so runtimes can map
it instead of copying (ONNX Runtime does: a float32 bundle's runtime RSS is 0.89x its weights).
"""

from __future__ import annotations

from pathlib import Path

PAGE_BYTES = 4096  # page-aligned tensors let runtimes mmap them


def all_tensors(graph):
    """Initializers and the tensors inside node attributes (Constant values): over 2 GiB the exporter
    spills both kinds to files, and subgraphs' too."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from all_tensors(sub)


def gather_external_data(proto, source_dir: Path, data_path: Path) -> None:
    """Rewrite per-tensor external files into one `<graph>.onnx.data`, streaming: no tensor is held in RAM
    twice, so a full-size graph exports on a 24 GB machine."""
    import onnx

    offset = 0
    with open(data_path, "wb") as out:
        for tensor in all_tensors(proto.graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in tensor.external_data}
            src = source_dir / info["location"]
            start, length = int(info.get("offset", 0)), info.get("length")
            with open(src, "rb") as f:
                f.seek(start)
                data = f.read(int(length)) if length is not None else f.read()
            pad = (-offset) % PAGE_BYTES
            out.write(b"\0" * pad)
            offset += pad
            out.write(data)
            del tensor.external_data[:]
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(data)


def move_to_external_data(proto, data_path: Path, min_bytes: int = 1024) -> int:
    """Move the graph's inline initializers of at least min_bytes into data_path (page-aligned, appended to
    nothing: the file is written anew), in place; -> how many moved. For a graph whose weights another graph
    will reference (the loop graph reads the step graph's)."""
    import onnx
    from onnx import numpy_helper

    offset, moved = 0, 0
    with open(data_path, "wb") as out:
        for tensor in proto.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise ValueError(f"{data_path}: tensor {tensor.name} is already external")
            data = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
            if len(data) < min_bytes:
                continue
            pad = (-offset) % PAGE_BYTES
            out.write(b"\0" * pad)
            offset += pad
            out.write(data)
            kept = {"name": tensor.name, "dims": list(tensor.dims), "data_type": tensor.data_type}
            tensor.Clear()
            tensor.name, tensor.data_type = kept["name"], kept["data_type"]
            tensor.dims.extend(kept["dims"])
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(data)
            moved += 1
    return moved
