"""The optimized graphs (the one model with its switches on, export/optimize.py) equal the eager reference
`Pi0Model.sample_actions`, with every optimization on, with each one switched on alone, and with none: ONNX
Runtime CPU runs the prefix once and the step graph in the 10-step Euler loop (fed `step_index` where the
graph is step-indexed).

The reference's RMSNorm weights are zero and its LayerNorms identity at init, which would make norm
folding trivially exact: every test model gets random norm weights first (`randomize_norms`). Images are
56x56 (16 tokens per camera) to keep exports fast; masks, padding and batching are what the optimizations
could get wrong, and those are exercised as in test_onnx_parity.py.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx_loop import NUM_STEPS, random_observation, run_onnx  # tests/export/onnx_loop.py

from pi0edge import contract as c
from pi0edge.export.bundle import write_bundle
from pi0edge.export.config import GEMMA_DUMMY, SIGLIP_TINY, tiny
from pi0edge.export.model import AdaRMSNorm, Pi0Model, RMSNorm
from pi0edge.export.onnx.graphs import export_graphs
from pi0edge.export.optimize import DEFAULT_OPTIMIZE, OptimizeOptions
from pi0edge.manifest import load_manifest
from pi0edge.normalization import NormStats
from pi0edge.schedule import euler_schedule

ACTION_ATOL_FP32 = 1e-4
KV_ATOL_FP32 = 1e-5
# float16 against the float32 reference: the same bounds as the plain float16 graphs (test_onnx_parity.py).
ACTION_ATOL_FP16 = 3e-2
KV_ATOL_FP16 = 2e-2
OPTION_NAMES = [f.name for f in fields(OptimizeOptions)]
ALL_ON = OptimizeOptions(**{name: True for name in OPTION_NAMES})  # the default leaves fuse_gate_up off
ROBOT_DIM = 6


def config(model_type: str, cameras: int = 3, shallow: bool = False):
    """tiny() with 56x56 images; `shallow`: 2 Gemma layers (a first and a last, which step_only treats apart)
    and 1 SigLIP layer, for the one-option-at-a-time matrix, where export time is most of the test time."""
    cfg = tiny(model_type, vision=replace(SIGLIP_TINY, image_size=56), cameras=c.DEFAULT_CAMERAS[:cameras])
    if shallow:
        cfg = replace(cfg, vision=replace(cfg.vision, depth=1), vlm=replace(GEMMA_DUMMY, depth=2),
                      expert=replace(cfg.expert, depth=2))
    return cfg


def randomize_norms(model: Pi0Model, seed: int) -> Pi0Model:
    """Non-trivial norm weights, so that folding them into the next projection is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * 0.5)
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + torch.randn(module.weight.shape, generator=g) * 0.3)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
            elif isinstance(module, AdaRMSNorm):  # a visible modulation: the default init keeps it near 0
                module.dense.bias.copy_(torch.randn(module.dense.bias.shape, generator=g) * 0.3)
    return model


def reference_model(model_type: str, cameras: int = 3, seed: int = 0, shallow: bool = False) -> Pi0Model:
    torch.manual_seed(seed)
    return randomize_norms(Pi0Model(config(model_type, cameras, shallow)).eval(), seed)


def reference(model: Pi0Model, obs: dict, noise: torch.Tensor):
    with torch.no_grad():
        keys, values, mask = model.prefix(obs["images"], obs["image_masks"], obs["tokens"], obs["token_masks"])
    return model.sample_actions(obs, noise, num_steps=NUM_STEPS).numpy(), keys.numpy(), values.numpy(), mask.numpy()


def norm_stats(model_type: str) -> NormStats:
    rng = np.random.default_rng(0)
    if model_type == "pi05":
        lo = rng.uniform(-2, 0, ROBOT_DIM)
        q = {"q01": lo, "q99": lo + rng.uniform(0.5, 3, ROBOT_DIM)}
        return NormStats.from_arrays("quantile", "openpi", q, q)
    ms = {"mean": rng.normal(size=ROBOT_DIM), "std": rng.uniform(0.5, 2, ROBOT_DIM)}
    return NormStats.from_arrays("mean_std", "openpi", ms, ms)


