"""openpi's JAX parameter tree: its shapes, and the table that maps it onto our parameters.

The tree (openpi src/openpi/models: pi0.py, gemma.py, siglip.py, pi0_fast.py; docs/model.md, "openpi's JAX
parameter tree"): `PaliGemma/img` is SigLIP with its layers scanned (`encoderblock`, a leading depth
axis), `PaliGemma/llm` is the Gemma mixture whose layers are scanned too (`layers`); the action
expert's parameters are the VLM's names with the suffix `_1`; the projections sit at the top. Kernels are
[in, out] and the attention weights einsum tensors with separate head axes, so most rows transpose or
reshape (the transforms below, each the inverse of the einsum it stands for).

`openpi_shapes` is written from openpi's source (the shapes its modules declare), so a checkpoint is
checked against openpi's layout, named in openpi's terms, before any tensor is mapped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pi0edge.errors import CheckpointError
from pi0edge.export.config import FAST_MODEL_TYPE, Pi0Config, Pi0FastConfig

EXPERT = "_1"  # gemma.py `_name(name, 1)`: the second config of the mixture, the action expert
LORA_MARKERS = ("lora_a", "lora_b")  # lora.py: adapters beside `w` / `gating_einsum` / `linear`

Transform = Callable[[torch.Tensor], torch.Tensor]


# ---- transforms: one layer's JAX array -> our torch parameter ------------------------------------------


def same(x: torch.Tensor) -> torch.Tensor:
    return x


def dense(x: torch.Tensor) -> torch.Tensor:
    """nn.Dense kernel [in, out] -> nn.Linear weight [out, in]."""
    return x.T


def conv(x: torch.Tensor) -> torch.Tensor:
    """nn.Conv kernel [kh, kw, in, out] -> Conv2d weight [out, in, kh, kw]."""
    return x.permute(3, 2, 0, 1)


def flat_rows(x: torch.Tensor) -> torch.Tensor:
    """[1, P, W] position embedding -> [P, W]; [heads, head_dim] bias -> [heads * head_dim]."""
    return x.reshape(-1, x.shape[-1]) if x.dim() == 3 else x.reshape(-1)


def heads_in(x: torch.Tensor) -> torch.Tensor:
    """SigLIP query/key/value kernel [W, heads, head_dim] -> Linear weight [heads * head_dim, W]."""
    return x.reshape(x.shape[0], -1).T


def heads_out(x: torch.Tensor) -> torch.Tensor:
    """SigLIP out kernel / Gemma attn_vec_einsum [heads, head_dim, W] ("BTNH,NHD->BTD") -> [W, heads * head_dim]."""
    return x.reshape(-1, x.shape[-1]).T


def q_heads(x: torch.Tensor) -> torch.Tensor:
    """Gemma q_einsum [N, D, H] ("BTD,NDH->BTNH") -> q_proj weight [N * H, D] (row n * H + h)."""
    return x.permute(0, 2, 1).reshape(-1, x.shape[1])


def k_heads(x: torch.Tensor) -> torch.Tensor:
    """Gemma kv_einsum [2, K, D, H] ("BSD,2KDH->2BSKH"), its K half -> k_proj weight [K * H, D]."""
    return q_heads(x[0])


def v_heads(x: torch.Tensor) -> torch.Tensor:
    return q_heads(x[1])


def gate(x: torch.Tensor) -> torch.Tensor:
    """FeedForward gating_einsum [2, D, F]: [0] is the gelu'd gate, [1] the up projection -> [F, D] each."""
    return x[0].T


def up(x: torch.Tensor) -> torch.Tensor:
    return x[1].T


# ---- the table ----------------------------------------------------------------------------------------

Row = tuple[str, bool, tuple[tuple[str, Transform], ...]]  # (tree path, scanned, ((our name, transform), ...))


def _linear(path: str, ours: str, scanned: bool = False, *, weight: Transform = dense) -> list[Row]:
    return [(f"{path}/kernel", scanned, ((f"{ours}.weight", weight),)),
            (f"{path}/bias", scanned, ((f"{ours}.bias", flat_rows if weight is heads_in else same),))]


