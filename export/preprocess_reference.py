"""Torch reference of the runtime's preprocessing (runtime/preprocess.py), for tests.

Written from openpi's own functions, not from the runtime's numpy code, so that a bug in one shows up
as a difference: images as openpi `image_tools.resize_with_pad_torch` on the float [-1, 1] image the
model sees (`preprocess_observation_pytorch`), the prompt as openpi `PaligemmaTokenizer.tokenize`
step by step, normalization from the formulas of docs/model.md, "Normalization", in torch.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from pi0edge.normalization import NormStats

logger = logging.getLogger(__name__)


def uint8_to_model_float(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [-1, 1] as the graph does it: x / 255 * 2 - 1, a true division (docs/model.md, "Prefix")."""
    x = torch.as_tensor(np.asarray(image))
    return x.to(torch.float32) / 255.0 * 2.0 - 1.0


def resize_with_pad_reference(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """uint8 [..., H, W, C] -> float32 [..., size, size, C] in [-1, 1], the way openpi's PyTorch model sees it.

    openpi `preprocess_observation_pytorch` skips images already at the resolution; otherwise
    `resize_with_pad_torch` on the float image: ratio = max(w / size, h / size), resized sides
    int(side / ratio), F.interpolate(bilinear, align_corners=False) (antialias off, the default), clamp to
    [-1, 1], F.pad with -1.0 split as divmod(size - side, 2).
    """
    x = uint8_to_model_float(image)
    lead = x.shape[:-3]
    height, width, channels = x.shape[-3:]
    if (height, width) == (size, size):
        return x
    x = x.reshape(-1, height, width, channels).permute(0, 3, 1, 2)  # b h w c -> b c h w
    ratio = max(width / size, height / size)
    new_h, new_w = int(height / ratio), int(width / ratio)
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)
    pad_top, extra_h = divmod(size - new_h, 2)
    pad_left, extra_w = divmod(size - new_w, 2)
    x = F.pad(x, (pad_left, pad_left + extra_w, pad_top, pad_top + extra_h), mode="constant", value=-1.0)
    return x.permute(0, 2, 3, 1).reshape(*lead, size, size, channels)


def tokenize_reference(sp, prompt: str, max_len: int, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """openpi `PaligemmaTokenizer.tokenize`, step by step; `sp` a loaded SentencePieceProcessor.

    state None: the pi0 format; otherwise the normalized (unpadded) state and the pi0.5 format.
    """
    cleaned_text = prompt.strip().replace("_", " ").replace("\n", " ")
    if state is not None:
        discretized_state = np.digitize(state, bins=np.linspace(-1, 1, 256 + 1)[:-1]) - 1
        state_str = " ".join(map(str, discretized_state))
        full_prompt = f"Task: {cleaned_text}, State: {state_str};\nAction: "
        tokens = sp.encode(full_prompt, add_bos=True)
    else:
        tokens = sp.encode(cleaned_text, add_bos=True) + sp.encode("\n")
    if len(tokens) < max_len:
        padding = [False] * (max_len - len(tokens))
        mask = [True] * len(tokens) + padding
        tokens = tokens + padding
    else:
        if len(tokens) > max_len:
            logger.warning("Token length (%d) exceeds max length (%d), truncating.", len(tokens), max_len)
        tokens = tokens[:max_len]
        mask = [True] * max_len
    return np.asarray(tokens, dtype=np.int64), np.asarray(mask, dtype=bool)


def _stats(norm_stats: NormStats, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    vec = getattr(norm_stats, which)
    return torch.from_numpy(np.array(vec.a, np.float32)), torch.from_numpy(np.array(vec.b, np.float32))


def normalize_reference(x: torch.Tensor, norm_stats: NormStats, which: str = "state") -> torch.Tensor:
    """docs/model.md, "Normalization", forward, in torch float32 (openpi `Normalize`; LeRobot
    `NormalizerProcessorStep`)."""
    a, b = _stats(norm_stats, which)
    x, eps = x.to(torch.float32), norm_stats.eps
    if norm_stats.kind == "mean_std":
        return (x - a) / (b + eps)
    if norm_stats.convention == "openpi":
        return (x - a) / (b - a + eps) * 2.0 - 1.0
    denom = b - a
    denom = torch.where(denom == 0, torch.tensor(eps, dtype=torch.float32), denom)
    return 2.0 * (x - a) / denom - 1.0


def unnormalize_reference(y: torch.Tensor, norm_stats: NormStats, which: str = "action") -> torch.Tensor:
    """docs/model.md, "Normalization", inverse, in torch float32 (openpi `Unnormalize`; LeRobot's unnormalizer)."""
    a, b = _stats(norm_stats, which)
    y, eps = y.to(torch.float32), norm_stats.eps
    if norm_stats.kind == "mean_std":
        return y * (b + eps) + a if norm_stats.convention == "openpi" else y * b + a
    if norm_stats.convention == "openpi":
        return (y + 1.0) / 2.0 * (b - a + eps) + a
    return (y + 1.0) * (b - a) / 2.0 + a


def prepare_state_reference(state: np.ndarray, norm_stats: NormStats, state_dim: int) -> torch.Tensor:
    """Normalize, then zero-pad the last axis to the model width (openpi `PadStatesAndActions`)."""
    x = normalize_reference(torch.as_tensor(np.asarray(state, np.float32)), norm_stats, "state")
    return F.pad(x, (0, state_dim - x.shape[-1]))


def finish_actions_reference(actions: np.ndarray, norm_stats: NormStats) -> torch.Tensor:
    """Crop [..., H, A] to the robot's action dims (the statistics' length), then unnormalize."""
    dim = norm_stats.action.dim
    return unnormalize_reference(torch.as_tensor(np.asarray(actions, np.float32))[..., :dim], norm_stats, "action")
