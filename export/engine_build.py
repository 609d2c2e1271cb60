"""`pi0edge build`: a bundle's two ONNX graphs -> TensorRT engines for the GPU it runs on (docs/tensorrt.md).

Engines are specific to one GPU model and one TensorRT version, so they are built on the target (a Jetson
builds its own) and stored in the bundle beside the graphs, in the folder whose layout and fingerprint
runtime/backends/engine_fingerprint.py defines (the runtime checks it; it never imports this module). The
folder is written into a hidden staging folder and renamed into place, so a failed build never leaves plans
that do not match their engine.yaml.

This module runs on the robot: it must not import torch. TensorRT and cuda-python are imported inside
`build_engines`; everything else here is plain Python, tested without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

import pi0edge
from pi0edge.atomic import staged_dir, write_bytes_atomic, write_text_atomic
from pi0edge.cli_args import positive_float, positive_int
from pi0edge.errors import BundleError, ConfigError, Pi0EdgeError
from pi0edge.manifest import GraphEntry, Manifest, load_manifest

# The engine folder's layout and fingerprint are the runtime's (re-exported here for the build's callers).
from pi0edge.runtime.backends.engine_fingerprint import (  # noqa: F401
    ENGINE_FORMAT_VERSION,
    ENGINES_DIR,
    FINGERPRINT_FIELDS,
    FINGERPRINT_NAME,
    GRAPHS,
    NATIVE_PRECISION,
    TENSORRT_HINT,
    EngineFingerprint,
    TensorRTMissingError,
    default_engine_dir,
    engine_dir_name,
    fingerprint_mismatches,
    gpu_slug,
    import_tensorrt,
    onnx_digests,
    read_engine_yaml,
    rebuild_command,
    stale_engine_message,
)

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8")
QUANTIZED = ("fp8", "int8")
# Lowest compute capability with fast kernels for the type (bf16: Ampere; fp8: Ada / Hopper / Thor).
MIN_COMPUTE_CAPABILITY = {"bf16": (8, 0), "fp8": (8, 9)}


class EngineBuildError(Pi0EdgeError):
    """TensorRT could not parse or build a graph; the message carries TensorRT's own errors."""


# ---- pure functions: precision, profile (no TensorRT needed) ---------------------------------------------