def siglip_rows() -> list[Row]:
    enc, ours = "PaliGemma/img/Transformer/encoderblock", "vision.encoder.layers.{i}"
    rows = [("PaliGemma/img/embedding/kernel", False, (("vision.embeddings.patch_embedding.weight", conv),)),
            ("PaliGemma/img/embedding/bias", False, (("vision.embeddings.patch_embedding.bias", same),)),
            ("PaliGemma/img/pos_embedding", False, (("vision.embeddings.position_embedding.weight", flat_rows),))]
    for jax_norm, norm in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
        rows += [(f"{enc}/{jax_norm}/scale", True, ((f"{ours}.{norm}.weight", same),)),
                 (f"{enc}/{jax_norm}/bias", True, ((f"{ours}.{norm}.bias", same),))]
    attn = f"{enc}/MultiHeadDotProductAttention_0"
    for jax_proj, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rows += _linear(f"{attn}/{jax_proj}", f"{ours}.self_attn.{proj}", True, weight=heads_in)
    rows += _linear(f"{attn}/out", f"{ours}.self_attn.out_proj", True, weight=heads_out)
    rows += _linear(f"{enc}/MlpBlock_0/Dense_0", f"{ours}.mlp.fc1", True)
    rows += _linear(f"{enc}/MlpBlock_0/Dense_1", f"{ours}.mlp.fc2", True)
    rows += [("PaliGemma/img/Transformer/encoder_norm/scale", False, (("vision.post_layernorm.weight", same),)),
             ("PaliGemma/img/Transformer/encoder_norm/bias", False, (("vision.post_layernorm.bias", same),))]
    return rows + _linear("PaliGemma/img/head", "projector.linear")


def gemma_rows(suffix: str, ours: str, adarms: bool) -> list[Row]:
    """One Gemma of the mixture: suffix "" (the VLM) or "_1" (the expert); adarms: pi0.5's expert norms."""
    layers, layer = "PaliGemma/llm/layers", f"{ours}.layers.{{i}}"
    rows = [(f"{layers}/attn/q_einsum{suffix}/w", True, ((f"{layer}.self_attn.q_proj.weight", q_heads),)),
            (f"{layers}/attn/kv_einsum{suffix}/w", True, ((f"{layer}.self_attn.k_proj.weight", k_heads),
                                                            (f"{layer}.self_attn.v_proj.weight", v_heads))),
            (f"{layers}/attn/attn_vec_einsum{suffix}/w", True, ((f"{layer}.self_attn.o_proj.weight", heads_out),)),
            (f"{layers}/mlp{suffix}/gating_einsum", True, ((f"{layer}.mlp.gate_proj.weight", gate),
                                                         (f"{layer}.mlp.up_proj.weight", up))),
            (f"{layers}/mlp{suffix}/linear", True, ((f"{layer}.mlp.down_proj.weight", dense),))]
    norms = (("pre_attention_norm", "input_layernorm"), ("pre_ffw_norm", "post_attention_layernorm"))
    for jax_norm, norm in norms:
        if adarms:  # RMSNorm with a condition holds only the modulation Dense (scale, shift, gate)
            rows += _linear(f"{layers}/{jax_norm}{suffix}/Dense_0", f"{layer}.{norm}.dense", True)
        else:
            rows.append((f"{layers}/{jax_norm}{suffix}/scale", True, ((f"{layer}.{norm}.weight", same),)))
    if adarms:
        return rows + _linear(f"PaliGemma/llm/final_norm{suffix}/Dense_0", f"{ours}.norm.dense")
    return rows + [(f"PaliGemma/llm/final_norm{suffix}/scale", False, ((f"{ours}.norm.weight", same),))]


def tree_rows(model_type: str) -> list[Row]:
    """The whole table of one openpi model type (pi0-FAST: the PaliGemma alone, no expert or projections)."""
    rows = siglip_rows() + [("PaliGemma/llm/embedder/input_embedding", False, (("vlm.embed_tokens.weight", same),))]
    rows += gemma_rows("", "vlm", adarms=False)
    if model_type == "pi0_fast":
        return rows
    rows += gemma_rows(EXPERT, "expert", adarms=model_type == "pi05")
    heads = ["action_in_proj", "action_out_proj"]
    heads += ["time_mlp_in", "time_mlp_out"] if model_type == "pi05" else ["state_proj", "action_time_mlp_in",
                                                                             "action_time_mlp_out"]
    for head in heads:
        rows += _linear(head, head)
    return rows