@pytest.fixture(scope="module")
def optimized_bundle(tmp_path_factory, tokenizer_path):
    """(bundle dir, float32 reference) with every optimization on (ALL_ON); one export per key for the module."""
    cache: dict = {}

    def get(model_type: str, precision: str = "float32", cameras: int = 3):
        key = (model_type, precision, cameras)
        if key not in cache:
            model = reference_model(model_type, cameras)
            before = {k: v.clone() for k, v in model.state_dict().items()}
            out = tmp_path_factory.mktemp(f"opt-{model_type}-{precision}-{cameras}") / "bundle"
            write_bundle(model, out, norm_stats=norm_stats(model_type), tokenizer_path=tokenizer_path,
                         robot_state_dim=ROBOT_DIM, robot_action_dim=ROBOT_DIM, precision=precision,
                         optimize=ALL_ON)
            after = model.state_dict()
            assert all(torch.equal(before[k], after[k]) and after[k].dtype == torch.float32 for k in before), \
                "the optimized export changed the reference model"
            cache[key] = (out, model)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def option_graphs(tmp_path_factory):
    """Graphs (no bundle) with the given options, for the one-at-a-time matrix; cached per module."""
    cache: dict = {}

    def get(model_type: str, options: OptimizeOptions):
        key = (model_type, options)
        if key not in cache:
            model = reference_model(model_type, shallow=True)
            out = tmp_path_factory.mktemp(f"graphs-{model_type}")
            export_graphs(model, out, "float32", optimize=options)
            cache[key] = (out, model)
        return cache[key]

    return get


CASES = [
    # model, batch, cameras, masked camera, prompt lengths (padded to max_token_len)
    pytest.param("pi0", 1, 3, 1, [7], id="pi0-b1-3cam-masked-short"),
    pytest.param("pi0", 2, 3, 2, [5, 30], id="pi0-b2-3cam-masked-padded"),
    pytest.param("pi0", 2, 1, None, [48, 3], id="pi0-b2-1cam-full-and-short"),
    pytest.param("pi05", 1, 3, 0, [12], id="pi05-b1-3cam-masked-short"),
    pytest.param("pi05", 2, 3, 1, [9, 40], id="pi05-b2-3cam-masked-padded"),
    pytest.param("pi05", 2, 1, None, [64, 2], id="pi05-b2-1cam-full-and-short"),
]


@pytest.mark.parametrize("model_type,batch,cameras,masked,prompts", CASES)
def test_all_optimizations_float32_match_eager_reference_actions_1e4_and_kv_1e5(
        optimized_bundle, model_type, batch, cameras, masked, prompts):
    bundle_dir, model = optimized_bundle(model_type, cameras=cameras)
    cfg = model.cfg
    obs = random_observation(cfg, batch, seed=batch * 10 + cameras, masked_camera=masked, prompt_lengths=prompts)
    noise = torch.randn(batch, cfg.action_horizon, cfg.action_dim, generator=torch.Generator().manual_seed(1))
    expected, ref_keys, ref_values, ref_mask = reference(model, obs, noise)
    actions, keys, values, mask = run_onnx(bundle_dir, obs, noise.numpy())
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(keys, ref_keys, atol=KV_ATOL_FP32, rtol=0)
    np.testing.assert_allclose(values, ref_values, atol=KV_ATOL_FP32, rtol=0)
    np.testing.assert_allclose(actions, expected, atol=ACTION_ATOL_FP32, rtol=0)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
