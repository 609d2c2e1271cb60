"""Policy on ort-cpu: equal to the eager reference, batched, allocation-free in the loop, and torch-free."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pi0edge.runtime import ActionChunk, Observation, Policy

ACTION_ATOL_FP32 = 1e-4


def raw_observation(policy: Policy, seed: int, cameras=None, prompt="pick up the red cube") -> Observation:
    rng = np.random.default_rng(seed)
    sizes = [(480, 640), (240, 320), (224, 224)]
    names = policy.camera_names if cameras is None else cameras
    images = {n: rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8) for i, n in enumerate(names)}
    stats = policy.manifest.norm_stats.state
    return Observation(images, (stats.a + rng.uniform(0, 1, stats.dim)).astype(np.float32), prompt)


def reference_actions(policy: Policy, model, observations, noise: np.ndarray) -> np.ndarray:
    """The eager reference fed the runtime's own preprocessing (tested separately against its reference)."""
    feeds = policy.preprocess(observations)
    obs = {k: torch.from_numpy(v) for k, v in feeds.items() if v is not None}
    if "state" not in obs:
        obs["state"] = torch.zeros(len(observations), model.cfg.state_dim)
    return model.sample_actions(obs, torch.from_numpy(noise)).numpy()


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_policy_on_ort_cpu_equals_eager_reference_within_1e4(tiny_bundle_factory, model_type):
    bundle_dir, model = tiny_bundle_factory(model_type)
    policy = Policy(bundle_dir, backend="ort-cpu")
    cfg = model.cfg
    obs = raw_observation(policy, seed=1, cameras=policy.camera_names[:2])  # third camera missing -> masked
    noise = np.random.default_rng(2).standard_normal((1, cfg.action_horizon, cfg.action_dim), dtype=np.float32)
    chunk = policy.infer(obs, noise=noise)
    expected_normalized = reference_actions(policy, model, [obs], noise)
    np.testing.assert_allclose(policy.backend.read_actions(), expected_normalized, atol=ACTION_ATOL_FP32, rtol=0)
    expected = policy.finish_actions(expected_normalized)[0]
    assert isinstance(chunk, ActionChunk)
    assert chunk.actions.shape == (cfg.action_horizon, policy.robot_action_dim)
    scale = float(np.abs(policy.manifest.norm_stats.action.b).max()) + 1
    np.testing.assert_allclose(chunk.actions, expected, atol=ACTION_ATOL_FP32 * scale, rtol=0)
    assert policy.backend.whole_loop and chunk.timings_ms["step_ms"] == []  # the default bundle's loop graph
    assert chunk.timings_ms["total_ms"] >= chunk.timings_ms["prefix_ms"] > 0


def test_batch_of_two_robots_equals_two_single_inferences(tiny_bundle_factory):
    bundle_dir, model = tiny_bundle_factory("pi0")
    policy = Policy(bundle_dir)
    cfg = model.cfg
    observations = [raw_observation(policy, 3), raw_observation(policy, 4, prompt="open the drawer")]
    noise = np.random.default_rng(5).standard_normal((2, cfg.action_horizon, cfg.action_dim), dtype=np.float32)
    batched = policy.infer(observations, noise=noise).actions
    assert batched.shape == (2, cfg.action_horizon, policy.robot_action_dim)
    for i, obs in enumerate(observations):
        single = policy.infer(obs, noise=noise[i]).actions
        np.testing.assert_allclose(batched[i], single, atol=1e-5, rtol=0)


def test_seeded_policies_give_identical_chunks_and_noise_changes_them(tiny_bundle_factory):
    bundle_dir, _ = tiny_bundle_factory("pi0")
    a, b = Policy(bundle_dir, seed=7), Policy(bundle_dir, seed=7)
    obs = raw_observation(a, 0)
    first = a.infer(obs).actions
    np.testing.assert_array_equal(first, b.infer(obs).actions)
    assert not np.allclose(first, a.infer(obs).actions)  # the generator moved on


@pytest.mark.parametrize("optimize", [None, "default"], ids=["step-by-step", "loop-graph"])
def test_step_loop_allocates_no_buffer_and_binds_nothing_after_the_first_chunk(tiny_bundle_factory, monkeypatch,
                                                                              optimize):
    from pi0edge.export.optimize import DEFAULT_OPTIMIZE

    bundle_dir, _ = tiny_bundle_factory("pi0", optimize=DEFAULT_OPTIMIZE if optimize else None)
    policy = Policy(bundle_dir)
    assert policy.backend.whole_loop == bool(optimize)
    obs = raw_observation(policy, 0)
    policy.infer(obs)  # first chunk: buffers allocated and bound once
    addresses = policy.backend.buffer_addresses()
    counts = {"ortvalue": 0, "binding": 0, "bind": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy",
                        staticmethod(counting("ortvalue", ort.OrtValue.ortvalue_from_numpy)))
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_shape_and_type",
                        staticmethod(counting("ortvalue", ort.OrtValue.ortvalue_from_shape_and_type)))
    for session in (policy.backend.prefix_session, policy.backend.denoise_session):
        monkeypatch.setattr(session, "io_binding", counting("binding", session.io_binding))
    monkeypatch.setattr(ort.IOBinding, "bind_ortvalue_input", counting("bind", ort.IOBinding.bind_ortvalue_input))
    monkeypatch.setattr(ort.IOBinding, "bind_ortvalue_output", counting("bind", ort.IOBinding.bind_ortvalue_output))
    for _ in range(3):
        policy.infer(obs)
    assert counts == {"ortvalue": 0, "binding": 0, "bind": 0}
    assert policy.backend.buffer_addresses() == addresses  # the KV cache and x buffers never moved


def test_kv_cache_written_by_prefix_is_the_buffer_the_step_graph_reads(tiny_bundle_factory):
    bundle_dir, model = tiny_bundle_factory("pi0")
    policy = Policy(bundle_dir)
    obs = raw_observation(policy, 0)
    policy.infer(obs)
    keys, _ = policy.backend.read_kv()
    feeds = policy.preprocess([obs])
    with torch.no_grad():
        ref_keys, _, _ = model.prefix(*(torch.from_numpy(feeds[k]) for k in
                                        ("images", "image_masks", "tokens", "token_masks")))
    np.testing.assert_allclose(keys, ref_keys.numpy(), atol=1e-5, rtol=0)
    # The step bindings hold the very OrtValue the prefix wrote (same address, no copy).
    assert policy.backend._dev["past_keys"].data_ptr() == policy.backend.buffer_addresses()["past_keys"]


def test_runtime_imports_and_infers_without_ever_importing_torch(tiny_bundle_factory):
    bundle_dir, _ = tiny_bundle_factory("pi05")
    code = f"""
import sys
import numpy as np
from pi0edge.runtime import Observation, Policy
import pi0edge.runtime.profile, pi0edge.runtime.cli, pi0edge.robot_io, pi0edge.calibration
policy = Policy({str(bundle_dir)!r})
stats = policy.manifest.norm_stats.state
chunk = policy.infer(Observation({{"base_0_rgb": np.zeros((100, 200, 3), np.uint8)}}, stats.a.copy(), "go"))
assert chunk.actions.shape == (policy.action_horizon, policy.robot_action_dim)
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
