"""SigLIP, the vision tower (docs/model.md, "Shapes": pre-LN ViT, LayerNorm eps 1e-6, gelu-tanh MLP), and the
projector into the VLM's width. Submodule names are Hugging Face's below `vision.` and `projector.`.

Switches (export/model/options.py): `fuse_qkv` holds q/k/v as one `qkv_proj`; `fast_attention` expects the
softmax scale already in q's weight and bias; `fast_gelu` writes gelu in ONNX Runtime's fusable form.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pi0edge.export.config import VisionConfig
from pi0edge.export.model.layers import FloatLayerNorm, fused, gelu_tanh, gelu_tanh_fusable
from pi0edge.export.model.options import PLAIN, OptimizeOptions


class SiglipAttention(nn.Module):
    def __init__(self, cfg: VisionConfig, options: OptimizeOptions = PLAIN):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.fused, self.scaled_q = options.fuse_qkv, options.fast_attention
        if self.fused:
            self.qkv_proj = nn.Linear(cfg.width, 3 * cfg.width)
        else:
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(cfg.width, cfg.width) for _ in range(3))
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: Tensor) -> Tensor:
        p, w = int(x.shape[1]), int(x.shape[2])
        qkv = fused(x, self.qkv_proj, [w] * 3) if self.fused else (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        # [b, p, w] -> [b, heads, p, d]; matmul rather than einsum: every backend fuses it.
        q, k, v = (y.view(-1, p, self.num_heads, self.head_dim).transpose(1, 2) for y in qkv)
        logits = torch.matmul(q.float(), k.float().transpose(-1, -2))
        if not self.scaled_q:
            logits = logits * self.head_dim**-0.5
        probs = logits.softmax(dim=-1).to(v.dtype)
        return self.out_proj(torch.matmul(probs, v).transpose(1, 2).reshape(-1, p, w))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: VisionConfig, options: OptimizeOptions = PLAIN):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(cfg.width, cfg.mlp_dim), nn.Linear(cfg.mlp_dim, cfg.width)
        self.gelu = gelu_tanh_fusable if options.fast_gelu else gelu_tanh

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.gelu(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig, options: OptimizeOptions = PLAIN):
        super().__init__()
        self.layer_norm1 = FloatLayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg, options)
        self.layer_norm2 = FloatLayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg, options)

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
    def __init__(self, cfg: VisionConfig, options: OptimizeOptions = PLAIN):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg, options) for _ in range(cfg.depth))


class VisionTower(nn.Module):
    """pixels [bn, 3, H, W] in [-1, 1] -> image tokens [bn, p, vision width]."""

    def __init__(self, cfg: VisionConfig, options: OptimizeOptions = PLAIN):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg, options)
        self.post_layernorm = FloatLayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def forward(self, pixels: Tensor) -> Tensor:
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
    """uint8 [b, n, H, W, 3] -> [b*n, 3, H, W] in [-1, 1]: a true division (docs/model.md, "Prefix")."""
    h, w, ch = (int(n) for n in images.shape[2:])
    pixels = images.to(torch.float32) / 255.0 * 2.0 - 1.0
    return pixels.reshape(-1, h, w, ch).permute(0, 3, 1, 2).to(dtype)
