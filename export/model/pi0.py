"""Pi0 / Pi0.5 in plain PyTorch, written for export: tensors in, tensors out, no cache objects.

The math follows docs/model.md (which follows openpi). Submodule names mirror the Hugging Face / LeRobot
parameter names below four prefixes (`vision.`, `projector.`, `vlm.`, `expert.`; see export/checkpoint/),
so a checkpoint loads with one prefix table and no per-tensor renaming.

This is the only definition of the model. Built with `OptimizeOptions` switches (export/model/options.py)
it computes the same function with folded or fused weights and fewer ops; export/optimize.py's
`optimized_model` turns a plain model's state dict into the switched model's. The switches here:
`precompute_time` replaces the time branch by float32 tables indexed by the step (pi0: `time_table`, the
time half of action_time_mlp_in with action_in_proj merged into its action half; pi0.5: `mod_table`, every
adaRMS modulation); `fold_dt` means action_out_proj already carries dt; `step_only` skips what feeds no
output (the last VLM layer's q, attention and MLP; the pi0 state token's query in the last expert layer).

Precision: the module may be cast with `to_precision` to float16/bfloat16; the float32 islands of
docs/model.md ("Float32 islands") stay float32 inside the layers whatever the weight dtype, and so do the
per-step tables.

Axis legend: b=batch, n=cameras, p=patches, t=tokens (keys), s=suffix tokens (queries), w=width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pi0edge.export.config import Pi0Config
from pi0edge.export.model.gemma import GemmaStack
from pi0edge.export.model.layers import attention_mask, mask_2d, posemb_sincos, rope_tables
from pi0edge.export.model.options import PLAIN, OptimizeOptions
from pi0edge.export.model.paligemma import embed_prefix
from pi0edge.export.model.siglip import Projector, VisionTower
from pi0edge.schedule import euler_schedule


class Pi0Model(nn.Module):
    """Pi0 / Pi0.5: `prefix()` fills the KV cache once, `denoise_step()` is one Euler step over it."""

    def __init__(self, cfg: Pi0Config, options: OptimizeOptions = PLAIN):
        super().__init__()
        self.cfg, self.options = cfg, options
        we, table = cfg.expert.width, options.precompute_time
        self.vision = VisionTower(cfg.vision, options)
        self.projector = Projector(cfg.vision.width, cfg.vlm.width)
        self.vlm = GemmaStack(cfg.vlm, cfg.vocab_size, options=options, kv_only_last=options.step_only)
        self.expert = GemmaStack(cfg.expert, None, we if cfg.is_pi05 else None, options=options)
        # precompute_time (pi0): W_a (W_in x + b_in) = (W_a W_in) x + W_a b_in, the bias goes into the table
        self.action_in_proj = nn.Linear(cfg.action_dim, we, bias=cfg.is_pi05 or not table)
        self.action_out_proj = nn.Linear(we, cfg.action_dim)
        if cfg.is_pi05 and table:  # [norms, 3 (1 + scale, shift, gate), steps, 1, w]: one Gather per use
            self.register_buffer("mod_table", torch.zeros(2 * cfg.expert.depth + 1, 3, cfg.num_steps, 1, we))
        elif cfg.is_pi05:
            self.time_mlp_in, self.time_mlp_out = nn.Linear(we, we), nn.Linear(we, we)
        else:
            self.state_proj = nn.Linear(cfg.state_dim, we)
            if table:  # W_t posemb(t_k) + b_in (+ W_a b_action_in) per step k
                self.register_buffer("time_table", torch.zeros(cfg.num_steps, we))
            else:
                self.action_time_mlp_in = nn.Linear(2 * we, we)
            self.action_time_mlp_out = nn.Linear(we, we)

    @property
    def dtype(self) -> torch.dtype:
        return self.action_out_proj.weight.dtype

    def to_precision(self, dtype: torch.dtype) -> Pi0Model:
        """Cast the weights in place; the per-step tables stay float32 (cast at use)."""
        tables = dict(self.named_buffers(recurse=False))
        self.to(dtype)
        for name, table in tables.items():
            setattr(self, name, table.float())
        return self

    # ---- prefix: images + prompt -> KV cache (docs/model.md, "Prefix") ---------------------------

    def embed_prefix(self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor
                     ) -> tuple[Tensor, Tensor]:
        """-> prefix embeddings [b, T, w_vlm], pad mask bool [b, T] (export/model/paligemma.py)."""
        return embed_prefix(self.vision, self.projector, self.vlm, images, image_masks, tokens, token_masks,
                            self.dtype)

    def prefix(self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor,
               return_hidden: bool = False):
        """-> past_keys, past_values [l, b, T, k, d] (K after RoPE), prefix_mask bool [b, T]
        (and the VLM's final-norm hidden states [b, T, w] with return_hidden, for tests)."""
        if return_hidden and self.options.step_only:
            raise ValueError("return_hidden needs the last VLM layer's MLP, which step_only leaves out")
        x, pad = self.embed_prefix(images, image_masks, tokens, token_masks)
        mask = attention_mask(pad[:, None, :] & pad[:, :, None], self.options.fast_attention)  # bidirectional
        cos, sin = rope_tables(torch.cumsum(pad.to(torch.int64), dim=1) - 1, self.cfg.vlm.head_dim,
                               self.cfg.vlm.rope_base)
        keys, values = [], []
        for layer in self.vlm.layers:
            x, k, v = layer(x, cos, sin, mask)
            keys.append(k)
            values.append(v)
        past_keys, past_values = torch.stack(keys), torch.stack(values)
        if return_hidden:
            return past_keys, past_values, pad, self.vlm.norm(x)
        return past_keys, past_values, pad

    # ---- one denoise step: x_t, t + KV cache -> x_next (docs/model.md, "Suffix and one denoise step") ----

    def adarms_norms(self) -> list[nn.Module]:
        """pi0.5's modulated norms in table order: (input, post-attention) per expert layer, then the final."""
        return [n for layer in self.expert.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)
                ] + [self.expert.norm]

    def time_condition(self, t: Tensor | None = None, step_index: Tensor | None = None):
        """What the suffix reads of the time. pi0: [b, w], posemb(t) (or with precompute_time the table row of
        step_index: the time half of action_time_mlp_in, float32). pi0.5: per adaRMS norm (1 + scale, shift,
        gate), each [b, 1, w], from the time MLP (or the table)."""
        if self.options.precompute_time:
            if self.cfg.is_pi05:
                return [tuple(self.mod_table[j, c][step_index] for c in range(3)) for j in range(len(self.mod_table))]
            return self.time_table[step_index]
        emb = posemb_sincos(t, self.cfg.expert.width, self.cfg.min_period, self.cfg.max_period).to(self.dtype)
        if not self.cfg.is_pi05:
            return emb
        cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(emb))))
        return [norm.modulation(cond) for norm in self.adarms_norms()]

    def embed_suffix(self, x_t: Tensor, time_cond, state: Tensor | None) -> Tensor:
        """-> suffix tokens [b, s, w_expert]."""
        actions = self.action_in_proj(x_t.to(self.dtype))
        if self.cfg.is_pi05:
            return actions
        if self.options.precompute_time:
            hidden = actions + time_cond[:, None, :].to(self.dtype)
        else:
            h = int(actions.shape[1])
            hidden = self.action_time_mlp_in(torch.cat([actions, time_cond[:, None, :].expand(-1, h, -1)], dim=-1))
        actions = self.action_time_mlp_out(F.silu(hidden))
        return torch.cat([self.state_proj(state.to(self.dtype))[:, None, :], actions], dim=1)

    def suffix_ar_mask(self) -> list[int]:
        """pi0 [1 (state), 1, 0 x H-1]; pi0.5 [1, 0 x H-1]."""
        actions = [1] + [0] * (self.cfg.action_horizon - 1)
        return actions if self.cfg.is_pi05 else [1] + actions

    def velocity(self, x_t: Tensor, time_cond, past_keys: Tensor, past_values: Tensor,
                 prefix_mask: Tensor, state: Tensor | None = None) -> Tensor:
        """The output head [b, H, A] float32: v_t (with fold_dt, dt * v_t). The expert's queries attend
        [cached prefix ; suffix]. time_cond: `time_condition`'s."""
        x = self.embed_suffix(x_t, time_cond, state)
        s, horizon = int(x.shape[1]), self.cfg.action_horizon
        ar = torch.tensor(self.suffix_ar_mask(), dtype=torch.int64, device=x.device)[None]
        suffix_allowed = mask_2d(torch.ones_like(ar, dtype=torch.bool), ar)  # constant (docs/model.md, "Mask rule")
        allowed = torch.cat([prefix_mask[:, None, :].expand(-1, s, -1),
                             suffix_allowed.expand(prefix_mask.shape[0], s, s)], dim=2)
        mask = attention_mask(allowed, self.options.fast_attention)
        positions = prefix_mask.to(torch.int64).sum(-1, keepdim=True) + torch.arange(s, device=x.device)[None, :]
        cos, sin = rope_tables(positions, self.cfg.expert.head_dim, self.cfg.expert.rope_base)
        mods = time_cond if self.cfg.is_pi05 else None
        last = len(self.expert.layers) - 1
        for i, layer in enumerate(self.expert.layers):
            # step_only: in the last layer only the H action tokens' queries reach the output
            queries = horizon if self.options.step_only and i == last and s > horizon else None
            x, _, _ = layer(x, cos, sin, mask, past=(past_keys[i], past_values[i]),
                            mods=None if mods is None else mods[2 * i:2 * i + 2], queries=queries)
        h = self.expert.norm(x) if mods is None else self.expert.norm(x, mods[-1])  # per token
        return self.action_out_proj(h[:, -horizon:]).to(torch.float32)  # only the H action tokens

    def denoise_step(self, x_t: Tensor, t: Tensor | None, dt: Tensor | None, past_keys: Tensor,
                     past_values: Tensor, prefix_mask: Tensor, state: Tensor | None = None,
                     step_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One Euler step (docs/model.md, "Sampling"), in float32: -> x_next = x_t + dt * v, v.
        A step-indexed model (precompute_time or fold_dt) reads t and dt of its schedule at step_index."""
        times, dt_value = euler_schedule(self.cfg.num_steps)
        if t is None and not self.options.precompute_time:
            t = torch.tensor(times, device=x_t.device)[step_index]
        out = self.velocity(x_t, self.time_condition(t, step_index), past_keys, past_values, prefix_mask, state)
        if self.options.fold_dt:  # x + dt (W h + b) = x + (dt W) h + dt b: out is dt * v already
            return x_t + out, out / float(dt_value)
        if dt is None:
            dt = torch.full_like(x_t[:, 0, 0], float(dt_value))
        return x_t + dt[:, None, None] * out, out

    # ---- the eager reference --------------------------------------------------------------------

    @torch.no_grad()
    def sample_actions(self, observation: dict[str, Tensor], noise: Tensor, num_steps: int | None = None) -> Tensor:
        """The reference everything else is checked against: prefix once, then the fixed Euler loop
        t = 1, 1 - 1/n, ..., 1/n (pi0edge.schedule). observation: images, image_masks, tokens, token_masks,
        state (normalized, padded to state_dim; ignored by pi0.5 whose state is in the prompt).
        noise [b, H, A] -> normalized actions [b, H, A]."""
        num_steps = num_steps or self.cfg.num_steps
        if self.options.uses_step_index and num_steps != self.cfg.num_steps:
            raise ValueError(f"this model's time tables / folded dt are for {self.cfg.num_steps} steps, "
                             f"not {num_steps}")
        times, dt_value = euler_schedule(num_steps)
        past_keys, past_values, prefix_mask = self.prefix(
            observation["images"], observation["image_masks"], observation["tokens"], observation["token_masks"])
        state = None if self.cfg.is_pi05 else observation["state"]
        b, device = noise.shape[0], noise.device
        dt = torch.full((b,), float(dt_value), dtype=torch.float32, device=device)
        x = noise.to(torch.float32)
        for k, t_value in enumerate(times):
            t = torch.full((b,), float(t_value), dtype=torch.float32, device=device)
            step_index = torch.full((b,), k, dtype=torch.int64, device=device)
            x, _ = self.denoise_step(x, t, dt, past_keys, past_values, prefix_mask, state, step_index)
        return x
