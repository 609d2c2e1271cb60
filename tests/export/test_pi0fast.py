"""Pi0-FAST export exactness at tiny size: the cached decode is the uncached one, the ONNX graphs compute what
the eager model computes, and both checkpoint layouts load, export and run."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pi0edge import contract as c
from pi0edge.export.bundle import export_bundle
from pi0edge.export.checkpoint import load_checkpoint
from pi0edge.export.config import Pi0FastConfig, tiny
from pi0edge.export.model.pi0fast import Pi0FastModel
from pi0edge.export.random_checkpoint import write_random_checkpoint
from pi0edge.runtime import Policy
from pi0edge.runtime.fast_decode import FastDecoder
from pi0edge.runtime.profile import synthetic_observation

LOGITS_ATOL = 1e-4


def _observation(cfg: Pi0FastConfig, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows with different prompt lengths, the first with its last camera masked: padding must shift nothing."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([[12 + 9 * i] for i in range(batch)])
    masks = torch.ones(batch, cfg.num_cameras, dtype=torch.bool)
    masks[0, -1] = False
    return {"images": torch.randint(0, 256, (batch, cfg.num_cameras, 224, 224, 3), dtype=torch.uint8, generator=g),
            "image_masks": masks, "tokens": torch.randint(0, cfg.vocab_size, (batch, cfg.prompt_len), generator=g),
            "token_masks": torch.arange(cfg.prompt_len)[None] < lengths}


def test_kv_cached_decode_equals_uncached_decode_token_for_token():
    # two cameras and a short budget: the uncached reference recomputes the whole sequence per token
    cfg = tiny("pi0fast", max_action_tokens=12, cameras=("base_0_rgb", "left_wrist_0_rgb"))
    torch.manual_seed(0)
    model = Pi0FastModel(cfg).eval()
    for p in model.parameters():  # wide weights: the argmax changes from token to token
        torch.nn.init.normal_(p, std=0.3)
    obs = _observation(cfg, batch=2)
    cached = model.generate(obs, end_token_ids=(1,))
    uncached = model.generate_uncached(obs, end_token_ids=(1,))
    assert cached.shape == (2, 12) and len(set(cached[0].tolist())) > 3
    assert torch.equal(cached, uncached)


@pytest.fixture(scope="module")
def fast_bundle(tiny_bundle_factory):
    return tiny_bundle_factory("pi0fast")


def test_onnx_graphs_give_the_eager_logits_and_the_same_tokens(fast_bundle):
    bundle, model = fast_bundle
    with Policy(bundle) as policy:
        obs = synthetic_observation(policy)
        feeds = policy.preprocess([obs, replace(obs, prompt="open the drawer slowly")])
        decoder: FastDecoder = policy.fast.decoder
        end_ids = policy.fast.reader.end_ids
        onnx_tokens = decoder.decode(feeds, end_ids, 0.0, np.random.default_rng(0)).token_ids
        keys, values, valid = decoder.read_cache()
        torch_feeds = {k: torch.from_numpy(np.asarray(feeds[k])) for k in (c.IMAGES, c.IMAGE_MASKS, c.TOKENS,
                                                                            c.TOKEN_MASKS)}
        # logits: the prefix's, then one decode step over the cache the ONNX decode left behind
        onnx_prefix = decoder.sessions[c.PREFIX_GRAPH].run([c.LOGITS], {k: np.asarray(feeds[k])
                                                                        for k in torch_feeds})[0]
        step_inputs = {c.TOKEN_ID: onnx_tokens[:, -1], c.POSITION: valid.sum(axis=1), c.PAST_KEYS: keys,
                       c.PAST_VALUES: values, c.CACHE_MASK: valid}
        onnx_step = decoder.sessions[c.DECODE_STEP_GRAPH].run([c.LOGITS], step_inputs)[0]
    eager_tokens = model.generate(torch_feeds, tuple(int(i) for i in end_ids))
    assert np.array_equal(onnx_tokens, eager_tokens.numpy())
    with torch.no_grad():
        eager_prefix = model.prefix(*torch_feeds.values())[3].numpy()
        eager_step = model.decode_step(*(torch.from_numpy(np.asarray(v)) for v in step_inputs.values()))[0].numpy()
    np.testing.assert_allclose(onnx_prefix, eager_prefix, atol=LOGITS_ATOL, rtol=0)
    np.testing.assert_allclose(onnx_step, eager_step, atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["lerobot", "openpi"])
def test_both_checkpoint_layouts_load_export_and_run(tmp_path, layout):
    cfg = replace(tiny("pi0fast"), bos_after_prompt=layout == "lerobot", action_horizon=7)
    checkpoint = write_random_checkpoint(tmp_path / "checkpoint", cfg, layout=layout, robot_state_dim=5,
                                         robot_action_dim=4)
    loaded = load_checkpoint(checkpoint)
    assert loaded.config == cfg and loaded.layout == layout and isinstance(loaded.model, Pi0FastModel)
    report = export_bundle(checkpoint, tmp_path / "bundle")
    with Policy(report.bundle_dir, seed=0) as policy:
        assert policy.manifest.fast.action_dim == (4 if layout == "lerobot" else cfg.action_dim)
        chunk = policy.infer(synthetic_observation(policy))
    assert chunk.actions.shape == (7, 4) and chunk.timings_ms["tokens"] >= 1
    # random weights decode garbage: flagged, and NaN so that nothing executes it
    assert chunk.malformed and np.isnan(chunk.actions).all()


def test_a_checkpoint_without_its_fast_tokenizer_is_refused_naming_the_flag(tmp_path):
    from pi0edge.errors import CheckpointError

    checkpoint = write_random_checkpoint(tmp_path / "checkpoint", tiny("pi0fast"))
    for path in sorted((checkpoint / "fast_tokenizer").iterdir()):
        path.unlink()
    (checkpoint / "fast_tokenizer").rmdir()
    with pytest.raises(CheckpointError, match="--fast-tokenizer"):
        export_bundle(checkpoint, tmp_path / "bundle")
