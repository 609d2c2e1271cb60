"""Graph optimizations at export (DESIGN.md, "Performance anchors", known tricks), each one switchable.

The optimized graphs are new plain-torch modules whose weights are DERIVED from a float32 reference
`Pi0Model` (the reference itself is never changed). They have the contract's graph I/O names; with
`precompute_time` or `fold_dt` the step graph takes `step_index` int64 [B] (contract.STEP_INDEX) in place
of `t`/`dt`, and the bundle is then tied to the `num_steps` of the export (`fixed_num_steps` in the
manifest's `optimizations`).

What each option does (MODEL.md sections in brackets):
- fold_norms: RMSNorm's `(1 + w)` ("Shapes") is a per-column scale of the projection that follows:
  `W (n * (1 + w)) = (W diag(1 + w)) n`. Folded into q/k/v, gate/up, and (pi0) the expert's final norm
  into action_out_proj; SigLIP's LayerNorm affine `n * g + beta` likewise into q/k/v, fc1 and the
  projector (`W diag(g) n + (W beta + b)`). pi0.5's adaRMS norms have no learned weight: nothing to fold.
  The statistics stay float32 (the island); only the multiply by (1 + w) moves into the weights (a ones
  scale stays in its place, which ONNX Runtime fuses away: see `rms_normed`).
- fuse_qkv / fuse_gate_up: q, k, v (and gate, up) read the same normed input: one matmul on the
  concatenated weight, then a split. Also for SigLIP's q/k/v. fuse_gate_up is off by default: on ONNX
  Runtime's CPU provider the Split copies the [tokens, 2 x mlp_dim] output, which costs more than the
  second GEMM saves (mid() pi0 on 2 cores: prefix 172 -> 168 ms, step 7.45 -> 7.24 ms without it).
- precompute_time: t takes only the `num_steps` values of the fixed schedule ("Sampling"), so every
  function of t alone is a table indexed by step, computed here in float32 and cast at use.
  pi0: `action_time_mlp_in(concat(a, posemb(t))) = W_a a + (W_t posemb(t) + b)`: the bracket is a table
  [num_steps, width]; what remains, `W_a (action_in_proj x)`, is two linears in a row and is merged
  into one (`W_a W_in`, bias into the table). pi0.5: every adaRMS modulation (1 + scale, shift, gate of
  the 2 norms per layer and the final norm; "Suffix") is a table [num_steps, width] per norm and kind: the
  time MLP and the norms' dense layers leave the step graph, and each modulation is one Gather by
  step_index (already [b, 1, width]; one [steps, norms, 3, width] table would cost a Split/Squeeze chain
  per use, ~100 nodes a step).
- fold_dt: dt is one constant per schedule: `x + dt (W h + b) = x + (dt W) h + dt b`, folded into
  action_out_proj.
- fast_attention: the softmax scale head_dim^-0.5 is folded into W_q (into the query bias for SigLIP;
  a power of two for Gemma's head dims 16/64/256, so exact); the query heads that share one kv head
  (multi-query attention, "Shapes") are one GEMM of (heads * queries) x head_dim by head_dim x keys
  instead of a broadcast batch of small ones (with one kv head, rows in q's own token-major order: no
  Transpose of q, k or the output); the mask is one additive float32 bias (0 or the masked
  value) computed once per graph instead of a `where` on the logits in every layer. Masked logits still
  end up at the masked value (|logit| is far below its ulp), so softmax gives the same probabilities.
- step_only: the step graph computes only what a step needs: in the last expert layer the pi0 state
  token's query, attention output and MLP feed nothing (only the H action tokens reach action_out_proj;
  its K/V are still needed), so they are skipped, and the final norm runs on the H action tokens only.
  Likewise the prefix's last VLM layer: only its K/V are outputs, so its q, attention, o_proj and MLP
  are not built (the TorchScript exporter's dead-code pass drops them from the plain graph too; other
  exporters need not). Choice documented: the pi0 state token's K/V depend on the state only (it sees the
  prefix and itself, "Mask rule"), so they could be computed once per chunk in the prefix graph; we keep
  them in the step graph (1 of 51 suffix tokens, ~2% of a step) so the prefix graph keeps the contract's
  inputs and the runtime needs no change.
- fast_gelu: gelu-tanh (SigLIP's MLP, Gemma's gated MLP) is written in the form ONNX Runtime's
  FastGeluFusion recognises, `(x 0.5)(1 + tanh((x sqrt(2/pi))(1 + (x 0.044715) x)))` (its "first formula"; the
  exporter's own decomposition with x*x*x is not matched, and the Pow form only at Pow opsets <= 13): on
  ORT's CPU and CUDA providers ~9 elementwise passes become one FastGelu kernel (with SigLIP's fc1 bias
  folded in). Same function; other runtimes see plain ONNX ops.
Always on (same values, fewer ops): the RoPE cos/sin are computed once per graph, not per layer; the
constant suffix block of the attention mask is a buffer; and static dims: every reshape names its dims as
constants with -1 for the batch (shapes are static except B, DESIGN.md), since a traced `x.shape[i]`
exports as a Shape/Gather/Unsqueeze/Concat chain per reshape (~4 ops x ~9 reshapes per layer); likewise
RoPE's rotate-half slices have constant bounds (`chunk` exports a Shape/Gather/Add/Div/Mul chain per use).

Precision: the modules are built directly in the target dtype (do not `.to()` them afterwards: the
tables must stay float32). Norm statistics, attention logits/softmax, RoPE and the Euler update are
float32 as in the reference (MODEL.md, float32 islands).

Axis legend: b=batch, s=suffix tokens, t=keys, w=width, n=norms, k=schedule step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pi0edge import contract as c
from pi0edge.export.model import (
    MASK_VALUE,
    AdaRMSNorm,
    GemmaLayer,
    Pi0Model,
    RMSNorm,
    attend,
    gelu_tanh,
    mask_2d,
    posemb_sincos,
)
from pi0edge.schedule import euler_schedule


@dataclass(frozen=True)
class OptimizeOptions:
    """Which export-time graph optimizations to apply; all but fuse_gate_up on by default (see the module
    docstring)."""

    fold_norms: bool = True
    fuse_qkv: bool = True
    fuse_gate_up: bool = False  # measured slower on ORT CPU: see the module docstring
    precompute_time: bool = True
    fold_dt: bool = True
    fast_attention: bool = True
    step_only: bool = True
    fast_gelu: bool = True

    def __post_init__(self):
        for f in fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"OptimizeOptions.{f.name} must be a bool, got {getattr(self, f.name)!r}")

    @classmethod
    def none(cls) -> OptimizeOptions:
        return cls(**{f.name: False for f in fields(cls)})

    @classmethod
    def only(cls, name: str) -> OptimizeOptions:
        """Exactly one optimization on (the parity tests switch each on alone)."""
        if name not in {f.name for f in fields(cls)}:
            raise ValueError(f"unknown optimization {name!r}; choose from {[f.name for f in fields(cls)]}")
        return cls(**{f.name: f.name == name for f in fields(cls)})

    @property
    def uses_step_index(self) -> bool:
        """The step graph indexes per-step tables: it takes step_index and is tied to one num_steps."""
        return self.precompute_time or self.fold_dt

    def manifest_entry(self, num_steps: int) -> dict:
        """bundle.yaml `optimizations`: the switches and, when the step graph is step-indexed, the only
        num_steps it can run (a runtime request for another count must be refused)."""
        return {**asdict(self), "fixed_num_steps": int(num_steps) if self.uses_step_index else None}


DEFAULT_OPTIMIZE = OptimizeOptions()  # `pi0edge export`'s default: every optimization on but fuse_gate_up


# --------------------------------------------------------------------------------------------------
# Building blocks


def _param(t: Tensor, dtype: torch.dtype) -> nn.Parameter:
    """A frozen parameter in `dtype`; an untransformed float32 weight shares the reference's storage."""
    return nn.Parameter(t.detach().to(dtype), requires_grad=False)


