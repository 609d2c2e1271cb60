"""The closed loop against the simulated arm: commands arrive, limits hold, and every fault holds."""

from __future__ import annotations

import os
import signal
import threading
import time
from functools import partial

import numpy as np
import pytest
from robot_io_helpers import RATE_TOLERANCE, DriverArm, after, make_config, make_policy, raising

from pi0edge.robot_io import cli as robot_cli
from pi0edge.robot_io.arms import open_arm
from pi0edge.robot_io.errors import SafetyError, StartupCheckError
from pi0edge.robot_io.loop import open_cameras, run_loop
from pi0edge.robot_io.recording import load_episode

STEP_ATOL = 1e-9


def _run(config, policy, duration_s, tmp_path=None, during=None, **kwargs):
    """Run the loop on an arm and cameras the test can inspect; `during(arm, cameras)` runs in a thread."""
    arm = open_arm(config.arm)
    cameras = open_cameras(config, arm)
    record = str(tmp_path / "episode.npz") if tmp_path is not None else None
    if during is not None:
        threading.Thread(target=during, args=(arm, cameras), daemon=True).start()
    try:
        stats = run_loop(config, policy, "pick up the cube", duration_s, arm=arm, cameras=cameras, record_path=record,
                         **kwargs)
    finally:
        for camera in cameras.values():
            camera.close()
    episode = load_episode(record) if record else None
    return stats, arm, cameras, episode


def _after(seconds, fn):
    def run(arm, cameras):
        time.sleep(seconds)
        fn(arm, cameras)

    return run


def test_closed_loop_commands_arrive_and_limits_hold(tmp_path):
    config = make_config()
    policy = make_policy(goal=[2.0, -0.5, 0.3])  # joint a's goal is outside the 1.0 limit
    stats, arm, _, episode = _run(config, policy, 1.5, tmp_path)
    assert arm.commands_received >= stats.ticks > 0
    assert stats.executed_ticks > 0 and not stats.events, stats.summary()
    commands = episode.commands
    assert np.all(commands <= 1.0 + STEP_ATOL) and np.all(commands >= -1.0 - STEP_ATOL)
    steps = np.abs(np.diff(commands, axis=0))
    assert steps.max() <= 2.0 / config.rate_hz + STEP_ATOL  # max_velocity_per_s 2.0 per 20 ms tick
    np.testing.assert_allclose(arm.true_state(), [1.0, -0.5, 0.3], atol=0.02)
    assert stats.clipped_ticks > 0
    # The policy saw the camera under the model's name and the joints in its state dims.
    observation = policy.observations[-1]
    assert set(observation.images) == {"base_0_rgb"} and observation.images["base_0_rgb"].shape == (32, 32, 3)
    assert observation.state.shape == (3,) and observation.prompt == "pick up the cube"


def test_nan_chunk_is_rejected_and_the_arm_holds(tmp_path):
    config = make_config(chunking={"strategy": "sync", "n_execute": 5})

    def actions(observation, call):
        if call >= 2:
            time.sleep(0.3)  # keep the hold after the NaN chunk long enough to see
        return np.tile(np.float32(0.1 * (call + 1)), (10, 3))

    policy = make_policy(actions_fn=actions, nan_calls=[1])
    stats, _, _, episode = _run(config, policy, 1.2, tmp_path)
    assert stats.rejected_chunks == 1
    assert [e.kind for e in stats.events].count("bad_chunk") == 1
    assert "NaN/Inf" in next(e.reason for e in stats.events if e.kind == "bad_chunk")
    status = episode.arrays["tick_status"]
    held = np.nonzero(status == "hold:bad_chunk")[0]
    assert held.size >= 5 and stats.hold_ticks >= held.size
    held_commands = episode.commands[held]
    np.testing.assert_allclose(held_commands, held_commands[:1].repeat(len(held), 0))  # no motion while held
    assert (status == "run").sum() > 5  # and motion resumed with the next good chunk
    assert not episode.arrays["infer_accepted"][1] and episode.arrays["infer_accepted"][0]


