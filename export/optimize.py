"""The export's graph optimizations as weight transforms: a plain model's float32 state dict -> the state dict
of the same model built with the switches on (export/model/options.py). `optimized_model` applies them.

Each transform is exact math on the weights, done in float64 and stored float32 (the closest float32 to the
exact product); docs/export.md, "Graph optimizations", says what each switch buys. Switches with no
weight transform change only how the modules compute: fast_gelu (gelu in ONNX Runtime's fusable form) and
unroll_loop (the loop graph, written at export). Always on, in every model: RoPE tables once per graph,
static reshapes, the constant suffix mask.

- fold_norms: a norm's affine is a per-column scale of the projection it feeds (docs/model.md, "Shapes"):
  RMSNorm `W (n (1 + w)) = (W diag(1 + w)) n`, into q/k/v, gate/up and (pi0) the expert's final norm into
  action_out_proj; SigLIP's LayerNorm `W (n g + beta) + b = (W diag(g)) n + (W beta + b)`, into q/k/v, fc1
  and the projector. The norm is left as identity (w = 0; g = 1, beta = 0): its statistics stay float32.
  pi0.5's adaRMS norms have no learned weight: nothing to fold.
- fast_attention: the softmax scale head_dim^-0.5 into q's weight (and SigLIP's q bias); RoPE is linear,
  so scaling before it is scaling after it. A power of two for Gemma's head dims 16/64/256: exact.
- precompute_time: t takes only the num_steps values of the schedule (docs/model.md, "Sampling"), so every
  function of t alone is a float32 table by step. pi0: `action_time_mlp_in(concat(a, posemb(t))) = W_a a +
  (W_t posemb(t) + b)`, the bracket per step, and `W_a (action_in_proj x)` merged into one linear. pi0.5:
  every adaRMS modulation (docs/model.md, "Suffix and one denoise step") per norm, kind and step.
- fold_dt: `x + dt (W h + b) = x + (dt W) h + dt b`, into action_out_proj.
- step_only: the last VLM layer's q, o, post-attention norm and MLP go (only its K/V are outputs). The pi0
  state token's K/V depend on the state only, so they could move to the prefix graph; they stay in the
  step graph (1 of 51 suffix tokens, ~2% of a step) so the graphs keep the contract's inputs.
- fuse_qkv / fuse_gate_up: projections that read the same input are concatenated into one weight.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from pi0edge.export.config import Pi0Config
from pi0edge.export.model import Pi0Model, posemb_sincos
from pi0edge.export.model.options import DEFAULT_OPTIMIZE, PLAIN, OptimizeOptions
from pi0edge.schedule import euler_schedule

__all__ = ["DEFAULT_OPTIMIZE", "OptimizeOptions", "optimized_model", "optimized_state_dict"]

State = dict[str, Tensor]


def _scaled(t: Tensor, scale: Tensor | float) -> Tensor:
    return (t.double() * (scale.double() if isinstance(scale, Tensor) else scale)).float()


def _gemma_stacks(cfg: Pi0Config) -> list[str]:
    """The Gemma stacks with RMSNorm weights: the VLM, and pi0's expert (pi0.5's is adaRMS)."""
    return ["vlm"] if cfg.is_pi05 else ["vlm", "expert"]


def _fold_rms(state: State, norm_key: str, targets: list[str]) -> None:
    scale = 1.0 + state[norm_key].float()  # as RMSNorm computes it
    for key in targets:
        state[key] = _scaled(state[key], scale[None, :])
    state[norm_key] = torch.zeros_like(state[norm_key])


def _fold_layer_norm(state: State, ln: str, linears: list[str]) -> None:
    g, beta = state[f"{ln}.weight"].double(), state[f"{ln}.bias"].double()
    for lin in linears:
        w = state[f"{lin}.weight"].double()
        state[f"{lin}.bias"] = (state[f"{lin}.bias"].double() + w @ beta).float()
        state[f"{lin}.weight"] = (w * g[None, :]).float()
    state[f"{ln}.weight"] = torch.ones_like(state[f"{ln}.weight"])
    state[f"{ln}.bias"] = torch.zeros_like(state[f"{ln}.bias"])


# Every transform works on what part of the state dict it is given (see `optimized_model`): a layer it does
# not find is not there to transform.


def fold_norms(state: State, cfg: Pi0Config) -> None:
    for i in range(cfg.vision.depth):
        layer = f"vision.encoder.layers.{i}"
        if f"{layer}.layer_norm1.weight" not in state:
            continue
        _fold_layer_norm(state, f"{layer}.layer_norm1", [f"{layer}.self_attn.{p}_proj" for p in "qkv"])
        _fold_layer_norm(state, f"{layer}.layer_norm2", [f"{layer}.mlp.fc1"])
    if "vision.post_layernorm.weight" in state:
        _fold_layer_norm(state, "vision.post_layernorm", ["projector.linear"])
    for stack in _gemma_stacks(cfg):
        for i in range(getattr(cfg, stack).depth):
            layer = f"{stack}.layers.{i}"
            if f"{layer}.input_layernorm.weight" not in state:
                continue
            _fold_rms(state, f"{layer}.input_layernorm.weight", [f"{layer}.self_attn.{p}_proj.weight" for p in "qkv"])
            _fold_rms(state, f"{layer}.post_attention_layernorm.weight",
                      [f"{layer}.mlp.{p}_proj.weight" for p in ("gate", "up")])
    if not cfg.is_pi05 and "expert.norm.weight" in state:
        _fold_rms(state, "expert.norm.weight", ["action_out_proj.weight"])


def fast_attention(state: State, cfg: Pi0Config) -> None:
    for stack in ("vlm", "expert"):
        for i in range(getattr(cfg, stack).depth):
            key = f"{stack}.layers.{i}.self_attn.q_proj.weight"
            if key in state:
                state[key] = _scaled(state[key], getattr(cfg, stack).head_dim ** -0.5)
    for i in range(cfg.vision.depth):
        for kind in ("weight", "bias"):
            key = f"vision.encoder.layers.{i}.self_attn.q_proj.{kind}"
            if key in state:
                state[key] = _scaled(state[key], cfg.vision.head_dim ** -0.5)


def precompute_time(state: State, cfg: Pi0Config) -> None:
    if ("time_mlp_in.weight" if cfg.is_pi05 else "action_time_mlp_in.weight") not in state:
        return
    we = cfg.expert.width
    emb = posemb_sincos(torch.from_numpy(euler_schedule(cfg.num_steps)[0].copy()), we, cfg.min_period,
                        cfg.max_period)  # [steps, w] float32, as the model computes it
    if not cfg.is_pi05:
        w_in, b_in = state.pop("action_time_mlp_in.weight").double(), state.pop("action_time_mlp_in.bias").double()
        w_a, w_t = w_in[:, :we], w_in[:, we:]
        state["time_table"] = (emb.double() @ w_t.T + b_in + w_a @ state.pop("action_in_proj.bias").double()).float()
        state["action_in_proj.weight"] = (w_a @ state["action_in_proj.weight"].double()).float()
        return
    cond = F.silu(F.linear(F.silu(F.linear(emb, state.pop("time_mlp_in.weight"), state.pop("time_mlp_in.bias"))),
                           state.pop("time_mlp_out.weight"), state.pop("time_mlp_out.bias")))  # float32, as the model
    norms = [f"expert.layers.{i}.{n}.dense" for i in range(cfg.expert.depth)
             for n in ("input_layernorm", "post_attention_layernorm")] + ["expert.norm.dense"]
    weight = torch.cat([state.pop(f"{n}.weight") for n in norms])
    bias = torch.cat([state.pop(f"{n}.bias") for n in norms])
    mods = F.linear(cond, weight, bias).view(cfg.num_steps, len(norms), 3, we)
    mods = torch.cat([1.0 + mods[:, :, :1], mods[:, :, 1:]], dim=2)  # (1 + scale, shift, gate)
    state["mod_table"] = mods.permute(1, 2, 0, 3)[:, :, :, None].contiguous()  # [norms, 3, steps, 1, w]


def fold_dt(state: State, cfg: Pi0Config) -> None:
    if "action_out_proj.weight" not in state:
        return
    dt = float(euler_schedule(cfg.num_steps)[1])
    for kind in ("weight", "bias"):
        state[f"action_out_proj.{kind}"] = _scaled(state[f"action_out_proj.{kind}"], dt)


def step_only(state: State, cfg: Pi0Config) -> None:
    last = f"vlm.layers.{cfg.vlm.depth - 1}."
    dead = ("self_attn.q_proj.", "self_attn.o_proj.", "post_attention_layernorm.", "mlp.")
    for key in [k for k in state if k.startswith(last) and k[len(last):].startswith(dead)]:
        del state[key]


def _concat(state: State, parts: list[str], fused: str) -> None:
    for kind in ("weight", "bias"):
        if f"{parts[0]}.{kind}" in state:
            state[f"{fused}.{kind}"] = torch.cat([state.pop(f"{p}.{kind}") for p in parts])


def fuse_qkv(state: State, cfg: Pi0Config) -> None:
    for i in range(cfg.vision.depth):
        attn = f"vision.encoder.layers.{i}.self_attn"
        _concat(state, [f"{attn}.{p}_proj" for p in "qkv"], f"{attn}.qkv_proj")
    for stack in ("vlm", "expert"):
        for i in range(getattr(cfg, stack).depth):
            attn = f"{stack}.layers.{i}.self_attn"
            if f"{attn}.q_proj.weight" in state:
                _concat(state, [f"{attn}.{p}_proj" for p in "qkv"], f"{attn}.qkv_proj")
            else:  # step_only's last VLM layer
                _concat(state, [f"{attn}.{p}_proj" for p in "kv"], f"{attn}.kv_proj")


def fuse_gate_up(state: State, cfg: Pi0Config) -> None:
    for stack in ("vlm", "expert"):
        for i in range(getattr(cfg, stack).depth):
            mlp = f"{stack}.layers.{i}.mlp"
            if f"{mlp}.gate_proj.weight" in state:
                _concat(state, [f"{mlp}.gate_proj", f"{mlp}.up_proj"], f"{mlp}.gate_up_proj")


TABLES = ("time_table", "mod_table")  # float32 in every precision, cast at use

# In this order: the folds work on the plain projections, the fusions concatenate their results.
TRANSFORMS = {"fold_norms": fold_norms, "fast_attention": fast_attention, "precompute_time": precompute_time,
              "fold_dt": fold_dt, "step_only": step_only, "fuse_qkv": fuse_qkv, "fuse_gate_up": fuse_gate_up}


def optimized_state_dict(state: State, cfg: Pi0Config, options: OptimizeOptions) -> State:
    """A plain model's float32 state dict -> the state dict of Pi0Model(cfg, options). The input's tensors
    are not modified (unchanged ones are shared)."""
    state = dict(state)
    for name, transform in TRANSFORMS.items():
        if getattr(options, name):
            transform(state, cfg)
    return state


def _part(key: str) -> str:
    """The part of the state dict a key is transformed with: its layer, or (the time branch and pi0.5's
    adaRMS dense layers, which precompute_time reads together) everything else."""
    match = re.match(r"(vision\.encoder\.layers\.\d+|vlm\.layers\.\d+|expert\.layers\.\d+)\.", key)
    return "rest" if match is None or ".dense." in key else match.group(1)


def optimized_model(model: Pi0Model, options: OptimizeOptions, num_steps: int | None = None,
                    dtype: torch.dtype = torch.float32) -> Pi0Model:
    """The same model with `options`' switches on and its weights transformed, for a schedule of num_steps
    (default: the config's), in dtype (the per-step tables stay float32); the float32 plain model passed in
    is left unchanged. Transformed one layer at a time and cast as it goes: at full size in a 16-bit dtype
    the float32 transformed weights of one layer are held at once, not the whole model's."""
    if model.options != PLAIN:
        raise ValueError(f"optimized_model takes the plain model, got one built with {model.options}")
    if model.dtype != torch.float32:
        raise ValueError(f"optimized weights are derived from the float32 model, got {model.dtype}; "
                         "build the optimized model before casting")
    cfg = replace(model.cfg, num_steps=num_steps or model.cfg.num_steps)
    parts: dict[str, State] = {}
    for key, tensor in model.state_dict().items():
        parts.setdefault(_part(key), {})[key] = tensor
    state: State = {}
    for name in list(parts):
        transformed = optimized_state_dict(parts.pop(name), cfg, options)
        state.update({k: v if k in TABLES else v.to(dtype) for k, v in transformed.items()})
        del transformed
    with torch.device("meta"):
        optimized = Pi0Model(cfg, options)
    optimized.load_state_dict(state, strict=True, assign=True)
    return optimized.eval()
