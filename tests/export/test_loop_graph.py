"""denoise_loop.onnx (export/onnx/loop_graph.py): the step graph unrolled over the schedule, run as one call."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

from pi0edge import contract as c
from pi0edge.errors import BackendUnavailableError, BundleError
from pi0edge.export.onnx.loop_graph import LoopGraphError, unroll_step_graph, write_loop_graph
from pi0edge.export.optimize import DEFAULT_OPTIMIZE
from pi0edge.manifest import MANIFEST_NAME, load_manifest
from pi0edge.runtime import Policy
from pi0edge.runtime.profile import profile_policy, synthetic_observation


@pytest.fixture
def loop_bundle(tiny_bundle_factory):
    """(bundle dir, float32 eager model) exported with the default optimizations, loop graph included."""
    return lambda model_type: tiny_bundle_factory(model_type, optimize=DEFAULT_OPTIMIZE)


def noise_for(policy: Policy, batch: int, seed: int = 1) -> np.ndarray:
    m = policy.manifest
    return np.random.default_rng(seed).standard_normal((batch, m.action_horizon, m.action_dim), dtype=np.float32)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
@pytest.mark.parametrize("batch", [1, 2])
def test_loop_graph_gives_the_same_actions_as_the_step_loop_and_the_eager_model(loop_bundle, model_type, batch):
    bundle_dir, model = loop_bundle(model_type)
    with Policy(bundle_dir, whole_loop=True) as loop, Policy(bundle_dir, whole_loop=False) as steps:
        assert loop.backend.whole_loop and not steps.backend.whole_loop
        observations = [synthetic_observation(loop, seed=i) for i in range(batch)]
        noise = noise_for(loop, batch)
        chunk = loop.infer(observations, noise=noise)
        loop_x = loop.backend.read_actions()
        steps.infer(observations, noise=noise)
        np.testing.assert_array_equal(loop_x, steps.backend.read_actions())  # the same ops, in the same order
        feeds = loop.preprocess(observations)
        obs = {k: torch.from_numpy(v) for k, v in feeds.items() if v is not None}
        obs.setdefault("state", torch.zeros(batch, model.cfg.state_dim))
        np.testing.assert_allclose(loop_x, model.sample_actions(obs, torch.from_numpy(noise)).numpy(), atol=1e-4)
    assert chunk.timings_ms["step_ms"] == [] and chunk.timings_ms["denoise_ms"] > 0  # one call: no per-step times


def test_loop_graph_is_the_default_and_the_step_graph_is_then_not_loaded(loop_bundle):
    bundle_dir, _ = loop_bundle("pi0")
    manifest = load_manifest(bundle_dir)
    assert manifest.graphs[c.DENOISE_LOOP_GRAPH].num_steps == manifest.num_steps == 10
    assert manifest.graphs[c.DENOISE_LOOP_GRAPH].input_names == (c.X_T, c.PAST_KEYS, c.PAST_VALUES, c.PREFIX_MASK,
                                                                 c.STATE)
    with Policy(bundle_dir) as policy:
        assert policy.backend.whole_loop
        session_inputs = {i.name for i in policy.backend.denoise_session.get_inputs()}
        assert c.STEP_INDEX not in session_inputs and c.X_T in session_inputs
        with pytest.raises(BackendUnavailableError, match="whole_loop=False"):
            policy.backend.run_step(0)


def test_loop_graph_shares_weights_hoists_invariants_and_folds_the_time_tables(loop_bundle):
    bundle_dir, _ = loop_bundle("pi05")
    step = onnx.load(str(bundle_dir / "denoise_step.onnx"), load_external_data=False)
    loop = onnx.load(str(bundle_dir / "denoise_loop.onnx"), load_external_data=False)

    def weight_files(model) -> set[str]:
        return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}

    # one copy of the weights on disk: the loop graph reads the step graph's data file
    assert weight_files(loop) == weight_files(step) == {"denoise_step.onnx.data"}
    assert not (bundle_dir / "denoise_loop.onnx.data").exists()
    assert all(len(t.raw_data) < 1024 for t in loop.graph.initializer)  # only the step-index constants inline
    step_ops = collections.Counter(n.op_type for n in step.graph.node)
    loop_ops = collections.Counter(n.op_type for n in loop.graph.node)
    assert loop_ops["MatMul"] == 10 * step_ops["MatMul"]
    assert loop_ops["CumSum"] + loop_ops["ReduceSum"] < 10 * (step_ops["CumSum"] + step_ops["ReduceSum"])  # RoPE once
    assert step_ops["Gather"] >= 27  # pi0.5: one Gather per adaRMS modulation and step
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(bundle_dir.parent / "loop-optimized.onnx")
    ort.InferenceSession(str(bundle_dir / "denoise_loop.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    assert collections.Counter(n.op_type for n in optimized.graph.node)["Gather"] <= 1  # table rows folded


def test_unrolling_refuses_a_graph_that_takes_t_and_dt(tiny_bundle_factory, tmp_path):
    bundle_dir, _ = tiny_bundle_factory("pi0", optimize=None)  # plain graphs: t and dt are inputs, no loop graph
    assert c.DENOISE_LOOP_GRAPH not in load_manifest(bundle_dir).graphs
    with pytest.raises(LoopGraphError, match="step-indexed"):
        unroll_step_graph(onnx.load(str(bundle_dir / "denoise_step.onnx")), 10)
    with pytest.raises(LoopGraphError, match="not_a_graph.onnx"):
        write_loop_graph(tmp_path / "not_a_graph.onnx", tmp_path / "loop.onnx", 10)
    with pytest.raises(BackendUnavailableError, match="no denoise_loop graph"):
        Policy(bundle_dir, whole_loop=True)


def test_unrolled_graph_of_one_step_equals_the_step_graph(loop_bundle):
    bundle_dir, _ = loop_bundle("pi0")
    step = onnx.load(str(bundle_dir / "denoise_step.onnx"))
    one = unroll_step_graph(onnx.load(str(bundle_dir / "denoise_step.onnx")), 1)  # rewrites its argument
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d.dim_value or 1 for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in one.graph.input}
    feeds[c.PREFIX_MASK] = np.ones_like(feeds[c.PREFIX_MASK], dtype=bool)
    (actions,) = ort.InferenceSession(one.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    (x_next,) = ort.InferenceSession(step.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [c.X_NEXT], feeds | {c.STEP_INDEX: np.zeros(1, np.int64)})
    np.testing.assert_array_equal(actions, x_next)


def test_manifest_with_a_bad_loop_step_count_is_refused_naming_the_field(loop_bundle, tmp_path):
    import shutil

    bundle_dir, _ = loop_bundle("pi0")
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    raw = yaml.safe_load((broken / MANIFEST_NAME).read_text())
    raw["graphs"][c.DENOISE_LOOP_GRAPH]["num_steps"] = 0
    (broken / MANIFEST_NAME).write_text(yaml.safe_dump(raw))
    with pytest.raises(BundleError, match="graphs.denoise_loop.num_steps"):
        load_manifest(broken)


def test_profile_of_a_loop_bundle_reports_the_loop_and_per_step_when_asked(loop_bundle):
    bundle_dir, _ = loop_bundle("pi0")
    with Policy(bundle_dir) as policy:
        result = profile_policy(policy, iters=2, warmup=1)
    assert "step 0" not in result.stages_ms and result.stages_ms["denoise (all)"]["p50"] > 0
    assert any(e["name"] == "denoise loop" for e in result.chrome_trace()["traceEvents"])
    with Policy(bundle_dir, whole_loop=False) as policy:
        result = profile_policy(policy, iters=2, warmup=1)
    assert "step 9" in result.stages_ms

