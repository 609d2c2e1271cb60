"""The layers SigLIP and Gemma share: norms, RoPE, attention, masks, the time embedding, gelu.

Float32 islands (docs/model.md, "Float32 islands"): norm statistics, RoPE, attention logits and softmax and
the time embedding are float32 inside these functions whatever the weight dtype. Shapes are read as Python
ints (static in the exported graph, the batch left as -1): a traced `x.shape[i]` would export as a
Shape/Gather/Unsqueeze/Concat chain per reshape.

Axis legend: b=batch, s=queries, t=keys, h=query heads, k=kv heads, d=head dim, w=width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# openpi's masked-logit value (docs/model.md, "Shapes"); logits are float32 in every precision.
MASK_VALUE = -2.3819763e38


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def gelu_tanh_fusable(x: Tensor) -> Tensor:
    """gelu_tanh as ONNX Runtime's FastGeluFusion matches it (its "first formula"; the exporter's own x*x*x
    decomposition is not matched): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), factored and ordered as
    the fusion expects. Same function; other runtimes see plain ONNX ops."""
    return (x * 0.5) * (1.0 + torch.tanh((x * math.sqrt(2.0 / math.pi)) * (1.0 + (x * 0.044715) * x)))


class FloatLayerNorm(nn.LayerNorm):
    """LayerNorm with its statistics in float32. fold_norms moves its affine into the next linear and
    leaves weight 1, bias 0 here (exact)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).to(
            x.dtype)


def rms_normed(x: Tensor, eps: float, scale: Tensor) -> Tensor:
    """The RMSNorm statistics times a float32 scale, float32 whatever x's dtype. With the trailing Mul (by a
    constant, ones where the weight is folded) this is the pattern ONNX Runtime fuses into one
    SimplifiedLayerNormalization kernel (without it the norm stays ~6 elementwise passes)."""
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * scale