def detect_model_type(paths: set[str], where: str) -> str:
    """pi0 (action_time_mlp_in), pi0.5 (time_mlp_in) or pi0-FAST (a PaliGemma without the expert's `_1`)."""
    pi0, pi05 = "action_time_mlp_in/kernel" in paths, "time_mlp_in/kernel" in paths
    if pi0 and pi05:
        raise CheckpointError(f"{where}: holds both 'action_time_mlp_in' (pi0) and 'time_mlp_in' (pi0.5)")
    if pi0 or pi05:
        return "pi05" if pi05 else "pi0"
    if "PaliGemma/llm/embedder/input_embedding" not in paths:
        raise CheckpointError(f"{where}: not an openpi model's parameters (no 'PaliGemma/llm/embedder/"
                              f"input_embedding'); found {sorted(paths)[:8]}")
    if any(p.startswith("PaliGemma/llm/") and EXPERT + "/" in p for p in paths):
        raise CheckpointError(f"{where}: has the action expert's '{EXPERT}' parameters but neither "
                              "'action_time_mlp_in' (pi0) nor 'time_mlp_in' (pi0.5)")
    return "pi0_fast"


def check_paths(paths: set[str], model_type: str, where: str) -> None:
    """Every path of the table present and none other, each named in openpi's terms."""
    expected = {row[0] for row in tree_rows(model_type)}
    missing, extra = sorted(expected - paths), sorted(paths - expected)
    lora = [p for p in extra if any(m in p.rsplit("/", 1)[-1] for m in LORA_MARKERS)]
    if lora:
        raise CheckpointError(f"{where}: LoRA adapter weights ({', '.join(repr(p) for p in lora[:3])}...) are not "
                              "supported: merge them into the base weights in openpi first (w + a @ b * scaling)")
    if missing:
        raise CheckpointError(f"{where}: {len(missing)} parameters of an openpi {model_type} model are missing: "
                              f"{', '.join(repr(p) for p in missing[:5])}")
    if extra:
        raise CheckpointError(f"{where}: {len(extra)} parameters that an openpi {model_type} model does not have: "
                              f"{', '.join(repr(p) for p in extra[:5])}")


def tree_sizes(shapes: dict[str, tuple[int, ...]], model_type: str) -> dict:
    """What the einsum shapes tell and the Linear weights cannot: heads, kv heads, head dim (per Gemma),
    SigLIP's heads; as the sizes block config.py reads (every other size comes from our shapes)."""
    def gemma(suffix: str) -> dict:
        depth, heads, width, head_dim = shapes[f"PaliGemma/llm/layers/attn/q_einsum{suffix}/w"]
        kv = shapes[f"PaliGemma/llm/layers/attn/kv_einsum{suffix}/w"][2]
        mlp = shapes[f"PaliGemma/llm/layers/mlp{suffix}/linear"][1]
        return {"width": width, "depth": depth, "mlp_dim": mlp, "num_heads": heads, "num_kv_heads": kv,
                "head_dim": head_dim}

    query = shapes["PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel"]
    sizes = {"vision": {"num_heads": query[2]}, "vlm": gemma("")}
    if model_type != "pi0_fast":
        sizes["expert"] = gemma(EXPERT)
    return sizes


def openpi_model_type(cfg: Pi0Config | Pi0FastConfig) -> str:
    """openpi's name of a config's model type (its ModelType values: pi0, pi05, pi0_fast)."""
    return "pi0_fast" if cfg.model_type == FAST_MODEL_TYPE else cfg.model_type


