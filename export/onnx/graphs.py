"""The exportable graphs (docs/export.md, "The graph contract") with the KV cache as explicit I/O, and their
ONNX export.

`prefix`: images + prompt -> past_keys, past_values, prefix_mask.
`denoise_step`: x_t, t, dt, KV cache (+ state for pi0) -> x_next = x_t + dt * v.
Names, dtypes and symbolic shapes come from pi0edge.contract; this module only binds them to the model.
"""

from __future__ import annotations

import datetime
import logging
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

import pi0edge
from pi0edge import contract as c
from pi0edge.export.config import Pi0Config
from pi0edge.export.model import Pi0Model
from pi0edge.export.onnx.external_data import all_tensors, gather_external_data

if TYPE_CHECKING:
    from pi0edge.export.model.options import OptimizeOptions

log = logging.getLogger(__name__)

OPSET = 19
PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
KV_NUMPY_DTYPE = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


class PrefixGraph(nn.Module):
    def __init__(self, model: Pi0Model):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor):
        return self.model.prefix(images, image_masks, tokens, token_masks)


class DenoiseStepGraph(nn.Module):
    """forward(x_t, step_index | (t, dt), past_keys, past_values, prefix_mask[, state][, rtc_leftover,
    rtc_prefix_weights, rtc_max_guidance_weight]) in the contract's input order (step_index when the model is
    step-indexed, the guidance inputs with rtc) -> x_next (and velocity with with_velocity)."""

    def __init__(self, model: Pi0Model, with_velocity: bool = False, rtc: bool = False):
        super().__init__()
        self.model, self.with_velocity, self.rtc = model, with_velocity, rtc

    def forward(self, x_t: Tensor, *rest: Tensor):
        guidance = tuple(rest[-3:]) if self.rtc else None
        rest = rest[:-3] if self.rtc else rest
        if self.model.options.uses_step_index:
            step_index, past_keys, past_values, prefix_mask, *state = rest
            t = dt = None
        else:
            t, dt, past_keys, past_values, prefix_mask, *state = rest
            step_index = None
        x_next, v = self.model.denoise_step(x_t, t, dt, past_keys, past_values, prefix_mask,
                                            state[0] if state else None, step_index, guidance)
        return (x_next, v) if self.with_velocity else x_next