def _scale_columns(weight: Tensor, scale: Tensor) -> Tensor:
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
            self.weight = _param(torch.cat([w.detach().float() for w in weights]), dtype)
            self.bias = _param(torch.cat([b.detach().float() for b in biases]), dtype) if has_bias else None
        else:
            self.weights = nn.ParameterList([_param(w, dtype) for w in weights])
            self.biases = nn.ParameterList([_param(b, dtype) for b in biases]) if has_bias else None

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
            qkv = [_scale_columns(w, 1.0 + layer.input_layernorm.weight.float()) for w in qkv]
        if opts.fast_attention and not kv_only:  # RoPE is linear: scaling q before it is scaling after it
            qkv[0] = (qkv[0].detach().double() * self.head_dim**-0.5).float()
        self.attn_norm = None if self.ada else Norm(layer.input_layernorm, fold)
        self.qkv = Projections(qkv, [None] * len(qkv), opts.fuse_qkv, dtype)
        if kv_only:
            return
        self.o_proj = _param(attn.o_proj.weight, dtype)
        gate_up = [mlp.gate_proj.weight, mlp.up_proj.weight]
        if fold:
            gate_up = [_scale_columns(w, 1.0 + layer.post_attention_layernorm.weight.float()) for w in gate_up]
        self.mlp_norm = None if self.ada else Norm(layer.post_attention_layernorm, fold)
        self.gate_up = Projections(gate_up, [None, None], opts.fuse_gate_up, dtype)
        self.down = _param(mlp.down_proj.weight, dtype)

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


