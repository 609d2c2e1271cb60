"""The `pi0edge quantize` command: only precisions with a measured full-size action error are offered."""

from __future__ import annotations

import argparse

from pi0edge.cli_args import positive_int
from pi0edge.export.quantize.bundle import MODES, QuantizeOptions, quantize_bundle

# Full-size action error against the float32 bundle, measured with benchmarks/quantize_full.py (random-weight
# checkpoints, ort-cpu, normalized action space; docs/quantization.md): mode -> ((model, max abs, RMS), ...).
# A precision without a row here is not offered by the command.
FULL_SIZE_ERRORS: dict[str, tuple[tuple[str, float, float], ...]] = {
    "int8": (("pi0", 0.113, 0.058), ("pi05", 0.050, 0.017)),
    "fp8": (("pi0", 0.324, 0.143), ("pi05", 0.145, 0.051)),
}


def full_size_error_text(mode: str) -> str:
    return "; ".join(f"full-size {model}: max abs {max_abs:.3g}, RMS {rms:.3g}"
                     for model, max_abs, rms in FULL_SIZE_ERRORS[mode])


def register_quantize(subparsers: argparse._SubParsersAction) -> None:
    offered = tuple(mode for mode in MODES if FULL_SIZE_ERRORS.get(mode))
    measured = " ".join(f"{mode}: {full_size_error_text(mode)}." for mode in offered)
    p = subparsers.add_parser(
        "quantize", help="float32 bundle -> INT8 or FP8 Q/DQ bundle for TensorRT, with its measured action error",
        description="Post-training quantization of a float32 bundle's GEMMs (Q/DQ nodes, weights stored "
                    "quantized), calibrated on the bundle's own policy run on synthetic observations, streamed "
                    "tensor by tensor (memory: about one float32 copy of the weights). The action error against "
                    "the float32 bundle is measured on held-out observations and recorded in bundle.yaml. Build "
                    "engines from the result with `pi0edge build OUT --precision int8|fp8`. Measured action errors "
                    f"vs float32 (random weights, docs/quantization.md): {measured}")
    p.add_argument("bundle", help="float32 bundle directory (from `pi0edge export --precision float32`)")
    p.add_argument("-o", "--output", required=True, help="quantized bundle directory to write (atomically)")
    p.add_argument("--mode", choices=offered, required=True,
                   help="fp8: Ada / Hopper / Blackwell / Thor; int8: GPUs without FP8 (Jetson Orin, Ampere). Only "
                        "precisions with a measured full-size error are offered")
    p.add_argument("--calib-chunks", type=positive_int, default=QuantizeOptions.calib_chunks,
                   help="synthetic observations to calibrate on (the step graph sees num_steps samples each)")
    p.add_argument("--eval-chunks", type=positive_int, default=QuantizeOptions.eval_chunks,
                   help="held-out observations the action error is measured on")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic observations and noise")
    p.add_argument("--quantize-boundary", action="store_true",
                   help="also quantize the step graph's action_in_proj (reads x_t) and action_out_proj (writes the "
                        "velocity), kept float32 by default: they carry most of the error (docs/quantization.md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bundle")
    p.set_defaults(func=_quantize_command)


def _quantize_command(args: argparse.Namespace) -> int:
    options = QuantizeOptions(args.mode, args.calib_chunks, args.eval_chunks, args.seed, not args.quantize_boundary)
    report = quantize_bundle(args.bundle, args.output, options, overwrite=args.overwrite)
    e = report.error
    print(f"wrote {report.bundle_dir} ({report.mode} Q/DQ) in {report.total_s:.1f} s; "
          + ", ".join(f"{g}: {report.quantized_gemms[g]} GEMMs, {s:.1f} s ({report.calibration_samples[g]} samples)"
                      for g, s in report.quantize_s.items()))
    print(f"action error vs float32 ({e.chunks} held-out chunks, normalized): max abs {e.max_abs:.4g}, "
          f"RMS {e.rms:.4g} (float32 actions RMS {e.reference_rms:.4g}); {full_size_error_text(report.mode)}")
    print(f"ort-cpu chunk: float32 {report.float_chunk_ms:.1f} ms, {report.mode} {report.quant_chunk_ms:.1f} ms "
          "(CPU kernels; the speed-up is TensorRT's)")
    return 0
