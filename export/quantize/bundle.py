"""`pi0edge quantize`: a float32 bundle -> a bundle whose GEMMs carry INT8 or FP8 Q/DQ (docs/quantization.md).

TensorRT 10 builds int8/fp8 engines only from explicitly quantized graphs (QuantizeLinear/DequantizeLinear
nodes; `pi0edge build` refuses others), so the quantization happens here, on the ONNX files, with no torch:

1. calibration set: the bundle's own Policy (ort-cpu) runs `calib_chunks` synthetic observations; the prefix
   graph is calibrated on their preprocessed inputs, the step graph on every input the Euler loop feeds it;
2. activation ranges: max |x| of every quantized GEMM's input, from the graph itself run with extra outputs
   (calibration.py); weights: one scale per output channel, stored quantized (qdq.py), streamed tensor by
   tensor so the memory stays near one float32 copy of the weights (ONNX Runtime's calibration session);
3. the new bundle is written atomically, and the action error against the float32 bundle is MEASURED on
   held-out observations with the same noise and recorded in bundle.yaml under `quantization`.

The manifest's `precision` stays "float32": it names the dtype of the graphs' I/O and KV cache, which the
runtime and `pi0edge build` read (a Q/DQ graph is float32 between its quantized ops).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from pi0edge import contract as c
from pi0edge.atomic import staged_dir, write_text_atomic
from pi0edge.errors import BundleError, ConfigError, require
from pi0edge.export.onnx.loop_graph import write_loop_graph
from pi0edge.export.quantize.calibration import (
    ActionError,
    action_error,
    calibrate_amax,
    collect_calibration,
    evaluate_actions,
)
from pi0edge.export.quantize.qdq import GEMM_OPS, plan_gemms, write_qdq_graph
from pi0edge.manifest import MANIFEST_NAME, Manifest, load_manifest, sha256_file

log = logging.getLogger(__name__)

MODES = ("int8", "fp8")
QUANT_EXTRA = "quant"
WEIGHT_DTYPES = {"int8": "int8", "fp8": "float8e4m3fn"}
GRAPHS = (c.PREFIX_GRAPH, c.DENOISE_STEP_GRAPH)
# The step graph's boundary GEMMs stay float32: action_in_proj reads x_t (the very signal being denoised) and
# action_out_proj writes the velocity added to it, so their quantization noise goes straight into the chunk
# (docs/quantization.md: on mid pi0 they carried nearly all the error); ~0.1% of the step graph's GEMM work.
BOUNDARY_PASS_FORWARD = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Identity", "Flatten"})
BOUNDARY_PASS_BACKWARD = BOUNDARY_PASS_FORWARD | {"Add", "Mul", "Slice"}
BOUNDARY_MAX_DEPTH = 8


@dataclass(frozen=True)
class QuantizeOptions:
    """What `pi0edge quantize` does; recorded in the new bundle's manifest."""

    mode: str
    calib_chunks: int = 8
    eval_chunks: int = 4
    seed: int = 0
    float_boundary: bool = True  # keep the step graph's x_t-in / velocity-out GEMMs float32 (BOUNDARY_* above)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {list(MODES)}, got {self.mode!r}")
        for name in ("calib_chunks", "eval_chunks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class QuantizeReport:
    bundle_dir: Path
    mode: str
    error: ActionError
    quantize_s: dict[str, float]  # graph -> seconds (calibration ranges + writing)
    calibration_samples: dict[str, int]  # graph -> samples it was calibrated on
    quantized_gemms: dict[str, int]  # graph -> GEMMs given Q/DQ
    float_chunk_ms: float  # median ort-cpu chunk, float32 bundle
    quant_chunk_ms: float  # median ort-cpu chunk, quantized bundle
    total_s: float


def check_source(manifest: Manifest) -> None:
    """Only float32 graphs are quantized: calibration runs in float32 and a float16 bundle's KV dtype would
    leak into the Q/DQ graph; a quantized bundle is not quantized twice."""
    if manifest.quantization:
        raise BundleError(f"{manifest.bundle_dir}: already quantized ({manifest.quantization.get('mode')}); "
                          "quantize the float32 bundle it was made from")
    if manifest.precision != "float32":
        raise BundleError(f"{manifest.bundle_dir}: precision {manifest.precision!r}; quantization needs a float32 "
                          "bundle (pi0edge export CHECKPOINT -o BUNDLE --precision float32)")


def has_qdq(onnx_path: Path) -> bool:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def boundary_gemms(model) -> list[str]:
    """Names of the step graph's GEMMs that read x_t or write x_next, through casts, reshapes and (backwards)
    the Euler update's Add/Mul: action_in_proj and action_out_proj, whatever the exporter named them."""
    producer = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    found = []

    def walk(tensors: list[str], step, passes: frozenset) -> None:
        for _ in range(BOUNDARY_MAX_DEPTH):
            nxt = []
            for node in (n for t in tensors for n in step(t)):
                if node.op_type in GEMM_OPS:
                    if node.name and node.name not in found:
                        found.append(node.name)
                elif node.op_type in passes:
                    nxt.extend(node.output if passes is BOUNDARY_PASS_FORWARD else node.input)
            tensors = nxt

    walk([c.X_T], lambda t: consumers.get(t, []), BOUNDARY_PASS_FORWARD)
    walk([c.X_NEXT], lambda t: [producer[t]] if t in producer else [], BOUNDARY_PASS_BACKWARD)
    return found


def quantize_graph(src: Path, dst: Path, samples: list[dict[str, np.ndarray]], options: QuantizeOptions,
                   work_dir: Path) -> tuple[int, float]:
    """src graph -> dst graph with its GEMMs quantized; -> (GEMMs quantized, seconds)."""
    import onnx

    start = time.perf_counter()
    model = onnx.load(str(src), load_external_data=False)
    keep_float = set()
    if options.float_boundary and c.X_T in {i.name for i in model.graph.input}:
        keep_float = set(boundary_gemms(model))
        log.info("%s: kept float32: %s", src.name, sorted(keep_float))
    gemms = plan_gemms(model, keep_float)
    del model
    if not gemms:
        raise BundleError(f"{src}: no MatMul/Gemm with a float32 weight initializer to quantize")
    amax = calibrate_amax(src, [g.activation for g in gemms], samples, work_dir)
    write_qdq_graph(src, dst, gemms, amax, options.mode)
    return len(gemms), time.perf_counter() - start


def quantize_bundle(bundle_dir: str | Path, out_dir: str | Path, options: QuantizeOptions, *,
                    overwrite: bool = False) -> QuantizeReport:
    """Calibrate on the float32 bundle, quantize both graphs, measure the action error, write out_dir.
    One ONNX Runtime session at a time (the float32 policy, then each graph's calibration, then the
    quantized policy), so the peak memory is about one float32 copy of the weights."""
    from pi0edge.runtime import Policy

    start = time.perf_counter()
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    manifest = load_manifest(bundle_dir)
    check_source(manifest)
    manifest.require_flow_graphs("pi0edge quantize")
    for module in ("onnx", "ml_dtypes"):  # fail in a second, not after the calibration chunks
        require(module, QUANT_EXTRA, "pi0edge quantize")
    if out_dir.resolve() == bundle_dir.resolve():
        raise BundleError(f"{out_dir}: the output must be a new bundle, not the float32 source")
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} already exists; pass --overwrite to replace it (the old bundle stays intact "
                          "until the new one is complete)")

    # step by step: calibration records every step's inputs (the loop graph would hide them)
    with Policy(bundle_dir, "ort-cpu", verify_checksums=False, whole_loop=False) as policy:
        samples = collect_calibration(policy, options.calib_chunks, options.seed)
    log.info("calibration: %d prefix and %d step samples", *(len(samples[g]) for g in GRAPHS))
    reference, float_ms = evaluate_actions(bundle_dir, options.eval_chunks, options.seed, verify_checksums=False)

    counts = {graph: len(samples[graph]) for graph in GRAPHS}
    with staged_dir(out_dir) as staging:
        graph_files = {entry.file for entry in manifest.graphs.values()}  # the loop graph is rebuilt below
        graph_files |= {f + ".data" for f in graph_files}
        for name in manifest.files:
            if name not in graph_files:
                shutil.copyfile(bundle_dir / name, staging / name)
        seconds, gemms = {}, {}
        for graph in GRAPHS:
            name = manifest.graphs[graph].file
            gemms[graph], seconds[graph] = quantize_graph(bundle_dir / name, staging / name, samples[graph], options,
                                                          staging / f".work-{graph}")
            samples[graph] = []  # free the calibration tensors before the next graph
        loop = manifest.graphs.get(c.DENOISE_LOOP_GRAPH)
        if loop is not None:  # unrolled again from the quantized step graph (export/onnx/loop_graph.py)
            write_loop_graph(staging / manifest.graphs[c.DENOISE_STEP_GRAPH].file, staging / loop.file, loop.num_steps)
        raw = manifest.to_document()
        raw["files"] = {p.name: sha256_file(p) for p in sorted(staging.iterdir())
                        if p.is_file() and p.name != MANIFEST_NAME}
        raw["quantization"] = _quantization_entry(manifest, options, counts, gemms)
        write_text_atomic(staging / MANIFEST_NAME, yaml.safe_dump(raw, sort_keys=False))
        quantized, quant_ms = evaluate_actions(staging, options.eval_chunks, options.seed)
        error = action_error(reference, quantized)
        if not (np.isfinite(error.max_abs) and np.isfinite(error.rms)):
            # A precision without a (finite) measured error is not offered: no bundle is written.
            raise BundleError(f"{out_dir}: the {options.mode} graphs give non-finite actions on the held-out "
                              "observations; nothing written")
        raw["quantization"]["measured"] = error.to_dict() | {"backend": "ort-cpu"}
        write_text_atomic(staging / MANIFEST_NAME, yaml.safe_dump(raw, sort_keys=False))
        load_manifest(staging)  # the reader accepts what we wrote, hashes included
    return QuantizeReport(out_dir, options.mode, error, seconds, counts, gemms, float_ms, quant_ms,
                          time.perf_counter() - start)


def _quantization_entry(manifest: Manifest, options: QuantizeOptions, counts: dict[str, int],
                        gemms: dict[str, int]) -> dict:
    from pi0edge import __version__

    return {"mode": options.mode, "format": "qdq", "tool": "pi0edge", "pi0edge": __version__,
            "weights": f"{WEIGHT_DTYPES[options.mode]}, one scale per output channel",
            "activations": "per-tensor scale, max calibration", "op_types": "gemm",
            "quantized_gemms": gemms, "float_boundary": options.float_boundary,
            "calibration": "synthetic observations (runtime/profile.py)",
            "calib_chunks": options.calib_chunks, "calibration_samples": counts, "seed": options.seed,
            "high_precision_dtype": "float32", "source_bundle": str(manifest.bundle_dir.resolve()),
            "source_files": dict(manifest.files)}
