"""Independent evidence that the reference (export/model/) is right: the same tiny random weights are
loaded into Hugging Face transformers' own SigLIP, Gemma, PaliGemma and PI0 models, which must give
the same image tokens, Gemma layer outputs, prefix hidden states, KV cache and pi0 velocity.

All float32, eager attention on the HF side (its additive mask is then applied literally). Weights are
mapped by key with every key accounted for in both directions: a weight that silently kept its HF
random init would make a comparison meaningless.

Facts about transformers 5.x that these tests rely on (read in its modeling code, not assumed):
- Gemma scales token embeddings by sqrt(hidden) inside `GemmaTextScaledWordEmbedding`; `inputs_embeds`
  are used as given (4.x scaled `inputs_embeds` inside GemmaModel instead).
- PaliGemma's `get_image_features` is vision tower + projector, no 1/sqrt(hidden) (4.x divided there
  and let the LM multiply back): image tokens enter the LM unscaled, as in openpi.
- `SiglipVisionModel` keys have no `vision_model.` prefix in 5.x (they had in 4.x): handled both ways.
- A 4D attention mask is passed through to the attention as is.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    GemmaConfig,
    GemmaModel,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.paligemma.modeling_paligemma import PaliGemmaMultiModalProjector  # noqa: E402

from pi0edge.export.config import GemmaConfig as OurGemmaConfig  # noqa: E402
from pi0edge.export.config import Pi0Config, tiny  # noqa: E402
from pi0edge.export.model import Pi0Model, attend, images_to_pixels, rope  # noqa: E402

HF_ATOL = 1e-5  # float32: match Hugging Face within 1e-5
BATCH = 2
# Sample 0: the second camera is missing (mask False, fed as uint8 0 -> -1.0) and a short prompt padded
# to max_token_len; sample 1: every camera present and a longer (still padded) prompt.
CAMERA_MASKS = ((True, False, True), (True, True, True))
PROMPT_LENS = (5, 17)


# --------------------------------------------------------------------------------------------------
# shared inputs: one randomized model per type, one observation


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random (norm weights too: a zero-initialized (1 + w) would hide a missing '1 +')."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer_norm_gains = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name in layer_norm_gains:
                p.copy_(1.0 + 0.1 * noise)  # LayerNorm gains around 1
            elif p.ndim == 1:
                p.copy_(0.1 * noise)  # biases, RMSNorm (1 + w) weights
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))  # fan-in scaled


def make_model(model_type: str, seed: int) -> Pi0Model:
    model = Pi0Model(tiny(model_type)).eval()
    randomize_(model, seed)
    return model


def make_observation(cfg: Pi0Config, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, size = cfg.num_cameras, cfg.vision.image_size
    images = torch.randint(0, 256, (BATCH, n, size, size, 3), generator=g, dtype=torch.uint8)
    image_masks = torch.tensor(CAMERA_MASKS, dtype=torch.bool)
    images[~image_masks] = 0  # a missing camera is an all -1 image (docs/model.md, "Prefix")
    tokens = torch.randint(1, cfg.vocab_size, (BATCH, cfg.max_token_len), generator=g)
    token_masks = torch.arange(cfg.max_token_len)[None, :] < torch.tensor(PROMPT_LENS)[:, None]
    tokens[~token_masks] = 0  # pad id 0
    state = torch.randn(BATCH, cfg.state_dim, generator=g)
    return dict(images=images, image_masks=image_masks, tokens=tokens, token_masks=token_masks, state=state)


@pytest.fixture(scope="module")
def pi0() -> Pi0Model:
    return make_model("pi0", seed=0)


@pytest.fixture(scope="module")
def obs(pi0: Pi0Model) -> dict[str, torch.Tensor]:
    return make_observation(pi0.cfg, seed=1)


# --------------------------------------------------------------------------------------------------
# HF configs from ours, and the key map


def hf_siglip_config(model: Pi0Model) -> SiglipVisionConfig:
    v = model.cfg.vision
    return SiglipVisionConfig(hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth,
                              num_attention_heads=v.num_heads, patch_size=v.patch_size, image_size=v.image_size,
                              num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=v.layer_norm_eps,
                              vision_use_head=False, attention_dropout=0.0, attn_implementation="eager")


def hf_gemma_config(g: OurGemmaConfig, vocab_size: int) -> GemmaConfig:
    return GemmaConfig(vocab_size=vocab_size, hidden_size=g.width, intermediate_size=g.mlp_dim,
                       num_hidden_layers=g.depth, num_attention_heads=g.num_heads, num_key_value_heads=g.num_kv_heads,
                       head_dim=g.head_dim, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=g.rms_norm_eps,
                       rope_theta=g.rope_base, attention_bias=False, attention_dropout=0.0,
                       attn_implementation="eager")


def hf_paligemma_config(model: Pi0Model) -> PaliGemmaConfig:
    cfg = model.cfg
    text = hf_gemma_config(cfg.vlm, cfg.vocab_size)
    # image_token_index = vocab_size: outside the vocabulary, so it never collides with a prompt token.
    return PaliGemmaConfig(vision_config=hf_siglip_config(model).to_dict(),
                           text_config=dict(text.to_dict(), model_type="gemma"), projection_dim=cfg.vlm.width,
                           image_token_index=cfg.vocab_size, vocab_size=cfg.vocab_size, attn_implementation="eager")


def load_mapped_(hf_model: torch.nn.Module, ours: Pi0Model, prefixes: dict[str, str],
                 tied: dict[str, str] | None = None, hf_only: tuple[str, ...] = ()) -> None:
    """Copy our weights into `hf_model` by key: HF key = hf prefix + rest <-> our prefix + rest.

    `tied`: HF key -> our key for tied copies (lm_head). `hf_only`: HF keys with no counterpart in ours,
    left as HF initialized them (must be unused by the comparison). Asserts that every HF key is mapped
    and every one of our keys under the mapped prefixes is used: no silent misses either way.
    """
    tied = tied or {}
    our_sd = ours.state_dict()
    hf_sd = hf_model.state_dict()
    mapped, used = {}, set()
    for hf_key, hf_value in hf_sd.items():
        if hf_key in hf_only:
            mapped[hf_key] = hf_value
            continue
        if hf_key in tied:
            our_key = tied[hf_key]
        else:
            hits = [our_p + hf_key[len(hf_p):] for hf_p, our_p in prefixes.items() if hf_key.startswith(hf_p)]
            assert len(hits) == 1, f"HF key {hf_key!r} matches {len(hits)} prefixes of {prefixes}"
            our_key = hits[0]
        assert our_key in our_sd, f"HF key {hf_key!r} has no counterpart {our_key!r} in the reference"
        assert our_sd[our_key].shape == hf_value.shape, f"{hf_key}: {tuple(hf_value.shape)} vs {our_key}"
        mapped[hf_key] = our_sd[our_key].clone()
        used.add(our_key)
    wanted = {k for k in our_sd if any(k.startswith(p) for p in prefixes.values())}
    assert wanted == used, f"reference keys never mapped to HF: {sorted(wanted - used)}"
    hf_model.load_state_dict(mapped, strict=True)


def siglip_prefix(hf_model: SiglipVisionModel) -> str:
    """'' in transformers 5.x, 'vision_model.' in 4.x."""
    return "vision_model." if any(k.startswith("vision_model.") for k in hf_model.state_dict()) else ""


def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """bool [b, q, k] -> HF 4D additive float mask [b, 1, q, k]."""
    zero = torch.zeros((), dtype=torch.float32)
    return torch.where(allowed, zero, torch.finfo(torch.float32).min)[:, None]


def prefix_rule(pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Written out here from docs/model.md (not taken from the model): a bidirectional prefix (ar all 0)
    where a query sees a key iff both are valid; positions cumsum(pad) - 1."""
    allowed = pad[:, :, None] & pad[:, None, :]
    positions = torch.cumsum(pad.long(), dim=1) - 1
    return allowed, positions


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------------------------------
# 1. SigLIP + projector


