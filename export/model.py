"""Pi0 / Pi0.5 in plain PyTorch, written for export: tensors in, tensors out, no cache objects.

The math follows MODEL.md (which follows openpi). Submodule names mirror the Hugging Face / LeRobot
parameter names below four prefixes (`vision.`, `projector.`, `vlm.`, `expert.`; see
checkpoint.py), so a checkpoint loads with one prefix table and no per-tensor renaming.

Precision: the module may be cast to float16/bfloat16; the float32 islands of MODEL.md (RMSNorm and
LayerNorm statistics, attention logits and softmax, the time embedding, the Euler update) stay float32
inside the functions below whatever the weight dtype.

Axis legend used in comments: b=batch, n=cameras, p=patches, t=tokens (keys), s=suffix tokens (queries),
h=query heads, k=kv heads, d=head dim, w=width, l=layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pi0edge.export.config import GemmaConfig, Pi0Config, VisionConfig
from pi0edge.schedule import euler_schedule

# openpi's masked-logit value (MODEL.md, "Shapes"); logits are float32 in every precision.
MASK_VALUE = -2.3819763e38


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


# --------------------------------------------------------------------------------------------------
# SigLIP vision tower (MODEL.md, "Shapes": pre-LN ViT, LayerNorm eps 1e-6, gelu-tanh MLP)


class SiglipAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(cfg.width, cfg.width) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, p, w = x.shape
        # [b, p, w] -> [b, heads, p, d]; matmul rather than einsum: every backend fuses it.
        q, k, v = (proj(x).view(b, p, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.head_dim**-0.5
        probs = logits.softmax(dim=-1).to(v.dtype)
        return self.out_proj(torch.matmul(probs, v).transpose(1, 2).reshape(b, p, w))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(cfg.width, cfg.mlp_dim), nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))


class FloatLayerNorm(nn.LayerNorm):
    """LayerNorm with its statistics in float32 (a float32 island in 16-bit graphs)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).to(
            x.dtype)


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = FloatLayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = FloatLayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.tokens_per_image, cfg.width)

    def forward(self, pixels: Tensor) -> Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [bn, p, w]
        return patches + self.position_embedding.weight[None]


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.depth))


class VisionTower(nn.Module):
    """uint8 images [b, n, H, W, 3] -> image tokens [b, n * p, vision width]."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = FloatLayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels: float in [-1, 1], [bn, 3, H, W]."""
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


class Projector(nn.Module):
    def __init__(self, vision_width: int, text_width: int):
        super().__init__()
        self.linear = nn.Linear(vision_width, text_width)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


def images_to_pixels(images: Tensor, dtype: torch.dtype) -> Tensor:
    """uint8 [b, n, H, W, 3] -> [b*n, 3, H, W] in [-1, 1]. A true division, as MODEL.md asks."""
    b, n, h, w, c = images.shape
    pixels = images.to(torch.float32) / 255.0 * 2.0 - 1.0
    return pixels.reshape(b * n, h, w, c).permute(0, 3, 1, 2).to(dtype)


# --------------------------------------------------------------------------------------------------
# Gemma blocks (MODEL.md, "Shapes"): RMSNorm in float32 with (1 + w), GeGLU MLP, MQA with RoPE.


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + self.weight.float())).to(x.dtype), None


class AdaRMSNorm(nn.Module):
    """Pi0.5's adaptive RMSNorm: cond -> (scale, shift, gate); no learned weight (MODEL.md, "Suffix")."""

    def __init__(self, width: int, eps: float, cond_dim: int):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * width)

    def modulation(self, cond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """cond [b, w_cond] -> scale, shift, gate, each [b, 1, w]."""
        scale, shift, gate = self.dense(cond)[:, None, :].chunk(3, dim=-1)
        return scale, shift, gate

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        scale, shift, gate = self.modulation(cond)
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + scale.float()) + shift.float()).to(x.dtype), gate


