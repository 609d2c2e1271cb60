"""Building blocks of the optimized graphs (export/optimize.py): projections with folded norms and fused
weights, float32 norm statistics, RoPE tables, the transpose-free attention, the Gemma and SigLIP blocks.

Each block is built from a reference layer's float32 weights and a dtype; the math it replaces is in
export/model.py and MODEL.md. Axis legend: b=batch, s=queries, t=keys, w=width, h=heads, d=head dim.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pi0edge.export.model import (
    MASK_VALUE,
    AdaRMSNorm,
    GemmaLayer,
    RMSNorm,
    attend,
    gelu_tanh,
)

if TYPE_CHECKING:
    from pi0edge.export.optimize import OptimizeOptions


def frozen_param(t: Tensor, dtype: torch.dtype) -> nn.Parameter:
    """A frozen parameter in `dtype`; an untransformed float32 weight shares the reference's storage."""
    return nn.Parameter(t.detach().to(dtype), requires_grad=False)


def scale_columns(weight: Tensor, scale: Tensor) -> Tensor:
    """W diag(scale), in float64 so the folded float32 weight is the closest one to the exact product."""
    return (weight.detach().double() * scale.detach().double()[None, :]).float()


class Projections(nn.Module):
    """Linear maps that read the same input: one matmul on the concatenated weight (fused) or one each.
    forward(x) -> a tuple of outputs, in the order given."""

    def __init__(self, weights: list[Tensor], biases: list[Tensor | None], fuse: bool, dtype: torch.dtype):
        super().__init__()
        self.fuse, self.sizes = fuse, [int(w.shape[0]) for w in weights]
        has_bias = any(b is not None for b in biases)
        if has_bias:  # a fused matmul takes one bias: zeros where a part has none
            biases = [b if b is not None else torch.zeros(w.shape[0]) for w, b in zip(weights, biases, strict=True)]
        if fuse:
            self.weight = frozen_param(torch.cat([w.detach().float() for w in weights]), dtype)
            self.bias = frozen_param(torch.cat([b.detach().float() for b in biases]), dtype) if has_bias else None
        else:
            self.weights = nn.ParameterList([frozen_param(w, dtype) for w in weights])
            self.biases = nn.ParameterList([frozen_param(b, dtype) for b in biases]) if has_bias else None

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.fuse:
            return tuple(F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1))
        return tuple(F.linear(x, w, None if self.biases is None else self.biases[i])
                     for i, w in enumerate(self.weights))


def rms_normed(x: Tensor, eps: float, scale: Tensor) -> Tensor:
    """The RMSNorm statistics times a float32 scale, float32 whatever x's dtype (MODEL.md float32 island).

    Where (1 + w) is folded away, or modulated afterwards (adaRMS), scale is a ones buffer: multiplying by
    1 is exact, and with the trailing Mul the pattern is the one ONNX Runtime fuses into a single
    SimplifiedLayerNormalization kernel (without it the norm stays ~6 elementwise passes)."""
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * scale


class Norm(nn.Module):
    """RMSNorm whose `(1 + w)` is applied here (float32) or, with fold_norms, lives in the next weights."""

    def __init__(self, norm: RMSNorm, fold: bool):
        super().__init__()
        self.eps = norm.eps
        weight = norm.weight.detach().float()
        self.register_buffer("scale", torch.ones_like(weight) if fold else 1.0 + weight)

    def forward(self, x: Tensor) -> Tensor:
        return rms_normed(x, self.eps, self.scale).to(x.dtype)