def test_async_with_a_slow_policy_keeps_the_rate():
    config = make_config(chunking={"strategy": "async", "n_execute": 5})
    policy = make_policy(action_horizon=50, latency_s=0.25, goal=[0.5, 0.5, 0.5])  # 12 ticks per inference
    stats, _, _, _ = _run(config, policy, 2.0)
    assert stats.achieved_rate_hz >= RATE_TOLERANCE * config.rate_hz, stats.summary()
    assert stats.deadline_misses <= 0.05 * stats.ticks, stats.summary()
    assert stats.inferences >= 4 and stats.inference_latency_ms_p50 >= 240
    assert stats.skipped_actions >= 4 * 10  # each chunk arrived >= 12 ticks after its observation
    assert stats.executed_ticks >= 0.6 * stats.ticks
    assert not [e for e in stats.events if e.kind != "chunk_exhausted"], stats.summary()


@pytest.mark.parametrize("strategy", ["sync", "ensemble"])
def test_other_strategies_reach_the_goal(strategy):
    config = make_config(chunking={"strategy": strategy, "n_execute": None})
    policy = make_policy(goal=[0.3, -0.2, 0.1], latency_s=0.03)
    stats, arm, _, _ = _run(config, policy, 1.0)
    np.testing.assert_allclose(arm.true_state(), [0.3, -0.2, 0.1], atol=0.02)
    assert stats.deadline_misses <= 0.1 * stats.ticks and not stats.events, stats.summary()


def test_watchdog_holds_on_a_frozen_camera_and_recovers(tmp_path):
    config = make_config(safety={"stale_frame_s": 0.15})
    policy = make_policy(actions_fn=lambda obs, call: np.tile(np.float32(0.02 * call), (10, 3)))

    def freeze_then_thaw(arm, cameras):
        time.sleep(0.4)
        cameras["front"].freeze()
        time.sleep(0.6)
        cameras["front"].unfreeze()

    stats, _, _, episode = _run(config, policy, 1.6, tmp_path, during=freeze_then_thaw)
    kinds = [e.kind for e in stats.events]
    assert kinds[:2] == ["stale_frame", "recovered"], stats.summary()
    assert "front frame" in stats.events[0].reason and "ms old" in stats.events[0].reason
    held = np.nonzero(episode.arrays["tick_status"] == "hold:stale_frame")[0]
    assert held.size >= 0.3 * config.rate_hz  # ~0.45 s of the 0.6 s freeze
    np.testing.assert_allclose(episode.commands[held], episode.commands[held[:1]].repeat(held.size, 0))
    # No observation with a stale frame reached the policy: every inference saw a fresh frame.
    assert (episode.arrays["tick_status"][held[-1] + 1:] == "run").any()


def test_estop_file_latches_and_holds(tmp_path):
    stop_file = tmp_path / "estop"
    config = make_config(estop={"file": str(stop_file)})
    policy = make_policy(actions_fn=lambda obs, call: np.tile(np.float32(0.05 * call), (10, 3)))
    stats, arm, _, episode = _run(config, policy, 1.2, tmp_path,
                                  during=_after(0.4, lambda arm, cams: stop_file.touch()))
    assert [e.kind for e in stats.events] == ["estop"] and "appeared" in stats.events[0].reason
    status = episode.arrays["tick_status"]
    first_hold = int(np.argmax(status == "hold:estop"))
    assert first_hold > 0 and np.all(status[first_hold:] == "hold:estop")  # latched to the end
    np.testing.assert_allclose(episode.commands[first_hold:], episode.commands[first_hold - 1][None].repeat(
        len(status) - first_hold, 0))
    np.testing.assert_allclose(arm.last_command, episode.commands[-1])
    # An e-stop file present at the start refuses the start.
    with pytest.raises(SafetyError, match="e-stop is active"):
        _run(config, policy, 0.5)


def test_estop_signal_holds():
    config = make_config(estop={"signal": True})
    previous = signal.getsignal(signal.SIGUSR1)
    policy = make_policy(actions_fn=lambda obs, call: np.tile(np.float32(0.05 * call), (10, 3)))
    stats, arm, _, _ = _run(config, policy, 1.0,
                            during=_after(0.3, lambda arm, cams: os.kill(os.getpid(), signal.SIGUSR1)))
    assert [e.kind for e in stats.events] == ["estop"] and "SIGUSR1" in stats.events[0].reason
    assert stats.hold_ticks >= 0.5 * config.rate_hz
    assert signal.getsignal(signal.SIGUSR1) is previous  # handler restored


