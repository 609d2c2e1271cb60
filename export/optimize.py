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
- unroll_loop: also write `denoise_loop.onnx`, the step graph unrolled over the schedule (export/loop_graph.py):
  a chunk's steps are one session call, and on ORT CUDA one captured CUDA graph. Needs precompute_time
  (the per-step table rows, constant per copy, fold away); the step graph is still written (calibration,
  TensorRT engines, per-step profiles).
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
    Pi0Model,
    mask_2d,
    posemb_sincos,
)
from pi0edge.export.optimize_blocks import (
    GemmaBlock,
    LayerNormStats,
    Norm,
    VisionBlock,
    attention_mask,
    fold_layer_norm,
    frozen_param,
    pixels,
    rms_normed,
    rope_tables,
    scale_columns,
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
    unroll_loop: bool = True

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
        self.patch_w = frozen_param(emb.patch_embedding.weight, dtype)
        self.patch_b = frozen_param(emb.patch_embedding.bias, dtype)
        self.patch_size = cfg.vision.patch_size
        self.pos_emb = frozen_param(emb.position_embedding.weight, dtype)
        self.vision_blocks = nn.ModuleList(VisionBlock(layer, opts, dtype) for layer in vision.encoder.layers)
        proj = (model.projector.linear.weight, model.projector.linear.bias)
        if opts.fold_norms:
            proj = fold_layer_norm(vision.post_layernorm, *proj)
        self.post_ln = LayerNormStats(vision.post_layernorm, opts.fold_norms)
        self.proj_w, self.proj_b = frozen_param(proj[0], dtype), frozen_param(proj[1], dtype)
        self.embed_tokens = frozen_param(model.vlm.embed_tokens.weight, dtype)
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
            self.state_w = frozen_param(model.state_proj.weight, dtype)
            self.state_b = frozen_param(model.state_proj.bias, dtype)
            self.mlp_out_w = frozen_param(model.action_time_mlp_out.weight, dtype)
            self.mlp_out_b = frozen_param(model.action_time_mlp_out.bias, dtype)
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
                self.time_in_w, self.time_in_b = frozen_param(model.time_mlp_in.weight, dtype), frozen_param(
                    model.time_mlp_in.bias, dtype)
                self.time_out_w, self.time_out_b = frozen_param(model.time_mlp_out.weight, dtype), frozen_param(
                    model.time_mlp_out.bias, dtype)
                self.mod_w, self.mod_b = frozen_param(dense_w, dtype), frozen_param(dense_b, dtype)
            self.action_in_w = frozen_param(model.action_in_proj.weight, dtype)
            self.action_in_b = frozen_param(model.action_in_proj.bias, dtype)
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
            self.action_w = frozen_param(merged.float(), dtype)
        else:
            self.action_in_w = frozen_param(model.action_in_proj.weight, dtype)
            self.action_in_b = frozen_param(model.action_in_proj.bias, dtype)
            self.mlp_in_w, self.mlp_in_b = frozen_param(w_in, dtype), frozen_param(model.action_time_mlp_in.bias, dtype)

    def _build_output(self, model: Pi0Model, opts: OptimizeOptions, dtype: torch.dtype) -> None:
        cfg = model.cfg
        w, b = model.action_out_proj.weight.detach().float(), model.action_out_proj.bias.detach().float()
        fold_final = opts.fold_norms and not cfg.is_pi05
        self.final_norm = None if cfg.is_pi05 else Norm(model.expert.norm, fold_final)
        self.final_eps = model.expert.norm.eps
        self.register_buffer("unit", torch.ones(cfg.expert.width))  # see rms_normed
        if fold_final:  # the expert's final RMSNorm (1 + w) into action_out_proj (pi0)
            w = scale_columns(w, 1.0 + model.expert.norm.weight.float())
        if self.with_velocity:
            self.vel_w, self.vel_b = frozen_param(w, dtype), frozen_param(b, dtype)
        if opts.fold_dt:  # x + dt (W h + b) = x + (dt W) h + dt b
            dt = torch.tensor(self.dt, dtype=torch.float64)
            w, b = (w.double() * dt).float(), (b.double() * dt).float()
        self.out_w, self.out_b = frozen_param(w, dtype), frozen_param(b, dtype)

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
                                         self.suffix_allowed[None].expand(prefix_mask.shape[0], s, s)], dim=2),
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
