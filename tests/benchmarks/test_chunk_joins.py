"""benchmarks/chunk_joins.py: the stepped loop it measures with, on a tiny rtc bundle and the sim arm."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import chunk_joins  # noqa: E402

pytest.importorskip("onnxruntime")


def _run(policy, name: str, delay: int):
    from pi0edge.robot_io.arm_base import ArmLimits
    from pi0edge.robot_io.sim_arm import SimArm

    args = chunk_joins.parse_args(["--execution-horizon", "10"])
    clock = chunk_joins.SteppedClock(chunk_joins.PERIOD_S)
    arm = SimArm(dof=6, time_constant_s=0.02, limits=ArmLimits.uniform(6, 50.0, 1e4), clock=clock)
    image = np.zeros((32, 32, 3), np.uint8)
    strategy = chunk_joins.make_strategy(name, policy.action_horizon, 2, args)
    return chunk_joins.stepped_run(policy, strategy, arm, lambda: image, delay, 24, clock)


def test_stepped_loop_delivers_each_chunk_exactly_delay_ticks_late_and_rtc_meets_the_previous_chunk(
        tiny_bundle_factory):
    from pi0edge.runtime import Policy

    bundle, _ = tiny_bundle_factory("pi0", rtc=True)
    with Policy(bundle, seed=0) as policy:
        commands, driven, joins, async_deviation = _run(policy, "async", delay=3)
        assert joins[:3] == [3, 6, 9]  # requested at 0, 3, 6 (busy in between), each arriving 3 ticks later
        assert not driven[:3].any() and driven[3:].all() and commands.shape == (24, 6)
        _, _, rtc_joins, rtc_deviation = _run(policy, "rtc", delay=3)
    assert rtc_joins == joins
    assert max(rtc_deviation) < 0.05 < min(async_deviation)  # rtc continues the executing chunk; async jumps
    figures = chunk_joins.join_figures(commands, driven, joins, async_deviation)
    assert figures["joins"] == len([k for k in joins[1:] if k < 23])  # the first chunk is not a hand-over
