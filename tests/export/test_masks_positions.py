"""The mask and position rules of docs/model.md on hand-worked examples, written out as literal matrices.

Rules (docs/model.md, "Suffix and one denoise step"; openpi `make_attn_mask`): c = cumsum(ar); query i sees
key j iff c[j] <= c[i] and both are valid. Positions: prefix cumsum(pad) - 1, suffix sum(prefix_pad) +
cumsum(suffix_pad) - 1. Also the fixed Euler schedule, the time embedding and the pixel conversion.

The model-level examples use a micro config: 2 cameras of 4 image tokens (28x28, patch 14), a 3-token
prompt and an action horizon of 3, so every mask the model builds fits on a few lines.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import pi0edge.export.model.gemma as gemma_module
import pi0edge.export.model.pi0 as pi0_module
from pi0edge.export.config import SIGLIP_TINY, tiny
from pi0edge.export.model import Pi0Model, images_to_pixels, mask_2d, posemb_sincos
from pi0edge.schedule import euler_schedule

POSEMB_ATOL = 1e-7  # float64 math cast to float32; a float32 computation is off by ~6e-5 at width 8
INDEPENDENCE_ATOL = 1e-6  # "does not depend on": masked keys get probability exactly 0
DEPENDENCE_MIN = 1e-4  # "depends on": a perturbed input moves the output at least this much


def grid(text: str) -> torch.Tensor:
    """A literal 0/1 matrix, one row per line; spaces and '|' are only for reading."""
    rows = [line.replace(" ", "").replace("|", "") for line in text.strip().splitlines()]
    return torch.tensor([[c == "1" for c in row] for row in rows], dtype=torch.bool)


# --------------------------------------------------------------------------------------------------
# mask_2d on its own


def test_mask_2d_prefix_only_is_bidirectional_among_valid_tokens():
    pad = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    ar = torch.tensor([[0, 0, 0, 0]])
    expected = grid("""
        1110
        1110
        1110
        0000
    """)
    assert torch.equal(mask_2d(pad, ar)[0], expected)


def test_mask_2d_all_ones_ar_is_causal():
    pad = torch.ones(1, 4, dtype=torch.bool)
    expected = grid("""
        1000
        1100
        1110
        1111
    """)
    assert torch.equal(mask_2d(pad, torch.ones(1, 4, dtype=torch.long))[0], expected)


def test_mask_2d_pi0_suffix_state_sees_prefix_and_itself_actions_see_all_valid():
    # prefix of 3 (last one padded), then pi0's suffix: state token, 3 action tokens; ar [1, 1, 0, 0]
    pad = torch.tensor([[1, 1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    ar = torch.tensor([[0, 0, 0, 1, 1, 0, 0]])
    expected = grid("""
        110 | 0000
        110 | 0000
        000 | 0000
        110 | 1000
        110 | 1111
        110 | 1111
        110 | 1111
    """)
    assert torch.equal(mask_2d(pad, ar)[0], expected)


def test_mask_2d_pi05_suffix_actions_see_prefix_and_each_other():
    pad = torch.tensor([[1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    ar = torch.tensor([[0, 0, 0, 1, 0, 0]])
    expected = grid("""
        110 | 000
        110 | 000
        000 | 000
        110 | 111
        110 | 111
        110 | 111
    """)
    assert torch.equal(mask_2d(pad, ar)[0], expected)


def test_mask_2d_is_per_sample():
    pad = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    ar = torch.zeros(2, 3, dtype=torch.long)
    got = mask_2d(pad, ar)
    assert torch.equal(got[0], grid("101\n000\n101"))
    assert torch.equal(got[1], grid("000\n011\n011"))


# --------------------------------------------------------------------------------------------------
# the masks and positions the model itself builds (recorded at its `attend` and `rope` calls)

# Sample 0: camera 1 missing, prompt of 2 (of 3); sample 1: camera 0 missing, prompt of 1.
CAMERA_MASKS = ((True, False), (False, True))
PROMPT_LENS = (2, 1)
HORIZON = 3


def micro_model(model_type: str, seed: int = 0) -> Pi0Model:
    cfg = tiny(model_type, vision=replace(SIGLIP_TINY, image_size=28), cameras=("base_0_rgb", "left_wrist_0_rgb"),
               max_token_len=3, action_horizon=HORIZON)
    assert cfg.vision.tokens_per_image == 4 and cfg.prefix_len == 11
    model = Pi0Model(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel() if p.ndim > 1 else 10))
    return model


def micro_inputs(model: Pi0Model, seed: int = 1) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, 2, 28, 28, 3), generator=g, dtype=torch.uint8)
    image_masks = torch.tensor(CAMERA_MASKS)
    images[~image_masks] = 0
    tokens = torch.randint(1, cfg.vocab_size, (2, 3), generator=g)
    token_masks = torch.arange(3)[None] < torch.tensor(PROMPT_LENS)[:, None]
    tokens[~token_masks] = 0
    return dict(images=images, image_masks=image_masks, tokens=tokens, token_masks=token_masks,
                state=torch.randn(2, cfg.state_dim, generator=g),
                x_t=torch.randn(2, HORIZON, cfg.action_dim, generator=g), t=torch.tensor([0.7, 0.2]))


def run(model: Pi0Model, inp: dict[str, torch.Tensor]):
    """-> (past_keys, past_values, prefix_mask), velocity, the expert's final-norm hidden states."""
    with torch.no_grad():
        cache = model.prefix(inp["images"], inp["image_masks"], inp["tokens"], inp["token_masks"])
        final = []
        hook = model.expert.norm.register_forward_hook(lambda _m, _i, out: final.append(out))
        try:
            v = model.velocity(inp["x_t"], model.time_condition(inp["t"]), *cache,
                               state=None if model.cfg.is_pi05 else inp["state"])
        finally:
            hook.remove()
    return cache, v, final[0]