@torch.no_grad()
def test_siglip_image_tokens_match_hf_siglip_vision_model_and_paligemma_projector(pi0, obs):
    hf_vision = SiglipVisionModel(hf_siglip_config(pi0)).eval()
    load_mapped_(hf_vision, pi0, {siglip_prefix(hf_vision): "vision."})
    hf_projector = PaliGemmaMultiModalProjector(hf_paligemma_config(pi0)).eval()
    load_mapped_(hf_projector, pi0, {"linear.": "projector.linear."})

    pixels = images_to_pixels(obs["images"], torch.float32)  # [b*n, 3, H, W]
    ours = pi0.projector(pi0.vision(pixels))
    theirs = hf_projector(hf_vision(pixel_values=pixels).last_hidden_state)
    assert ours.shape == (BATCH * pi0.cfg.num_cameras, pi0.cfg.vision.tokens_per_image, pi0.cfg.vlm.width)
    err = max_err(ours, theirs)
    assert err <= HF_ATOL, err


def test_siglip_key_map_rejects_a_missing_weight(pi0):
    """The key map is strict: a reference weight with no HF counterpart fails loudly."""
    hf_vision = SiglipVisionModel(hf_siglip_config(pi0))
    with pytest.raises(AssertionError, match="never mapped"):
        load_mapped_(hf_vision, pi0, {siglip_prefix(hf_vision): "vision.", "__none__.": "projector."})


