"""`pi0edge quantize`: a float32 bundle -> a bundle whose graphs carry INT8 or FP8 Q/DQ nodes (docs/quantization.md).

TensorRT 10 builds int8/fp8 engines only from explicitly quantized graphs (QuantizeLinear/DequantizeLinear
nodes; `pi0edge build` refuses others), so the quantization happens here, on the ONNX files, with NVIDIA
ModelOpt's post-training quantizer:

1. calibration set: the bundle's own Policy (ort-cpu) runs `calib_chunks` synthetic observations; the prefix
   graph is calibrated on their preprocessed inputs, the step graph on every input the Euler loop feeds it
   (x_t at each step, t/dt or step_index, the chunk's KV cache and prefix mask, the state);
2. both graphs are quantized (activation ranges from the calibration set, weights per channel); every
   non-quantized op stays float32, so the graph I/O, the KV cache and the float32 islands (docs/model.md,
   "Float32 islands") are unchanged;
3. the new bundle is written atomically, and the action error against the float32 bundle is MEASURED on
   held-out observations with the same noise (normalized action space, the robot's action dims) and recorded
   in bundle.yaml under `quantization`. A precision without a measured error is not offered.

The manifest's `precision` stays "float32": it names the dtype of the graphs' I/O and KV cache, which the
runtime and `pi0edge build` read (a Q/DQ graph is float32 between its quantized ops). The quantization is
recorded beside it. No torch here: this works on ONNX files.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from pi0edge import contract as c
from pi0edge.atomic import staged_dir, write_text_atomic
from pi0edge.cli_args import positive_int
from pi0edge.errors import BundleError, ConfigError, require
from pi0edge.export.onnx.loop_graph import write_loop_graph
from pi0edge.manifest import MANIFEST_NAME, Manifest, load_manifest, sha256_file
from pi0edge.schedule import euler_schedule

log = logging.getLogger(__name__)

MODES = ("int8", "fp8")
QUANT_EXTRA = "quant"
# Everything the extra needs beside the runtime; `nvidia-modelopt[onnx]` would replace onnxruntime with
# onnxruntime-gpu and downgrade onnx (docs/quantization.md), so its pieces are listed one by one.
QUANT_PIP = ("pip install nvidia-modelopt onnx-graphsurgeon onnxslim polygraphy onnxconverter-common cppimport lief "
             "onnxscript ml_dtypes")
# ModelOpt's defaults per mode; TensorRT's own recipes use max calibration for FP8 (its range is wide enough
# that clipping outliers buys nothing) and entropy for INT8.
DEFAULT_CALIBRATION = {"int8": "entropy", "fp8": "max"}
CALIBRATION_METHODS = ("entropy", "max")
# Which ops get Q/DQ on their inputs. "gemm": the matrix products only (linear layers, attention, the patch
# embedding), where TensorRT's INT8/FP8 kernels give the speed-up. "all": ModelOpt's default set, which also
# quantizes Add/Mul/LayerNorm inputs and so the attention's additive mask (-2.38e38, docs/model.md, "Mask
# rule"): its FP8 scale overflows to inf and the actions become NaN (measured on mid() pi0), and it adds error
# for no GEMM saved.
OP_TYPE_SETS = {"gemm": ("MatMul", "Gemm", "Conv"), "all": None}
GRAPHS = (c.PREFIX_GRAPH, c.DENOISE_STEP_GRAPH)
# The step graph's boundary GEMMs stay float32: action_in_proj reads x_t (the very signal being denoised) and
# action_out_proj writes the velocity added to it, so their quantization noise goes straight into the chunk.
# Measured on mid() pi0 (step graph only, 4 held-out chunks): fp8 max abs 0.92 -> 0.031, int8 0.53 -> 0.003;
# together they are ~0.1% of the step graph's GEMM work.
BOUNDARY_PASS_FORWARD = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Identity", "Flatten"})
BOUNDARY_PASS_BACKWARD = BOUNDARY_PASS_FORWARD | {"Add", "Mul", "Slice"}
BOUNDARY_MAX_DEPTH = 8
GEMM_OPS = frozenset({"MatMul", "Gemm"})
# Held-out evaluation observations use seeds the calibration never sees.
EVAL_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class QuantizeOptions:
    """What `pi0edge quantize` does; recorded in the new bundle's manifest."""

    mode: str
    calib_chunks: int = 8
    eval_chunks: int = 4
    seed: int = 0
    calibration_method: str | None = None  # None: DEFAULT_CALIBRATION[mode]
    op_types: str = "gemm"  # a key of OP_TYPE_SETS
    float_boundary: bool = True  # keep the step graph's x_t-in / velocity-out GEMMs float32 (BOUNDARY_* above)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {list(MODES)}, got {self.mode!r}")
        for name in ("calib_chunks", "eval_chunks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.calibration_method not in (None, *CALIBRATION_METHODS):
            raise ConfigError(f"--calibration-method must be one of {list(CALIBRATION_METHODS)}, "
                              f"got {self.calibration_method!r}")
        if self.op_types not in OP_TYPE_SETS:
            raise ConfigError(f"--op-types must be one of {list(OP_TYPE_SETS)}, got {self.op_types!r}")

    @property
    def method(self) -> str:
        return self.calibration_method or DEFAULT_CALIBRATION[self.mode]


@dataclass(frozen=True)
class ActionError:
    """Quantized vs float32 actions on the same observations and noise, normalized space, robot action dims."""

    max_abs: float
    rms: float
    reference_rms: float  # the float32 actions' own RMS: the scale the error compares against
    chunks: int

    def to_dict(self) -> dict:
        return {"action_error_max_abs": self.max_abs, "action_error_rms": self.rms,
                "reference_action_rms": self.reference_rms, "eval_chunks": self.chunks}


@dataclass(frozen=True)
class QuantizeReport:
    bundle_dir: Path
    mode: str
    error: ActionError
    quantize_s: dict[str, float]  # graph -> seconds in ModelOpt
    calibration_samples: dict[str, int]  # graph -> samples it was calibrated on
    float_chunk_ms: float  # median ort-cpu chunk, float32 bundle
    quant_chunk_ms: float  # median ort-cpu chunk, quantized bundle
    total_s: float


# ---- calibration: what the float32 policy's graphs see ------------------------------------------------------


class ListReader:
    """An onnxruntime CalibrationDataReader over a list of feeds (one sample each, batch 1).

    ModelOpt's own reader splits stacked arrays along axis 0, which for the KV cache [layers, B, ...] is the
    layer axis, not the batch: so the samples are handed over one by one. get_first/rewind are what
    ModelOpt calls besides get_next (a shape probe, then the calibration pass)."""

    def __init__(self, samples: list[dict[str, np.ndarray]]):
        self.samples = samples
        self._it: Iterator = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def get_first(self) -> dict[str, np.ndarray]:
        return self.samples[0]

    def rewind(self) -> None:
        self._it = iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)