@pytest.fixture
def recorded(monkeypatch):
    """Records the `allowed` matrix of every attend() and the positions of every RoPE table the model builds
    (once per graph: the prefix's, then the step's)."""
    calls = {"allowed": [], "positions": []}
    attend, rope_tables = gemma_module.attend, pi0_module.rope_tables

    def recording_attend(q, k, v, allowed):
        calls["allowed"].append(allowed.clone())
        return attend(q, k, v, allowed)

    def recording_rope_tables(positions, head_dim, base):
        calls["positions"].append(positions.clone())
        return rope_tables(positions, head_dim, base)

    monkeypatch.setattr(gemma_module, "attend", recording_attend)
    monkeypatch.setattr(pi0_module, "rope_tables", recording_rope_tables)
    return calls


# prefix = [camera 0: 4 tokens | camera 1: 4 tokens | prompt: 3 tokens]
PREFIX_ALLOWED = (grid("""
    1111 0000 110
    1111 0000 110
    1111 0000 110
    1111 0000 110
    0000 0000 000
    0000 0000 000
    0000 0000 000
    0000 0000 000
    1111 0000 110
    1111 0000 110
    0000 0000 000
"""), grid("""
    0000 0000 000
    0000 0000 000
    0000 0000 000
    0000 0000 000
    0000 1111 100
    0000 1111 100
    0000 1111 100
    0000 1111 100
    0000 1111 100
    0000 0000 000
    0000 0000 000
"""))
PREFIX_POSITIONS = ([0, 1, 2, 3, 3, 3, 3, 3, 4, 5, 5], [-1, -1, -1, -1, 0, 1, 2, 3, 4, 4, 4])


def test_prefix_mask_and_positions_with_masked_camera_and_padded_prompt(recorded):
    model = micro_model("pi0")
    run(model, micro_inputs(model))
    depth = model.cfg.num_layers
    prefix_allowed = recorded["allowed"][:depth]
    assert all(torch.equal(a, prefix_allowed[0]) for a in prefix_allowed)
    assert torch.equal(prefix_allowed[0], torch.stack(PREFIX_ALLOWED))
    # q and k of every prefix layer: cumsum(pad) - 1 (padded tokens repeat the last position, as openpi)
    assert len(recorded["positions"]) == 2 and torch.equal(recorded["positions"][0], torch.tensor(PREFIX_POSITIONS))


