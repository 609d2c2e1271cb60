"""bfloat16 emulation (export/onnx/bf16_emulation.py): a bf16 graph rewritten into float32 with bf16 rounding after
each op rounds exactly as ml_dtypes does, ONNX Runtime's full graph optimization keeps the rounding, and an
emulated tiny pi0 / pi0.5 bundle runs on ort-cpu through `Policy` with a measured error against float32.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pi0edge import contract as c
from pi0edge.cli import main
from pi0edge.errors import BundleError
from pi0edge.export.config import tiny
from pi0edge.export.onnx.bf16_emulation import _bf16_to_f32, emulate_graph, write_emulated_bundle
from pi0edge.export.onnx.graphs import example_inputs
from pi0edge.export.optimize import DEFAULT_OPTIMIZE
from pi0edge.export.random_checkpoint import write_random_checkpoint
from pi0edge.manifest import load_manifest
from pi0edge.runtime.policy import Policy
from pi0edge.runtime.profile import synthetic_observation

BF16, F32 = TensorProto.BFLOAT16, TensorProto.FLOAT
# Emulated bf16 against float32, tiny configs, optimized graphs, robot units, 3 observations: measured 5.4e-3
# (pi0) and 6.3e-3 (pi0.5), against float16's 1.2e-3 / 4.0e-4 (11 significand bits to bf16's 8). Bound with ~5x
# margin, as float16's own (tests/export/test_onnx_parity.py).
ACTION_ATOL_BF16 = 3e-2
ROBOT_DIM = 6


def bf16(x: np.ndarray) -> np.ndarray:
    """Round to the nearest bf16 (ties to even) and back: the reference for every rounding below."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def ort_enable_all(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as runtime/backends/ort.py
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_bf16_bits_become_float32_of_the_same_value_for_all_65536_patterns():
    bits = np.arange(1 << 16, dtype=np.uint16)
    expected = bits.view(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(_bf16_to_f32(bits), expected)  # NaNs compare equal here


def small_bf16_model(rng) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x (float32) -Cast-> bf16 -MatMul W -Add b (Constant) -Transpose -Mul y (a bf16 graph input) -> z (a bf16
    graph output) and z * z cast to float32. x has multiples of 1/64 and W of 1/4: the float32 matmul sums are
    exact in any order, so ORT and numpy agree bit for bit before rounding."""
    w = rng.integers(-20, 21, (32, 16)).astype(np.float32) / 4
    b = bf16(rng.standard_normal(16).astype(np.float32) * 8)
    nodes = [
        helper.make_node("Cast", ["x"], ["xb"], to=BF16),
        helper.make_node("MatMul", ["xb", "w"], ["h"]),
        helper.make_node("Constant", [], ["b"], value=helper.make_tensor("b", BF16, [16], b.tolist())),
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("Transpose", ["hb"], ["ht"], perm=[1, 0]),
        helper.make_node("Mul", ["ht", "y"], ["z"]),
        helper.make_node("Mul", ["z", "z"], ["zz"]),
        helper.make_node("Cast", ["zz"], ["zz32"], to=F32),
    ]
    w_init = numpy_helper.from_array(w.astype(ml_dtypes.bfloat16), "w")
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", F32, [4, 32]),
                                               helper.make_tensor_value_info("y", BF16, [16, 4])],
                              [helper.make_tensor_value_info("z", BF16, [16, 4]),
                               helper.make_tensor_value_info("zz32", F32, [16, 4])], [w_init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    x = rng.integers(-640, 641, (4, 32)).astype(np.float32) / 64  # more than bf16's 8 significant bits
    y = rng.standard_normal((16, 4)).astype(np.float32)
    return model, {"x": x, "y": y, "w": w, "b": b}


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_emulated_graph_rounds_every_bf16_result_like_ml_dtypes_under_ort_enable_all(tmp_path, external):
    model, v = small_bf16_model(np.random.default_rng(0))
    src = tmp_path / "src" / "g.onnx"
    src.parent.mkdir()
    onnx.save_model(model, str(src), save_as_external_data=external, all_tensors_to_one_file=True,
                    location="g.onnx.data", size_threshold=0)
    emulation = emulate_graph(src, tmp_path / "g.onnx")
    session = ort_enable_all(emulation.graph_path)
    assert {i.name: i.type for i in session.get_inputs()} == {"x": "tensor(float)", "y": "tensor(float)"}
    assert {o.name: o.type for o in session.get_outputs()} == {"z": "tensor(float)", "zz32": "tensor(float)"}
    z, zz = session.run(None, {"x": v["x"], "y": v["y"]})

    # what a GPU computes: bf16 inputs, float32 arithmetic, each result stored as bf16
    expected_z = bf16(bf16(bf16(bf16(v["x"]) @ v["w"]) + v["b"]).T * bf16(v["y"]))
    np.testing.assert_array_equal(z, expected_z)
    np.testing.assert_array_equal(zz, bf16(expected_z * expected_z))
    # the rounding is not a no-op on these values: without the Cast pairs the outputs would differ
    unrounded = ((v["x"] @ v["w"]) + v["b"]).T * v["y"]
    assert not np.array_equal(z, unrounded)
    assert emulation.rounded_tensors == 6  # x's Cast, MatMul, Add, Mul, Mul and the input y (not Transpose)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_bundle_factory):
    """model type -> the tiny model as optimized float32, float16 and bfloat16 bundles (what `pi0edge export`
    writes; same weights: the factory seeds each export alike) and the bfloat16 one's emulation."""
    cache = {}

    def get(model_type: str) -> dict:
        if model_type not in cache:
            out = {precision: tiny_bundle_factory(model_type, precision, optimize=DEFAULT_OPTIMIZE)[0]
                   for precision in ("float32", "float16", "bfloat16")}
            out["emulated"] = tmp_path_factory.mktemp(f"{model_type}-emulated") / "bundle"
            write_emulated_bundle(out["bfloat16"], out["emulated"])
            cache[model_type] = out
        return cache[model_type]

    return get


def test_emulated_bundle_is_float32_on_disk_and_says_it_emulates_bfloat16(bundles):
    b = bundles("pi0")
    manifest = load_manifest(b["emulated"])  # every checksum verified
    assert manifest.precision == "float32" and manifest.raw["emulates"] == "bfloat16"
    for name in (c.PAST_KEYS, c.PAST_VALUES):
        assert manifest.graphs[c.PREFIX_GRAPH].io(name)["dtype"] == "float32"
        assert manifest.graphs[c.DENOISE_STEP_GRAPH].io(name)["dtype"] == "float32"
    for entry in manifest.graphs.values():
        graph = onnx.load(str(manifest.path(entry.file))).graph
        assert F32 in {t.data_type for t in graph.initializer} and BF16 not in {t.data_type for t in graph.initializer}
        bf16_casts = [n for n in graph.node if n.op_type == "Cast" and n.attribute[0].i == BF16]
        consumers = {i: n for n in graph.node for i in n.input}
        # every Cast to bf16 is the first half of a pair: its only reader casts straight back to float32
        assert bf16_casts and all(consumers[n.output[0]].op_type == "Cast"
                                  and consumers[n.output[0]].attribute[0].i == F32 for n in bf16_casts)
    with pytest.raises(BundleError, match="already exists"):
        write_emulated_bundle(b["bfloat16"], b["emulated"])
    with pytest.raises(BundleError, match="only bfloat16"):
        write_emulated_bundle(b["float32"], b["emulated"].parent / "again")


def test_every_bf16_tensor_of_the_step_graph_holds_bf16_values_in_the_emulation(bundles):
    """Run the emulated tiny pi0 step graph with every tensor the bf16 graph types as bf16 exposed: each one
    must equal its own bf16 rounding (a tensor the rewrite missed would carry float32 digits)."""
    b = bundles("pi0")
    original = onnx.load(str(b["bfloat16"] / "denoise_step.onnx"))
    inferred = onnx.shape_inference.infer_shapes(original).graph
    typed_bf16 = {v.name for v in inferred.value_info if v.type.tensor_type.elem_type == BF16}
    produced = [o for n in original.graph.node for o in n.output if o in typed_bf16 and n.op_type != "Constant"]
    emulated = onnx.load(str(b["emulated"] / "denoise_step.onnx"))
    emulated.graph.output.extend(onnx.ValueInfoProto(name=name) for name in produced)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every name
    session = ort.InferenceSession(emulated.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = example_inputs(tiny("pi0"), batch=1, precision="bfloat16")[c.DENOISE_STEP_GRAPH]
    feeds = {i.name: inputs[i.name].float().numpy() if inputs[i.name].is_floating_point() else inputs[i.name].numpy()
             for i in session.get_inputs()}
    values = session.run(produced, feeds)
    assert len(produced) > 50
    for name, value in zip(produced, values, strict=True):
        np.testing.assert_array_equal(value, bf16(value), err_msg=name)


def chunk_actions(bundle, seeds) -> list[np.ndarray]:
    with Policy(bundle, backend="ort-cpu") as policy:
        m = policy.manifest
        return [policy.infer(synthetic_observation(policy, seed=s),
                             noise=np.random.default_rng(s).standard_normal((m.action_horizon, m.action_dim),
                                                                            dtype=np.float32)).actions
                for s in seeds]


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_emulated_bf16_bundle_runs_on_ort_cpu_with_bounded_error_larger_than_float16s(bundles, model_type):
    b, seeds = bundles(model_type), (0, 1, 2)
    reference = chunk_actions(b["float32"], seeds)
    error = {}
    for precision, key in (("float16", "float16"), ("bfloat16", "emulated")):
        actions = chunk_actions(b[key], seeds)
        error[precision] = max(float(np.abs(a - r).max()) for a, r in zip(actions, reference, strict=True))
    print(f"{model_type}: max abs action error vs float32 {error}")
    assert error["bfloat16"] <= ACTION_ATOL_BF16
    # the emulation really rounds to bf16: 8 significand bits lose more than float16's 11
    assert error["bfloat16"] > 2 * error["float16"] > 0


def test_export_command_offers_bfloat16_and_its_bundle_runs_emulated_on_ort_cpu(tmp_path, capsys):
    checkpoint, out = tmp_path / "ckpt", tmp_path / "bundle"
    write_random_checkpoint(checkpoint, tiny("pi0"), robot_state_dim=ROBOT_DIM, robot_action_dim=ROBOT_DIM)
    assert main(["export", str(checkpoint), "-o", str(out), "--precision", "bfloat16"]) == 0
    assert "(bfloat16," in capsys.readouterr().out
    assert load_manifest(out).raw["precision"] == "bfloat16"
    write_emulated_bundle(out, tmp_path / "emulated")
    with Policy(tmp_path / "emulated", backend="ort-cpu") as policy:
        chunk = policy.infer(synthetic_observation(policy))
    assert chunk.actions.shape == (policy.manifest.action_horizon, ROBOT_DIM)
    assert np.isfinite(chunk.actions).all()