@pytest.mark.parametrize("option", [*OPTION_NAMES, "none", "default"])
def test_each_optimization_alone_matches_eager_reference(option_graphs, model_type, option):
    """Each option alone, none, and the default set (`pi0edge export`'s, DEFAULT_OPTIMIZE)."""
    options = {"none": OptimizeOptions.none(), "default": DEFAULT_OPTIMIZE}.get(option) or OptimizeOptions.only(option)
    graph_dir, model = option_graphs(model_type, options)
    cfg = model.cfg
    obs = random_observation(cfg, 2, seed=5, masked_camera=1, prompt_lengths=[5, 30])
    noise = torch.randn(2, cfg.action_horizon, cfg.action_dim, generator=torch.Generator().manual_seed(3))
    expected, ref_keys, ref_values, ref_mask = reference(model, obs, noise)
    actions, keys, values, mask = run_onnx(graph_dir, obs, noise.numpy())
    step_inputs = [i.name for i in ort.InferenceSession(str(graph_dir / "denoise_step.onnx")).get_inputs()]
    assert (c.STEP_INDEX in step_inputs) == options.uses_step_index
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(keys, ref_keys, atol=KV_ATOL_FP32, rtol=0)
    np.testing.assert_allclose(values, ref_values, atol=KV_ATOL_FP32, rtol=0)
    np.testing.assert_allclose(actions, expected, atol=ACTION_ATOL_FP32, rtol=0)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_all_optimizations_float16_error_against_float32_reference_is_bounded(optimized_bundle, model_type):
    bundle_dir, model = optimized_bundle(model_type, "float16")
    cfg = model.cfg
    obs = random_observation(cfg, 2, seed=3, masked_camera=1, prompt_lengths=[6, 20])
    noise = torch.randn(2, cfg.action_horizon, cfg.action_dim, generator=torch.Generator().manual_seed(2))
    expected, ref_keys, _, _ = reference(model, obs, noise)
    actions, keys, _, _ = run_onnx(bundle_dir, obs, noise.numpy())
    assert keys.dtype == np.float16
    kv_err = float(np.abs(keys.astype(np.float32) - ref_keys).max())
    action_err = float(np.abs(actions - expected).max())
    print(f"{model_type} optimized float16: max |kv err| {kv_err:.2e}, max |action err| {action_err:.2e}")
    assert np.isfinite(actions).all()
    assert kv_err <= KV_ATOL_FP16
    assert action_err <= ACTION_ATOL_FP16


def test_manifest_records_the_optimizations_the_fixed_num_steps_and_step_index_input(optimized_bundle):
    bundle_dir, model = optimized_bundle("pi0")
    manifest = load_manifest(bundle_dir)
    assert manifest.raw["optimizations"] == {**{name: True for name in OPTION_NAMES}, "fixed_num_steps": NUM_STEPS}
    assert manifest.num_steps == NUM_STEPS
    step = manifest.graphs[c.DENOISE_STEP_GRAPH]
    assert step.input_names == (c.X_T, c.STEP_INDEX, c.PAST_KEYS, c.PAST_VALUES, c.PREFIX_MASK, c.STATE)
    assert step.io(c.STEP_INDEX) == {"name": c.STEP_INDEX, "dtype": "int64", "shape": ["B"]}
    assert manifest.graphs[c.PREFIX_GRAPH].input_names == (c.IMAGES, c.IMAGE_MASKS, c.TOKENS, c.TOKEN_MASKS)


def test_options_without_time_tables_keep_t_and_dt_and_record_no_fixed_num_steps():
    options = replace(OptimizeOptions(), precompute_time=False, fold_dt=False)
    assert not options.uses_step_index
    assert options.manifest_entry(10)["fixed_num_steps"] is None
    with pytest.raises(ValueError, match="unknown optimization"):
        OptimizeOptions.only("fold_everything")


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
@pytest.mark.parametrize("whole_loop", [True, False])
def test_policy_on_ort_cpu_runs_an_optimized_bundle_and_equals_eager_reference(optimized_bundle, model_type,
                                                                                whole_loop):
    from pi0edge.runtime import Observation, Policy

    bundle_dir, model = optimized_bundle(model_type)
    policy = Policy(bundle_dir, backend="ort-cpu", whole_loop=whole_loop)  # the loop graph, or step by step
    cfg = model.cfg
    rng = np.random.default_rng(1)
    images = {name: rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8)
              for i, name in enumerate(policy.camera_names[:2])}  # third camera missing -> masked
    stats = policy.manifest.norm_stats.state
    obs = Observation(images, (stats.a + rng.uniform(0, 1, stats.dim)).astype(np.float32), "pick up the cube")
    noise = rng.standard_normal((1, cfg.action_horizon, cfg.action_dim), dtype=np.float32)
    chunk = policy.infer(obs, noise=noise)
    feeds = policy.preprocess([obs])
    ref_obs = {k: torch.from_numpy(v) for k, v in feeds.items() if v is not None}
    ref_obs.setdefault("state", torch.zeros(1, cfg.state_dim))
    expected = model.sample_actions(ref_obs, torch.from_numpy(noise)).numpy()
    np.testing.assert_allclose(policy.backend.read_actions(), expected, atol=ACTION_ATOL_FP32, rtol=0)
    assert chunk.actions.shape == (cfg.action_horizon, ROBOT_DIM)
    assert len(chunk.timings_ms["step_ms"]) == (0 if whole_loop else NUM_STEPS)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_optimized_step_velocity_output_equals_reference_velocity(model_type):
    """with_velocity (the tests' extra output) still reports v, not dt * v, when dt is folded."""
    from pi0edge.export.onnx.graphs import DenoiseStepGraph
    from pi0edge.export.optimize import optimized_model

    model = reference_model(model_type, shallow=True)
    cfg = model.cfg
    step = DenoiseStepGraph(optimized_model(model, ALL_ON), with_velocity=True)
    g = torch.Generator().manual_seed(4)
    kv_shape = (cfg.num_layers, 2, cfg.prefix_len, cfg.vlm.num_kv_heads, cfg.vlm.head_dim)
    keys, values = torch.randn(kv_shape, generator=g), torch.randn(kv_shape, generator=g)
    mask = torch.arange(cfg.prefix_len)[None] < torch.tensor([[cfg.prefix_len], [cfg.prefix_len - 30]])
    x = torch.randn(2, cfg.action_horizon, cfg.action_dim, generator=g)
    state = [] if cfg.is_pi05 else [torch.randn(2, cfg.state_dim, generator=g)]
    times, dt = euler_schedule(NUM_STEPS)
    with torch.no_grad():
        x_next, v = step(x, torch.tensor([3, 3]), keys, values, mask, *state)
        ref_next, ref_v = model.denoise_step(x, torch.full((2,), float(times[3])), torch.full((2,), float(dt)),
                                             keys, values, mask, *(state or [None]))
    np.testing.assert_allclose(v.numpy(), ref_v.numpy(), atol=ACTION_ATOL_FP32, rtol=0)
    np.testing.assert_allclose(x_next.numpy(), ref_next.numpy(), atol=ACTION_ATOL_FP32, rtol=0)