def test_pi0_denoise_step_mask_and_positions(recorded):
    model = micro_model("pi0")
    run(model, micro_inputs(model))
    depth = model.cfg.num_layers
    step_allowed = recorded["allowed"][depth:]
    assert len(step_allowed) == depth and all(torch.equal(a, step_allowed[0]) for a in step_allowed)
    # keys = [cached prefix (11) | state, 3 actions]; queries = state, 3 actions
    expected = torch.stack([grid("""
        1111 0000 110 | 1000
        1111 0000 110 | 1111
        1111 0000 110 | 1111
        1111 0000 110 | 1111
    """), grid("""
        0000 1111 100 | 1000
        0000 1111 100 | 1111
        0000 1111 100 | 1111
        0000 1111 100 | 1111
    """)])
    assert torch.equal(step_allowed[0], expected)
    # sum(prefix_pad) + arange: sample 0 has 6 valid prefix tokens, sample 1 has 5
    expected_positions = torch.tensor([[6, 7, 8, 9], [5, 6, 7, 8]])
    assert torch.equal(recorded["positions"][1], expected_positions)


def test_pi05_denoise_step_mask_and_positions(recorded):
    model = micro_model("pi05")
    run(model, micro_inputs(model))
    depth = model.cfg.num_layers
    step_allowed = recorded["allowed"][depth:]
    expected = torch.stack([grid("""
        1111 0000 110 | 111
        1111 0000 110 | 111
        1111 0000 110 | 111
    """), grid("""
        0000 1111 100 | 111
        0000 1111 100 | 111
        0000 1111 100 | 111
    """)])
    assert all(torch.equal(a, expected) for a in step_allowed)
    expected_positions = torch.tensor([[6, 7, 8], [5, 6, 7]])
    assert torch.equal(recorded["positions"][1], expected_positions)


# --------------------------------------------------------------------------------------------------
# the same rules seen from outside: what may and may not change what


def valid_kv(cache) -> tuple[torch.Tensor, torch.Tensor]:
    past_keys, past_values, pad = cache
    return past_keys[:, pad], past_values[:, pad]  # [l, valid tokens, k, d]


