"""Chunk joins: how far the command jumps, and how hard it jerks, where one chunk hands over to the next, for the
control loop's chunk strategies (sync, async, ensemble, rtc) at two inference delays.

    python benchmarks/chunk_joins.py                          # tiny preset (H 50), random weights, sim arm + gym-aloha
    python benchmarks/chunk_joins.py --preset mid --aloha-ticks 0
    python benchmarks/chunk_joins.py --bundle B               # an `export --rtc` bundle with 14 robot action dims

The loop is stepped, not run against the wall clock: tick k observes the arm, asks the strategy
(pi0edge.robot_io.chunking, the loop's own classes) whether to request a chunk, runs the policy at once, and
hands the chunk to the strategy `--delays` ticks later, as if inference had taken that long; then it commands
the strategy's target (or holds). The delay is therefore exact and the same for every strategy, whatever this
machine's inference time. Arms: robot_io's SimArm on a simulated clock (first-order, 20 ms time constant), and
gym-aloha's MuJoCo ALOHA (AlohaArm; one tick = one env.step, 20 ms simulated, ~170 ms of wall time: keep
--aloha-ticks short; skipped when gym-aloha is not installed). One `export --rtc` bundle serves all four
strategies: without guidance it computes exactly the plain bundle's chunk (tests/runtime/test_rtc_parity.py).

The figures are over the targets the strategy gives (clipped to the arm's position limits); the arm itself is
sent them rate-limited as the loop's safety layer would (max_velocity_per_s per tick), or a random chunk's
jumps break gym-aloha's physics. Figures per strategy and delay, at the joins (the ticks a
new chunk first drives the command; the first chunk takes over from the arm's start, not from a chunk, and is
not counted): the step |c[k] - c[k-1]| and the third difference |c[k+1] - 3 c[k] + 3 c[k-1] - c[k-2]| (jerk, per
tick^3), max over joints, as max and mean over the joins; how far the new chunk's row for the join tick is from
the previous chunk's row for the same tick (mean over joins, max over joints: "the arm steps back at each new
chunk"); and, for scale, the median step between two ticks a chunk drove. The weights are random: a random
model's rows are nearly independent, not a smooth motion, so the step and jerk at a join are no smaller than
inside a chunk for any strategy; the deviation from the previous chunk says whether a strategy continues the
executing chunk.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

STRATEGIES = ("sync", "async", "ensemble", "rtc")
ROBOT_DOF = 14  # gym-aloha's: one bundle for both arms
PERIOD_S = 0.02  # 50 Hz, gym-aloha's step


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", help="an `export --rtc` bundle with 14 robot action/state dims (default: a random one)")
    p.add_argument("--preset", default="tiny", choices=("tiny", "mid"),
                   help="random bundle's size (default tiny, with mid's horizon of 50 and 16 action dims)")
    p.add_argument("--delays", type=int, nargs=2, default=(3, 8), help="inference delays in ticks (default 3 8)")
    p.add_argument("--n-execute", type=int, default=None, help="ticks between requests (default H/5, sync: H/2)")
    p.add_argument("--ticks", type=int, default=200, help="sim arm ticks per run (50 Hz)")
    p.add_argument("--aloha-ticks", type=int, default=60, help="gym-aloha ticks per run (0: skip)")
    p.add_argument("--schedule", default="linear", choices=("zeros", "ones", "linear", "exp"))
    p.add_argument("--beta", type=float, default=10.0, help="rtc max guidance weight")
    p.add_argument("--execution-horizon", type=int, default=10, help="rtc rows of the leftover to blend with")
    p.add_argument("--png", default="docs/chunk_joins.png", help="plot of joint 0's commands")
    p.add_argument("--json", help="write the figures here too")
    return p.parse_args(argv)


def random_rtc_bundle(preset: str, folder: Path) -> Path:
    from dataclasses import replace

    from pi0edge.export.bundle import export_bundle
    from pi0edge.export.config import PRESETS
    from pi0edge.export.random_checkpoint import write_random_checkpoint

    cfg = PRESETS[preset]("pi0")
    width = max(cfg.action_dim, ROBOT_DOF)  # tiny's 8 dims are fewer than ALOHA's 14 joints
    cfg = replace(cfg, action_dim=width, state_dim=width, action_horizon=PRESETS["mid"]().action_horizon)
    checkpoint = write_random_checkpoint(folder / "checkpoint", cfg, seed=0, robot_state_dim=ROBOT_DOF,
                                         robot_action_dim=ROBOT_DOF)
    export_bundle(checkpoint, folder / "bundle", rtc=True)
    return folder / "bundle"


class SteppedClock:
    def __init__(self, period_s: float):
        self.period_s, self.now_s = period_s, 0.0

    def __call__(self) -> float:
        return self.now_s


def make_strategy(name: str, horizon: int, n_execute: int | None, args):
    from pi0edge.robot_io.chunking import make_strategy as make
    from pi0edge.robot_io.config import ChunkingConfig

    n = n_execute or (horizon // 2 if name == "sync" else 1 if name == "ensemble" else max(1, horizon // 5))
    return make(ChunkingConfig(strategy=name, n_execute=n, rtc_schedule=args.schedule,
                               rtc_max_guidance_weight=args.beta, rtc_execution_horizon=args.execution_horizon),
                horizon)


def stepped_run(policy, strategy, arm, frame, delay: int, ticks: int, clock: SteppedClock | None):
    """-> (commands [ticks, dof], driven [ticks] bool (a chunk gave the command, else a hold), join ticks,
    deviations at the joins): the loop's tick, with inference taking exactly `delay` ticks."""
    from pi0edge.robot_io.chunking import Chunk
    from pi0edge.runtime.types import Observation

    lower, upper = arm.limits.lower, arm.limits.upper
    max_step = arm.limits.max_velocity_per_s * PERIOD_S  # the safety layer's per-tick limit, for the arm only
    last = np.clip(arm.read_state(), lower, upper)
    sent = last.copy()
    commands, driven, joins, pending = [], [], [], None
    deviations, previous = [], None  # |new chunk's row - the previous chunk's row| for the join's tick

    def add(chunk, tick):
        nonlocal previous
        if previous is not None and tick - previous.obs_tick < previous.horizon:
            planned = previous.actions[tick - previous.obs_tick]
            deviations.append(np.abs(chunk.actions[tick - chunk.obs_tick] - planned).max())
        strategy.add(chunk)
        joins.append(tick)
        previous = chunk

    for tick in range(ticks):
        if pending is not None and pending.ready_tick <= tick:
            add(pending, tick)
            pending = None
        if strategy.want_inference(tick, busy=pending is not None):
            obs = Observation(images={"base_0_rgb": frame()}, state=arm.read_state().astype(np.float32),
                              prompt="transfer the cube")
            noise = np.random.default_rng(tick).standard_normal((policy.action_horizon, policy.manifest.action_dim))
            guidance = strategy.guidance(tick)
            actions = policy.infer(obs, noise=noise.astype(np.float32), guidance=guidance).actions
            pending = Chunk(actions.astype(np.float64), tick, tick + delay, policy_actions=actions)
            if delay == 0:
                add(pending, tick)
                pending = None
        target = strategy.target(tick)
        last = last if target is None else np.clip(target, lower, upper)  # no target: hold
        sent = sent + np.clip(last - sent, -max_step, max_step)  # a random chunk's jumps would break the physics
        arm.command(sent)
        commands.append(last.copy())
        driven.append(target is not None)
        if clock is not None:
            clock.now_s += clock.period_s
    return np.asarray(commands), np.asarray(driven), joins, deviations


