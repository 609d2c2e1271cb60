"""The control loop with a real Pi0-FAST bundle (tiny, random weights) in every chunking strategy. Random
weights never write a well-formed "Action: ... |" answer, so every chunk comes back flagged malformed: the loop
must refuse each one with the decode's reason and keep the arm where it started."""

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
