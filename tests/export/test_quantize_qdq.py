"""export/quantize/qdq.py and calibration.py: the streaming Q/DQ writer and the activation ranges, on tiny
graphs (docs/model.md, "Quantization")."""

from __future__ import annotations

import ast
import weakref
from pathlib import Path

import numpy as np
import pytest

from pi0edge import contract as c
from pi0edge.export.quantize.bundle import boundary_gemms
from pi0edge.export.quantize.calibration import calibrate_amax, run_chunk_recording
from pi0edge.export.quantize.qdq import (
    QMAX,
    file_tensor_reader,
    plan_gemms,
    quantize_weight,
    write_qdq_graph,
)
from pi0edge.runtime import Policy
from pi0edge.runtime.profile import synthetic_observation

onnx = pytest.importorskip("onnx")
MAX_FUNCTION_LINES = 60  # house style: a function is read in one screen


def _dequantize(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    return q.astype(np.float32) * (scale[:, None] if axis == 0 else scale[None, :])


def _half_step(w: np.ndarray, scale: np.ndarray, axis: int, mode: str) -> np.ndarray:
    """Half the spacing of the quantized grid around each weight, in weight units: int8 steps are one scale
    apart; float8e4m3fn has 3 mantissa bits (relative half-step 2^-4) and subnormals 2^-9 apart."""
    s = scale[:, None] if axis == 0 else scale[None, :]
    if mode == "int8":
        return np.broadcast_to(s / 2, w.shape)
    return np.maximum(np.abs(w) * 2.0**-4, s * 2.0**-10)


@pytest.mark.parametrize("mode", ["int8", "fp8"])
@pytest.mark.parametrize("axis", [0, 1])
def test_quantized_weights_dequantize_within_half_a_step(mode, axis):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((24, 40)) * rng.uniform(0.01, 3.0, (24, 1) if axis == 0 else (1, 40))).astype(np.float32)
    zero = (slice(None), 3) if axis == 1 else (3, slice(None))
    w[zero] = 0.0  # an all-zero output channel
    q, scale = quantize_weight(w, axis, mode)
    assert q.dtype.name == {"int8": "int8", "fp8": "float8_e4m3fn"}[mode]
    assert scale.shape == (w.shape[axis],) and np.all(scale > 0)
    err = np.abs(_dequantize(q, scale, axis) - w)
    assert np.all(err <= _half_step(w, scale, axis, mode) * (1 + 1e-6))
    assert np.all(_dequantize(q, scale, axis)[zero] == 0)
    assert np.abs(q.astype(np.float32)).max() == QMAX[mode]  # each channel's largest weight uses the full range


def _counting_reader(base_dir):
    """file_tensor_reader that records which tensors were read and the most bytes alive at once."""
    read = file_tensor_reader(base_dir)
    state = {"live": 0, "peak": 0, "names": []}

    def reader(tensor):
        array = read(tensor)
        state["names"].append(tensor.name)
        state["live"] += array.nbytes
        state["peak"] = max(state["peak"], state["live"])
        weakref.finalize(array, lambda n=array.nbytes: state.__setitem__("live", state["live"] - n))
        return array

    return reader, state


def test_writer_reads_each_weight_once_and_holds_one_at_a_time(tiny_bundle_factory, tmp_path):
    bundle, _ = tiny_bundle_factory("pi0")  # the default export: the step graph has external data
    src = bundle / "denoise_step.onnx"
    model = onnx.load(str(src), load_external_data=False)
    gemms = plan_gemms(model, set(boundary_gemms(model)))
    sizes = {t.name: 4 * int(np.prod(t.dims)) for t in model.graph.initializer}
    reader, state = _counting_reader(bundle)
    report = write_qdq_graph(src, tmp_path / src.name, gemms, dict.fromkeys((g.activation for g in gemms), 1.0),
                             "int8", reader=reader)
    weights = {g.weight for g in gemms}
    assert sorted(state["names"]) == sorted(weights)  # each quantized weight read once, nothing else read
    assert state["peak"] == max(sizes[w] for w in weights)  # never two float32 weights alive at once
    assert report.weight_bytes_read == sum(sizes[w] for w in weights)
    out = onnx.load(str(tmp_path / src.name), load_external_data=False)
    locations = {e.value for t in out.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {src.name + ".data"}  # the bundle's `<graph>.onnx.data` convention


def test_amax_calibration_is_the_max_abs_over_the_samples(tiny_bundle_factory, tmp_path):
    bundle, _ = tiny_bundle_factory("pi0")
    rng = np.random.default_rng(1)
    model = onnx.load(str(bundle / "denoise_step.onnx"), load_external_data=False)
    with Policy(bundle, whole_loop=False) as policy:
        m = policy.manifest
        _, steps, _ = run_chunk_recording(policy, synthetic_observation(policy, seed=1),
                                          rng.standard_normal((1, m.action_horizon, m.action_dim), dtype=np.float32))
    assert c.X_T in {i.name for i in model.graph.input}
    amax = calibrate_amax(bundle / "denoise_step.onnx", [c.X_T], steps, tmp_path / "work")
    assert amax[c.X_T] == max(float(np.abs(s[c.X_T]).max()) for s in steps)
    assert not (tmp_path / "work").exists()  # the augmented graph and its data link are removed
    assert len(list(bundle.iterdir())) == len(m.files) + 1  # nothing written into the source bundle


def test_every_function_of_the_quantize_package_is_short():
    import pi0edge.export.quantize as package

    files = sorted(Path(package.__file__).parent.glob("*.py"))
    assert {"qdq.py", "calibration.py", "bundle.py", "command.py"} <= {f.name for f in files}
    long = [f"{f.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for f in files for node in ast.walk(ast.parse(f.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long