def join_figures(commands: np.ndarray, driven: np.ndarray, joins: list[int], deviations: list[float]) -> dict:
    """The first chunk takes over from the arm's start, not from a chunk: only the later joins count."""
    step = np.abs(np.diff(commands, axis=0)).max(axis=1)  # step[k - 1]: from tick k - 1 to k
    third = np.abs(commands[3:] - 3 * commands[2:-1] + 3 * commands[1:-2] - commands[:-3]).max(axis=1)
    at = [k for k in joins[1:] if 2 <= k < len(commands) - 1]
    both_driven = driven[1:] & driven[:-1]
    both_driven[[k - 1 for k in joins if k >= 1]] = False
    inside = step[both_driven]
    nan = float("nan")
    steps, jerks = np.array([step[k - 1] for k in at]), np.array([third[k - 2] for k in at])
    return {"joins": len(at), "join_step_max": float(steps.max()) if at else nan,
            "join_step_mean": float(steps.mean()) if at else nan,
            "join_jerk_max": float(jerks.max()) if at else nan, "join_jerk_mean": float(jerks.mean()) if at else nan,
            "deviation_mean": float(np.mean(deviations)) if deviations else nan,
            "inside_step_p50": float(np.median(inside)) if inside.size else nan}


def run_arm(arm_name: str, policy, args, ticks: int) -> tuple[dict, dict]:
    """-> ({(strategy, delay): figures}, {(strategy, delay): joint 0's commands})."""
    figures, traces = {}, {}
    for delay in args.delays:
        for name in STRATEGIES:
            arm, frame, clock = open_arm(arm_name)
            try:
                strategy = make_strategy(name, policy.action_horizon, args.n_execute, args)
                commands, driven, joins, deviations = stepped_run(policy, strategy, arm, frame, delay, ticks, clock)
            except Exception as exc:  # noqa: BLE001 - e.g. MuJoCo's PhysicsError: that run is reported, not the rest
                print(f"{arm_name} d={delay} {name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            finally:
                arm.close()
            figures[(name, delay)] = join_figures(commands, driven, joins, deviations)
            traces[(name, delay)] = (commands[:, 0], joins)
            print(f"{arm_name} d={delay} {name}: {figures[(name, delay)]}", file=sys.stderr)
    return figures, traces


def open_arm(arm_name: str):
    """-> (arm, frame(), stepped clock or None)."""
    if arm_name == "aloha":
        from pi0edge.robot_io.aloha import AlohaArm

        arm = AlohaArm(cameras=("top",), seed=0)
        return arm, lambda: arm.latest_frame("top").image, None
    from pi0edge.robot_io.arm_base import ArmLimits
    from pi0edge.robot_io.sim_arm import SimArm

    clock = SteppedClock(PERIOD_S)
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    # limits far outside what the random chunks ask (|a| < ~5): nothing is clipped, the joins are the chunks'
    arm = SimArm(dof=ROBOT_DOF, time_constant_s=0.02, limits=ArmLimits.uniform(ROBOT_DOF, 50.0, 1e4), clock=clock)
    return arm, lambda: image, clock


def table(results: dict) -> str:
    rows = ["| arm | delay (ticks) | strategy | joins | step at a join: max / mean | jerk at a join: max / mean | "
            "new vs previous chunk at the join (mean) | median step inside chunks |",
            "|---|---|---|---|---|---|---|---|"]
    for arm_name, figures in results.items():
        for (name, delay), f in figures.items():
            rows.append(f"| {arm_name} | {delay} | {name} | {f['joins']} | {f['join_step_max']:.2f} / "
                        f"{f['join_step_mean']:.2f} | {f['join_jerk_max']:.2f} / {f['join_jerk_mean']:.2f} | "
                        f"{f['deviation_mean']:.3f} | {f['inside_step_p50']:.2f} |")
    return "\n".join(rows)


def plot(results: dict, traces: dict, path: str) -> None:
    """Per arm: joint 0's commands under async and rtc at the longer delay (first 80 ticks), and the mean
    deviation from the previous chunk at the joins for every strategy and delay."""
    from pi0edge.errors import require

    plt = require("matplotlib.pyplot", "plot", "the chunk-join plot")
    fig, axes = plt.subplots(len(traces), 2, figsize=(13, 3.4 * len(traces)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1]})
    for (trace_ax, bar_ax), arm_name in zip(axes, traces, strict=True):
        delays = sorted({d for _, d in traces[arm_name]})
        for name in ("async", "rtc"):
            if (name, delays[-1]) not in traces[arm_name]:
                continue  # that run failed
            values, joins = traces[arm_name][(name, delays[-1])]
            shown = [k for k in joins if k < 80]
            line, = trace_ax.plot(values[:80], label=name, lw=1.2)
            trace_ax.plot(shown, values[shown], "o", ms=4, color=line.get_color())
        trace_ax.set_title(f"{arm_name}: joint 0 command, inference delay {delays[-1]} ticks (dots: chunk joins)")
        trace_ax.set_xlabel("tick")
        trace_ax.legend(loc="upper right", fontsize=8)
        width = 0.8 / len(delays)
        for i, delay in enumerate(delays):
            heights = [results[arm_name].get((name, delay), {}).get("deviation_mean", np.nan) for name in STRATEGIES]
            bar_ax.bar(np.arange(len(STRATEGIES)) + i * width, np.nan_to_num(heights), width, label=f"d = {delay}")
        bar_ax.set_xticks(np.arange(len(STRATEGIES)) + width * (len(delays) - 1) / 2, STRATEGIES)
        bar_ax.set_title("new vs previous chunk at the joins (mean)")
        bar_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    import importlib.util

    from pi0edge.runtime import Policy

    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or random_rtc_bundle(args.preset, Path(tmp))
        with Policy(bundle, seed=0) as policy:
            if not policy.supports_rtc:
                raise SystemExit(f"{bundle}: export it with `pi0edge export --rtc`")
            arms = {"sim arm": args.ticks}
            if args.aloha_ticks and importlib.util.find_spec("gym_aloha") is not None:
                arms["aloha"] = args.aloha_ticks
            elif args.aloha_ticks:
                print("gym-aloha not installed (pip install 'pi0edge[sim]'): the aloha runs are skipped",
                      file=sys.stderr)
            results, traces = {}, {}
            for arm_name, ticks in arms.items():
                results[arm_name], traces[arm_name] = run_arm(arm_name, policy, args, ticks)
    print(table(results))
    plot(results, traces, args.png)
    if args.json:
        from pi0edge.atomic import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps({a: {f"{s}@{d}": v for (s, d), v in r.items()}
                                                       for a, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