def ort_optimized_op_counts(onnx_path, tmp_path) -> dict[str, int]:
    """Op types of the graph as ONNX Runtime's CPU provider runs it (after its own fusions)."""
    import collections

    import onnx

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"ort-{onnx_path.stem}.onnx")
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("fast_gelu", [True, False])
def test_fast_gelu_is_fused_by_onnx_runtime_into_one_fastgelu_kernel_per_mlp(option_graphs, tmp_path, fast_gelu):
    options = OptimizeOptions.only("fast_gelu") if fast_gelu else OptimizeOptions.none()
    graph_dir, model = option_graphs("pi0", options)
    cfg = model.cfg
    prefix = ort_optimized_op_counts(graph_dir / "prefix.onnx", tmp_path)
    step = ort_optimized_op_counts(graph_dir / "denoise_step.onnx", tmp_path)
    # every SigLIP layer and every VLM layer but the last (only its K/V are outputs: its MLP is dead code)
    assert prefix["FastGelu"] == (cfg.vision.depth + cfg.vlm.depth - 1 if fast_gelu else 0)
    assert step["FastGelu"] == (cfg.expert.depth if fast_gelu else 0)
    assert (prefix["Tanh"] + step["Tanh"] == 0) == fast_gelu


def test_ort_backend_sessions_stop_spinning_after_each_run(optimized_bundle):
    """An idle session's spinning pool steals a core from the other session (the prefix's from every step)."""
    from pi0edge.runtime.backends.ort import OrtBackend

    bundle_dir, _ = optimized_bundle("pi0")
    backend = OrtBackend(load_manifest(bundle_dir), "ort-cpu")
    for session in (backend.prefix_session, backend.denoise_session):
        assert session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_attend_fast_equals_model_attend_for_one_and_several_kv_heads(kv_heads):
    """attend_fast has a transpose-free layout for one kv head (every config here) and the general grouped
    one: both against model.attend, with padded keys and a fully masked (padded) query row."""
    from pi0edge.export.model import attend, attend_fast, attention_mask

    g = torch.Generator().manual_seed(kv_heads)
    b, s, t, h, d = 2, 5, 9, 4, 16
    q = torch.randn(b, s, h, d, generator=g)
    k, v = torch.randn(b, t, kv_heads, d, generator=g), torch.randn(b, t, kv_heads, d, generator=g)
    allowed = torch.rand(b, s, t, generator=g) > 0.3
    allowed[:, :, 0] = True
    allowed[1, 2] = False  # a padded query: uniform attention over every key, as the reference
    expected = attend(q, k, v, allowed)
    got = attend_fast(q * d**-0.5, k, v, attention_mask(allowed, fast=True))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6, rtol=0)
