"""Control-loop timing: run the loop for 60 s at 50 Hz against the simulated arm and a synthetic
camera while inference runs continuously beside it, and report how well the clock kept time.

    python benchmarks/loop_timing.py                               # CPU-busy fake policy, in its own process
    python benchmarks/loop_timing.py --bundle B                    # a real bundle through pi0edge.runtime
    python benchmarks/loop_timing.py --inference thread            # inference on a thread of the loop's process
    python benchmarks/loop_timing.py --background-load 1           # plus one process spinning on a core
    python benchmarks/loop_timing.py --loop-cpus 0 --inference-cpus 1   # pinned (cpu_affinity in the YAML)
    python benchmarks/loop_timing.py --realtime-priority 10        # opt in to SCHED_FIFO for the loop thread

--background-load N starts N processes that each spin in a pure-Python loop (one busy core each, at
normal priority, not pinned) for the whole run: the "one core busy" case of docs/control_loop.md.

Figures: loop period error (|wake-to-wake interval - period|) p50/p99/max in ms, deadline misses
(ticks whose work ran past the deadline), skipped ticks, inference latency, and the machine's 1-min
load average before and after. The last line is a markdown table row for docs/control_loop.md
("Measured timing"), with the exact command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys

BUSY_LOOP = "while True: pass"


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {system}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--rate-hz", type=float, default=50.0)
    parser.add_argument("--strategy", default="async", choices=["sync", "async", "ensemble"])
    parser.add_argument("--inference", default="process", choices=["process", "thread"],
                        help="where policy.infer runs (the robot YAML's `inference`; default process)")
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="N busy processes (one spinning core each) beside the loop for the whole run")
    parser.add_argument("--loop-cpus", type=int, nargs="*", default=[], help="pin the loop thread to these CPUs")
    parser.add_argument("--inference-cpus", type=int, nargs="*", default=[], help="pin inference to these CPUs")
    parser.add_argument("--realtime-priority", type=int, default=0, help="SCHED_FIFO priority of the loop thread "
                        "(opt-in; default 0: normal priority)")
    parser.add_argument("--latency-s", type=float, default=0.08, help="fake policy: CPU-busy time per chunk")
    parser.add_argument("--sleeping-policy", action="store_true", help="fake policy sleeps instead of computing "
                        "(separates the cost of sharing CPU and GIL with inference from the loop's own jitter)")
    parser.add_argument("--bundle", default=None, help="use a real bundle instead of the fake policy")
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.background_load < 0:
        parser.error(f"--background-load must be >= 0, got {args.background_load}")
    return args


def make_policy(args: argparse.Namespace, camera: str):
    """A PolicyHandle: the loop's process reads the dims; the model loads where inference runs."""
    from pi0edge.robot_io.policy_spec import FakePolicySpec, PolicyHandle, PolicySpec

    if args.bundle:
        return PolicyHandle(PolicySpec(args.bundle, args.backend))
    fake = {"camera_names": (camera,), "action_horizon": 50, "robot_state_dim": 6, "robot_action_dim": 6,
            "goal": (0.3, -0.2, 0.4, 0.0, 0.1, 0.0), "latency_s": args.latency_s, "busy": not args.sleeping_policy}
    return PolicyHandle(FakePolicySpec(tuple(fake.items())))


def start_background_load(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]


def markdown_row(figures: dict) -> str:
    f = figures
    load = "{} -> {}".format(*f["load_avg_1m_before_after"])
    return (f"| `{f['command']}` | {f['inference']} | {f['background_load']} | {f['realtime_priority'] or 'off'} "
            f"| {f['period_error_ms_p50']:.3f} / {f['period_error_ms_p99']:.3f} / {f['period_error_ms_max']:.3f} "
            f"| {f['deadline_misses']} / {f['ticks']} | {f['skipped_ticks']} "
            f"| {f['inference_latency_ms_p50']:.1f} / {f['inference_latency_ms_p99']:.1f} | {load} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pi0edge.robot_io.config import CpuAffinityConfig, example_config_path, load_robot_config
    from pi0edge.robot_io.loop import run_loop
    from pi0edge.robot_io.safety import EStop

    config = load_robot_config(example_config_path("sim_arm.yaml"))
    policy = make_policy(args, "base_0_rgb")
    camera = policy.camera_names[0]
    config = dataclasses.replace(
        config, rate_hz=args.rate_hz, realtime_priority=args.realtime_priority or None, inference=args.inference,
        cpu_affinity=CpuAffinityConfig(loop=tuple(args.loop_cpus), inference=tuple(args.inference_cpus)),
        # n_execute 1: a new request the moment the previous chunk lands, so inference never pauses.
        chunking=dataclasses.replace(config.chunking, strategy=args.strategy, n_execute=1),
        cameras=tuple(dataclasses.replace(c, model_camera=camera) for c in config.cameras))
    load_before = os.getloadavg()
    background = start_background_load(args.background_load)
    try:
        stats = run_loop(config, policy, "pick up the cube", args.duration_s, estop=EStop(use_signal=False))
    finally:
        for proc in background:
            proc.kill()
            proc.wait()
    load_after = os.getloadavg()
    print(stats.summary())
    figures = {
        "command": " ".join(["python benchmarks/loop_timing.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "load_avg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "policy": args.bundle or f"fake, {'sleeping' if args.sleeping_policy else 'CPU-busy'} "
                                 f"{args.latency_s * 1e3:.0f} ms/chunk",
        "inference": args.inference,
        "background_load": args.background_load,
        "cpu_affinity": {"loop": args.loop_cpus, "inference": args.inference_cpus},
        "realtime_priority": args.realtime_priority,
        **{k: v for k, v in dataclasses.asdict(stats).items() if k not in ("events", "latency")},
        "latency_ms": stats.latency.figures(),  # capture -> command spans, p50/p99/max
        "achieved_rate_hz": stats.achieved_rate_hz,
        "event_counts": stats.event_counts(),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    print("| command | inference | background load | SCHED_FIFO | period error p50 / p99 / max (ms) "
          "| deadline misses / ticks | skipped | inference p50 / p99 (ms) | load 1-min before -> after |")
    print(markdown_row(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
