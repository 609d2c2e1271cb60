"""Pi0-FAST's two graphs (docs/export.md, "Pi0-FAST graphs") and their ONNX export; names, dtypes and symbolic
shapes come from pi0edge.contract.

`prefix`: images + prompt -> past_keys, past_values [layers, B, T, K, D], prefix_mask, logits [B, V].
`decode_step`: token_id, position, the cache [layers, B, slots, K, D] and its valid slots -> logits and the token's
own new_keys / new_values [layers, B, 1, K, D], which the runtime writes into the cache's next slot: the graph
returns one slot, not a copy of the whole cache per token.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from pi0edge import contract as c
from pi0edge.export.config import Pi0FastConfig
from pi0edge.export.model.pi0fast import Pi0FastModel
from pi0edge.export.onnx.graphs import KV_NUMPY_DTYPE, PRECISIONS, GraphSpec, export_module

log = logging.getLogger(__name__)


class FastPrefixGraph(nn.Module):
    def __init__(self, model: Pi0FastModel):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor):
        return self.model.prefix(images, image_masks, tokens, token_masks)


class DecodeStepGraph(nn.Module):
    def __init__(self, model: Pi0FastModel):
        super().__init__()
        self.model = model

    def forward(self, token_id: Tensor, position: Tensor, past_keys: Tensor, past_values: Tensor,
                cache_mask: Tensor):
        return self.model.decode_step(token_id, position, past_keys, past_values, cache_mask)


def fast_graph_sizes(cfg: Pi0FastConfig) -> dict[str, int]:
    """Concrete values of the contract's symbolic dims (all but B)."""
    return {"N_cam": cfg.num_cameras, "image_size": cfg.vision.image_size, "C": 3, "L": cfg.prompt_len,
            "T": cfg.prefix_len, "slots": cfg.cache_len, "layers": cfg.num_layers, "K": cfg.vlm.num_kv_heads,
            "D": cfg.vlm.head_dim, "V": cfg.vocab_size, "one": 1}


FAST_PREFIX_SPEC = GraphSpec(c.PREFIX_INPUTS, c.FAST_PREFIX_OUTPUTS)
DECODE_STEP_SPEC = GraphSpec(c.DECODE_STEP_INPUTS, c.DECODE_STEP_OUTPUTS)


def fast_manifest_io(spec: GraphSpec, cfg: Pi0FastConfig, precision: str) -> dict:
    """The manifest's record of one graph's I/O: concrete dtypes and shapes, batch kept symbolic."""
    sizes, kv = fast_graph_sizes(cfg), KV_NUMPY_DTYPE[precision]
    return {"inputs": [s.resolve(sizes, kv) for s in spec.inputs],
            "outputs": [s.resolve(sizes, kv) for s in spec.outputs]}


def fast_example_inputs(cfg: Pi0FastConfig, batch: int, precision: str, seed: int = 0
                        ) -> dict[str, dict[str, Tensor]]:
    """Random inputs of the right dtypes and shapes for tracing (and for tests)."""
    g = torch.Generator().manual_seed(seed)
    sizes = fast_graph_sizes(cfg)
    b, n, s = batch, sizes["N_cam"], sizes["image_size"]
    cache_shape = (sizes["layers"], b, sizes["slots"], sizes["K"], sizes["D"])
    prefix = {
        c.IMAGES: torch.randint(0, 256, (b, n, s, s, 3), dtype=torch.uint8, generator=g),
        c.IMAGE_MASKS: torch.ones(b, n, dtype=torch.bool),
        c.TOKENS: torch.randint(0, cfg.vocab_size, (b, sizes["L"]), generator=g),
        c.TOKEN_MASKS: torch.ones(b, sizes["L"], dtype=torch.bool),
    }
    decode = {
        c.TOKEN_ID: torch.randint(0, cfg.vocab_size, (b,), generator=g),
        c.POSITION: torch.full((b,), sizes["T"], dtype=torch.int64),
        c.PAST_KEYS: torch.randn(cache_shape, generator=g).to(PRECISIONS[precision]),
        c.PAST_VALUES: torch.randn(cache_shape, generator=g).to(PRECISIONS[precision]),
        c.CACHE_MASK: torch.arange(sizes["slots"])[None].expand(b, -1) < sizes["T"],
    }
    return {c.PREFIX_GRAPH: prefix, c.DECODE_STEP_GRAPH: decode}


def export_fast_graphs(model: Pi0FastModel, out_dir: Path, precision: str = "float32") -> dict[str, dict]:
    """Write prefix.onnx and decode_step.onnx into out_dir; -> manifest entries {graph: {file, inputs, outputs}}.
    The model is cast to the precision in place (its float32 islands stay float32, docs/model.md)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    cfg = model.cfg
    examples = fast_example_inputs(cfg, batch=1, precision=precision)
    model = model.to_precision(PRECISIONS[precision]).eval()
    graphs = {c.PREFIX_GRAPH: (FastPrefixGraph(model), FAST_PREFIX_SPEC),
              c.DECODE_STEP_GRAPH: (DecodeStepGraph(model), DECODE_STEP_SPEC)}
    entries = {}
    for name, (module, spec) in graphs.items():
        path = out_dir / f"{name}.onnx"
        log.info("exporting %s (%s) -> %s", name, precision, path)
        with torch.no_grad():
            export_module(module, examples[name], spec, path)
        entries[name] = {"file": path.name, **fast_manifest_io(spec, cfg, precision)}
    return entries