def _reader(samples: list[dict[str, np.ndarray]]):
    """ListReader registered as an onnxruntime CalibrationDataReader (ORT's calibrators check the base class)."""
    from onnxruntime.quantization import CalibrationDataReader

    cls = type("PolicyCalibrationReader", (ListReader, CalibrationDataReader), {})
    return cls(samples)


def run_chunk_recording(policy, observation, noise: np.ndarray) -> tuple[dict, list[dict], np.ndarray]:
    """One chunk through the policy's own ORT sessions, plain `run` calls, keeping every graph input.

    -> (prefix feeds, the step feeds of each Euler step, final x [1, H, A] in normalized space). The KV cache
    arrays are shared by the chunk's steps (no copy per step). Same schedule and inputs as Policy.infer."""
    m: Manifest = policy.manifest
    backend = policy.backend
    prefix_names = m.graphs[c.PREFIX_GRAPH].input_names
    step_names = m.graphs[c.DENOISE_STEP_GRAPH].input_names
    feeds = policy.preprocess([observation])
    prefix_feeds = {name: feeds[name] for name in prefix_names}
    keys, values, prefix_mask = backend.prefix_session.run([c.PAST_KEYS, c.PAST_VALUES, c.PREFIX_MASK], prefix_feeds)
    times, dt = euler_schedule(m.fixed_num_steps or m.num_steps)
    x = np.asarray(noise, np.float32).reshape(1, m.action_horizon, m.action_dim)
    steps = []
    for k in range(len(times)):
        step = {c.X_T: x, c.PAST_KEYS: keys, c.PAST_VALUES: values, c.PREFIX_MASK: prefix_mask,
                **c.step_time_feeds(step_names, k, times, dt, batch=1)}
        if c.STATE in step_names:
            step[c.STATE] = feeds["state"]
        steps.append({name: step[name] for name in step_names})
        (x,) = backend.denoise_session.run([c.X_NEXT], steps[-1])
    return prefix_feeds, steps, x


