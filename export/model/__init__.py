"""The one Pi0 / Pi0.5 model (pi0.py) with its layers (layers.py, siglip.py, gemma.py) and the switches the
export's optimizations set on it (options.py). export/optimize.py derives a switched model's weights."""

from pi0edge.export.model.layers import (
    MASK_VALUE,
    AdaRMSNorm,
    FloatLayerNorm,
    RMSNorm,
    attend,
    attend_fast,
    attention_mask,
    gelu_tanh,
    mask_2d,
    posemb_sincos,
    rope,
)
from pi0edge.export.model.options import DEFAULT_OPTIMIZE, PLAIN, OptimizeOptions
from pi0edge.export.model.pi0 import Pi0Model
from pi0edge.export.model.siglip import images_to_pixels

__all__ = ["DEFAULT_OPTIMIZE", "MASK_VALUE", "PLAIN", "AdaRMSNorm", "FloatLayerNorm", "OptimizeOptions", "Pi0Model",
           "RMSNorm", "attend", "attend_fast", "attention_mask", "gelu_tanh", "images_to_pixels", "mask_2d",
           "posemb_sincos", "rope"]
