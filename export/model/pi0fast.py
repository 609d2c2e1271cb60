"""Pi0-FAST in plain PyTorch, written for export (docs/model.md, "Pi0-FAST"): the PaliGemma backbone (SigLIP,
projector, Gemma with its LM head tied to the text embedding) predicting FAST action tokens one at a time.

The same modules as Pi0 (siglip.py, gemma.py, paligemma.py) under the same names (`vision.`, `projector.`,
`vlm.`; no expert), so a checkpoint loads with the same prefix table. Three entry points:
- `prefix`: images + prompt -> the KV cache of every prefix token and the logits of the last valid one;
- `decode_step`: one token at its position over a preallocated cache [l, b, C, k, d] whose valid slots
  `cache_mask` marks -> its logits and its own K/V (the caller writes them into the cache's next slot);
- `generate` / `generate_uncached`: the eager references (greedy, or sampled with a seeded generator).

Mask (LeRobot `_create_custom_attention_mask_fast`, openpi's ar mask 0 on the prompt, 1 after): the prefix is
bidirectional, every action token sees the valid prefix and the action tokens before it (causal).
Axis legend: b=batch, l=layers, C=cache slots, k=kv heads, d=head dim, V=vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pi0edge.export.config import Pi0FastConfig
from pi0edge.export.model.gemma import GemmaStack
from pi0edge.export.model.layers import mask_2d, rope_tables
from pi0edge.export.model.paligemma import embed_prefix, embed_text
from pi0edge.export.model.siglip import Projector, VisionTower


class Pi0FastModel(nn.Module):
    def __init__(self, cfg: Pi0FastConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionTower(cfg.vision)
        self.projector = Projector(cfg.vision.width, cfg.vlm.width)
        self.vlm = GemmaStack(cfg.vlm, cfg.vocab_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.linear.weight.dtype

    def to_precision(self, dtype: torch.dtype) -> Pi0FastModel:
        return self.to(dtype)

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """Last-layer hidden states [..., w] -> float32 logits [..., V]: final norm, then the LM head tied to
        the text embedding."""
        return F.linear(self.vlm.norm(hidden), self.vlm.embed_tokens.weight).to(torch.float32)

    def _layers(self, x: Tensor, positions: Tensor, allowed: Tensor, past: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """x [b, s, w] through every VLM layer -> (x, keys, values [l, b, s, k, d]); allowed bool [b, s, t]."""
        cos, sin = rope_tables(positions, self.cfg.vlm.head_dim, self.cfg.vlm.rope_base)
        keys, values = [], []
        for i, layer in enumerate(self.vlm.layers):
            x, k, v = layer(x, cos, sin, allowed, past=None if past is None else (past[0][i], past[1][i]))
            keys.append(k)
            values.append(v)
        return x, torch.stack(keys), torch.stack(values)

    def prefix(self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> past_keys, past_values [l, b, T, k, d] (K after RoPE), prefix_mask bool [b, T], and the logits
        [b, V] of the last valid prefix token (the first action token's distribution)."""
        x, pad = embed_prefix(self.vision, self.projector, self.vlm, images, image_masks, tokens, token_masks,
                              self.dtype)
        positions = torch.cumsum(pad.to(torch.int64), dim=1) - 1
        x, past_keys, past_values = self._layers(x, positions, pad[:, None, :] & pad[:, :, None])
        return past_keys, past_values, pad, self.lm_logits(last_valid(x, pad))

    def decode_step(self, token: Tensor, position: Tensor, past_keys: Tensor, past_values: Tensor,
                    cache_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One action token: token, position int64 [b]; cache [l, b, C, k, d] and its valid slots cache_mask
        bool [b, C] -> logits [b, V] float32 and the token's own K/V [l, b, 1, k, d]. The token attends the
        valid slots and itself."""
        x = embed_text(self.vlm, token[:, None])
        allowed = torch.cat([cache_mask, torch.ones_like(cache_mask[:, :1])], dim=1)[:, None, :]
        x, keys, values = self._layers(x, position[:, None], allowed, past=(past_keys, past_values))
        return self.lm_logits(x[:, -1]), keys, values

    # ---- the eager references -------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, observation: dict[str, Tensor], end_token_ids: tuple[int, ...], max_tokens: int | None = None,
                 temperature: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """Decoding over the KV cache, as the runtime runs the two graphs: -> token ids [b, n] (n <= max_tokens),
        stopped once every row has emitted one of end_token_ids (what follows in a row is ignored)."""
        max_tokens = max_tokens or self.cfg.max_action_tokens
        past_keys, past_values, pad, logits = self.prefix(
            observation["images"], observation["image_masks"], observation["tokens"], observation["token_masks"])
        (layers, b, t, k, d), n = past_keys.shape, max_tokens
        cache_k = torch.cat([past_keys, past_keys.new_zeros(layers, b, n, k, d)], dim=2)
        cache_v = torch.cat([past_values, past_values.new_zeros(layers, b, n, k, d)], dim=2)
        cache_mask = torch.cat([pad, pad.new_zeros(b, n)], dim=1)
        position = pad.to(torch.int64).sum(dim=1)  # right after the last valid prefix token
        tokens, finished = [], torch.zeros(b, dtype=torch.bool)
        for step in range(n):
            token = pick_token(logits, temperature, generator)
            tokens.append(token)
            finished |= torch.isin(token, torch.tensor(end_token_ids))
            if bool(finished.all()) or step == n - 1:
                break
            logits, new_k, new_v = self.decode_step(token, position + step, cache_k, cache_v, cache_mask)
            cache_k[:, :, t + step], cache_v[:, :, t + step] = new_k[:, :, 0], new_v[:, :, 0]
            cache_mask[:, t + step] = True
        return torch.stack(tokens, dim=1)

    @torch.no_grad()
    def generate_uncached(self, observation: dict[str, Tensor], end_token_ids: tuple[int, ...],
                          max_tokens: int | None = None) -> Tensor:
        """Greedy decoding that recomputes the whole sequence for every token (no cache): the reference the
        cached decode is checked against. Same stopping rule as `generate`."""
        max_tokens = max_tokens or self.cfg.max_action_tokens
        x, pad = embed_prefix(self.vision, self.projector, self.vlm, observation["images"],
                              observation["image_masks"], observation["tokens"], observation["token_masks"],
                              self.dtype)
        b, t = int(pad.shape[0]), int(pad.shape[1])
        tokens: list[Tensor] = []
        finished = torch.zeros(b, dtype=torch.bool)
        for _ in range(max_tokens):
            n = len(tokens)
            generated = embed_text(self.vlm, torch.stack(tokens, dim=1)) if tokens else x[:, :0]
            valid = torch.cat([pad, pad.new_ones(b, n)], dim=1)
            ar = torch.cat([torch.zeros(b, t, dtype=torch.int64), torch.ones(b, n, dtype=torch.int64)], dim=1)
            out, _, _ = self._layers(torch.cat([x, generated], dim=1), torch.cumsum(valid.to(torch.int64), 1) - 1,
                                     mask_2d(valid, ar))  # prefix bidirectional, action tokens causal
            token = pick_token(self.lm_logits(last_valid(out, valid)), 0.0, None)
            tokens.append(token)
            finished |= torch.isin(token, torch.tensor(end_token_ids))
            if bool(finished.all()):
                break
        return torch.stack(tokens, dim=1)


def last_valid(x: Tensor, valid: Tensor) -> Tensor:
    """x [b, t, w] at each row's last valid index -> [b, w]. Prompts are right-padded, so that is the highest
    valid index: ArgMax over index * valid (one ONNX op, no data-dependent shape)."""
    slots = torch.arange(int(valid.shape[1]), device=valid.device)[None, :]
    last = (slots * valid.to(torch.int64)).argmax(dim=1)
    return torch.gather(x, 1, last[:, None, None].expand(-1, 1, int(x.shape[2])))[:, 0]


def pick_token(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """logits [b, V] -> token ids [b]: argmax at temperature 0, else a sample of softmax(logits / temperature)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
