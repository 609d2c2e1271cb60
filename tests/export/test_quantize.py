"""`pi0edge quantize`: float32 bundle -> INT8 / FP8 Q/DQ bundle with its action error measured and recorded."""

from __future__ import annotations

import argparse
import shutil
import sys

import numpy as np
import pytest
import yaml

from pi0edge import contract as c
from pi0edge.export.quantize import (
    FULL_SIZE_ERRORS,
    QuantizeOptions,
    boundary_gemms,
    has_qdq,
    register_quantize,
    run_chunk_recording,
)
from pi0edge.manifest import load_manifest
from pi0edge.runtime import Policy
from pi0edge.runtime.profile import synthetic_observation

# Measured on the tiny pi0 bundle (2 calibration chunks, 2 held-out chunks, seed 0, normalized actions whose
# own RMS is ~1.0): int8 max abs 0.0031 (RMS 0.0016), fp8 0.014 (RMS 0.0067); docs/quantization.md. The bound
# leaves room for other onnxruntime kernels, and is far below what a broken calibration gives (order 1).
ACTION_ERROR_MAX_ABS = {"int8": 0.05, "fp8": 0.1}
CALIB_CHUNKS = 2
EVAL_CHUNKS = 2
OFFERED = tuple(FULL_SIZE_ERRORS)  # what the command accepts (docs/quantization.md, full-size table)


@pytest.fixture
def cli(monkeypatch):
    """pi0edge.cli.main with `quantize` registered (a no-op once export/cli.py registers it itself)."""
    from pi0edge import cli as pi0edge_cli

    build = pi0edge_cli.build_parser

    def build_with_quantize() -> argparse.ArgumentParser:
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "quantize" not in sub.choices:
            register_quantize(sub)
        return parser

    monkeypatch.setattr(pi0edge_cli, "build_parser", build_with_quantize)
    return pi0edge_cli.main


# ---- the command's refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_command_offers_a_mode_only_with_a_measured_full_size_error(cli, tiny_bundle_factory, tmp_path, capsys,
                                                                     monkeypatch, mode):
    from pi0edge.export.quantize import command

    bundle, _ = tiny_bundle_factory("pi0")
    other = {"int8": "fp8", "fp8": "int8"}[mode]
    monkeypatch.setattr(command, "FULL_SIZE_ERRORS", {other: (("pi0", 0.5, 0.1),)})
    with pytest.raises(SystemExit) as exit_info:
        cli(["quantize", str(bundle), "-o", str(tmp_path / "q"), "--mode", mode])
    assert exit_info.value.code == 2 and f"invalid choice: '{mode}'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["quantize", "--help"])
    assert "full-size pi0: max abs 0.5, RMS 0.1" in capsys.readouterr().out.replace("\n", " ")


def test_every_offered_mode_has_a_finite_full_size_error():
    assert FULL_SIZE_ERRORS  # the command offers something
    for mode, rows in FULL_SIZE_ERRORS.items():
        assert mode in ("int8", "fp8") and rows
        assert all(np.isfinite(max_abs) and 0 < rms <= max_abs for _, max_abs, rms in rows)


def test_quantize_without_its_extra_exits_1_naming_it(cli, tiny_bundle_factory, tmp_path, capsys, monkeypatch):
    bundle, _ = tiny_bundle_factory("pi0")
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import fails as if not installed
    assert cli(["quantize", str(bundle), "-o", str(tmp_path / "q"), "--mode", OFFERED[0]]) == 1
    err = capsys.readouterr().err
    assert "pip install 'pi0edge[quant]'" in err and "ml_dtypes" in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()


def test_quantize_refuses_a_float16_bundle(cli, tiny_bundle_factory, tmp_path, capsys):
    bundle, _ = tiny_bundle_factory("pi0", "float16")
    assert cli(["quantize", str(bundle), "-o", str(tmp_path / "q"), "--mode", OFFERED[0]]) == 1
    err = capsys.readouterr().err
    assert "needs a float32 bundle" in err and "'float16'" in err and "Traceback" not in err