def exporter_record() -> dict:
    """bundle.yaml `exporter`: the versions that wrote the graphs, and when."""
    import onnx

    return {"pi0edge": pi0edge.__version__, "torch": str(torch.__version__), "onnx": str(onnx.__version__),
            "opset": OPSET, "python": platform.python_version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def graph_sizes(cfg: Pi0Config) -> dict[str, int]:
    """Concrete values of the contract's symbolic dims (all but B)."""
    return {"N_cam": cfg.num_cameras, "image_size": cfg.vision.image_size, "C": 3, "L": cfg.max_token_len,
            "T": cfg.prefix_len, "layers": cfg.num_layers, "K": cfg.vlm.num_kv_heads, "D": cfg.vlm.head_dim,
            "H": cfg.action_horizon, "A": cfg.action_dim, "S": cfg.state_dim}


@dataclass(frozen=True)
class GraphSpec:
    """One graph's I/O as the contract resolves it for a config; written into bundle.yaml."""

    inputs: tuple[c.TensorSpec, ...]
    outputs: tuple[c.TensorSpec, ...]

    def manifest_io(self, cfg: Pi0Config, precision: str) -> dict:
        sizes, kv = graph_sizes(cfg), KV_NUMPY_DTYPE[precision]
        return {"inputs": [s.resolve(sizes, kv) for s in self.inputs],
                "outputs": [s.resolve(sizes, kv) for s in self.outputs]}


def prefix_spec() -> GraphSpec:
    return GraphSpec(c.PREFIX_INPUTS, c.PREFIX_OUTPUTS)


def denoise_step_spec(cfg: Pi0Config, with_velocity: bool = False, time_as_step_index: bool = False,
                      rtc: bool = False) -> GraphSpec:
    return GraphSpec(c.denoise_step_inputs(has_state_input=not cfg.is_pi05, time_as_step_index=time_as_step_index,
                                           rtc=rtc),
                     c.denoise_step_outputs(with_velocity))


def denoise_loop_spec(cfg: Pi0Config, rtc: bool = False) -> GraphSpec:
    return GraphSpec(c.denoise_loop_inputs(has_state_input=not cfg.is_pi05, rtc=rtc), c.DENOISE_LOOP_OUTPUTS)


def example_inputs(cfg: Pi0Config, batch: int, precision: str, seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """Random inputs of the right dtypes and shapes for tracing (and for tests)."""
    g = torch.Generator().manual_seed(seed)
    sizes = graph_sizes(cfg)
    b, n, s, length = batch, sizes["N_cam"], sizes["image_size"], sizes["L"]
    kv_shape = (sizes["layers"], b, sizes["T"], sizes["K"], sizes["D"])
    kv_dtype = PRECISIONS[precision]
    prefix = {
        c.IMAGES: torch.randint(0, 256, (b, n, s, s, 3), dtype=torch.uint8, generator=g),
        c.IMAGE_MASKS: torch.ones(b, n, dtype=torch.bool),
        c.TOKENS: torch.randint(0, cfg.vocab_size, (b, length), generator=g),
        c.TOKEN_MASKS: torch.ones(b, length, dtype=torch.bool),
    }
    step = {
        c.X_T: torch.randn(b, cfg.action_horizon, cfg.action_dim, generator=g),
        c.TIME: torch.ones(b),
        c.DT: torch.full((b,), -1.0 / cfg.num_steps),
        c.STEP_INDEX: torch.zeros(b, dtype=torch.int64),  # optimized step graphs (export/optimize.py)
        c.PAST_KEYS: torch.randn(kv_shape, generator=g).to(kv_dtype),
        c.PAST_VALUES: torch.randn(kv_shape, generator=g).to(kv_dtype),
        c.PREFIX_MASK: torch.ones(b, sizes["T"], dtype=torch.bool),
    }
    if not cfg.is_pi05:
        step[c.STATE] = torch.randn(b, cfg.state_dim, generator=g)
    step[c.RTC_LEFTOVER] = torch.randn(b, cfg.action_horizon, cfg.action_dim, generator=g)  # the RTC variant
    step[c.RTC_PREFIX_WEIGHTS] = torch.rand(b, cfg.action_horizon, generator=g)
    step[c.RTC_MAX_GUIDANCE_WEIGHT] = torch.full((b,), 10.0)
    return {c.PREFIX_GRAPH: prefix, c.DENOISE_STEP_GRAPH: step}


def export_module(module: nn.Module, inputs: dict[str, Tensor], spec: GraphSpec, path: Path) -> None:
    import shutil

    import onnx

    names_in = [s.name for s in spec.inputs]
    names_out = [s.name for s in spec.outputs]
    dynamic_axes = {s.name: {s.dims.index("B"): "B"} for s in (*spec.inputs, *spec.outputs)}
    args = tuple(inputs[name] for name in names_in)
    # Export into a scratch folder: over 2 GiB the exporter spills one file per tensor beside the graph.
    scratch = path.parent / f".{path.stem}.scratch"
    scratch.mkdir()
    try:
        scratch_path = scratch / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(module, args, str(scratch_path), input_names=names_in, output_names=names_out,
                              dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False,
                              do_constant_folding=True)
        proto = onnx.load(str(scratch_path), load_external_data=False)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in all_tensors(proto.graph)):
            gather_external_data(proto, scratch, path.parent / (path.name + ".data"))
            onnx.save_model(proto, str(path))
        else:
            shutil.move(str(scratch_path), path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    onnx.checker.check_model(str(path))


def export_graphs(model: Pi0Model, out_dir: Path, precision: str = "float32", with_velocity: bool = False,
                  optimize: OptimizeOptions | None = None, rtc: bool = False) -> dict[str, dict]:
    """Write prefix.onnx and denoise_step.onnx into out_dir; -> manifest entries {graph: {file, io}}.

    The model is cast to the precision in place (float16/bfloat16 keep docs/model.md's float32 islands).
    With `optimize`, the graphs come from the same model with those switches on, its weights derived from
    the float32 model (left as is; export/optimize.py).
    With optimize.unroll_loop and a step graph that carries its schedule (precompute_time), also
    denoise_loop.onnx: the step graph unrolled over cfg.num_steps (export/onnx/loop_graph.py).
    rtc: the real-time chunking variant, whose step (and loop) graph also takes the guidance inputs
    (docs/model.md, "Real-time chunking").
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    cfg = model.cfg
    examples = example_inputs(cfg, batch=1, precision=precision)
    if optimize is not None:  # the same model with the switches on, its weights derived (export/optimize.py)
        from pi0edge.export.optimize import optimized_model

        model = optimized_model(model.eval(), optimize, dtype=PRECISIONS[precision])
    model = model.to_precision(PRECISIONS[precision]).eval()
    graphs = {
        c.PREFIX_GRAPH: (PrefixGraph(model), prefix_spec()),
        c.DENOISE_STEP_GRAPH: (DenoiseStepGraph(model, with_velocity, rtc),
                               denoise_step_spec(cfg, with_velocity, model.options.uses_step_index, rtc)),
    }
    entries = {}
    for name in list(graphs):
        module, spec = graphs.pop(name)
        path = out_dir / f"{name}.onnx"
        log.info("exporting %s (%s) -> %s", name, precision, path)
        with torch.no_grad():
            export_module(module, examples[name], spec, path)
        del module
        entries[name] = {"file": path.name, **spec.manifest_io(cfg, precision)}
    if optimize is not None and optimize.unroll_loop:
        if optimize.precompute_time:
            entries[c.DENOISE_LOOP_GRAPH] = write_loop_entry(out_dir, cfg, precision, rtc)
        else:
            log.info("no %s graph: unrolling needs precompute_time", c.DENOISE_LOOP_GRAPH)
    return entries


def write_loop_entry(out_dir: Path, cfg: Pi0Config, precision: str, rtc: bool = False) -> dict:
    """Unroll out_dir's step graph into denoise_loop.onnx; -> its manifest entry (num_steps recorded)."""
    from pi0edge.export.onnx.loop_graph import write_loop_graph

    path = out_dir / f"{c.DENOISE_LOOP_GRAPH}.onnx"
    log.info("unrolling %s over %d steps -> %s", c.DENOISE_STEP_GRAPH, cfg.num_steps, path)
    write_loop_graph(out_dir / f"{c.DENOISE_STEP_GRAPH}.onnx", path, cfg.num_steps)
    return {"file": path.name, "num_steps": int(cfg.num_steps),
            **denoise_loop_spec(cfg, rtc).manifest_io(cfg, precision)}