def rope_tables(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos, sin [b, t, 1, d] for rotate-half RoPE, exactly as model.rope computes them, once per graph."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # [b, t, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]
    return emb.cos(), emb.sin()


def pixels(images: Tensor, dtype: torch.dtype) -> Tensor:
    """model.images_to_pixels (the same true division, MODEL.md "Prefix") with a static reshape."""
    h, w, ch = (int(n) for n in images.shape[2:])
    x = images.to(torch.float32) / 255.0 * 2.0 - 1.0
    return x.reshape(-1, h, w, ch).permute(0, 3, 1, 2).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = int(x.shape[-1]) // 2  # static: two Slices with constant bounds, not chunk's Shape/Gather/Div chain
    xf = x.float()
    return (xf * cos + torch.cat([-xf[..., half:], xf[..., :half]], dim=-1) * sin).to(x.dtype)


def gelu_tanh_fusable(x: Tensor) -> Tensor:
    """model.gelu_tanh (F.gelu approximate="tanh") as ORT's FastGeluFusion matches it (see fast_gelu):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), factored and ordered as the fusion expects."""
    return (x * 0.5) * (1.0 + torch.tanh((x * math.sqrt(2.0 / math.pi)) * (1.0 + (x * 0.044715) * x)))


def attention_mask(allowed: Tensor, fast: bool) -> Tensor:
    """allowed bool [b, s, t] -> what `attend`/`attend_fast` take: itself, or an additive float32 bias
    [b, 1, s, t], built once per graph (the masked value as openpi's, MODEL.md "Shapes")."""
    if not fast:
        return allowed
    return torch.where(allowed, torch.tensor(0.0), torch.tensor(MASK_VALUE, dtype=torch.float32))[:, None]


def attend_fast(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """model.attend for multi-query attention with the scale already in q and the mask as a bias.

    q [b, s, h, d] (times d^-0.5); k, v [b, t, k, d]; bias float32 [b, 1, s, t] -> [b, s, h*d].
    The g = h/k query heads under one kv head form one GEMM: [b, k, g*s, d] @ [b, k, d, t]. With one kv
    head (Gemma's MQA) the rows stay in q's own (token, head) order, [b, s*h, d] @ [b, d, t]: q and the
    output need no Transpose, the bias broadcasts over heads as [b, s, 1, t] (a free reshape), k^T is
    folded into the GEMM by ONNX Runtime (FusedMatMul transB) and v is used as it is."""
    s, h, d = (int(n) for n in q.shape[1:])  # static; batch stays -1 (see static_dims)
    t, kv_heads = int(k.shape[1]), int(k.shape[2])
    if kv_heads == 1:
        logits = torch.matmul(q.reshape(-1, s * h, d).float(), k.reshape(-1, t, d).float().transpose(1, 2))
        logits = logits.view(-1, s, h, t) + bias.reshape(-1, s, 1, t)  # [b, s, h, t], float32 island
        probs = logits.softmax(dim=-1).to(v.dtype).view(-1, s * h, t)
        return torch.matmul(probs, v.reshape(-1, t, d)).view(-1, s, h * d)
    g = h // kv_heads
    qg = q.reshape(-1, s, kv_heads, g, d).permute(0, 2, 3, 1, 4).reshape(-1, kv_heads, g * s, d)
    logits = torch.matmul(qg.float(), k.permute(0, 2, 3, 1).float())  # [b, k, g*s, t], float32 island
    logits = logits.view(-1, kv_heads, g, s, t) + bias[:, :, None]
    probs = logits.softmax(dim=-1).to(v.dtype).view(-1, kv_heads, g * s, t)
    out = torch.matmul(probs, v.permute(0, 2, 1, 3))  # [b, k, g*s, d]
    return out.view(-1, kv_heads, g, s, d).permute(0, 3, 1, 2, 4).reshape(-1, s, h * d)


class GemmaBlock(nn.Module):
    """One Gemma layer's weights, optimized. `kv_only`: only k/v are needed (the prefix's last layer).
    `ada`: pi0.5's expert, whose norms take their modulation from outside (no weight to fold)."""

    def __init__(self, layer: GemmaLayer, opts: OptimizeOptions, dtype: torch.dtype, kv_only: bool = False):
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.num_heads, self.num_kv_heads, self.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        self.kv_only, self.ada = kv_only, isinstance(layer.input_layernorm, AdaRMSNorm)
        self.fast_attention = opts.fast_attention
        self.gelu = gelu_tanh_fusable if opts.fast_gelu else gelu_tanh
        self.eps = layer.input_layernorm.eps
        if self.ada:
            self.register_buffer("unit", torch.ones(attn.o_proj.out_features))  # see rms_normed
        fold = opts.fold_norms and not self.ada
        qkv = [attn.k_proj.weight, attn.v_proj.weight] if kv_only else [
            attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
        if fold:  # RMSNorm (1 + w) into the input columns (MODEL.md, "Shapes")
            qkv = [scale_columns(w, 1.0 + layer.input_layernorm.weight.float()) for w in qkv]
        if opts.fast_attention and not kv_only:  # RoPE is linear: scaling q before it is scaling after it
            qkv[0] = (qkv[0].detach().double() * self.head_dim**-0.5).float()
        self.attn_norm = None if self.ada else Norm(layer.input_layernorm, fold)
        self.qkv = Projections(qkv, [None] * len(qkv), opts.fuse_qkv, dtype)
        if kv_only:
            return
        self.o_proj = frozen_param(attn.o_proj.weight, dtype)
        gate_up = [mlp.gate_proj.weight, mlp.up_proj.weight]
        if fold:
            gate_up = [scale_columns(w, 1.0 + layer.post_attention_layernorm.weight.float()) for w in gate_up]
        self.mlp_norm = None if self.ada else Norm(layer.post_attention_layernorm, fold)
        self.gate_up = Projections(gate_up, [None, None], opts.fuse_gate_up, dtype)
        self.down = frozen_param(mlp.down_proj.weight, dtype)

    def _norm(self, norm: Norm | None, x: Tensor, mod: tuple[Tensor, Tensor] | None) -> Tensor:
        if mod is None:
            return norm(x)
        one_plus_scale, shift = mod  # adaRMS (MODEL.md, "Suffix"), float32 [b, 1, w]
        return (rms_normed(x, self.eps, self.unit) * one_plus_scale + shift).to(x.dtype)

    def kv(self, h: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """normed input [b, t, w] -> q (None when kv_only) [b, t, h, d], k, v [b, t, k, d]; RoPE applied."""
        t = int(h.shape[1])  # static (see static_dims)
        out = self.qkv(h)
        q = None if self.kv_only else apply_rope(out[0].view(-1, t, self.num_heads, self.head_dim), cos, sin)
        k = out[-2].view(-1, t, self.num_kv_heads, self.head_dim)
        v = out[-1].view(-1, t, self.num_kv_heads, self.head_dim)
        return q, apply_rope(k, cos, sin), v

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, past: tuple[Tensor, Tensor] | None = None,
                mods: list[tuple[Tensor, Tensor, Tensor]] | None = None, queries: int | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """x [b, t, w] -> (x after the layer, k, v). mask: from `attention_mask`. past: cached prefix K/V the
        queries also attend.
        mods: for the two adaRMS norms, (1 + scale, shift, gate) each float32 [b, 1, w]. queries: only the
        last `queries` tokens go on past attention (step_only); k/v cover all tokens."""
        h = self._norm(self.attn_norm, x, None if mods is None else mods[0][:2])
        q, k, v = self.kv(h, cos, sin)
        if self.kv_only:
            return x, k, v
        k_all, v_all = k, v
        if past is not None:
            k_all = torch.cat([past[0].to(k.dtype), k], dim=1)
            v_all = torch.cat([past[1].to(v.dtype), v], dim=1)
        if queries is not None:
            q, x, mask = q[:, -queries:], x[:, -queries:], mask[..., -queries:, :]
        attn = attend_fast(q, k_all, v_all, mask) if self.fast_attention else attend(q, k_all, v_all, mask)
        out = F.linear(attn, self.o_proj)
        x = x + (out if mods is None else out * mods[0][2].to(out.dtype))
        h = self._norm(self.mlp_norm, x, None if mods is None else mods[1][:2])
        gate, up = self.gate_up(h)
        out = F.linear(self.gelu(gate) * up, self.down)
        x = x + (out if mods is None else out * mods[1][2].to(out.dtype))
        return x, k, v


# --------------------------------------------------------------------------------------------------
# Vision (SigLIP): fused q/k/v with biases, LayerNorm affine folded into the next linear


def fold_layer_norm(ln: nn.LayerNorm, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """W (n g + beta) + b = (W diag(g)) n + (W beta + b), in float64."""
    w64 = weight.detach().double()
    b64 = bias.detach().double() if bias is not None else torch.zeros(w64.shape[0], dtype=torch.float64)
    return (w64 * ln.weight.detach().double()[None, :]).float(), (b64 + w64 @ ln.bias.detach().double()).float()


class LayerNormStats(nn.Module):
    """LayerNorm in float32 (island), with its affine applied here or folded into the next linear."""

    def __init__(self, ln: nn.LayerNorm, fold: bool):
        super().__init__()
        self.shape, self.eps = ln.normalized_shape, ln.eps
        self.register_buffer("weight", None if fold else ln.weight.detach().float())
        self.register_buffer("bias", None if fold else ln.bias.detach().float())

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), self.shape, self.weight, self.bias, self.eps).to(x.dtype)


class VisionBlock(nn.Module):
    def __init__(self, layer, opts: OptimizeOptions, dtype: torch.dtype):
        super().__init__()
        attn = layer.self_attn
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        fold = opts.fold_norms
        ws = [(p.weight, p.bias) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
        if fold:
            ws = [fold_layer_norm(layer.layer_norm1, w, b) for w, b in ws]
        self.scaled_q = opts.fast_attention
        self.gelu = gelu_tanh_fusable if opts.fast_gelu else gelu_tanh
        if self.scaled_q:  # the softmax scale into q's weight and bias
            ws[0] = tuple((t.detach().double() * self.head_dim**-0.5).float() for t in ws[0])
        self.ln1 = LayerNormStats(layer.layer_norm1, fold)
        self.qkv = Projections([w for w, _ in ws], [b for _, b in ws], opts.fuse_qkv, dtype)
        self.out_w, self.out_b = frozen_param(attn.out_proj.weight, dtype), frozen_param(attn.out_proj.bias, dtype)
        fc1 = (layer.mlp.fc1.weight, layer.mlp.fc1.bias)
        if fold:
            fc1 = fold_layer_norm(layer.layer_norm2, *fc1)
        self.ln2 = LayerNormStats(layer.layer_norm2, fold)
        self.fc1_w, self.fc1_b = frozen_param(fc1[0], dtype), frozen_param(fc1[1], dtype)
        self.fc2_w, self.fc2_b = frozen_param(layer.mlp.fc2.weight, dtype), frozen_param(layer.mlp.fc2.bias, dtype)

    def forward(self, x: Tensor) -> Tensor:
        p, w = int(x.shape[1]), int(x.shape[2])  # static (see static_dims)
        # [b, p, w] -> [b, heads, p, d], as model.SiglipAttention
        q, k, v = (y.view(-1, p, self.num_heads, self.head_dim).transpose(1, 2) for y in self.qkv(self.ln1(x)))
        logits = torch.matmul(q.float(), k.float().transpose(-1, -2))
        if not self.scaled_q:
            logits = logits * self.head_dim**-0.5
        probs = logits.softmax(dim=-1).to(v.dtype)
        x = x + F.linear(torch.matmul(probs, v).transpose(1, 2).reshape(-1, p, w), self.out_w, self.out_b)
        return x + F.linear(self.gelu(F.linear(self.ln2(x), self.fc1_w, self.fc1_b)), self.fc2_w, self.fc2_b)


# --------------------------------------------------------------------------------------------------
# The two graphs