def _fold_layer_norm(ln: nn.LayerNorm, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
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
            ws = [_fold_layer_norm(layer.layer_norm1, w, b) for w, b in ws]
        self.scaled_q = opts.fast_attention
        self.gelu = gelu_tanh_fusable if opts.fast_gelu else gelu_tanh
        if self.scaled_q:  # the softmax scale into q's weight and bias
            ws[0] = tuple((t.detach().double() * self.head_dim**-0.5).float() for t in ws[0])
        self.ln1 = LayerNormStats(layer.layer_norm1, fold)
        self.qkv = Projections([w for w, _ in ws], [b for _, b in ws], opts.fuse_qkv, dtype)
        self.out_w, self.out_b = _param(attn.out_proj.weight, dtype), _param(attn.out_proj.bias, dtype)
        fc1 = (layer.mlp.fc1.weight, layer.mlp.fc1.bias)
        if fold:
            fc1 = _fold_layer_norm(layer.layer_norm2, *fc1)
        self.ln2 = LayerNormStats(layer.layer_norm2, fold)
        self.fc1_w, self.fc1_b = _param(fc1[0], dtype), _param(fc1[1], dtype)
        self.fc2_w, self.fc2_b = _param(layer.mlp.fc2.weight, dtype), _param(layer.mlp.fc2.bias, dtype)

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


def _check_reference(model: Pi0Model) -> None:
    if model.dtype != torch.float32:
        raise ValueError(f"optimized graphs are derived from the float32 reference model, got {model.dtype}; "
                         "build them before casting the model")


class OptimizedPrefixGraph(nn.Module):
    """images + prompt -> past_keys, past_values, prefix_mask (MODEL.md, "Prefix"), optimized."""

    def __init__(self, model: Pi0Model, opts: OptimizeOptions, dtype: torch.dtype):
        super().__init__()
        _check_reference(model)
        cfg, vision = model.cfg, model.vision
        self.dtype, self.cfg = dtype, cfg
        emb = vision.embeddings
        self.patch_w, self.patch_b = _param(emb.patch_embedding.weight, dtype), _param(emb.patch_embedding.bias,
                                                                                       dtype)
        self.patch_size = cfg.vision.patch_size
        self.pos_emb = _param(emb.position_embedding.weight, dtype)
        self.vision_blocks = nn.ModuleList(VisionBlock(layer, opts, dtype) for layer in vision.encoder.layers)
        proj = (model.projector.linear.weight, model.projector.linear.bias)
        if opts.fold_norms:
            proj = _fold_layer_norm(vision.post_layernorm, *proj)
        self.post_ln = LayerNormStats(vision.post_layernorm, opts.fold_norms)
        self.proj_w, self.proj_b = _param(proj[0], dtype), _param(proj[1], dtype)
        self.embed_tokens = _param(model.vlm.embed_tokens.weight, dtype)
        self.fast_attention = opts.fast_attention
        last = len(model.vlm.layers) - 1
        self.blocks = nn.ModuleList(GemmaBlock(layer, opts, dtype, kv_only=opts.step_only and i == last)
                                    for i, layer in enumerate(model.vlm.layers))

    def forward(self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor):
        n = int(images.shape[1])
        x = F.conv2d(pixels(images, self.dtype), self.patch_w, self.patch_b, stride=self.patch_size)
        x = x.flatten(2).transpose(1, 2) + self.pos_emb[None]  # [bn, p, w_vision]
        for block in self.vision_blocks:
            x = block(x)
        image_tokens = F.linear(self.post_ln(x), self.proj_w, self.proj_b)  # not scaled (MODEL.md, "Shapes")
        p, w = int(image_tokens.shape[1]), int(image_tokens.shape[2])
        image_tokens = image_tokens.reshape(-1, n * p, w)
        image_pad = image_masks[:, :, None].expand(-1, -1, p).reshape(-1, n * p)
        text = F.embedding(tokens, self.embed_tokens)
        text = text * torch.tensor(math.sqrt(self.cfg.vlm.width), dtype=text.dtype)
        x = torch.cat([image_tokens, text], dim=1)
        pad = torch.cat([image_pad, token_masks], dim=1)
        mask = attention_mask(pad[:, None, :] & pad[:, :, None], self.fast_attention)  # bidirectional prefix
        cos, sin = rope_tables(torch.cumsum(pad.to(torch.int64), dim=1) - 1, self.cfg.vlm.head_dim,
                               self.cfg.vlm.rope_base)
        keys, values = [], []
        for block in self.blocks:
            x, k, v = block(x, cos, sin, mask)
            keys.append(k)
            values.append(v)
        return torch.stack(keys), torch.stack(values), pad


class OptimizedDenoiseStepGraph(nn.Module):
    """One Euler step over the KV cache (MODEL.md, "Suffix and one denoise step"), optimized.

    forward(x_t, step_index | (t, dt), past_keys, past_values, prefix_mask[, state]) in the contract's
    input order -> x_next (and velocity with with_velocity)."""

    def __init__(self, model: Pi0Model, opts: OptimizeOptions, dtype: torch.dtype, with_velocity: bool = False):
        super().__init__()
        _check_reference(model)
        cfg = model.cfg
        self.cfg, self.opts, self.dtype, self.with_velocity = cfg, opts, dtype, with_velocity
        self.horizon, self.suffix_len = cfg.action_horizon, cfg.suffix_len
        times, dt = euler_schedule(cfg.num_steps)
        self.dt = float(dt)
        self.register_buffer("times", torch.from_numpy(times.copy()))  # float32 [k]: t by step index
        # the suffix's own mask block is constant ("Mask rule"): a buffer, not a cumsum per step
        ar = torch.tensor(model.suffix_ar_mask(), dtype=torch.int64)[None]
        self.register_buffer("suffix_allowed", mask_2d(torch.ones_like(ar, dtype=torch.bool), ar)[0])
        we = cfg.expert.width
        self.blocks = nn.ModuleList(GemmaBlock(layer, opts, dtype) for layer in model.expert.layers)
        self._build_time(model, opts, dtype, times)
        self._build_output(model, opts, dtype)
        if not cfg.is_pi05:
            self.state_w, self.state_b = _param(model.state_proj.weight, dtype), _param(model.state_proj.bias, dtype)
            self.mlp_out_w = _param(model.action_time_mlp_out.weight, dtype)
            self.mlp_out_b = _param(model.action_time_mlp_out.bias, dtype)
        self.we = we

    # ---- construction ---------------------------------------------------------------------------

    def _build_time(self, model: Pi0Model, opts: OptimizeOptions, dtype: torch.dtype, times) -> None:
        cfg, we = model.cfg, model.cfg.expert.width
        if cfg.is_pi05:
            norms = [n for layer in model.expert.layers for n in (layer.input_layernorm,
                                                                   layer.post_attention_layernorm)]
            norms.append(model.expert.norm)
            dense_w = torch.cat([n.dense.weight.detach() for n in norms])  # [n * 3w, w]: all modulations
            dense_b = torch.cat([n.dense.bias.detach() for n in norms])
            self.num_norms = len(norms)
            if opts.precompute_time:
                with torch.no_grad():
                    cond = model.time_condition(torch.from_numpy(times.copy()))  # [k, w] float32 reference
                    mods = F.linear(cond, dense_w, dense_b).view(len(times), len(norms), 3, we)
                    mods = torch.cat([1.0 + mods[:, :, :1], mods[:, :, 1:]], dim=2)  # (1 + scale, shift, gate)
                # [n, 3, k, 1, w] float32: mod_table[j, c] is the [k, 1, w] table of norm j, kind c
                self.register_buffer("mod_table", mods.float().permute(1, 2, 0, 3)[:, :, :, None].contiguous())
            else:
                self.time_in_w, self.time_in_b = _param(model.time_mlp_in.weight, dtype), _param(
                    model.time_mlp_in.bias, dtype)
                self.time_out_w, self.time_out_b = _param(model.time_mlp_out.weight, dtype), _param(
                    model.time_mlp_out.bias, dtype)
                self.mod_w, self.mod_b = _param(dense_w, dtype), _param(dense_b, dtype)
            self.action_in_w = _param(model.action_in_proj.weight, dtype)
            self.action_in_b = _param(model.action_in_proj.bias, dtype)
            return
        w_in = model.action_time_mlp_in.weight.detach()
        w_a, w_t = w_in[:, :we], w_in[:, we:]
        if opts.precompute_time:
            with torch.no_grad():
                emb = posemb_sincos(torch.from_numpy(times.copy()), we, cfg.min_period, cfg.max_period)
                table = emb.double() @ w_t.double().T + model.action_time_mlp_in.bias.detach().double()
                # W_a (W_in x + b_in) = (W_a W_in) x + W_a b_in: two linears in a row become one
                table = table + w_a.double() @ model.action_in_proj.bias.detach().double()
                merged = w_a.double() @ model.action_in_proj.weight.detach().double()  # [w, A]
            self.register_buffer("time_table", table.float())  # [k, w] float32
            self.action_w = _param(merged.float(), dtype)
        else:
            self.action_in_w = _param(model.action_in_proj.weight, dtype)
            self.action_in_b = _param(model.action_in_proj.bias, dtype)
            self.mlp_in_w, self.mlp_in_b = _param(w_in, dtype), _param(model.action_time_mlp_in.bias, dtype)

    def _build_output(self, model: Pi0Model, opts: OptimizeOptions, dtype: torch.dtype) -> None:
        cfg = model.cfg
        w, b = model.action_out_proj.weight.detach().float(), model.action_out_proj.bias.detach().float()
        fold_final = opts.fold_norms and not cfg.is_pi05
        self.final_norm = None if cfg.is_pi05 else Norm(model.expert.norm, fold_final)
        self.final_eps = model.expert.norm.eps
        self.register_buffer("unit", torch.ones(cfg.expert.width))  # see rms_normed
        if fold_final:  # the expert's final RMSNorm (1 + w) into action_out_proj (pi0)
            w = _scale_columns(w, 1.0 + model.expert.norm.weight.float())
        if self.with_velocity:
            self.vel_w, self.vel_b = _param(w, dtype), _param(b, dtype)
        if opts.fold_dt:  # x + dt (W h + b) = x + (dt W) h + dt b
            dt = torch.tensor(self.dt, dtype=torch.float64)
            w, b = (w.double() * dt).float(), (b.double() * dt).float()
        self.out_w, self.out_b = _param(w, dtype), _param(b, dtype)

    # ---- the step -------------------------------------------------------------------------------

    def forward(self, x_t: Tensor, *rest: Tensor):
        if self.opts.uses_step_index:
            step_index, past_keys, past_values, prefix_mask, *state = rest
            t, dt = (None if self.opts.precompute_time else self.times[step_index]), None
        else:
            t, dt, past_keys, past_values, prefix_mask, *state = rest
            step_index = None
        state = state[0] if state else None
        x, mods = self._suffix(x_t, t, step_index, state)
        s = int(x.shape[1])
        mask = attention_mask(torch.cat([prefix_mask[:, None, :].expand(-1, s, -1),
                                         self.suffix_allowed[None].expand(x.shape[0], s, s)], dim=2),
                              self.opts.fast_attention)
        positions = prefix_mask.to(torch.int64).sum(-1, keepdim=True) + torch.arange(s)[None, :]
        cos, sin = rope_tables(positions, self.cfg.expert.head_dim, self.cfg.expert.rope_base)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            queries = self.horizon if self.opts.step_only and i == last and s > self.horizon else None
            x, _, _ = block(x, cos, sin, mask, past=(past_keys[i], past_values[i]),
                            mods=None if mods is None else mods[2 * i:2 * i + 2], queries=queries)
        x = x[:, -self.horizon:]  # only the H action tokens reach the output (a no-op after step_only)
        if mods is None:
            h = self.final_norm(x)
        else:
            h = (rms_normed(x, self.final_eps, self.unit) * mods[-1][0] + mods[-1][1]).to(x.dtype)
        delta = F.linear(h, self.out_w, self.out_b).to(torch.float32)
        if self.opts.fold_dt:
            x_next = x_t + delta
        else:
            dt = torch.full_like(x_t[:, 0, 0], self.dt) if dt is None else dt
            x_next = x_t + dt[:, None, None] * delta
        if not self.with_velocity:
            return x_next
        return x_next, F.linear(h, self.vel_w, self.vel_b).to(torch.float32)

    def _suffix(self, x_t: Tensor, t: Tensor | None, step_index: Tensor | None, state: Tensor | None
                ) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]] | None]:
        """-> suffix tokens [b, s, w], and for pi0.5 the adaRMS modulations: per norm, (1 + scale, shift,
        gate) each float32 [b, 1, w]."""
        x_t = x_t.to(self.dtype)
        if self.cfg.is_pi05:
            if self.opts.precompute_time:  # one Gather per modulation (the table slices are constants)
                mods = [tuple(self.mod_table[j, c][step_index] for c in range(3)) for j in range(self.num_norms)]
            else:
                emb = posemb_sincos(t, self.we, self.cfg.min_period, self.cfg.max_period).to(self.dtype)
                cond = F.silu(F.linear(F.silu(F.linear(emb, self.time_in_w, self.time_in_b)), self.time_out_w,
                                       self.time_out_b))
                mods = F.linear(cond, self.mod_w, self.mod_b).view(-1, self.num_norms, 3, self.we).float()
                mods = torch.cat([1.0 + mods[:, :, :1], mods[:, :, 1:]], dim=2)
                mods = [tuple(mods[:, None, j, c] for c in range(3)) for j in range(self.num_norms)]
            return F.linear(x_t, self.action_in_w, self.action_in_b), mods
        if self.opts.precompute_time:
            hidden = F.linear(x_t, self.action_w) + self.time_table[step_index][:, None, :].to(self.dtype)
        else:
            actions = F.linear(x_t, self.action_in_w, self.action_in_b)
            emb = posemb_sincos(t, self.we, self.cfg.min_period, self.cfg.max_period).to(self.dtype)
            hidden = F.linear(torch.cat([actions, emb[:, None, :].expand(-1, int(actions.shape[1]), -1)], dim=-1),
                              self.mlp_in_w, self.mlp_in_b)
        actions = F.linear(F.silu(hidden), self.mlp_out_w, self.mlp_out_b)
        state_token = F.linear(state.to(self.dtype), self.state_w, self.state_b)[:, None, :]
        return torch.cat([state_token, actions], dim=1), None


def optimized_graphs(model: Pi0Model, opts: OptimizeOptions, dtype: torch.dtype, with_velocity: bool = False
                     ) -> dict[str, nn.Module]:
    """{graph name: module} for export_graphs; the model must be the float32 reference (left unchanged)."""
    return {c.PREFIX_GRAPH: OptimizedPrefixGraph(model, opts, dtype).eval(),
            c.DENOISE_STEP_GRAPH: OptimizedDenoiseStepGraph(model, opts, dtype, with_velocity).eval()}
