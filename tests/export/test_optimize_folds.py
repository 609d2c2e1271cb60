"""Each optimization switch of the one model is exact: the model built with it (its weights transformed by
export/optimize.py) against the plain model, same weights and inputs, float32 eager, on the prefix's K/V and
on one denoise step (step index 3 of 10): relative error (max |diff| / max |reference|) <= 1e-6.

Norm weights are randomized (zero RMSNorm weights and identity LayerNorms would make folding trivially
exact), and the inputs have a masked camera and a padded prompt.
"""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
import torch
from test_optimized_parity import randomize_norms

from pi0edge.export.config import GEMMA_DUMMY, SIGLIP_TINY, tiny
from pi0edge.export.model import OptimizeOptions, Pi0Model
from pi0edge.export.optimize import optimized_model, optimized_state_dict
from pi0edge.schedule import euler_schedule

REL_TOL = 1e-6
NUM_STEPS = 10
STEP = 3
MODEL_SWITCHES = [f.name for f in fields(OptimizeOptions) if f.name != "unroll_loop"]  # unroll_loop: export only


def plain_model(model_type: str, seed: int = 0) -> Pi0Model:
    cfg = tiny(model_type, vision=replace(SIGLIP_TINY, image_size=56, depth=2), cameras=("a", "b"),
               vlm=replace(GEMMA_DUMMY, depth=2), expert=replace(tiny(model_type).expert, depth=2))
    torch.manual_seed(seed)
    return randomize_norms(Pi0Model(cfg).eval(), seed)


def inputs(cfg, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    s = cfg.vision.image_size
    images = torch.randint(0, 256, (batch, cfg.num_cameras, s, s, 3), dtype=torch.uint8, generator=g)
    image_masks = torch.ones(batch, cfg.num_cameras, dtype=torch.bool)
    image_masks[0, 1] = False
    tokens = torch.randint(4, cfg.vocab_size, (batch, cfg.max_token_len), generator=g)
    token_masks = torch.arange(cfg.max_token_len)[None] < torch.tensor([[5], [30]])[:batch]
    return {"images": images, "image_masks": image_masks, "tokens": tokens, "token_masks": token_masks,
            "state": torch.randn(batch, cfg.state_dim, generator=g),
            "x_t": torch.randn(batch, cfg.action_horizon, cfg.action_dim, generator=g)}


def outputs(model: Pi0Model, inp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The prefix's K/V and one step's x_next and velocity, at step STEP of the NUM_STEPS schedule."""
    times, dt = euler_schedule(NUM_STEPS)
    b = inp["x_t"].shape[0]
    with torch.no_grad():
        keys, values, mask = model.prefix(inp["images"], inp["image_masks"], inp["tokens"], inp["token_masks"])
        x_next, v = model.denoise_step(inp["x_t"], torch.full((b,), float(times[STEP])), torch.full((b,), float(dt)),
                                       keys, values, mask, None if model.cfg.is_pi05 else inp["state"],
                                       step_index=torch.full((b,), STEP))
    return {"keys": keys, "values": values, "x_next": x_next, "velocity": v}


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
@pytest.mark.parametrize("switch", [*MODEL_SWITCHES, "default"])
def test_each_switch_on_equals_it_off_to_relative_1e6(model_type, switch):
    plain = plain_model(model_type)
    options = OptimizeOptions() if switch == "default" else OptimizeOptions.only(switch)
    optimized = optimized_model(plain, options, NUM_STEPS)
    inp = inputs(plain.cfg)
    expected, got = outputs(plain, inp), outputs(optimized, inp)
    errors = {name: relative_error(got[name], expected[name]) for name in expected}
    assert all(err <= REL_TOL for err in errors.values()), errors


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_optimized_model_leaves_the_plain_model_unchanged_and_holds_the_switched_weights(model_type):
    plain = plain_model(model_type)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    optimized = optimized_model(plain, OptimizeOptions(fuse_gate_up=True), NUM_STEPS)
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    keys = set(optimized.state_dict())
    assert "vlm.layers.0.self_attn.qkv_proj.weight" in keys and "vlm.layers.0.self_attn.q_proj.weight" not in keys
    assert "vlm.layers.1.self_attn.kv_proj.weight" in keys and "vlm.layers.1.mlp.gate_up_proj.weight" not in keys
    assert "expert.layers.0.mlp.gate_up_proj.weight" in keys
    assert ("mod_table" if model_type == "pi05" else "time_table") in keys
    assert not any(k.startswith(("time_mlp", "action_time_mlp_in")) or ".dense." in k for k in keys)


def test_optimized_state_dict_loads_strictly_into_the_switched_model_for_every_switch():
    plain = plain_model("pi05")
    for name in MODEL_SWITCHES:
        options = OptimizeOptions.only(name)
        state = optimized_state_dict(plain.state_dict(), plain.cfg, options)
        Pi0Model(plain.cfg, options).load_state_dict(state, strict=True)


def test_optimized_model_refuses_a_cast_or_already_switched_model():
    plain = plain_model("pi0")
    with pytest.raises(ValueError, match="plain model"):
        optimized_model(optimized_model(plain, OptimizeOptions()), OptimizeOptions())
    with pytest.raises(ValueError, match="float32"):
        optimized_model(plain.to(torch.float16), OptimizeOptions())


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_a_step_indexed_model_refuses_another_step_count(model_type):
    plain = plain_model(model_type)
    optimized = optimized_model(plain, OptimizeOptions(), NUM_STEPS)
    inp = inputs(plain.cfg)
    with pytest.raises(ValueError, match="10 steps"):
        optimized.sample_actions(inp, inp["x_t"], num_steps=5)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_layer_by_layer_transform_equals_the_whole_state_dict_transform(model_type):
    """optimized_model transforms one layer at a time (bounded memory at full size): same tensors, bit for bit,
    as optimized_state_dict on the whole state dict, for every switch together."""
    plain = plain_model(model_type)
    options = OptimizeOptions(fuse_gate_up=True)
    whole = optimized_state_dict(plain.state_dict(), plain.cfg, options)
    by_layer = optimized_model(plain, options).state_dict()
    assert set(whole) == set(by_layer)
    assert all(torch.equal(whole[k], by_layer[k]) for k in whole)


def test_optimized_model_in_float16_keeps_its_time_tables_float32():
    optimized = optimized_model(plain_model("pi05"), OptimizeOptions(), dtype=torch.float16)
    assert optimized.mod_table.dtype == torch.float32 and optimized.dtype == torch.float16
