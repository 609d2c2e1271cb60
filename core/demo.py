"""`pi0edge demo`: the whole path on this machine, no hardware and no model hub.

1. write a small random Pi0 checkpoint in LeRobot layout (weights, config, statistics, tokenizer);
2. `pi0edge export` it into a bundle (ONNX prefix + denoise_step graphs);
3. load the bundle on the embedded default backend (ONNX Runtime CPU), infer one chunk, profile it;
4. run the control loop against the simulated arm and a synthetic camera for a few seconds
   (with `--sim aloha` and the [sim] extra: against gym-aloha's MuJoCo ALOHA).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pi0edge.cli_args import positive_float

DEMO_PROMPT = "pick up the cube"
DEMO_ROBOT_DIMS = {"sim": 6, "aloha": 14}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="random checkpoint -> export -> ort-cpu -> control loop on a simulated arm",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="where to write the checkpoint and bundle (default: a temporary folder)")
    p.add_argument("--model", choices=("pi0", "pi05", "pi0fast"), default="pi0",
                   help="model family (default pi0; pi0fast: Pi0-FAST, actions decoded as tokens)")
    p.add_argument("--preset", choices=("tiny", "mid"), default="tiny", help="model size (default tiny)")
    p.add_argument("--duration-s", type=positive_float, default=3.0, help="control-loop duration (default 3 s)")
    p.add_argument("--sim", choices=("sim", "aloha"), default="sim",
                   help="sim: first-order simulated arm; aloha: gym-aloha MuJoCo (needs pi0edge[sim])")
    p.add_argument("--backend", default="ort-cpu", help="inference backend (default ort-cpu)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from pi0edge.errors import require, require_installed

    require("torch", "export", "pi0edge demo (it writes and exports a random checkpoint)")
    if args.sim == "aloha":
        require_installed("gym_aloha", "sim", "pi0edge demo --sim aloha")
    if args.workdir:
        return run_demo(Path(args.workdir), args)
    with tempfile.TemporaryDirectory(prefix="pi0edge-demo-") as tmp:
        return run_demo(Path(tmp), args)


def run_demo(workdir: Path, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from pi0edge.export.bundle import export_bundle
    from pi0edge.export.config import PRESETS
    from pi0edge.export.random_checkpoint import write_random_checkpoint
    from pi0edge.runtime import Policy
    from pi0edge.runtime.profile import profile_policy, synthetic_observation

    robot_dim = DEMO_ROBOT_DIMS[args.sim]
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint, bundle = workdir / "checkpoint", workdir / "bundle"
    cfg = replace(PRESETS[args.preset](args.model), action_horizon=50)  # the published chunk length
    if robot_dim > cfg.action_dim:  # ALOHA's 14 joints need the published 32-wide action space
        cfg = replace(cfg, action_dim=32, state_dim=32)

    t0 = time.perf_counter()
    if (checkpoint / "config.json").is_file():  # a previous demo's output in --workdir: replace it
        shutil.rmtree(checkpoint)
    write_random_checkpoint(checkpoint, cfg, layout="lerobot", seed=0, robot_state_dim=robot_dim,
                            robot_action_dim=robot_dim)
    print(f"[1/4] random {args.model} checkpoint ({args.preset}, LeRobot layout) -> {checkpoint} "
          f"in {time.perf_counter() - t0:.1f} s")
    report = export_bundle(checkpoint, bundle, overwrite=True)
    print(f"[2/4] exported -> {bundle} ({report.bundle_bytes / 1e6:.1f} MB) in {report.export_s:.1f} s")

    with Policy(bundle, backend=args.backend, seed=0) as policy:
        chunk = policy.infer(synthetic_observation(policy))
        t = chunk.timings_ms
        np.set_printoptions(precision=3, suppress=True, linewidth=120)
        print(f"[3/4] one chunk on {policy.backend_name}: actions {chunk.actions.shape} (robot units), first 3 rows:")
        print(chunk.actions[:3])
        print(f"      {timing_line(t, policy.manifest.num_steps)}")
        if chunk.malformed:  # Pi0-FAST with random weights: its tokens are not an "Action: ... |" answer
            print(f"      malformed decode (random weights), the loop will hold: {chunk.malformed}")
            print("      (random weights never write a well-formed answer: below, the loop refuses each chunk as a "
                  "bad_chunk and holds the arm, its safety path; a trained checkpoint's chunks execute)")
        print(profile_policy(policy, iters=10, warmup=2).table())
        print(f"[4/4] control loop: {args.sim} arm for {args.duration_s:g} s")
        stats = _run_loop(policy, args)
        print(stats.summary())
    return 0


def timing_line(t, num_steps: int) -> str:
    """One chunk's stage times. With the loop graph (the export default) the denoise loop is one call
    and has no per-step times (ChunkTimings.step_ms is empty): its time is the loop graph's. Pi0-FAST: the
    tokens decoded and the time per token."""
    if "token_ms" in t:  # Pi0-FAST: a decode loop
        per_token = t["decode_ms"] / max(len(t["token_ms"]), 1)
        return (f"preprocess {t['preprocess_ms']:.1f} ms, prefix {t['prefix_ms']:.1f} ms, {t['tokens']} tokens at "
                f"{per_token:.1f} ms each, total {t['total_ms']:.1f} ms")
    steps = t["step_ms"]
    denoise = (f"denoise {t['denoise_ms']:.1f} ms ({len(steps)} step-graph calls)" if steps else
               f"denoise {t['denoise_ms']:.1f} ms ({num_steps} steps in one loop-graph call)")
    return (f"preprocess {t['preprocess_ms']:.1f} ms, prefix {t['prefix_ms']:.1f} ms, {denoise}, "
            f"total {t['total_ms']:.1f} ms")


def _run_loop(policy, args: argparse.Namespace):
    from dataclasses import replace

    from pi0edge.robot_io.config import example_config_path, load_robot_config
    from pi0edge.robot_io.loop import run_loop

    config = load_robot_config(example_config_path("aloha.yaml" if args.sim == "aloha" else "sim_arm.yaml"))
    # A simulated arm needs no SCHED_FIFO; asking for it without root would only print a warning.
    config = replace(config, realtime_priority=None)
    return run_loop(config, policy, DEMO_PROMPT, args.duration_s)
