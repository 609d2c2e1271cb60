"""The exported graphs (as `pi0edge export` writes them by default: optimized) equal the eager reference: ONNX
Runtime CPU runs the prefix graph once and the step graph in the 10-step Euler loop, with the same noise as
`Pi0Model.sample_actions`. The plain graphs are checked option by option in test_optimized_parity.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx_loop import random_observation, run_onnx  # tests/export/onnx_loop.py

from pi0edge import contract as c
from pi0edge.manifest import load_manifest

ACTION_ATOL_FP32 = 1e-4
KV_ATOL_FP32 = 1e-5
# float16 graphs against the float32 reference, tiny random weights: measured max ~3e-3 (actions), bounded here.
ACTION_ATOL_FP16 = 3e-2
KV_ATOL_FP16 = 2e-2


CASES = [
    # model, batch, cameras, masked camera, prompt lengths (padded to max_token_len)
    pytest.param("pi0", 1, 3, 1, [7], id="pi0-b1-3cam-masked-short"),
    pytest.param("pi0", 2, 3, 2, [5, 30], id="pi0-b2-3cam-masked-padded"),
    pytest.param("pi0", 2, 1, None, [48, 3], id="pi0-b2-1cam-full-and-short"),
    pytest.param("pi05", 1, 3, 0, [12], id="pi05-b1-3cam-masked-short"),
    pytest.param("pi05", 2, 3, 1, [9, 40], id="pi05-b2-3cam-masked-padded"),
    pytest.param("pi05", 2, 1, None, [64, 2], id="pi05-b2-1cam-full-and-short"),
]


def _cameras(n: int) -> dict:
    return {} if n == 3 else {"cameras": c.DEFAULT_CAMERAS[:n]}


@pytest.mark.parametrize("model_type,batch,cameras,masked,prompts", CASES)
def test_float32_graphs_match_eager_reference_actions_1e4_and_kv_1e5(
        tiny_bundle_factory, model_type, batch, cameras, masked, prompts):
    bundle_dir, model = tiny_bundle_factory(model_type, "float32", **_cameras(cameras))
    cfg = model.cfg
    obs = random_observation(cfg, batch, seed=batch * 10 + cameras, masked_camera=masked, prompt_lengths=prompts)
    noise = torch.randn(batch, cfg.action_horizon, cfg.action_dim, generator=torch.Generator().manual_seed(1))
    expected = model.sample_actions(obs, noise, num_steps=10).numpy()
    with torch.no_grad():
        ref_keys, ref_values, ref_mask = model.prefix(obs["images"], obs["image_masks"], obs["tokens"],
                                                      obs["token_masks"])
    actions, keys, values, mask = run_onnx(bundle_dir, obs, noise.numpy(), num_steps=10)
    np.testing.assert_array_equal(mask, ref_mask.numpy())
    np.testing.assert_allclose(keys, ref_keys.numpy(), atol=KV_ATOL_FP32, rtol=0)
    np.testing.assert_allclose(values, ref_values.numpy(), atol=KV_ATOL_FP32, rtol=0)
    np.testing.assert_allclose(actions, expected, atol=ACTION_ATOL_FP32, rtol=0)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_float16_graphs_error_against_float32_reference_is_bounded(tiny_bundle_factory, model_type):
    bundle_dir, model = tiny_bundle_factory(model_type, "float16")
    cfg = model.cfg
    obs = random_observation(cfg, 2, seed=3, masked_camera=1, prompt_lengths=[6, 20])
    noise = torch.randn(2, cfg.action_horizon, cfg.action_dim, generator=torch.Generator().manual_seed(2))
    expected = model.sample_actions(obs, noise).numpy()
    with torch.no_grad():
        ref_keys, _, _ = model.prefix(obs["images"], obs["image_masks"], obs["tokens"], obs["token_masks"])
    actions, keys, _, _ = run_onnx(bundle_dir, obs, noise.numpy(), num_steps=cfg.num_steps)
    assert keys.dtype == np.float16
    kv_err = float(np.abs(keys.astype(np.float32) - ref_keys.numpy()).max())
    action_err = float(np.abs(actions - expected).max())
    print(f"{model_type} float16: max |kv err| {kv_err:.2e}, max |action err| {action_err:.2e}")
    assert np.isfinite(actions).all()
    assert kv_err <= KV_ATOL_FP16
    assert action_err <= ACTION_ATOL_FP16


@pytest.mark.parametrize("plain", [True, False])
def test_manifest_records_each_graphs_io_names_shapes_and_dtypes(tiny_bundle_factory, plain):
    """The plain graphs take t and dt; the default (optimized) step graph takes step_index in their place."""
    bundle_dir, model = tiny_bundle_factory("pi0", "float32", **({"optimize": None} if plain else {}))
    cfg = model.cfg
    manifest = load_manifest(bundle_dir)
    prefix = manifest.graphs[c.PREFIX_GRAPH]
    assert prefix.input_names == (c.IMAGES, c.IMAGE_MASKS, c.TOKENS, c.TOKEN_MASKS)
    assert prefix.io(c.IMAGES) == {"name": c.IMAGES, "dtype": "uint8", "shape": ["B", 3, 224, 224, 3]}
    assert prefix.io(c.PAST_KEYS)["shape"] == ["B" if d == "B" else d for d in
                                               (cfg.num_layers, "B", cfg.prefix_len, 1, cfg.vlm.head_dim)]
    step = manifest.graphs[c.DENOISE_STEP_GRAPH]
    time_inputs = (c.TIME, c.DT) if plain else (c.STEP_INDEX,)
    assert step.input_names == (c.X_T, *time_inputs, c.PAST_KEYS, c.PAST_VALUES, c.PREFIX_MASK, c.STATE)
    assert step.io(c.X_NEXT) == {"name": c.X_NEXT, "dtype": "float32", "shape": ["B", 10, 8]}
    # and the ONNX files say the same
    import onnx

    graph = onnx.load(str(manifest.path(step.file))).graph
    assert [i.name for i in graph.input] == list(step.input_names)
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "B"