def _noise(manifest: Manifest, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, manifest.action_horizon, manifest.action_dim), dtype=np.float32)


def collect_calibration(policy, chunks: int, seed: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """graph -> calibration samples, from `chunks` synthetic observations (seeds seed, seed+1, ...)."""
    from pi0edge.runtime.profile import synthetic_observation

    prefix, step = [], []
    for i in range(chunks):
        obs = synthetic_observation(policy, seed=seed + i)
        prefix_feeds, step_feeds, _ = run_chunk_recording(policy, obs, _noise(policy.manifest, seed + i))
        prefix.append(prefix_feeds)
        step.extend(step_feeds)
    return {c.PREFIX_GRAPH: prefix, c.DENOISE_STEP_GRAPH: step}


def evaluate_actions(bundle_dir: Path, chunks: int, seed: int, *, verify_checksums: bool = True
                     ) -> tuple[np.ndarray, float]:
    """Normalized actions [chunks, H, robot_action_dim] of Policy.infer (ort-cpu) on held-out synthetic
    observations with fixed noise, and the median chunk time in ms (after one warm-up chunk)."""
    from pi0edge.runtime import Policy
    from pi0edge.runtime.profile import synthetic_observation

    actions, total_ms = [], []
    with Policy(bundle_dir, "ort-cpu", verify_checksums=verify_checksums) as policy:
        m = policy.manifest
        for i in range(-1, chunks):  # i = -1: warm-up, not counted
            s = seed + EVAL_SEED_OFFSET + max(i, 0)
            chunk = policy.infer(synthetic_observation(policy, seed=s), noise=_noise(m, s))
            if i >= 0:
                # read_actions: the model-space x before unnormalization; only the robot's dims carry meaning
                actions.append(policy.backend.read_actions()[0, :, : m.robot_action_dim])
                total_ms.append(chunk.timings_ms["total_ms"])
    return np.stack(actions), float(np.median(total_ms))


def action_error(reference: np.ndarray, quantized: np.ndarray) -> ActionError:
    diff = quantized.astype(np.float64) - reference.astype(np.float64)
    return ActionError(max_abs=float(np.abs(diff).max()), rms=float(np.sqrt(np.mean(diff**2))),
                       reference_rms=float(np.sqrt(np.mean(reference.astype(np.float64) ** 2))),
                       chunks=int(reference.shape[0]))


# ---- the ONNX side ---------------------------------------------------------------------------------------


def check_source(manifest: Manifest) -> None:
    """Only float32 graphs are quantized: ModelOpt calibrates in float32 and a float16 bundle's KV dtype
    would leak into the Q/DQ graph; a quantized bundle is not quantized twice."""
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


def _rename_external_data(onnx_path: Path, data_name: str) -> None:
    """Point the graph's external tensors at `data_name` (the bundle's `<graph>.onnx.data` convention, which
    `pi0edge build` fingerprints) after ModelOpt wrote them to `<graph>.onnx_data`."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    old = None
    for tensor in _external_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                old = old or entry.value
                entry.value = data_name
    if old is None:
        return
    (onnx_path.parent / old).rename(onnx_path.parent / data_name)
    onnx.save(model, str(onnx_path))


def _graph_inputs(onnx_path: Path):
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False).graph.input


def _external_tensors(model) -> Iterator:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return (t for t in _get_all_tensors(model) if uses_external_data(t))


def quantize_graph(src: Path, dst: Path, samples: list[dict[str, np.ndarray]], options: QuantizeOptions,
                   work_dir: Path) -> float:
    """src graph -> dst graph with Q/DQ nodes; -> seconds. ModelOpt writes intermediate files beside its
    input, so the source graph (and its external data) is copied into work_dir first: the source bundle is
    never written to."""
    mq = require("modelopt.onnx.quantization", QUANT_EXTRA, "pi0edge quantize")
    work_dir.mkdir(parents=True, exist_ok=True)
    work_src = work_dir / src.name
    shutil.copyfile(src, work_src)
    external = src.with_name(src.name + ".data")
    if external.is_file():
        shutil.copyfile(external, work_dir / external.name)
    exclude = None
    if options.float_boundary and c.X_T in {i.name for i in _graph_inputs(work_src)}:
        import onnx

        names = boundary_gemms(onnx.load(str(work_src), load_external_data=False))
        exclude = [f"^{re.escape(name)}$" for name in names] or None
        log.info("%s: kept float32: %s", src.name, names)
    start = time.perf_counter()
    mq.quantize(str(work_src), quantize_mode=options.mode, calibration_method=options.method,
                calibration_data_reader=_reader(samples), calibration_eps=["cpu"], output_path=str(dst),
                op_types_to_quantize=list(OP_TYPE_SETS[options.op_types] or []) or None, nodes_to_exclude=exclude,
                # Keep every non-quantized op (and the graph I/O, the KV cache) in float32: the runtime's
                # float32 islands stay, and ort-cpu runs the result (ModelOpt's default casts to fp16).
                high_precision_dtype="fp32", mha_accumulation_dtype="fp32",
                use_external_data_format=external.is_file(), log_level="WARNING")
    seconds = time.perf_counter() - start
    if external.is_file():
        _rename_external_data(dst, dst.name + ".data")
    if not has_qdq(dst):
        raise BundleError(f"{dst}: ModelOpt wrote no Q/DQ nodes ({options.mode}); nothing to build with "
                          f"--precision {options.mode}")
    return seconds


def quantize_bundle(bundle_dir: str | Path, out_dir: str | Path, options: QuantizeOptions, *,
                    overwrite: bool = False) -> QuantizeReport:
    """Calibrate on the float32 bundle, quantize both graphs, measure the action error, write out_dir."""
    from pi0edge.runtime import Policy

    start = time.perf_counter()
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    manifest = load_manifest(bundle_dir)
    check_source(manifest)
    manifest.require_flow_graphs("pi0edge quantize")
    require("modelopt.onnx.quantization", QUANT_EXTRA, "pi0edge quantize")
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
        seconds = {}
        for graph in GRAPHS:
            name = manifest.graphs[graph].file
            seconds[graph] = quantize_graph(bundle_dir / name, staging / name, samples[graph], options,
                                            staging / f".work-{graph}")
            shutil.rmtree(staging / f".work-{graph}")
            samples[graph] = []  # free the calibration tensors before the next graph
        loop = manifest.graphs.get(c.DENOISE_LOOP_GRAPH)
        if loop is not None:  # unrolled again from the quantized step graph (export/onnx/loop_graph.py)
            write_loop_graph(staging / manifest.graphs[c.DENOISE_STEP_GRAPH].file, staging / loop.file, loop.num_steps)
        raw = manifest.to_document()
        raw["files"] = {p.name: sha256_file(p) for p in sorted(staging.iterdir())
                        if p.is_file() and p.name != MANIFEST_NAME}
        raw["quantization"] = _quantization_entry(manifest, options, counts)
        write_text_atomic(staging / MANIFEST_NAME, yaml.safe_dump(raw, sort_keys=False))
        quantized, quant_ms = evaluate_actions(staging, options.eval_chunks, options.seed)
        error = action_error(reference, quantized)
        if not (np.isfinite(error.max_abs) and np.isfinite(error.rms)):
            # A precision without a (finite) measured error is not offered: no bundle is written.
            raise BundleError(f"{out_dir}: the {options.mode} graphs give non-finite actions on the held-out "
                              f"observations (op types {options.op_types!r}); nothing written. A quantized tensor's "
                              "range overflowed: quantize fewer op types (--op-types gemm)")
        raw["quantization"]["measured"] = error.to_dict() | {"backend": "ort-cpu"}
        write_text_atomic(staging / MANIFEST_NAME, yaml.safe_dump(raw, sort_keys=False))
        load_manifest(staging)  # the reader accepts what we wrote, hashes included
    return QuantizeReport(out_dir, options.mode, error, seconds, counts, float_ms, quant_ms,
                          time.perf_counter() - start)


def _quantization_entry(manifest: Manifest, options: QuantizeOptions, counts: dict[str, int]) -> dict:
    import modelopt

    return {"mode": options.mode, "format": "qdq", "tool": "nvidia-modelopt", "modelopt": str(modelopt.__version__),
            "calibration_method": options.method, "op_types": options.op_types,
            "float_boundary": options.float_boundary,
            "calibration": "synthetic observations (runtime/profile.py)",
            "calib_chunks": options.calib_chunks, "calibration_samples": counts, "seed": options.seed,
            "high_precision_dtype": "float32", "source_bundle": str(manifest.bundle_dir.resolve()),
            "source_files": dict(manifest.files)}


# ---- the command -------------------------------------------------------------------------------------------


def register_quantize(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize", help="float32 bundle -> INT8 or FP8 Q/DQ bundle for TensorRT, with its measured action error",
        description="Post-training quantization of a float32 bundle's graphs (NVIDIA ModelOpt, Q/DQ nodes), "
                    "calibrated on the bundle's own policy run on synthetic observations. The action error against "
                    "the float32 bundle is measured on held-out observations and recorded in bundle.yaml. Build "
                    "engines from the result with `pi0edge build OUT --precision int8|fp8`. Needs the "
                    f"[{QUANT_EXTRA}] extra: {QUANT_PIP}")
    p.add_argument("bundle", help="float32 bundle directory (from `pi0edge export --precision float32`)")
    p.add_argument("-o", "--output", required=True, help="quantized bundle directory to write (atomically)")
    p.add_argument("--mode", choices=MODES, required=True,
                   help="fp8: Ada / Hopper / Blackwell / Thor; int8: GPUs without FP8 (Jetson Orin, Ampere)")
    p.add_argument("--calib-chunks", type=positive_int, default=QuantizeOptions.calib_chunks,
                   help="synthetic observations to calibrate on (the step graph sees num_steps samples each)")
    p.add_argument("--eval-chunks", type=positive_int, default=QuantizeOptions.eval_chunks,
                   help="held-out observations the action error is measured on")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic observations and noise")
    p.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=None,
                   help="activation range estimate (default: entropy for int8, max for fp8)")
    p.add_argument("--op-types", choices=tuple(OP_TYPE_SETS), default=QuantizeOptions.op_types,
                   help="gemm (default): Q/DQ on the matrix products only; all: ModelOpt's default op set")
    p.add_argument("--quantize-boundary", action="store_true",
                   help="also quantize the step graph's action_in_proj (reads x_t) and action_out_proj (writes the "
                        "velocity), kept float32 by default: they carry most of the error (docs/quantization.md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bundle")
    p.set_defaults(func=_quantize_command)


def _quantize_command(args: argparse.Namespace) -> int:
    options = QuantizeOptions(args.mode, args.calib_chunks, args.eval_chunks, args.seed, args.calibration_method,
                              args.op_types, not args.quantize_boundary)
    report = quantize_bundle(args.bundle, args.output, options, overwrite=args.overwrite)
    e = report.error
    print(f"wrote {report.bundle_dir} ({report.mode} Q/DQ) in {report.total_s:.1f} s; quantization "
          + ", ".join(f"{g} {s:.1f} s ({report.calibration_samples[g]} samples)" for g, s in report.quantize_s.items()))
    print(f"action error vs float32 ({e.chunks} held-out chunks, normalized): max abs {e.max_abs:.4g}, "
          f"RMS {e.rms:.4g} (float32 actions RMS {e.reference_rms:.4g})")
    print(f"ort-cpu chunk: float32 {report.float_chunk_ms:.1f} ms, {report.mode} {report.quant_chunk_ms:.1f} ms "
          "(CPU kernels; the speed-up is TensorRT's)")
    return 0