class GemmaAttentionProj(nn.Module):
    """The q/k/v/o projections of one layer; attention itself is joint (see `attend`)."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.width, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.width, bias=False)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        return q, k, v


class GemmaMLP(nn.Module):
    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.up_proj = nn.Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_dim, cfg.width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(gelu_tanh(self.gate_proj(x)) * self.up_proj(x))


class GemmaLayer(nn.Module):
    def __init__(self, cfg: GemmaConfig, adarms_cond_dim: int | None):
        super().__init__()

        def norm():
            if adarms_cond_dim is None:
                return RMSNorm(cfg.width, cfg.rms_norm_eps)
            return AdaRMSNorm(cfg.width, cfg.rms_norm_eps, adarms_cond_dim)

        self.input_layernorm = norm()
        self.self_attn = GemmaAttentionProj(cfg)
        self.post_attention_layernorm = norm()
        self.mlp = GemmaMLP(cfg)


class GemmaStack(nn.Module):
    """The layers and final norm of one Gemma; `embed_tokens` only on the VLM."""

    def __init__(self, cfg: GemmaConfig, vocab_size: int | None, adarms_cond_dim: int | None = None):
        super().__init__()
        self.cfg = cfg
        if vocab_size is not None:
            self.embed_tokens = nn.Embedding(vocab_size, cfg.width)
        self.layers = nn.ModuleList(GemmaLayer(cfg, adarms_cond_dim) for _ in range(cfg.depth))
        self.norm = (RMSNorm(cfg.width, cfg.rms_norm_eps) if adarms_cond_dim is None
                     else AdaRMSNorm(cfg.width, cfg.rms_norm_eps, adarms_cond_dim))


def rope(x: Tensor, positions: Tensor, base: float) -> Tensor:
    """Rotary embedding, rotate-half convention, computed in float32 as Hugging Face Gemma does.

    x [b, t, heads, d]; positions int [b, t].
    """
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64, device=x.device).to(torch.float32) / d))
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # [b, t, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]
    cos, sin = emb.cos(), emb.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated * sin).to(x.dtype)


def attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """Masked multi-query attention with float32 logits and softmax.

    q [b, s, h, d]; k, v [b, t, k, d]; allowed bool [b, s, t] -> [b, s, h*d].
    """
    b, s, h, d = q.shape
    kv_heads = k.shape[2]
    qg = q.reshape(b, s, kv_heads, h // kv_heads, d).permute(0, 2, 3, 1, 4)  # [b, k, g, s, d]: heads under kv head
    kt = k.permute(0, 2, 3, 1)[:, :, None]  # [b, k, 1, d, t]
    logits = torch.matmul(qg.float(), kt.float()) * d**-0.5  # [b, k, g, s, t]
    logits = torch.where(allowed[:, None, None], logits, torch.tensor(MASK_VALUE, dtype=torch.float32))
    probs = logits.softmax(dim=-1).to(v.dtype)
    out = torch.matmul(probs, v.permute(0, 2, 1, 3)[:, :, None])  # [b, k, g, s, d]
    return out.permute(0, 3, 1, 2, 4).reshape(b, s, h * d)


def mask_2d(pad_mask: Tensor, ar_mask: Tensor) -> Tensor:
    """Mask rule (MODEL.md, "Suffix"; openpi `make_attn_mask`): query i sees key j iff
    cumsum(ar)[j] <= cumsum(ar)[i] and both are valid. pad_mask bool [b, t], ar_mask int [b, t]."""
    c = torch.cumsum(ar_mask, dim=1)
    causal = c[:, None, :] <= c[:, :, None]
    return causal & pad_mask[:, None, :] & pad_mask[:, :, None]


def posemb_sincos(t: Tensor, width: int, min_period: float, max_period: float) -> Tensor:
    """Time embedding (MODEL.md, "Suffix"), t [b] -> [b, width]: computed in float64 like openpi's PyTorch
    port and LeRobot (openpi JAX uses float32: ~6e-5 apart), returned float32."""
    fraction = torch.linspace(0.0, 1.0, width // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.to(torch.float64)[:, None] * (1.0 / period * 2 * math.pi)[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=-1).to(torch.float32)


# --------------------------------------------------------------------------------------------------
# The policy


class Pi0Model(nn.Module):
    """Pi0 / Pi0.5: `prefix()` fills the KV cache once, `denoise_step()` is one Euler step over it."""

    def __init__(self, cfg: Pi0Config):
        super().__init__()
        self.cfg = cfg
        we = cfg.expert.width
        self.vision = VisionTower(cfg.vision)
        self.projector = Projector(cfg.vision.width, cfg.vlm.width)
        self.vlm = GemmaStack(cfg.vlm, cfg.vocab_size)
        self.expert = GemmaStack(cfg.expert, None, adarms_cond_dim=we if cfg.is_pi05 else None)
        self.action_in_proj = nn.Linear(cfg.action_dim, we)
        self.action_out_proj = nn.Linear(we, cfg.action_dim)
        if cfg.is_pi05:
            self.time_mlp_in, self.time_mlp_out = nn.Linear(we, we), nn.Linear(we, we)
        else:
            self.state_proj = nn.Linear(cfg.state_dim, we)
            self.action_time_mlp_in, self.action_time_mlp_out = nn.Linear(2 * we, we), nn.Linear(we, we)

    @property
    def dtype(self) -> torch.dtype:
        return self.action_in_proj.weight.dtype

    # ---- prefix: images + prompt -> KV cache (MODEL.md, "Prefix") --------------------------------

    def embed_prefix(self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor
                     ) -> tuple[Tensor, Tensor]:
        """-> prefix embeddings [b, T, w_vlm], pad mask bool [b, T]."""
        b, n = images.shape[:2]
        image_tokens = self.projector(self.vision(images_to_pixels(images, self.dtype)))  # [bn, p, w] (not scaled)
        p = image_tokens.shape[1]
        image_tokens = image_tokens.reshape(b, n * p, -1)
        image_pad = image_masks[:, :, None].expand(b, n, p).reshape(b, n * p)
        text = self.vlm.embed_tokens(tokens)
        text = text * torch.tensor(math.sqrt(self.cfg.vlm.width), dtype=text.dtype)
        return torch.cat([image_tokens, text], dim=1), torch.cat([image_pad, token_masks], dim=1)

    def prefix(self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor,
               return_hidden: bool = False):
        """-> past_keys, past_values [l, b, T, k, d] (K after RoPE), prefix_mask bool [b, T]
        (and the VLM's final-norm hidden states [b, T, w] with return_hidden, for tests)."""
        x, pad = self.embed_prefix(images, image_masks, tokens, token_masks)
        allowed = pad[:, None, :] & pad[:, :, None]  # bidirectional prefix: ar all 0
        positions = torch.cumsum(pad.to(torch.int64), dim=1) - 1
        keys, values = [], []
        for layer in self.vlm.layers:
            h, _ = layer.input_layernorm(x)
            q, k, v = layer.self_attn.qkv(h)
            q, k = rope(q, positions, self.cfg.vlm.rope_base), rope(k, positions, self.cfg.vlm.rope_base)
            keys.append(k)
            values.append(v)
            x = x + layer.self_attn.o_proj(attend(q, k, v, allowed))
            h, _ = layer.post_attention_layernorm(x)
            x = x + layer.mlp(h)
        past_keys, past_values = torch.stack(keys), torch.stack(values)
        if return_hidden:
            return past_keys, past_values, pad, self.vlm.norm(x)[0]
        return past_keys, past_values, pad

    # ---- one denoise step: x_t, t + KV cache -> velocity (MODEL.md, "Suffix") ---------------------

    def time_condition(self, t: Tensor) -> Tensor:
        """pi0: the time embedding fed to the action-time MLP; pi0.5: the adaRMS condition. [b, w]."""
        emb = posemb_sincos(t, self.cfg.expert.width, self.cfg.min_period, self.cfg.max_period).to(self.dtype)
        if self.cfg.is_pi05:
            return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(emb))))
        return emb

    def embed_suffix(self, x_t: Tensor, time_cond: Tensor, state: Tensor | None) -> Tensor:
        """-> suffix tokens [b, s, w_expert]."""
        actions = self.action_in_proj(x_t.to(self.dtype))
        if self.cfg.is_pi05:
            return actions
        h = actions.shape[1]
        action_time = torch.cat([actions, time_cond[:, None, :].expand(-1, h, -1)], dim=-1)
        actions = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(action_time)))
        return torch.cat([self.state_proj(state.to(self.dtype))[:, None, :], actions], dim=1)

    def suffix_ar_mask(self) -> list[int]:
        """pi0 [1 (state), 1, 0 x H-1]; pi0.5 [1, 0 x H-1]."""
        actions = [1] + [0] * (self.cfg.action_horizon - 1)
        return actions if self.cfg.is_pi05 else [1] + actions

    def velocity(self, x_t: Tensor, time_cond: Tensor, past_keys: Tensor, past_values: Tensor,
                 prefix_mask: Tensor, state: Tensor | None = None) -> Tensor:
        """v_t [b, H, A] float32. The expert's queries attend [cached prefix ; suffix]."""
        x = self.embed_suffix(x_t, time_cond, state)
        b, s = x.shape[:2]
        ar = torch.tensor(self.suffix_ar_mask(), dtype=torch.int64, device=x.device)[None].expand(b, s)
        suffix_allowed = mask_2d(torch.ones(b, s, dtype=torch.bool, device=x.device), ar)
        allowed = torch.cat([prefix_mask[:, None, :].expand(b, s, prefix_mask.shape[1]), suffix_allowed], dim=2)
        positions = prefix_mask.to(torch.int64).sum(-1, keepdim=True) + torch.arange(s, device=x.device)[None, :]
        cond = time_cond if self.cfg.is_pi05 else None
        for layer_idx, layer in enumerate(self.expert.layers):
            h, gate = layer.input_layernorm(x, cond)
            q, k, v = layer.self_attn.qkv(h)
            q, k = rope(q, positions, self.cfg.expert.rope_base), rope(k, positions, self.cfg.expert.rope_base)
            k_all = torch.cat([past_keys[layer_idx].to(k.dtype), k], dim=1)
            v_all = torch.cat([past_values[layer_idx].to(v.dtype), v], dim=1)
            out = layer.self_attn.o_proj(attend(q, k_all, v_all, allowed))
            x = x + (out if gate is None else out * gate)
            h, gate = layer.post_attention_layernorm(x, cond)
            out = layer.mlp(h)
            x = x + (out if gate is None else out * gate)
        x, _ = self.expert.norm(x, cond)
        return self.action_out_proj(x[:, -self.cfg.action_horizon:]).to(torch.float32)

    def denoise_step(self, x_t: Tensor, t: Tensor, dt: Tensor, past_keys: Tensor, past_values: Tensor,
                     prefix_mask: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One Euler step (MODEL.md, "Sampling"), in float32: -> x_next = x_t + dt * v, v."""
        v = self.velocity(x_t, self.time_condition(t), past_keys, past_values, prefix_mask, state)
        return x_t + dt[:, None, None] * v, v

    # ---- the eager reference --------------------------------------------------------------------

    @torch.no_grad()
    def sample_actions(self, observation: dict[str, Tensor], noise: Tensor, num_steps: int | None = None) -> Tensor:
        """The reference everything else is checked against: prefix once, then the fixed Euler loop
        t = 1, 1 - 1/n, ..., 1/n
        (pi0edge.schedule). observation: images, image_masks, tokens, token_masks, state
        (normalized, padded to state_dim; ignored by pi0.5 whose state is in the prompt).
        noise [b, H, A] -> normalized actions [b, H, A]."""
        times, dt_value = euler_schedule(num_steps or self.cfg.num_steps)
        past_keys, past_values, prefix_mask = self.prefix(
            observation["images"], observation["image_masks"], observation["tokens"], observation["token_masks"])
        state = None if self.cfg.is_pi05 else observation["state"]
        b = noise.shape[0]
        dt = torch.full((b,), float(dt_value), dtype=torch.float32, device=noise.device)
        x = noise.to(torch.float32)
        for t_value in times:
            t = torch.full((b,), float(t_value), dtype=torch.float32, device=noise.device)
            x, _ = self.denoise_step(x, t, dt, past_keys, past_values, prefix_mask, state)
        return x