# --------------------------------------------------------------------------------------------------
# 2. Gemma (the VLM stack), layer by layer


@torch.no_grad()
def test_text_embeddings_equal_hf_gemma_scaled_embedding(pi0, obs):
    """Our prompt tokens are embed(ids) * sqrt(width), exactly what HF Gemma's scaled embedding gives."""
    hf_gemma = GemmaModel(hf_gemma_config(pi0.cfg.vlm, pi0.cfg.vocab_size)).eval()
    load_mapped_(hf_gemma, pi0, {"": "vlm."})
    x, _ = pi0.embed_prefix(obs["images"], obs["image_masks"], obs["tokens"], obs["token_masks"])
    text = x[:, -pi0.cfg.max_token_len:]
    assert torch.equal(text, hf_gemma.embed_tokens(obs["tokens"]))


@torch.no_grad()
def test_gemma_vlm_layer_outputs_and_final_hidden_match_hf_gemma_model(pi0, obs):
    hf_gemma = GemmaModel(hf_gemma_config(pi0.cfg.vlm, pi0.cfg.vocab_size)).eval()
    load_mapped_(hf_gemma, pi0, {"": "vlm."})

    # Our prefix embeddings: text already * sqrt(width), image tokens unscaled. HF 5.x applies no scale to
    # `inputs_embeds` (its sqrt(hidden) lives in the token embedding layer), so they go in as they are.
    x, pad = pi0.embed_prefix(obs["images"], obs["image_masks"], obs["tokens"], obs["token_masks"])
    allowed, positions = prefix_rule(pad)

    hf_layer_out = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: hf_layer_out.append(out[0] if isinstance(out, tuple)
                                                                                    else out))
             for layer in hf_gemma.layers]
    try:
        hf = hf_gemma(inputs_embeds=x, attention_mask=additive_mask(allowed), position_ids=positions,
                      use_cache=False)
    finally:
        for h in hooks:
            h.remove()

    # The reference's layer loop, step by step from its public pieces, to see each layer's output.
    ours_layer_out, h_x = [], x
    for layer in pi0.vlm.layers:
        h = layer.input_layernorm(h_x)
        q, k, v = layer.self_attn.qkv(h)
        q, k = rope(q, positions, pi0.cfg.vlm.rope_base), rope(k, positions, pi0.cfg.vlm.rope_base)
        h_x = h_x + layer.self_attn.o_proj(attend(q, k, v, allowed))
        h = layer.post_attention_layernorm(h_x)
        h_x = h_x + layer.mlp(h)
        ours_layer_out.append(h_x)

    assert len(hf_layer_out) == len(ours_layer_out) == pi0.cfg.vlm.depth
    for i, (ours, theirs) in enumerate(zip(ours_layer_out, hf_layer_out, strict=True)):
        err = max_err(ours[pad], theirs[pad])  # valid tokens only: padded rows see nothing
        assert err <= HF_ATOL, f"layer {i}: max abs error {err}"

    # The final hidden state comes from the model's own prefix pass, not from the loop above.
    _, _, prefix_mask, hidden = pi0.prefix(obs["images"], obs["image_masks"], obs["tokens"], obs["token_masks"],
                                           return_hidden=True)
    assert torch.equal(prefix_mask, pad)
    err = max_err(hidden[pad], hf.last_hidden_state[pad])
    assert err <= HF_ATOL, f"final hidden: max abs error {err}"