class RMSNorm(nn.Module):
    """Gemma's RMSNorm, `(1 + w)` (docs/model.md, "Shapes"). fold_norms moves (1 + w) into the next
    projection and leaves w = 0 here: the graph multiplies by a constant 1 (exact)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x: Tensor) -> Tensor:
        return rms_normed(x, self.eps, 1.0 + self.weight.float()).to(x.dtype)


class AdaRMSNorm(nn.Module):
    """Pi0.5's adaptive RMSNorm: cond -> (scale, shift, gate); no learned weight (docs/model.md, "Suffix and
    one denoise step"). With `from_table` (precompute_time) the modulation comes from the model's per-step
    table and the norm holds no dense layer."""

    def __init__(self, width: int, eps: float, cond_dim: int, from_table: bool = False):
        super().__init__()
        self.eps, self.width = eps, width
        if not from_table:
            self.dense = nn.Linear(cond_dim, 3 * width)

    def modulation(self, cond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """cond [b, w_cond] -> (1 + scale, shift) float32 and gate, each [b, 1, w]."""
        scale, shift, gate = self.dense(cond)[:, None, :].chunk(3, dim=-1)
        return 1.0 + scale.float(), shift.float(), gate

    def forward(self, x: Tensor, mod: tuple[Tensor, ...]) -> Tensor:
        one_plus_scale, shift = mod[0], mod[1]
        return (rms_normed(x, self.eps, torch.ones(self.width, device=x.device)) * one_plus_scale + shift).to(x.dtype)


def rope_tables(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos, sin [b, t, 1, d] of rotate-half RoPE in float32 as Hugging Face Gemma computes them; built once
    per graph and shared by every layer. positions int [b, t]."""
    steps = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).to(torch.float32)
    inv_freq = 1.0 / (base ** (steps / head_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # [b, t, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [b, t, heads, d]. Static half: two Slices with constant bounds, not chunk's Shape/Gather/Div chain."""
    half = int(x.shape[-1]) // 2
    xf = x.float()
    return (xf * cos + torch.cat([-xf[..., half:], xf[..., :half]], dim=-1) * sin).to(x.dtype)


def rope(x: Tensor, positions: Tensor, base: float) -> Tensor:
    """Rotary embedding of x [b, t, heads, d] at positions int [b, t] (tables and rotation in one call)."""
    return apply_rope(x, *rope_tables(positions, int(x.shape[-1]), base))


def attention_mask(allowed: Tensor, fast: bool) -> Tensor:
    """allowed bool [b, s, t] -> what `attend` (itself) or `attend_fast` (an additive float32 bias
    [b, 1, s, t], 0 or the masked value) takes; built once per graph."""
    if not fast:
        return allowed
    return torch.where(allowed, torch.tensor(0.0), torch.tensor(MASK_VALUE, dtype=torch.float32))[:, None]


def attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """Masked multi-query attention with float32 logits and softmax.

    q [b, s, h, d]; k, v [b, t, k, d]; allowed bool [b, s, t] -> [b, s, h*d].
    """
    s, h, d = (int(n) for n in q.shape[1:])
    kv_heads = int(k.shape[2])
    qg = q.reshape(-1, s, kv_heads, h // kv_heads, d).permute(0, 2, 3, 1, 4)  # [b, k, g, s, d]
    kt = k.permute(0, 2, 3, 1)[:, :, None]  # [b, k, 1, d, t]
    logits = torch.matmul(qg.float(), kt.float()) * d**-0.5  # [b, k, g, s, t]
    logits = torch.where(allowed[:, None, None], logits, torch.tensor(MASK_VALUE, dtype=torch.float32))
    probs = logits.softmax(dim=-1).to(v.dtype)
    out = torch.matmul(probs, v.permute(0, 2, 1, 3)[:, :, None])  # [b, k, g, s, d]
    return out.permute(0, 3, 1, 2, 4).reshape(-1, s, h * d)


def attend_fast(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """`attend` with the softmax scale already in q (fast_attention) and the mask as an additive bias.

    q [b, s, h, d] (times d^-0.5); k, v [b, t, k, d]; bias float32 [b, 1, s, t] -> [b, s, h*d].
    The g = h/k query heads under one kv head form one GEMM: [b, k, g*s, d] @ [b, k, d, t]. With one kv
    head (Gemma's multi-query attention) the rows stay in q's own (token, head) order, [b, s*h, d] @
    [b, d, t]: no Transpose of q or the output, and k^T folds into the GEMM (ORT FusedMatMul transB).
    Masked logits still end at the masked value (|logit| is far below its ulp): the same probabilities."""
    s, h, d = (int(n) for n in q.shape[1:])
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


def mask_2d(pad_mask: Tensor, ar_mask: Tensor) -> Tensor:
    """Mask rule (docs/model.md, "Mask rule"; openpi `make_attn_mask`): query i sees key j iff
    cumsum(ar)[j] <= cumsum(ar)[i] and both are valid. pad_mask bool [b, t], ar_mask int [b, t]."""
    c = torch.cumsum(ar_mask, dim=1)
    causal = c[:, None, :] <= c[:, :, None]
    return causal & pad_mask[:, None, :] & pad_mask[:, :, None]


def posemb_sincos(t: Tensor, width: int, min_period: float, max_period: float) -> Tensor:
    """Time embedding (docs/model.md, "Suffix and one denoise step"), t [b] -> [b, width]: computed in
    float64 like openpi's PyTorch port and LeRobot (openpi JAX uses float32: ~6e-5 apart), returned float32."""
    fraction = torch.linspace(0.0, 1.0, width // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.to(torch.float64)[:, None] * (1.0 / period * 2 * math.pi)[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=-1).to(torch.float32)


def fused(x: Tensor, linear: nn.Linear, sizes: list[int]) -> tuple[Tensor, ...]:
    """One matmul on weights concatenated along the output (fuse_qkv, fuse_gate_up), split back."""
    return tuple(linear(x).split(sizes, dim=-1))
