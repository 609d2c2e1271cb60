"""`pi0edge profile`: per-stage latency of a bundle on a backend; `pi0edge doctor`: what runs here."""

from __future__ import annotations

import argparse

from pi0edge.cli_args import non_empty_text, non_negative_int, positive_float, positive_int, writable_file
from pi0edge.runtime.policy import BACKENDS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="per-stage latency (p50/p95/p99), memory, JSON and a Chrome trace",
                       description="Run a bundle on synthetic observations and report where the time goes. With "
                       "--live ROBOT.yaml: run the control loop on that robot instead and report the capture-to-"
                       "command latency (p50/p99 of each span, the frame age at inference, the staleness of each "
                       "executed row).")
    p.add_argument("bundle", help="bundle directory written by `pi0edge export`")
    p.add_argument("--live", metavar="ROBOT_YAML",
                   help="run the control loop of this robot YAML (the demo robot: robot_io/examples/sim_arm.yaml)")
    p.add_argument("--duration-s", type=positive_float, default=10.0, help="--live: seconds to run (default 10)")
    p.add_argument("--prompt", type=non_empty_text, default="pick up the cube", help="--live: the task")
    p.add_argument("--backend", choices=BACKENDS, default="ort-cpu", help="inference backend (default ort-cpu)")
    p.add_argument("--iters", type=positive_int, default=20, help="measured chunks (default 20)")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="chunks run before measuring (default 3)")
    p.add_argument("--num-steps", type=positive_int, help="Euler steps per chunk (default: the bundle's)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for ort-cpu (default: ONNX Runtime's choice)")
    p.add_argument("--per-step", action="store_true",
                   help="time each denoise step (ORT: the step graph instead of the bundle's one-call loop graph)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="ort-cuda / ort-trt: capture the loop (or each step) as a CUDA graph (enable_cuda_graph, "
                        "trt_cuda_graph_enable)")
    p.add_argument("--json", metavar="F", type=writable_file, help="write the summary as JSON to F")
    p.add_argument("--trace", metavar="F", type=writable_file,
                   help="write a Chrome-trace file (chrome://tracing, Perfetto) to F")
    p.set_defaults(func=_profile)

    d = sub.add_parser("doctor", help="what this machine can run: GPU, drivers, providers that start, bundle fit",
                       description="Check this machine (CPU, GPU, driver, CUDA/cuDNN/TensorRT, Jetson, onnxruntime, "
                       "the providers that really start) and, given a bundle, which backends run it. Exit 0 when "
                       "at least one backend runs the bundle (without one: when a provider starts), else 1.")
    d.add_argument("bundle", nargs="?", help="bundle directory to try on every backend (optional)")
    d.add_argument("--json", metavar="F", nargs="?", const="-", type=writable_file,
                   help="machine-readable report: to stdout instead of the text, or written to F (after BUNDLE)")
    d.set_defaults(func=_doctor)


def _profile(args: argparse.Namespace) -> int:
    if args.live:
        return _profile_live(args)
    from pi0edge.runtime.policy import Policy
    from pi0edge.runtime.profile import profile_policy, write_json

    options = {"intra_op_threads": args.threads} if args.threads else {}
    if args.backend.startswith("ort") or args.backend == "auto":
        options |= {"whole_loop": False if args.per_step else None, "enable_cuda_graph": args.cuda_graph}
    elif args.per_step or args.cuda_graph:  # tensorrt: its loop is one CUDA graph unless told otherwise
        options["use_cuda_graph"] = not args.per_step
    with Policy(args.bundle, backend=args.backend, **options) as policy:
        result = profile_policy(policy, iters=args.iters, warmup=args.warmup, num_steps=args.num_steps)
    print(f"{result.bundle} on {result.backend} ({', '.join(result.providers)}): {result.iters} chunks after "
          f"{result.warmup} warm-up")
    print(result.table())
    if args.json:
        write_json(args.json, result.to_json())
        print(f"wrote {args.json}")
    if args.trace:
        write_json(args.trace, result.chrome_trace())
        print(f"wrote {args.trace}")
    return 0


def _profile_live(args: argparse.Namespace) -> int:
    # The application layer may import robot_io; the runtime library may not (docs/architecture.md).
    from pi0edge.errors import ConfigError
    from pi0edge.robot_io.live_profile import latency_table, live_json, profile_live

    offline_only = [flag for flag, given in (("--per-step", args.per_step), ("--cuda-graph", args.cuda_graph),
                                             ("--num-steps", args.num_steps is not None)) if given]
    if offline_only:
        raise ConfigError(f"{', '.join(offline_only)}: not with --live (the loop runs the bundle as `pi0edge run` "
                          "does); profile without --live to time those variants")
    from pi0edge.runtime.profile import write_json

    stats = profile_live(args.live, args.bundle, backend=args.backend, duration_s=args.duration_s, prompt=args.prompt,
                         threads=args.threads)
    print(stats.summary())
    print(latency_table(stats))
    if args.json:
        write_json(args.json, live_json(stats))
        print(f"wrote {args.json}")
    if args.trace:
        write_json(args.trace, stats.latency.chrome_trace())
        print(f"wrote {args.trace}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    import json

    from pi0edge.runtime.doctor import diagnose, doctor_exit_code, render_text
    from pi0edge.runtime.profile import write_json

    report = diagnose(args.bundle)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
        if args.json:
            write_json(args.json, report)
            print(f"wrote {args.json}")
    return doctor_exit_code(report)
