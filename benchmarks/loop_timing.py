"""Control-loop timing: run the loop for 60 s at 50 Hz against the simulated arm and a synthetic
camera while inference runs continuously in the background, and report how well the clock kept time.

    python benchmarks/loop_timing.py                          # CPU-busy fake policy (numpy, releases the GIL)
    python benchmarks/loop_timing.py --bundle B               # a real bundle through pi0edge.runtime
    python benchmarks/loop_timing.py --realtime-priority 0    # without SCHED_FIFO for the loop thread

Figures: loop period error (|wake-to-wake interval - period|) p50/p99/max in ms, deadline misses
(ticks whose work ran past the deadline), skipped ticks, inference latency. Results in
docs/control_loop.md ("Measured timing").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {system}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--rate-hz", type=float, default=50.0)
    parser.add_argument("--strategy", default="async", choices=["sync", "async", "ensemble"])
    parser.add_argument("--realtime-priority", type=int, default=10, help="SCHED_FIFO priority of the loop thread, "
                        "0 for none")
    parser.add_argument("--latency-s", type=float, default=0.08, help="fake policy: CPU-busy time per chunk")
    parser.add_argument("--sleeping-policy", action="store_true", help="fake policy sleeps instead of computing "
                        "(separates the cost of sharing CPU and GIL with inference from the loop's own jitter)")
    parser.add_argument("--bundle", default=None, help="use a real bundle instead of the fake policy")
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    from pi0edge.robot_io.config import example_config_path, load_robot_config
    from pi0edge.robot_io.fake_policy import FakePolicy
    from pi0edge.robot_io.loop import run_loop
    from pi0edge.robot_io.safety import EStop

    config = load_robot_config(example_config_path("sim_arm.yaml"))
    if args.bundle:
        from pi0edge.runtime import Policy

        policy = Policy(args.bundle, backend=args.backend)
        camera = policy.camera_names[0]
    else:
        camera = "base_0_rgb"
        policy = FakePolicy(camera_names=(camera,), action_horizon=50, robot_state_dim=6, robot_action_dim=6,
                            goal=[0.3, -0.2, 0.4, 0.0, 0.1, 0.0], latency_s=args.latency_s,
                            busy=not args.sleeping_policy)
    config = dataclasses.replace(
        config, rate_hz=args.rate_hz, realtime_priority=args.realtime_priority or None,
        # n_execute 1: a new request the moment the previous chunk lands, so inference never pauses.
        chunking=dataclasses.replace(config.chunking, strategy=args.strategy, n_execute=1),
        cameras=tuple(dataclasses.replace(c, model_camera=camera) for c in config.cameras))
    load_before = os.getloadavg()
    stats = run_loop(config, policy, "pick up the cube", args.duration_s, estop=EStop(use_signal=False))
    load_after = os.getloadavg()
    print(stats.summary())
    figures = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine(),
        "load_avg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "policy": args.bundle or f"fake, {'sleeping' if args.sleeping_policy else 'CPU-busy'} "
                                 f"{args.latency_s * 1e3:.0f} ms/chunk",
        "realtime_priority": args.realtime_priority,
        **{k: v for k, v in dataclasses.asdict(stats).items() if k != "events"},
        "achieved_rate_hz": stats.achieved_rate_hz,
        "event_counts": stats.event_counts(),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