def max_change(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_padded_prompt_token_id_changes_neither_valid_kv_nor_actions(model_type):
    model = micro_model(model_type)
    inp = micro_inputs(model)
    cache, v, _ = run(model, inp)
    changed = dict(inp, tokens=inp["tokens"].clone())
    changed["tokens"][~inp["token_masks"]] = 7  # a real token id where the prompt is padded
    cache2, v2, _ = run(model, changed)
    assert max_change(valid_kv(cache), valid_kv(cache2)) <= INDEPENDENCE_ATOL
    assert (v - v2).abs().max().item() <= INDEPENDENCE_ATOL
    # and the same edit on a valid token does change them (the test can see a change)
    changed["tokens"][0, 0] += 1
    cache3, v3, _ = run(model, changed)
    assert max_change(valid_kv(cache), valid_kv(cache3)) >= DEPENDENCE_MIN
    assert (v - v3).abs().max().item() >= DEPENDENCE_MIN


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_masked_camera_pixels_change_neither_valid_kv_nor_actions(model_type):
    model = micro_model(model_type)
    inp = micro_inputs(model)
    cache, v, _ = run(model, inp)
    changed = dict(inp, images=inp["images"].clone())
    changed["images"][~inp["image_masks"]] = 200  # garbage where the camera is masked
    cache2, v2, _ = run(model, changed)
    assert max_change(valid_kv(cache), valid_kv(cache2)) <= INDEPENDENCE_ATOL
    assert (v - v2).abs().max().item() <= INDEPENDENCE_ATOL
    changed["images"][inp["image_masks"]] = 200  # the same edit on a present camera does show
    cache3, v3, _ = run(model, changed)
    assert (v - v3).abs().max().item() >= DEPENDENCE_MIN


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_action_tokens_attend_each_other_in_both_directions(model_type):
    """A bidirectional chunk: the last noisy action moves the first velocity and vice versa (a causal
    chunk would leave the first untouched)."""
    model = micro_model(model_type)
    inp = micro_inputs(model)
    _, v, _ = run(model, inp)
    last = dict(inp, x_t=inp["x_t"].clone())
    last["x_t"][:, -1] += 1.0
    _, v_last, _ = run(model, last)
    assert (v[:, 0] - v_last[:, 0]).abs().max().item() >= DEPENDENCE_MIN
    first = dict(inp, x_t=inp["x_t"].clone())
    first["x_t"][:, 0] += 1.0
    _, v_first, _ = run(model, first)
    assert (v[:, -1] - v_first[:, -1]).abs().max().item() >= DEPENDENCE_MIN


def test_pi0_state_token_output_ignores_action_tokens():
    model = micro_model("pi0")
    inp = micro_inputs(model)
    _, _, hidden = run(model, inp)
    changed = dict(inp, x_t=inp["x_t"] + 1.0)
    _, _, hidden2 = run(model, changed)
    assert (hidden[:, 0] - hidden2[:, 0]).abs().max().item() <= INDEPENDENCE_ATOL  # state token
    assert (hidden[:, 1:] - hidden2[:, 1:]).abs().max().item() >= DEPENDENCE_MIN  # action tokens
    # ... while the state itself reaches the action tokens
    _, _, hidden3 = run(model, dict(inp, state=inp["state"] + 1.0))
    assert (hidden[:, 1:] - hidden3[:, 1:]).abs().max().item() >= DEPENDENCE_MIN


# --------------------------------------------------------------------------------------------------
# schedule, time embedding, pixels


def openpi_times(num_steps: int) -> list[np.float32]:
    """openpi `sample_actions` (JAX): dt = -1/num_steps; time = 1.0; while time >= -dt/2: step; time += dt,
    all in float32."""
    dt = np.float32(-1.0 / num_steps)
    time, times = np.float32(1.0), []
    while time >= -dt / np.float32(2):
        times.append(time)
        time = np.float32(time + dt)
    return times


def test_euler_schedule_10_is_openpi_float32_accumulation():
    times, dt = euler_schedule(10)
    assert times.dtype == np.float32 and dt == np.float32(-0.1)
    literal = np.array(["1.0", "0.9", "0.79999995", "0.6999999", "0.5999999", "0.4999999", "0.39999992",
                        "0.29999992", "0.19999993", "0.09999993"], dtype=np.float32)
    assert np.array_equal(times, literal)
    assert np.array_equal(times, np.array(openpi_times(10), dtype=np.float32))
    # not 1 - k/10: accumulation drifts by an ulp or two from step 3 on
    assert not np.array_equal(times, (1 - np.arange(10) / 10).astype(np.float32))


def test_posemb_sincos_width_8_matches_hand_computation():
    # width 8 -> 4 frequencies; period = 4e-3 * 1000 ** [0, 1/3, 2/3, 1] = [0.004, 0.04, 0.4, 4];
    # angle = 2 pi t / period = t * [500 pi, 50 pi, 5 pi, pi / 2]
    r = math.sqrt(0.5)
    expected = torch.tensor([
        # sin(500pi), sin(50pi), sin(5pi), sin(pi/2) | cos(...)
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.0],  # t = 1
        # sin(250pi), sin(25pi), sin(2.5pi), sin(pi/4) | cos(...)
        [0.0, 0.0, 1.0, r, 1.0, -1.0, 0.0, r],  # t = 0.5
    ])
    got = posemb_sincos(torch.tensor([1.0, 0.5]), 8, 4e-3, 4.0)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= POSEMB_ATOL


def test_images_to_pixels_is_openpi_true_division_in_channel_first_layout():
    values = torch.arange(256, dtype=torch.uint8)
    images = values.reshape(1, 1, 16, 16, 1).expand(1, 1, 16, 16, 3).clone()
    images[..., 1] = 255 - images[..., 1]  # tell the channels apart
    pixels = images_to_pixels(images, torch.float32)
    assert pixels.shape == (1, 3, 16, 16)
    # openpi: image.astype(float32) / 255.0 * 2.0 - 1.0 (numpy, float32)
    expected = images.numpy().astype(np.float32) / 255.0 * 2.0 - 1.0
    assert np.array_equal(pixels[0].numpy(), expected[0, 0].transpose(2, 0, 1))
    assert pixels[0, 0, 0, 0] == -1.0 and pixels[0, 0, -1, -1] == 1.0 and pixels[0, 1, 0, 0] == 1.0
