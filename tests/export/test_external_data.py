"""Graphs over 2 GiB: the exporter spills every tensor (initializers and Constant values) to its own file;
`gather_external_data` must rewrite them into one page-aligned `.onnx.data` file that ONNX Runtime loads."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from pi0edge.export.config import tiny
from pi0edge.export.model import Pi0Model
from pi0edge.export.onnx.external_data import gather_external_data
from pi0edge.export.onnx.graphs import PrefixGraph, example_inputs, prefix_spec


def test_spilled_initializers_and_constants_are_gathered_into_one_loadable_data_file(tmp_path):
    cfg = tiny("pi0")
    torch.manual_seed(0)
    module = PrefixGraph(Pi0Model(cfg).eval())
    inputs = example_inputs(cfg, batch=1, precision="float32")["prefix"]
    names = [s.name for s in prefix_spec().inputs]
    inline = tmp_path / "inline.onnx"
    torch.onnx.export(module, tuple(inputs[n] for n in names), str(inline), input_names=names, opset_version=19,
                      dynamo=False)
    # Reproduce the >2 GiB layout: every tensor, Constant attributes included, in its own file.
    spilled_dir = tmp_path / "spilled"
    spilled_dir.mkdir()
    proto = onnx.load(str(inline))
    onnx.save_model(proto, str(spilled_dir / "prefix.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(spilled_dir.iterdir())) > 20
    out_dir = tmp_path / "bundle"
    out_dir.mkdir()
    proto = onnx.load(str(spilled_dir / "prefix.onnx"), load_external_data=False)
    gather_external_data(proto, spilled_dir, out_dir / "prefix.onnx.data")
    onnx.save_model(proto, str(out_dir / "prefix.onnx"))
    assert sorted(p.name for p in out_dir.iterdir()) == ["prefix.onnx", "prefix.onnx.data"]
    onnx.checker.check_model(str(out_dir / "prefix.onnx"))

    feeds = {n: inputs[n].numpy() for n in names}
    expected = ort.InferenceSession(str(inline), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(str(out_dir / "prefix.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
