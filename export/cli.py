"""`pi0edge export` (checkpoint -> bundle) and `pi0edge build` (bundle -> TensorRT engines)."""

from __future__ import annotations

import argparse

from pi0edge.cli_args import positive_int

# What `export` writes (docs/export.md, "The bundle"); the help lists it.
BUNDLE_FILES = {
    "prefix.onnx": "images + prompt (+ state) -> KV cache, run once per chunk",
    "denoise_step.onnx": "one Euler step (per-step timing, other step counts, TensorRT)",
    "denoise_loop.onnx": "the whole Euler loop in one call (the ONNX Runtime default)",
    "*.onnx.data": "weights stored beside a graph (ONNX external data), shared by step and loop",
    "tokenizer.model": "the PaliGemma SentencePiece tokenizer",
    "bundle.yaml": "the manifest: model, cameras, normalization, graphs' I/O, checksums",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=f"checkpoint directory -> bundle ({', '.join(BUNDLE_FILES)})",
                       description="Export a Pi0 / Pi0.5 checkpoint (LeRobot or openpi-PyTorch layout, safetensors; "
                                   "or an openpi JAX checkpoint: params/ in orbax's format, with the [openpi] extra) "
                                   "into a bundle the runtime loads.\nNeeds the [export] extra (torch, onnx).\n\n"
                                   "The bundle folder holds:\n" + "\n".join(f"  {name:<20} {what}" for name, what in
                                                                           BUNDLE_FILES.items()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint directory (config.json + model.safetensors, openpi PyTorch, or "
                                      "openpi JAX: params/ + assets/)")
    p.add_argument("-o", "--output", required=True, help="bundle directory to write (atomically)")
    p.add_argument("--precision", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="graph precision: float32 for CPU and parity, float16 for GPUs, bfloat16 for GPUs with bf16 "
                        "(Ampere and later); measured errors in docs/benchmarks.md (default float32)")
    p.add_argument("--tokenizer", help="PaliGemma SentencePiece tokenizer.model, when the checkpoint has none")
    p.add_argument("--fast-tokenizer", help="Pi0-FAST: the FAST tokenizer folder (tokenizer.json, "
                   "processor_config.json), when the checkpoint has no fast_tokenizer/")
    p.add_argument("--num-steps", type=positive_int,
                   help="default number of Euler steps recorded in the bundle (default 10)")
    p.add_argument("--asset-id", help="openpi layout: which assets/<ASSET_ID>/norm_stats.json to use when there "
                                      "are several")
    p.add_argument("--action-horizon", type=positive_int,
                   help="openpi JAX checkpoints (which do not record it): the actions per chunk the model was "
                        "trained for, from its openpi training config (pi0_base 50, pi0_droid 10, pi05_droid 15)")
    p.add_argument("--max-token-len", type=positive_int,
                   help="openpi JAX checkpoints: the prompt length in tokens (default openpi's: 48 pi0, 200 pi0.5, "
                        "250 Pi0-FAST)")
    p.add_argument("--action-dim", type=positive_int,
                   help="openpi JAX Pi0-FAST checkpoints: the FAST tokenizer's action width (openpi's action_dim: "
                        "pi0_fast_droid 8, pi0_fast_libero 7; default 32); pi0 / pi0.5 read it from the weights")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle (once the new one is complete)")
    p.add_argument("--no-optimize", action="store_true", help="export the plain reference graphs (no folding/fusing)")
    p.add_argument("--disable", action="append", default=[], metavar="OPTIMIZATION",
                   help="switch one graph optimization off (repeatable); see docs/export.md")
    p.add_argument("--enable", action="append", default=[], metavar="OPTIMIZATION",
                   help="switch on one that is off by default (repeatable), e.g. fuse_gate_up (faster on GPUs)")
    p.add_argument("--rtc", action="store_true",
                   help="the real-time chunking variant: the denoise graphs also take the previous chunk's leftover, "
                        "prefix weights and guidance limit (for chunking strategy rtc; docs/control_loop.md)")
    p.add_argument("--no-finite-check", action="store_true", help="skip the NaN/Inf scan of the weights (faster)")
    p.set_defaults(func=_export)
    from pi0edge.export.engine_build import register_build
    from pi0edge.export.quantize import register_quantize

    register_build(sub)
    register_quantize(sub)


def _export(args: argparse.Namespace) -> int:
    from pi0edge.errors import require

    require("torch", "export", "pi0edge export")
    require("onnx", "export", "pi0edge export")
    from dataclasses import fields, replace

    from pi0edge.errors import ConfigError
    from pi0edge.export.bundle import export_bundle
    from pi0edge.export.model.options import DEFAULT_OPTIMIZE

    known = {f.name for f in fields(DEFAULT_OPTIMIZE)}
    unknown = sorted(set(args.disable + args.enable) - known)
    if unknown:
        raise ConfigError(f"--disable/--enable: unknown optimization(s) {unknown}; choose from {sorted(known)}")
    switches = {name: True for name in args.enable} | {name: False for name in args.disable}
    optimize = None if args.no_optimize else replace(DEFAULT_OPTIMIZE, **switches)
    report = export_bundle(args.checkpoint, args.output, precision=args.precision, tokenizer=args.tokenizer,
                           overwrite=args.overwrite, num_steps=args.num_steps,
                           check_finite=not args.no_finite_check, optimize=optimize, asset_id=args.asset_id,
                           fast_tokenizer=args.fast_tokenizer, rtc=args.rtc,
                           settings=_openpi_settings(args))
    print(f"wrote {report.bundle_dir} ({report.precision}, {report.bundle_bytes / 1e6:.1f} MB) "
          f"in {report.export_s:.1f} s")
    return 0


def _openpi_settings(args: argparse.Namespace) -> dict | None:
    """The flags an openpi JAX checkpoint needs; None when none is given (any other layout)."""
    given = {"action_horizon": args.action_horizon, "max_token_len": args.max_token_len,
             "action_dim": args.action_dim}
    return {k: v for k, v in given.items() if v is not None} or None