def profile_shapes(entry: GraphEntry, max_batch: int, opt_batch: int | None = None
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes for each graph input with a batch dim: batch 1..max_batch, all else static."""
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"--max-batch must be a positive integer, got {max_batch!r}")
    opt = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch:
        raise ConfigError(f"opt batch {opt} must lie in 1..{max_batch}")
    shapes = {}
    for spec in entry.inputs:
        if "B" not in spec["shape"]:
            continue
        dims = spec["shape"]
        shapes[spec["name"]] = tuple(tuple(b if d == "B" else int(d) for d in dims) for b in (1, opt, max_batch))
    return shapes


def resolve_precision(bundle_precision: str, requested: str | None) -> tuple[str, bool]:
    """-> (engine precision, whether the graphs must carry Q/DQ nodes). None asks for the bundle's own precision.

    Every network is strongly typed: the ONNX dtypes (with the float32 islands the export keeps) fix each
    layer's precision, and no FP16/BF16/INT8/FP8 builder flag is ever set. TensorRT 11 has no weak typing (no
    BuilderFlag.FP16) and 10.12 deprecates it, so this is the one way that builds alike on JetPack 6's 10.3 and
    on 11: the precision is the bundle's (`pi0edge export --precision`). FP8/INT8 need quantize/dequantize nodes
    in the graphs: implicit calibration is deprecated (10.x) and removed (11), so without Q/DQ nodes the build
    refuses instead of producing an unquantized engine.
    """
    if bundle_precision not in NATIVE_PRECISION:
        raise BundleError(f"bundle precision {bundle_precision!r} is not one of {sorted(NATIVE_PRECISION)}")
    native = NATIVE_PRECISION[bundle_precision]
    precision = requested or native
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision in QUANTIZED:
        return precision, True
    if precision == native:
        return precision, False
    dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]
    raise ConfigError(f"the bundle's graphs are {bundle_precision}, and TensorRT's strongly typed networks take the "
                      f"precision from the graph: build it with --precision {native} (or no --precision), or export "
                      f"a bundle in the precision you want: pi0edge export --precision {dtype}")


def check_gpu_supports(precision: str, compute_capability: str, gpu_name: str) -> None:
    need = MIN_COMPUTE_CAPABILITY.get(precision)
    have = tuple(int(x) for x in compute_capability.split("."))
    if need is not None and have < need:
        alternative = " (Jetson Orin is 8.7: use --precision int8 with a Q/DQ bundle, or fp16)" if precision == "fp8" \
            else " (use --precision fp16)"
        raise ConfigError(f"--precision {precision} needs compute capability {need[0]}.{need[1]}+; {gpu_name} has "
                          f"{compute_capability}{alternative}")


# ---- the build (TensorRT + cuda-python, imported lazily) ------------------------------------------------


@dataclass(frozen=True)
class EngineReport:
    engine_dir: Path
    fingerprint: EngineFingerprint
    strongly_typed: bool
    build_s: float
    plan_bytes: dict[str, int]
    timing_cache: Path


def build_engines(bundle_dir: str | Path, precision: str | None = None, max_batch: int = 1, *,
                  workspace_gb: float | None = None, timing_cache: str | Path | None = None,
                  calibration: str | Path | None = None, device_id: int = 0, allow_tf32: bool = False
                  ) -> EngineReport:
    """Build prefix.plan and denoise_step.plan for this GPU. precision None: the bundle's own (fp32 / fp16 /
    bf16). The timing cache (default BUNDLE/engines/<gpu>-trt<version>.timing.cache) makes rebuilds fast.
    allow_tf32 lets fp32 engines use TF32 tensor cores (about 1e-3 relative error); off, fp32 means fp32."""
    if calibration is not None:
        raise ConfigError("calibration-based INT8/FP8 (TensorRT's implicit quantization) is not supported: it is "
                          "deprecated in TensorRT 10 and removed in 11. Quantize the graphs instead (Q/DQ nodes, "
                          "`pi0edge quantize`) and build that bundle with --precision int8 or fp8")
    from pi0edge.runtime.backends.cuda_runtime import device_info, load_cudart

    trt = import_tensorrt("pi0edge build")
    gpu = device_info(load_cudart(), device_id)
    manifest = load_manifest(bundle_dir)  # checksums verified: the fingerprint's digests are the files' own
    manifest.require_flow_graphs("pi0edge build")
    precision, needs_qdq = resolve_precision(manifest.precision, precision)
    check_gpu_supports(precision, gpu.compute_capability, gpu.name)
    for graph in GRAPHS:
        profile_shapes(manifest.graphs[graph], max_batch)  # validates max_batch before minutes of building
    fingerprint = EngineFingerprint(trt.__version__, gpu.name, gpu.compute_capability, onnx_digests(manifest),
                                    precision, max_batch)
    out_dir = default_engine_dir(manifest.bundle_dir, gpu.name, trt.__version__)
    cache_path = Path(timing_cache) if timing_cache else out_dir.parent / f"{out_dir.name}.timing.cache"
    log.info("building strongly typed %s engines for %s (sm %s, TensorRT %s, max batch %d) -> %s", precision,
             gpu.name, gpu.compute_capability, trt.__version__, max_batch, out_dir)

    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = None
    plans: dict[str, bytes] = {}
    for graph in GRAPHS:
        plans[graph], cache = _build_plan(trt, builder, logger, manifest, graph, needs_qdq, precision, max_batch,
                                          workspace_gb, cache, cache_bytes, allow_tf32)
    build_s = time.perf_counter() - start

    engine_yaml = {
        "format_version": ENGINE_FORMAT_VERSION,
        "fingerprint": fingerprint.to_dict(),
        "plans": {graph: {"file": f"{graph}.plan", "sha256": hashlib.sha256(plans[graph]).hexdigest()}
                  for graph in GRAPHS},
        "build": {"pi0edge": pi0edge.__version__, "strongly_typed": True,
                  "allow_tf32": allow_tf32, "build_s": round(build_s, 1),
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
    }
    _write_engine_dir(out_dir, plans, engine_yaml)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(cache_path, bytes(memoryview(cache.serialize())))
    return EngineReport(out_dir, fingerprint, True, build_s,
                        {graph: len(plan) for graph, plan in plans.items()}, cache_path)


def _build_plan(trt, builder, logger, manifest: Manifest, graph: str, needs_qdq: bool, precision: str,
                max_batch: int, workspace_gb: float | None, cache, cache_bytes: bytes, allow_tf32: bool):
    """Parse one graph into a strongly typed network and build its serialized engine; -> (plan bytes, the
    timing cache shared by both). Only calls TensorRT 10.3 (JetPack 6) and 11 both have."""
    entry = manifest.graphs[graph]
    path = manifest.path(entry.file)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file, not parse(bytes): the external-data file next to the graph resolves from its folder.
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{path}: TensorRT {trt.__version__} cannot parse this graph: {errors}")
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    if inputs != set(entry.input_names) or outputs != set(entry.output_names):
        raise EngineBuildError(f"{path}: graph I/O {sorted(inputs)} -> {sorted(outputs)} differs from bundle.yaml "
                               f"{list(entry.input_names)} -> {list(entry.output_names)}")
    if needs_qdq and not _has_qdq(trt, network):
        raise ConfigError(f"--precision {precision} needs quantized graphs (QuantizeLinear/DequantizeLinear nodes, "
                          f"from `pi0edge quantize`), and {path.name} has none: building it would silently give an "
                          "unquantized engine. Build --precision fp16/bf16, or export a quantized bundle")

    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    # No precision flag: a strongly typed network refuses them. TF32 is not a precision of the graph but a
    # math mode for its float32 layers, on by default: fp32 parity needs it off.
    if precision == "fp32" and not allow_tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TensorRT enables TF32 by default; fp32 parity needs it off
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(entry, max_batch).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if cache is None:
        cache = config.create_timing_cache(cache_bytes)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            # A cache from another GPU or TensorRT version: its timings would mislead tactic selection.
            log.warning("timing cache rejected (another GPU or TensorRT version); starting an empty one")
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
    else:
        config.set_timing_cache(cache, ignore_mismatch=False)

    log.info("building %s (this takes minutes on a Jetson)", graph)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{path}: TensorRT {trt.__version__} failed to build the {graph} engine "
                               f"({precision}, max batch {max_batch}); run with -v for TensorRT's log")
    return bytes(memoryview(serialized)), cache


def _has_qdq(trt, network) -> bool:
    kinds = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def _write_engine_dir(out_dir: Path, plans: dict[str, bytes], engine_yaml: dict) -> None:
    """Write the plans and engine.yaml into a staging folder, then rename it into place (old one removed last)."""
    with staged_dir(out_dir) as staging:
        for graph, plan in plans.items():
            write_bytes_atomic(staging / f"{graph}.plan", plan)
        write_text_atomic(staging / FINGERPRINT_NAME, yaml.safe_dump(engine_yaml, sort_keys=False))


# ---- the command ---------------------------------------------------------------------------------------


def register_build(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build", help="bundle -> TensorRT engines for this GPU (run on the target: engines are device-specific)",
        description="Build TensorRT engines for a bundle's prefix and denoise_step graphs on this GPU, with a "
                    "timing cache and a fingerprint the runtime checks. Needs TensorRT 10+ and cuda-python "
                    f"(pip install 'pi0edge[trt]'; {TENSORRT_HINT}).")
    p.add_argument("bundle", help="bundle directory (from `pi0edge export`)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="engine precision: the bundle's own (the default; float16 -> fp16), the network being strongly "
                        "typed; another needs a bundle exported in it. fp8/int8 need a quantized (Q/DQ) bundle")
    p.add_argument("--max-batch", type=positive_int, default=1,
                   help="largest batch (robots per call) the engines accept")
    p.add_argument("--timing-cache", help="timing cache file to read and update (default: next to the engines)")
    p.add_argument("--workspace-gb", type=positive_float,
                   help="cap TensorRT's build workspace (useful on 8-16 GB Jetsons)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    p.add_argument("--allow-tf32", action="store_true", help="let fp32 engines use TF32 tensor cores")
    p.set_defaults(func=_build_command)


def _build_command(args: argparse.Namespace) -> int:
    report = build_engines(args.bundle, args.precision, args.max_batch, workspace_gb=args.workspace_gb,
                           timing_cache=args.timing_cache, device_id=args.device, allow_tf32=args.allow_tf32)
    fp = report.fingerprint
    sizes = ", ".join(f"{graph}.plan {size / 1e6:.1f} MB" for graph, size in report.plan_bytes.items())
    print(f"wrote {report.engine_dir} ({fp.precision}, max batch {fp.max_batch}, {fp.gpu_name} sm "
          f"{fp.compute_capability}, TensorRT {fp.tensorrt_version}): {sizes} in {report.build_s:.0f} s")
    return 0
