"""The PaliGemma prefix both model families share (docs/model.md, "Prefix"): camera images through SigLIP and
the projector (not scaled), prompt tokens through the tied text embedding times sqrt(width), concatenated.

Pi0 / Pi0.5 (pi0.py) and Pi0-FAST (pi0fast.py) call this one function, so the prefix math exists once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pi0edge.export.model.siglip import images_to_pixels


def embed_prefix(vision: nn.Module, projector: nn.Module, vlm: nn.Module, images: Tensor, image_masks: Tensor,
                 tokens: Tensor, token_masks: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """-> prefix embeddings [b, T, w_vlm], pad mask bool [b, T]: [256 tokens per camera..., text tokens]."""
    n = int(images.shape[1])
    image_tokens = projector(vision(images_to_pixels(images, dtype)))  # [bn, p, w] (not scaled)
    p, w = int(image_tokens.shape[1]), int(image_tokens.shape[2])
    image_tokens = image_tokens.reshape(-1, n * p, w)
    image_pad = image_masks[:, :, None].expand(-1, -1, p).reshape(-1, n * p)
    return torch.cat([image_tokens, embed_text(vlm, tokens)], dim=1), torch.cat([image_pad, token_masks], dim=1)


def embed_text(vlm: nn.Module, tokens: Tensor) -> Tensor:
    """Token ids [b, t] -> the VLM's input embeddings [b, t, w]: the embedding row times sqrt(width)."""
    text = vlm.embed_tokens(tokens)
    return text * torch.tensor(math.sqrt(vlm.cfg.width), dtype=text.dtype)