def openpi_shapes(cfg: Pi0Config | Pi0FastConfig, model_type: str | None = None) -> dict[str, tuple[int, ...]]:
    """Every parameter of openpi's tree and its shape, from the shapes openpi's modules declare."""
    model_type = model_type or openpi_model_type(cfg)
    v, w = cfg.vision, cfg.vlm.width
    enc = "PaliGemma/img/Transformer/encoderblock"
    attn = f"{enc}/MultiHeadDotProductAttention_0"
    shapes = {"PaliGemma/img/embedding/kernel": (v.patch_size, v.patch_size, 3, v.width),
              "PaliGemma/img/embedding/bias": (v.width,),
              "PaliGemma/img/pos_embedding": (1, v.tokens_per_image, v.width),
              **{f"{enc}/LayerNorm_{j}/{p}": (v.depth, v.width) for j in (0, 1) for p in ("scale", "bias")},
              **{f"{attn}/{p}/kernel": (v.depth, v.width, v.num_heads, v.head_dim) for p in ("query", "key", "value")},
              **{f"{attn}/{p}/bias": (v.depth, v.num_heads, v.head_dim) for p in ("query", "key", "value")},
              f"{attn}/out/kernel": (v.depth, v.num_heads, v.head_dim, v.width), f"{attn}/out/bias": (v.depth, v.width),
              f"{enc}/MlpBlock_0/Dense_0/kernel": (v.depth, v.width, v.mlp_dim),
              f"{enc}/MlpBlock_0/Dense_0/bias": (v.depth, v.mlp_dim),
              f"{enc}/MlpBlock_0/Dense_1/kernel": (v.depth, v.mlp_dim, v.width),
              f"{enc}/MlpBlock_0/Dense_1/bias": (v.depth, v.width),
              "PaliGemma/img/Transformer/encoder_norm/scale": (v.width,),
              "PaliGemma/img/Transformer/encoder_norm/bias": (v.width,),
              "PaliGemma/img/head/kernel": (v.width, w), "PaliGemma/img/head/bias": (w,),
              "PaliGemma/llm/embedder/input_embedding": (cfg.vocab_size, w)}
    shapes.update(_gemma_shapes(cfg.vlm, "", adarms=False))
    if model_type == "pi0_fast":
        return shapes
    we = cfg.expert.width
    shapes.update(_gemma_shapes(cfg.expert, EXPERT, adarms=model_type == "pi05"))
    heads = {"action_in_proj": (cfg.action_dim, we), "action_out_proj": (we, cfg.action_dim)}
    if model_type == "pi05":
        heads |= {"time_mlp_in": (we, we), "time_mlp_out": (we, we)}
    else:
        heads |= {"state_proj": (cfg.state_dim, we), "action_time_mlp_in": (2 * we, we),
                  "action_time_mlp_out": (we, we)}
    for name, (fan_in, fan_out) in heads.items():
        shapes |= {f"{name}/kernel": (fan_in, fan_out), f"{name}/bias": (fan_out,)}
    return shapes


def _gemma_shapes(g, suffix: str, adarms: bool) -> dict[str, tuple[int, ...]]:
    layers, d = "PaliGemma/llm/layers", g.depth
    shapes = {f"{layers}/attn/q_einsum{suffix}/w": (d, g.num_heads, g.width, g.head_dim),
              f"{layers}/attn/kv_einsum{suffix}/w": (d, 2, g.num_kv_heads, g.width, g.head_dim),
              f"{layers}/attn/attn_vec_einsum{suffix}/w": (d, g.num_heads, g.head_dim, g.width),
              f"{layers}/mlp{suffix}/gating_einsum": (d, 2, g.width, g.mlp_dim),
              f"{layers}/mlp{suffix}/linear": (d, g.mlp_dim, g.width)}
    for norm in ("pre_attention_norm", "pre_ffw_norm"):
        if adarms:
            shapes |= {f"{layers}/{norm}{suffix}/Dense_0/kernel": (d, g.width, 3 * g.width),
                       f"{layers}/{norm}{suffix}/Dense_0/bias": (d, 3 * g.width)}
        else:
            shapes[f"{layers}/{norm}{suffix}/scale"] = (d, g.width)
    if adarms:
        return shapes | {f"PaliGemma/llm/final_norm{suffix}/Dense_0/kernel": (g.width, 3 * g.width),
                         f"PaliGemma/llm/final_norm{suffix}/Dense_0/bias": (3 * g.width,)}
    return shapes | {f"PaliGemma/llm/final_norm{suffix}/scale": (g.width,)}
