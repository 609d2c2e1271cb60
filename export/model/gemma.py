"""Gemma blocks (docs/model.md, "Shapes"): RMSNorm in float32 with (1 + w), GeGLU MLP, multi-query attention
with RoPE. Submodule names are Hugging Face's below `vlm.` and `expert.`.

Switches (export/model/options.py): `fuse_qkv` / `fuse_gate_up` hold one `qkv_proj` / `gate_up_proj`;
`fast_attention` expects the softmax scale in q's weight and takes the mask as an additive bias;
`fast_gelu` writes gelu in ONNX Runtime's fusable form; `kv_only` (step_only's last VLM layer, whose K/V are
the only output) holds just the k/v projections and its input norm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pi0edge.export.config import GemmaConfig
from pi0edge.export.model.layers import (
    AdaRMSNorm,
    RMSNorm,
    apply_rope,
    attend,
    attend_fast,
    fused,
    gelu_tanh,
    gelu_tanh_fusable,
)
from pi0edge.export.model.options import PLAIN, OptimizeOptions


class GemmaAttentionProj(nn.Module):
    """The q/k/v/o projections of one layer; attention itself is joint over prefix and suffix."""

    def __init__(self, cfg: GemmaConfig, options: OptimizeOptions = PLAIN, kv_only: bool = False):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.fused, self.kv_only = options.fuse_qkv, kv_only
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.sizes = [kv_size, kv_size] if kv_only else [q_size, kv_size, kv_size]
        if self.fused:
            fused_proj = nn.Linear(cfg.width, sum(self.sizes), bias=False)
            if kv_only:
                self.kv_proj = fused_proj
            else:
                self.qkv_proj = fused_proj
        else:
            if not kv_only:
                self.q_proj = nn.Linear(cfg.width, q_size, bias=False)
            self.k_proj = nn.Linear(cfg.width, kv_size, bias=False)
            self.v_proj = nn.Linear(cfg.width, kv_size, bias=False)
        if not kv_only:
            self.o_proj = nn.Linear(q_size, cfg.width, bias=False)

    def qkv(self, x: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """x [b, t, w] -> q [b, t, h, d] (None when kv_only), k, v [b, t, k, d]; before RoPE."""
        t = int(x.shape[1])
        if self.fused:
            out = fused(x, self.kv_proj if self.kv_only else self.qkv_proj, self.sizes)
        else:
            out = (self.k_proj(x), self.v_proj(x)) if self.kv_only else (self.q_proj(x), self.k_proj(x),
                                                                          self.v_proj(x))
        q = None if self.kv_only else out[0].view(-1, t, self.num_heads, self.head_dim)
        return q, out[-2].view(-1, t, self.num_kv_heads, self.head_dim), out[-1].view(-1, t, self.num_kv_heads,
                                                                                        self.head_dim)


class GemmaMLP(nn.Module):
    def __init__(self, cfg: GemmaConfig, options: OptimizeOptions = PLAIN):
        super().__init__()
        self.fused, self.mlp_dim = options.fuse_gate_up, cfg.mlp_dim
        if self.fused:
            self.gate_up_proj = nn.Linear(cfg.width, 2 * cfg.mlp_dim, bias=False)
        else:
            self.gate_proj = nn.Linear(cfg.width, cfg.mlp_dim, bias=False)
            self.up_proj = nn.Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_dim, cfg.width, bias=False)
        self.gelu = gelu_tanh_fusable if options.fast_gelu else gelu_tanh

    def forward(self, x: Tensor) -> Tensor:
        gate, up = fused(x, self.gate_up_proj, [self.mlp_dim] * 2) if self.fused else (self.gate_proj(x),
                                                                                         self.up_proj(x))
        return self.down_proj(self.gelu(gate) * up)


class GemmaLayer(nn.Module):
    def __init__(self, cfg: GemmaConfig, adarms_cond_dim: int | None, options: OptimizeOptions = PLAIN,
                 kv_only: bool = False):
        super().__init__()
        self.kv_only, self.fast_attention = kv_only, options.fast_attention

        def norm():
            if adarms_cond_dim is None:
                return RMSNorm(cfg.width, cfg.rms_norm_eps)
            return AdaRMSNorm(cfg.width, cfg.rms_norm_eps, adarms_cond_dim, from_table=options.precompute_time)

        self.input_layernorm = norm()
        self.self_attn = GemmaAttentionProj(cfg, options, kv_only)
        if not kv_only:
            self.post_attention_layernorm = norm()
            self.mlp = GemmaMLP(cfg, options)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, past: tuple[Tensor, Tensor] | None = None,
                mods: list[tuple[Tensor, Tensor, Tensor]] | None = None, queries: int | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """x [b, t, w] -> (x after the layer, k after RoPE, v). cos, sin: `rope_tables`; mask: from
        `attention_mask`; past: cached prefix K/V the queries also attend (the shared attention,
        docs/model.md "Shapes"); mods: pi0.5's (1 + scale, shift, gate) for its two adaRMS norms; queries:
        only the last `queries` tokens go on past the attention (step_only); k/v cover all tokens."""
        h = self.input_layernorm(x) if mods is None else self.input_layernorm(x, mods[0])
        q, k, v = self.self_attn.qkv(h)
        k = apply_rope(k, cos, sin)
        if self.kv_only:
            return x, k, v
        q = apply_rope(q, cos, sin)
        k_all, v_all = k, v
        if past is not None:
            k_all = torch.cat([past[0].to(k.dtype), k], dim=1)
            v_all = torch.cat([past[1].to(v.dtype), v], dim=1)
        if queries is not None:
            q, x, mask = q[:, -queries:], x[:, -queries:], mask[..., -queries:, :]
        attn = attend_fast(q, k_all, v_all, mask) if self.fast_attention else attend(q, k_all, v_all, mask)
        x = x + gated(self.self_attn.o_proj(attn), mods, 0)
        h = self.post_attention_layernorm(x) if mods is None else self.post_attention_layernorm(x, mods[1])
        return x + gated(self.mlp(h), mods, 1), k, v


def gated(out: Tensor, mods: list | None, i: int) -> Tensor:
    """adaRMS's gate on a residual branch (pi0.5); pi0's branches are ungated."""
    return out if mods is None else out * mods[i][2].to(out.dtype)


class GemmaStack(nn.Module):
    """The layers and final norm of one Gemma; `embed_tokens` only on the VLM. kv_only_last: the last layer
    computes only its K/V (step_only on the VLM)."""

    def __init__(self, cfg: GemmaConfig, vocab_size: int | None, adarms_cond_dim: int | None = None,
                 options: OptimizeOptions = PLAIN, kv_only_last: bool = False):
        super().__init__()
        self.cfg = cfg
        if vocab_size is not None:
            self.embed_tokens = nn.Embedding(vocab_size, cfg.width)
        self.layers = nn.ModuleList(GemmaLayer(cfg, adarms_cond_dim, options, kv_only_last and i == cfg.depth - 1)
                                    for i in range(cfg.depth))
        self.norm = (RMSNorm(cfg.width, cfg.rms_norm_eps) if adarms_cond_dim is None
                     else AdaRMSNorm(cfg.width, cfg.rms_norm_eps, adarms_cond_dim, from_table=options.precompute_time))