def test_inference_timeout_holds_and_drops_the_late_chunk():
    config = make_config(safety={"inference_timeout_s": 0.2}, chunking={"strategy": "async", "n_execute": 3})

    def actions(observation, call):
        if call == 1:
            time.sleep(0.6)  # a stalled inference
        return np.tile(np.float32(0.1), (10, 3))

    stats, _, _, _ = _run(config, make_policy(actions_fn=actions), 1.5)
    assert "inference_timeout" in [e.kind for e in stats.events], stats.summary()
    assert stats.discarded_chunks >= 1 and stats.hold_ticks > 0
    assert stats.executed_ticks > 0


def test_a_failing_policy_is_not_asked_again_in_the_tick_of_its_fault():
    # A request from the fault's own tick would carry a pre-fault observation and be discarded unseen:
    # every call must count, so 3 failures in a row take 3 calls.
    policy = make_policy(raise_calls=range(100))
    stats, _, _, _ = _run(make_config(), policy, 2.0)
    assert stats.stop_reason.startswith("policy failed 3 times"), stats.summary()
    assert policy.calls == 3 and stats.discarded_chunks == 0, stats.summary()


def test_policy_that_keeps_failing_stops_the_loop_holding():
    config = make_config()
    stats, arm, _, _ = _run(config, make_policy(raise_calls=range(100)), 2.0)
    assert stats.stop_reason.startswith("policy failed 3 times"), stats.summary()
    assert all(e.kind == "policy_error" for e in stats.events) and "injected failure" in stats.events[0].reason
    np.testing.assert_allclose(arm.last_command, arm.true_state(), atol=1e-6)


def _exploding_status(stats):
    if stats.ticks > 0.5 * stats.rate_hz:
        raise RuntimeError("status display crashed")


def test_shutdown_by_ctrl_c_leaves_the_arm_holding():
    config = make_config()
    arm = DriverArm(open_arm(config.arm))
    policy = make_policy(actions_fn=lambda obs, call: np.tile(np.float32(0.5), (10, 3)))
    after(0.5, lambda: setattr(arm, "read_hook", raising(KeyboardInterrupt())))  # Ctrl-C inside the driver call
    stats = run_loop(config, policy, "x", 2.0, arm=arm)
    assert stats.stop_reason.startswith("interrupted")
    held = arm.commands[-1][0]
    time.sleep(0.2)
    np.testing.assert_allclose(arm.inner.true_state(), held, atol=1e-3)  # it stays where the last command put it


def test_an_error_outside_the_drivers_propagates_after_the_final_hold():
    config = make_config()
    arm = open_arm(config.arm)
    policy = make_policy(actions_fn=lambda obs, call: np.tile(np.float32(0.5), (10, 3)))
    with pytest.raises(RuntimeError, match="status display crashed"):
        run_loop(config, policy, "x", 2.0, arm=arm, on_status=_exploding_status)
    held = arm.last_command.copy()
    time.sleep(0.2)
    np.testing.assert_allclose(arm.true_state(), held, atol=1e-3)


def test_startup_check_failure_refuses_to_start(monkeypatch, tmp_path):
    import sys
    import types
    from dataclasses import dataclass

    @dataclass
    class Result:
        passed: bool
        message: str

    fake = types.ModuleType("pi0edge.calibration.drift")
    fake.check_drift = lambda image, reference: Result(False, "FAIL: the camera moved since calibration")
    monkeypatch.setitem(sys.modules, "pi0edge.calibration.drift", fake)
    config = make_config(startup_check={"camera": "front", "reference": str(tmp_path / "ref.yaml")})
    policy = make_policy()
    check = partial(robot_cli.startup_check, config)  # what `pi0edge run` passes to run_loop
    with pytest.raises(StartupCheckError, match="camera moved"):
        run_loop(config, policy, "x", 0.5, before_start=check)
    assert policy.calls == 0
    monkeypatch.setitem(sys.modules, "pi0edge.calibration.drift", None)  # import fails
    with pytest.raises(StartupCheckError, match="not available"):
        run_loop(config, policy, "x", 0.5, before_start=check)


def test_policy_that_does_not_fit_the_yaml_is_refused():
    from pi0edge.errors import ConfigError

    with pytest.raises(ConfigError, match="joints.action_index"):
        run_loop(make_config(), make_policy(robot_action_dim=2), "x", 0.5)
    with pytest.raises(ConfigError, match="cameras.front.model_camera"):
        run_loop(make_config(), make_policy(camera_names=("left_wrist_0_rgb",)), "x", 0.5)