# --------------------------------------------------------------------------------------------------
# 3. PaliGemma: HF assembles the prefix itself from ids + pixels


def paligemma_inputs(model: Pi0Model, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF PaliGemma inputs for our observation: one image placeholder per image token, then the prompt;
    the mask and positions from the pad rule of docs/model.md, "Positions" (HF's default positions would be
    1-indexed aranges)."""
    cfg = model.cfg
    n_image_tokens = cfg.num_cameras * cfg.vision.tokens_per_image
    placeholders = torch.full((BATCH, n_image_tokens), cfg.vocab_size, dtype=torch.long)
    pad = torch.cat([obs["image_masks"].repeat_interleave(cfg.vision.tokens_per_image, dim=1), obs["token_masks"]],
                    dim=1)
    allowed, positions = prefix_rule(pad)
    return dict(input_ids=torch.cat([placeholders, obs["tokens"]], dim=1),
                pixel_values=images_to_pixels(obs["images"], torch.float32),
                attention_mask=additive_mask(allowed), position_ids=positions, pad=pad)


@pytest.fixture(scope="module")
def hf_paligemma(pi0) -> PaliGemmaForConditionalGeneration:
    hf = PaliGemmaForConditionalGeneration(hf_paligemma_config(pi0)).eval()
    load_mapped_(hf, pi0, {"model.vision_tower.": "vision.", "model.multi_modal_projector.": "projector.",
                           "model.language_model.": "vlm."}, tied={"lm_head.weight": "vlm.embed_tokens.weight"})
    return hf


@torch.no_grad()
def test_paligemma_image_features_are_our_unscaled_image_tokens(pi0, obs, hf_paligemma):
    pixels = images_to_pixels(obs["images"], torch.float32)
    theirs = hf_paligemma.model.get_image_features(pixels).pooler_output
    ours = pi0.projector(pi0.vision(pixels))
    # No 1/sqrt(hidden) in transformers 5.x; were there one, this would be off by a factor of 8.
    err = max_err(ours, theirs)
    assert err <= HF_ATOL, err


@torch.no_grad()
def test_paligemma_assembles_the_same_prefix_embeddings_with_a_masked_camera(pi0, obs, hf_paligemma):
    inputs = paligemma_inputs(pi0, obs)
    seen = {}
    hook = hf_paligemma.model.language_model.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    try:
        hf_paligemma.model(**{k: v for k, v in inputs.items() if k != "pad"}, use_cache=False)
    finally:
        hook.remove()
    x, pad = pi0.embed_prefix(obs["images"], obs["image_masks"], obs["tokens"], obs["token_masks"])
    assert torch.equal(pad, inputs["pad"])
    # every position, the masked camera's (-1 image) tokens and the padded prompt included
    err = max_err(x, seen["embeds"])
    assert err <= HF_ATOL, err


@torch.no_grad()
def test_paligemma_prefix_hidden_states_and_kv_cache_match_hf_paligemma(pi0, obs, hf_paligemma):
    inputs = paligemma_inputs(pi0, obs)
    pad = inputs.pop("pad")
    hf = hf_paligemma.model(**inputs, use_cache=True)
    past_keys, past_values, prefix_mask, hidden = pi0.prefix(
        obs["images"], obs["image_masks"], obs["tokens"], obs["token_masks"], return_hidden=True)
    assert torch.equal(prefix_mask, pad)
    # hidden states: valid tokens only (a padded query attends nothing: its row is a convention)
    err = max_err(hidden[pad], hf.last_hidden_state[pad])
    assert err <= HF_ATOL, f"final hidden: max abs error {err}"

    cache = hf.cache  # DynamicCache; 5.x: cache.layers[i].keys / .values, [b, kv heads, T, head dim]
    assert len(cache.layers) == pi0.cfg.num_layers
    cfg = pi0.cfg.vlm
    assert past_keys.shape == (pi0.cfg.num_layers, BATCH, pi0.cfg.prefix_len, cfg.num_kv_heads, cfg.head_dim)
    for i, layer in enumerate(cache.layers):
        hf_k, hf_v = layer.keys.transpose(1, 2), layer.values.transpose(1, 2)  # -> [b, T, k, d], K after RoPE
        # keys of valid tokens: the only ones a later query may attend
        err_k, err_v = max_err(past_keys[i][pad], hf_k[pad]), max_err(past_values[i][pad], hf_v[pad])
        assert err_k <= HF_ATOL and err_v <= HF_ATOL, f"layer {i}: keys {err_k}, values {err_v}"


# --------------------------------------------------------------------------------------------------
# 4. pi0 action expert: HF's own PI0 model (its mask, positions and cache handling) on our suffix tokens


@torch.no_grad()
def test_pi0_velocity_matches_hf_pi0_model_over_the_prefix_cache(pi0, obs):
    """HF `PI0Model` runs the VLM prefix (bidirectional, padded) into a DynamicCache, then the expert ("dit")
    over it with its own block mask (prefix+state | actions) and positions cumsum(mask) - 1: independent of
    our mask_2d and position code. Its time embedding is float32 (ours float64, as openpi PyTorch), so the
    suffix tokens are ours: what is compared is the expert, the shared attention, the mask and the cache."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "PI0Config"):
        pytest.skip("this transformers has no PI0 model")
    cfg = pi0.cfg
    hf_cfg = transformers.PI0Config(vlm_config=hf_paligemma_config(pi0).to_dict(),
                                    dit_config=hf_gemma_config(cfg.expert, cfg.vocab_size).to_dict(),
                                    chunk_size=cfg.action_horizon, max_state_dim=cfg.state_dim,
                                    max_action_dim=cfg.action_dim, attn_implementation="eager")
    hf = transformers.PI0Model(hf_cfg).eval()
    load_mapped_(hf, pi0, {"vlm.vision_tower.": "vision.", "vlm.multi_modal_projector.": "projector.",
                           "vlm.language_model.": "vlm.", "dit.": "expert."},
                 hf_only=("dit.embed_tokens.weight",))  # the expert has no token embedding; unused here

    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(BATCH, cfg.action_horizon, cfg.action_dim, generator=g)
    t = torch.tensor([1.0, 0.3])
    time_cond = pi0.time_condition(t)
    suffix = pi0.embed_suffix(x_t, time_cond, obs["state"])
    prefix_embeds, pad = pi0.embed_prefix(obs["images"], obs["image_masks"], obs["tokens"], obs["token_masks"])

    out = hf(action_embeds=suffix, inputs_embeds=prefix_embeds, attention_mask=pad.long(),
             pixel_values=images_to_pixels(obs["images"], torch.float32))  # pixels only switch on the prefix pass
    theirs = pi0.action_out_proj(out.last_hidden_state[:, -cfg.action_horizon:])

    past_keys, past_values, prefix_mask = pi0.prefix(obs["images"], obs["image_masks"], obs["tokens"],
                                                     obs["token_masks"])
    ours = pi0.velocity(x_t, time_cond, past_keys, past_values, prefix_mask, obs["state"])
    err = max_err(ours, theirs)
    assert err <= HF_ATOL, err
