"""The loop under driver faults: every exception from a driver is a fault event and a hold, never an abort;
after a fault the arm resumes from where it is measured; termination signals end the run like Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from robot_io_helpers import DriverArm, after, make_config, make_policy, raising

from pi0edge.robot_io.arms import SimArm, open_arm
from pi0edge.robot_io.errors import ArmError, ArmTimeoutError
from pi0edge.robot_io.loop import open_cameras, run_loop
from pi0edge.robot_io.recording import load_episode

STEP_ATOL = 1e-9
MAX_STEP = 2.0 / 50  # make_config(): safety.max_velocity_per_s 2.0 at rate_hz 50
CHILD_TIMEOUT_S = 120  # the child imports numpy and the loop on a shared machine


def _driver_arm(config, initial=None) -> DriverArm:
    sim = open_arm(config.arm)
    if initial is not None:
        sim = SimArm(dof=sim.dof, time_constant_s=sim.time_constant_s, initial=initial, limits=sim.limits)
    return DriverArm(sim)


def _run(config, policy, duration_s, arm, tmp_path=None, wrap_camera=None, **kwargs):
    cameras = open_cameras(config, arm)
    opened = dict(cameras)
    if wrap_camera is not None:
        cameras = {"front": wrap_camera(cameras["front"])}
    record = str(tmp_path / "episode.npz") if tmp_path is not None else None
    try:
        stats = run_loop(config, policy, "pick up the cube", duration_s, arm=arm, cameras=cameras,
                         record_path=record, **kwargs)
    finally:
        for camera in opened.values():
            camera.close()
    return stats, (load_episode(record) if record else None)


def _kinds(stats) -> list[str]:
    return [e.kind for e in stats.events]


# --- A1: the measured position -------------------------------------------------------------------------------


def test_after_an_arm_fault_the_next_command_starts_from_the_measured_position():
    config = make_config()
    arm = _driver_arm(config)

    def kill_then_restart_elsewhere():
        arm.read_hook = arm.command_hook = raising(ArmTimeoutError("net arm: no reply (driver killed)"))
        time.sleep(0.4)
        arm.restart(initial=[-0.5, -0.5, -0.5])  # the driver comes back; the arm is 1 rad from the last command

    after(0.6, kill_then_restart_elsewhere)
    stats, _ = _run(config, make_policy(goal=[0.5, 0.5, 0.5]), 1.6, arm)
    assert _kinds(stats) == ["arm_error", "recovered"], stats.summary()
    resumed = arm.commands[arm.restarted_at_command:]
    first_command, measured = resumed[0]
    assert np.abs(first_command - measured).max() <= MAX_STEP + STEP_ATOL  # it holds where the arm is
    commands = np.stack([command for command, _ in resumed])
    assert np.abs(np.diff(commands, axis=0)).max() <= MAX_STEP + STEP_ATOL  # then ramps within the limit
    assert np.all(commands[-1] > -0.5 + MAX_STEP), "motion resumed toward the goal"


def test_each_run_starts_from_the_measured_position_also_after_an_estop(tmp_path):
    stop_file = tmp_path / "estop"
    config = make_config(estop={"file": str(stop_file)})
    policy = make_policy(goal=[-0.5, -0.5, -0.5])
    arm = _driver_arm(config, initial=[0.9, -0.9, 0.0])
    after(0.3, stop_file.touch)
    stats, _ = _run(config, policy, 0.6, arm)
    assert _kinds(stats) == ["estop"]
    stop_file.unlink()  # the e-stop is released; meanwhile the arm was moved by hand
    arm.restart(initial=[0.2, 0.7, -0.3])
    _run(config, policy, 0.4, arm)
    for start in (0, arm.restarted_at_command):
        first_command, measured = arm.commands[start]
        np.testing.assert_allclose(first_command, measured, atol=STEP_ATOL)


# --- A3 / A4: driver exceptions ------------------------------------------------------------------------------


@pytest.mark.parametrize(("bad_state", "words"), [
    ([0.1, 0.2], "2 values"),
    ("not a state", "not a vector of numbers"),
    ([1e9, 0.0, 0.0], "far outside"),
])
def test_a_bad_state_from_the_driver_is_an_arm_fault_and_the_arm_holds(bad_state, words):
    config = make_config()
    arm = _driver_arm(config)
    after(0.3, lambda: setattr(arm, "read_hook", lambda: bad_state))
    after(0.7, lambda: setattr(arm, "read_hook", None))
    stats, _ = _run(config, make_policy(goal=[0.3, 0.3, 0.3]), 1.2, arm)
    assert stats.stop_reason == "duration reached", stats.summary()
    assert _kinds(stats) == ["arm_error", "recovered"], stats.summary()
    assert words in stats.events[0].reason
    assert stats.hold_ticks > 0


def test_a_runtime_error_from_command_is_an_arm_fault_not_an_abort():
    config = make_config()
    arm = _driver_arm(config)
    after(0.3, lambda: setattr(arm, "command_hook", raising(RuntimeError("driver bug"))))
    after(0.6, lambda: setattr(arm, "command_hook", None))
    stats, _ = _run(config, make_policy(goal=[0.3, 0.3, 0.3]), 1.0, arm)
    assert stats.stop_reason == "duration reached", stats.summary()
    assert _kinds(stats) == ["arm_error", "recovered"], stats.summary()
    assert "RuntimeError: driver bug" in stats.events[0].reason


def test_a_command_that_fails_every_tick_is_one_fault_held_ticks_and_one_recovery(tmp_path):
    config = make_config()
    arm = _driver_arm(config)
    after(0.3, lambda: setattr(arm, "command_hook", raising(ArmError("bus write failed"))))
    after(0.9, lambda: setattr(arm, "command_hook", None))
    stats, episode = _run(config, make_policy(goal=[0.3, 0.3, 0.3]), 1.3, arm, tmp_path)
    assert _kinds(stats) == ["arm_error", "recovered"], stats.summary()
    status = episode.arrays["tick_status"]
    failing = np.nonzero(status == "hold:arm_error")[0]
    assert failing.size >= 0.3 * config.rate_hz  # most of the 0.6 s of failures, counted as held
    assert stats.hold_ticks >= failing.size
    received_run_commands = len(arm.commands) - 1  # all but the final hold
    assert stats.executed_ticks <= received_run_commands


def test_a_camera_that_raises_any_error_is_a_stale_frame_and_the_run_goes_on():
    config = make_config()
    arm = _driver_arm(config)
    broken = threading.Event()
    after(0.3, broken.set)
    after(0.6, broken.clear)

    class FlakyCamera:
        def __init__(self, camera):
            self.camera = camera

        def read(self):
            if broken.is_set():
                raise OSError(5, "Input/output error")
            return self.camera.read()

    stats, _ = _run(config, make_policy(goal=[0.3, 0.3, 0.3]), 1.0, arm, wrap_camera=FlakyCamera)
    assert stats.stop_reason == "duration reached", stats.summary()
    assert _kinds(stats) == ["stale_frame", "recovered"], stats.summary()
    assert "OSError" in stats.events[0].reason


def test_a_camera_read_that_blocks_is_bounded_and_the_arm_holds(tmp_path):
    config = make_config(safety={"stale_frame_s": 0.15})
    arm = _driver_arm(config)
    blocked, released = threading.Event(), threading.Event()
    after(0.3, blocked.set)
    after(1.0, released.set)

    class HangingCamera:
        def __init__(self, camera):
            self.camera = camera

        def read(self):
            if blocked.is_set() and not released.is_set():
                released.wait()  # a driver stuck in a USB read
            return self.camera.read()

    stats, episode = _run(config, make_policy(goal=[0.3, 0.3, 0.3]), 1.5, arm, tmp_path, wrap_camera=HangingCamera)
    assert "stale_frame" in _kinds(stats), stats.summary()
    assert "blocked" in next(e.reason for e in stats.events if e.kind == "stale_frame")
    held = (episode.arrays["tick_status"] == "hold:stale_frame").sum()
    assert held >= 0.25 * config.rate_hz  # the loop kept ticking (holding) through the 0.7 s block


def test_cleanup_runs_even_when_the_final_hold_raises():
    config = make_config(estop={"signal": True})
    arm = _driver_arm(config)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP)}
    switch_interval_s = sys.getswitchinterval()
    after(0.3, lambda: setattr(arm, "command_hook", raising(RuntimeError("driver gone"))))  # to the end
    stats, _ = _run(config, make_policy(goal=[0.3, 0.3, 0.3]), 0.7, arm)
    assert any(e.kind == "arm_error" and "final hold" in e.reason for e in stats.events), stats.summary()
    assert sys.getswitchinterval() == switch_interval_s
    assert {sig: signal.getsignal(sig) for sig in previous} == previous
    assert not [t for t in threading.enumerate() if t.name == "inference" and t.is_alive()]


# --- A5: chunk shape -----------------------------------------------------------------------------------------


def test_a_chunk_shorter_than_the_horizon_is_a_bad_chunk():
    config = make_config()
    policy = make_policy(action_horizon=50, actions_fn=lambda obs, call: np.zeros((10, 3), np.float32))
    stats, _ = _run(config, policy, 0.5, _driver_arm(config))
    assert _kinds(stats)[:1] == ["bad_chunk"] and "[50, 3]" in stats.events[0].reason, stats.summary()
    assert stats.rejected_chunks >= 1 and stats.executed_ticks == 0


# --- A2: termination signals ---------------------------------------------------------------------------------

CHILD = """
import json, sys
sys.path.insert(0, {helpers!r})
from robot_io_helpers import make_config, make_policy
from pi0edge.robot_io.arms import open_arm
from pi0edge.robot_io.loop import run_loop
from pi0edge.robot_io.recording import load_episode

config = make_config()
arm = open_arm(config.arm)
stats = run_loop(config, make_policy(goal=[0.5, 0.5, 0.5]), "x", 60.0, arm=arm, record_path={record!r},
                 on_status=lambda stats: print("status", flush=True))
print(stats.summary(), flush=True)
print(json.dumps({{"stop_reason": stats.stop_reason, "last_command": arm.last_command.tolist(),
                  "last_recorded_command": load_episode({record!r}).commands[-1].tolist()}}))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_termination_signal_ends_the_run_with_the_final_hold_summary_and_episode(tmp_path, sig):
    record = tmp_path / "episode.npz"
    code = CHILD.format(helpers=str(Path(__file__).parent), record=str(record))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "status", child.stderr.read()  # the loop is running
        child.send_signal(sig)
        out, err = child.communicate(timeout=CHILD_TIMEOUT_S)
    finally:
        child.kill()
    assert child.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["stop_reason"] == f"interrupted ({sig.name})"
    assert f"stopped: interrupted ({sig.name})" in out  # the summary was printed
    assert record.is_file()
    np.testing.assert_allclose(result["last_command"], result["last_recorded_command"])  # the final hold