def test_quantize_refuses_an_already_quantized_bundle(cli, tiny_bundle_factory, tmp_path, capsys):
    bundle, _ = tiny_bundle_factory("pi0")
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    raw = yaml.safe_load((copy / "bundle.yaml").read_text())
    raw["quantization"] = {"mode": "int8"}  # bundle.yaml is not in its own checksum list
    (copy / "bundle.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert cli(["quantize", str(copy), "-o", str(tmp_path / "q"), "--mode", OFFERED[0]]) == 1
    assert "already quantized (int8)" in capsys.readouterr().err


def test_quantize_options_reject_a_bad_mode_and_chunk_count():
    from pi0edge.errors import ConfigError

    with pytest.raises(ConfigError, match="--mode"):
        QuantizeOptions("int4")
    with pytest.raises(ConfigError, match="calib-chunks"):
        QuantizeOptions("int8", calib_chunks=0)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_calibration_loop_reproduces_policy_infer(tiny_bundle_factory, model_type):
    """The recorded step inputs are the ones Policy.infer feeds: same final x, one sample per Euler step."""
    bundle, _ = tiny_bundle_factory(model_type)
    with Policy(bundle, whole_loop=False) as policy:  # step by step, as collect_calibration runs it
        obs = synthetic_observation(policy, seed=3)
        noise = np.random.default_rng(3).standard_normal((1, policy.action_horizon, policy.manifest.action_dim),
                                                         dtype=np.float32)
        prefix, steps, x = run_chunk_recording(policy, obs, noise)
        policy.infer(obs, noise=noise)
        expected = policy.backend.read_actions()
    np.testing.assert_allclose(x, expected, atol=1e-6)
    assert set(prefix) == set(policy.manifest.graphs[c.PREFIX_GRAPH].input_names)
    assert len(steps) == policy.manifest.num_steps
    assert all(set(s) == set(policy.manifest.graphs[c.DENOISE_STEP_GRAPH].input_names) for s in steps)
    np.testing.assert_array_equal(steps[0][c.X_T], noise)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_boundary_gemms_are_action_in_and_out_proj(tiny_bundle_factory, model_type):
    onnx = pytest.importorskip("onnx")
    bundle, _ = tiny_bundle_factory(model_type)
    step = onnx.load(str(bundle / "denoise_step.onnx"))
    assert boundary_gemms(step) == ["/action_in_proj/MatMul", "/action_out_proj/MatMul"]
    assert boundary_gemms(onnx.load(str(bundle / "prefix.onnx"))) == []  # no x_t there


# ---- quantized bundles -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_bundle_factory):
    """mode -> (float32 bundle, quantized bundle), each written once through the command."""
    from pi0edge.export.quantize import quantize_bundle

    bundle, _ = tiny_bundle_factory("pi0")
    out = {}
    for mode in ("int8", "fp8"):
        target = tmp_path_factory.mktemp(f"quant-{mode}") / "bundle"
        quantize_bundle(bundle, target, QuantizeOptions(mode, calib_chunks=CALIB_CHUNKS, eval_chunks=EVAL_CHUNKS))
        out[mode] = (bundle, target)
    return out


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantized_bundle_has_qdq_graphs_and_its_measured_error(quantized, mode):
    source, bundle = quantized[mode]
    manifest = load_manifest(bundle)  # every file's sha256 matches the new manifest
    for graph in (c.PREFIX_GRAPH, c.DENOISE_STEP_GRAPH):
        assert has_qdq(bundle / manifest.graphs[graph].file)
    assert manifest.precision == "float32"  # the graphs' I/O and KV dtype: what runtime and `build` read
    assert _dequantized_gemm_inputs(bundle / "denoise_step.onnx", ["/action_in_proj/MatMul",
                                                                   "/action_out_proj/MatMul"]) == 0
    q = manifest.raw["quantization"]
    assert q["mode"] == mode and q["tool"] == "pi0edge" and q["calib_chunks"] == CALIB_CHUNKS
    assert q["calibration_samples"] == {c.PREFIX_GRAPH: CALIB_CHUNKS, c.DENOISE_STEP_GRAPH: CALIB_CHUNKS * 10}
    measured = q["measured"]
    assert measured["eval_chunks"] == EVAL_CHUNKS and measured["backend"] == "ort-cpu"
    assert 0 < measured["action_error_max_abs"] < ACTION_ERROR_MAX_ABS[mode]
    assert 0 < measured["action_error_rms"] <= measured["action_error_max_abs"]
    assert load_manifest(source).raw.get("quantization") is None  # the source bundle is untouched


def _dequantized_gemm_inputs(path, names: list[str]) -> int:
    """How many inputs of the named nodes come straight from a DequantizeLinear."""
    import onnx

    model = onnx.load(str(path))
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    nodes = [n for n in model.graph.node if n.name in names]
    assert len(nodes) == len(names)
    return sum(i in dq_outputs for n in nodes for i in n.input)


@pytest.mark.parametrize("mode", ["int8", "fp8"])
@pytest.mark.parametrize("graph", [c.PREFIX_GRAPH, c.DENOISE_STEP_GRAPH])
def test_quantized_graph_has_qdq_on_weight_gemms_only_with_weights_stored_quantized(quantized, mode, graph):
    import onnx
    from onnx import numpy_helper

    source, bundle = quantized[mode]
    name = load_manifest(bundle).graphs[graph].file
    before = onnx.load(str(source / name))
    after = onnx.load(str(bundle / name))
    float_weights = {t.name: numpy_helper.to_array(t) for t in before.graph.initializer}
    inits = {t.name: t for t in after.graph.initializer}
    producer = {o: n for n in after.graph.node for o in n.output}
    boundary = set(boundary_gemms(before))
    quantized_gemms = 0
    for node in after.graph.node:
        dq = [producer.get(i) for i in node.input]
        dq = [n for n in dq if n is not None and n.op_type == "DequantizeLinear"]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type not in ("MatMul", "Gemm") or node.name in boundary:
            assert not dq, f"{node.name} ({node.op_type}) reads a DequantizeLinear"
            continue
        original = next(n for n in before.graph.node if n.name == node.name)
        if original.input[1] not in float_weights:  # attention products: both inputs activations, float32
            assert not dq
            continue
        quantized_gemms += 1
        w_dq, x_dq = producer[node.input[1]], producer[node.input[0]]
        assert w_dq.op_type == x_dq.op_type == "DequantizeLinear"
        assert producer[x_dq.input[0]].op_type == "QuantizeLinear"
        stored = inits[w_dq.input[0]]
        assert stored.data_type == {"int8": onnx.TensorProto.INT8, "fp8": onnx.TensorProto.FLOAT8E4M3FN}[mode]
        q = numpy_helper.to_array(stored).astype(np.float32)
        scale = numpy_helper.to_array(inits[w_dq.input[1]])
        axis = next(a.i for a in w_dq.attribute if a.name == "axis")
        w = float_weights[original.input[1]]
        s = scale[:, None] if axis == 0 else scale[None, :]
        # half a step of the quantized grid: int8 steps are one scale apart; float8e4m3fn's relative half-step is
        # 2^-4 (3 mantissa bits), 2^-10 scales in its subnormal range
        half_step = s / 2 if mode == "int8" else np.maximum(np.abs(w) * 2.0**-4, s * 2.0**-10)
        assert np.all(np.abs(q * s - w) <= half_step * (1 + 1e-6))
    assert quantized_gemms == load_manifest(bundle).raw["quantization"]["quantized_gemms"][graph] > 0
    assert [i.name for i in after.graph.input] == [i.name for i in before.graph.input]
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantized_bundle_runs_on_ort_cpu_close_to_float32(quantized, mode):
    source, bundle = quantized[mode]
    actions = {}
    for name, path in (("float32", source), (mode, bundle)):
        with Policy(path) as policy:
            obs = synthetic_observation(policy, seed=7)
            noise = np.random.default_rng(7).standard_normal((policy.action_horizon, policy.manifest.action_dim),
                                                             dtype=np.float32)
            policy.infer(obs, noise=noise)
            actions[name] = policy.backend.read_actions()[0, :, : policy.robot_action_dim]
    assert np.isfinite(actions[mode]).all()
    err = np.abs(actions[mode] - actions["float32"]).max()
    assert 0 < err < ACTION_ERROR_MAX_ABS[mode]


def test_quantize_command_prints_the_error_and_refuses_to_overwrite(cli, quantized, tmp_path, capsys):
    source, _ = quantized["int8"]
    out = tmp_path / "q"
    args = ["quantize", str(source), "-o", str(out), "--mode", OFFERED[0], "--calib-chunks", "1", "--eval-chunks", "1"]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "action error vs float32" in printed and "max abs" in printed
    before = (out / "bundle.yaml").read_bytes()
    assert cli(args) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "bundle.yaml").read_bytes() == before


def test_quantizing_a_loop_bundle_rebuilds_its_loop_graph_from_the_quantized_step_graph(tiny_bundle_factory,
                                                                                          tmp_path):
    from pi0edge.export.model import DEFAULT_OPTIMIZE
    from pi0edge.export.quantize import quantize_bundle

    bundle, _ = tiny_bundle_factory("pi0", optimize=DEFAULT_OPTIMIZE)  # what `pi0edge export` writes
    out = tmp_path / "q"
    quantize_bundle(bundle, out, QuantizeOptions("int8", calib_chunks=1, eval_chunks=1))
    manifest = load_manifest(out)
    assert has_qdq(out / manifest.graphs[c.DENOISE_LOOP_GRAPH].file)  # not the float32 loop graph copied over
    with Policy(out) as loop, Policy(out, whole_loop=False) as steps:
        assert loop.backend.whole_loop
        obs = synthetic_observation(loop, seed=3)
        noise = np.random.default_rng(3).standard_normal((loop.action_horizon, loop.manifest.action_dim),
                                                         dtype=np.float32)
        np.testing.assert_allclose(loop.infer(obs, noise=noise).actions, steps.infer(obs, noise=noise).actions,
                                   atol=1e-6)
