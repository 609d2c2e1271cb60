"""The control loop with real Pi0-FAST bundles (tiny) in every chunking strategy. Random weights never write a
well-formed "Action: ... |" answer, so every chunk comes back flagged malformed: the loop must refuse each one
with the decode's reason and keep the arm where it started. Weights that spell a well-formed answer
(tests/fast_answer.py) give chunks the loop executes."""

from __future__ import annotations

import numpy as np
import pytest
from robot_io_helpers import make_config

from pi0edge.robot_io.arms import open_arm
from pi0edge.robot_io.loop import open_cameras, run_loop
from pi0edge.runtime import Policy


@pytest.fixture(scope="module")
def fast_policy(tiny_bundle_factory):
    bundle, _ = tiny_bundle_factory("pi0fast")
    with Policy(bundle, seed=0) as policy:
        yield policy


@pytest.mark.parametrize("strategy", ["sync", "async", "ensemble"])
def test_every_strategy_refuses_malformed_fast_chunks_and_holds(fast_policy, strategy):
    config = make_config(chunking={"strategy": strategy, "n_execute": None},
                         safety={"inference_timeout_s": 5.0})  # the shared test machine is slow
    arm = open_arm(config.arm)
    cameras = open_cameras(config, arm)
    start = np.array(arm.read_state(), np.float64)
    try:
        stats = run_loop(config, fast_policy, "pick up the cube", 1.5, arm=arm, cameras=cameras)
    finally:
        for camera in cameras.values():
            camera.close()
    assert stats.inferences >= 1 and stats.rejected_chunks == stats.inferences, stats.summary()
    refusals = [e.reason for e in stats.events if e.kind == "bad_chunk"]
    assert refusals and all("malformed action tokens" in r for r in refusals)
    assert stats.executed_ticks == 0
    np.testing.assert_allclose(arm.true_state(), start, atol=1e-9)


@pytest.mark.parametrize("strategy", ["sync", "async", "ensemble"])
def test_every_strategy_executes_well_formed_fast_chunks(answering_fast_bundle, strategy):
    bundle, normalized = answering_fast_bundle
    # 10 Hz: a chunk's rows outlast a decode on a slow shared machine, so async does not skip them all
    config = make_config(rate_hz=10, chunking={"strategy": strategy, "n_execute": None},
                         safety={"inference_timeout_s": 5.0, "lower": [-10.0] * 3, "upper": [10.0] * 3})
    arm = open_arm(config.arm)
    cameras = open_cameras(config, arm)
    with Policy(bundle, seed=0) as policy:
        target = policy.finish_actions(normalized[None])[0, 0, :3]  # the chunk is constant: one target
        try:
            stats = run_loop(config, policy, "pick up the cube", 4.0, arm=arm, cameras=cameras)
        finally:
            for camera in cameras.values():
                camera.close()
    assert stats.inferences >= 1 and stats.rejected_chunks == 0 and stats.executed_ticks > 0, stats.summary()
    assert not [e for e in stats.events if e.kind in ("bad_chunk", "policy_error")], stats.summary()
    # the arm moves toward the decoded target (velocity-limited: 2 joint units per second)
    start_gap = np.abs(target).max()
    assert np.abs(arm.true_state() - target).max() < start_gap
