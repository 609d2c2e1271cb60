"""Episode recording and replay, and the `pi0edge run` / `pi0edge replay` commands."""

from __future__ import annotations

import io
import json
import os
import re
import sys

import numpy as np
import pytest
import yaml
from robot_io_helpers import base_config_dict, make_config, make_policy

from pi0edge.cli import main
from pi0edge.robot_io import cli as robot_cli
from pi0edge.robot_io import contract_check
from pi0edge.robot_io.arms import open_arm
from pi0edge.robot_io.errors import EpisodeError
from pi0edge.robot_io.loop import run_loop
from pi0edge.robot_io.recording import EpisodeRecorder, load_episode
from pi0edge.robot_io.replay import replay_episode


def test_record_then_replay_reproduces_the_motion(tmp_path):
    config = make_config(chunking={"strategy": "sync", "n_execute": 5})
    path = tmp_path / "ep.episode"
    policy = make_policy(actions_fn=lambda obs, call: np.linspace(0, 0.6, 10, dtype=np.float32)[:, None].repeat(3, 1)
                         * (-1) ** call)
    stats = run_loop(config, policy, "wave", 1.0, record_path=str(path))
    episode = load_episode(path)
    assert episode.ticks == stats.ticks and episode.meta["prompt"] == "wave" and episode.rate_hz == 50
    assert episode.arrays["tick_state"].shape == (stats.ticks, 3)
    assert episode.arrays["infer_actions"].shape[1:] == (10, 3) and episode.arrays["infer_accepted"].all()
    frames = episode.arrays["frames_base_0_rgb"]
    assert frames.dtype == np.uint8 and frames.shape == (stats.inferences, 32, 32, 3)
    assert episode.truncated is None and episode.meta["ticks"] == stats.ticks

    arm = open_arm(config.arm)
    result = replay_episode(episode, config, arm=arm)
    assert result.ticks == episode.ticks and result.clamped_ticks == 0 and result.clipped_ticks == 0
    np.testing.assert_allclose(arm.last_command, episode.commands[-1])
    assert result.max_tracking_error < 0.1, result.summary()


def test_bad_episode_files_are_named(tmp_path):
    with pytest.raises(EpisodeError, match="does not exist"):
        load_episode(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EpisodeError, match="junk.npz"):
        load_episode(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(EpisodeError, match="not a pi0edge episode"):
        load_episode(tmp_path / "other.npz")


def tick_times(seconds: float, rate_hz: float = 50.0) -> np.ndarray:
    return np.arange(int(seconds * rate_hz)) / rate_hz


def record_ticks(recorder: EpisodeRecorder, times_s) -> None:
    for i, t in enumerate(times_s):
        state = np.full(3, 0.001 * i)
        recorder.add_tick(float(t), state, state, state, "run", 0.0)


def test_the_episode_is_written_as_the_run_goes_so_a_crash_loses_at_most_the_last_second(tmp_path):
    path = tmp_path / "crash.episode"
    recorder = EpisodeRecorder(path, {"rate_hz": 50, "prompt": "p"}, flush_every_s=1.0)
    times_s = tick_times(2.5)
    record_ticks(recorder, times_s)
    recorder._queue.join()  # the writer thread has written what was handed over; then the process "dies"
    episode = load_episode(path)
    lost_s = (len(times_s) - episode.ticks) / 50
    assert 0 < lost_s <= 1.0 and episode.ticks >= 2 * 50
    np.testing.assert_array_equal(episode.arrays["tick_time_s"], times_s[:episode.ticks])
    assert episode.truncated and str(path) in episode.truncated and f"{episode.ticks} ticks" in episode.truncated


def test_a_truncated_episode_names_the_file_and_its_intact_part_replays(tmp_path):
    path = tmp_path / "cut.episode"
    recorder = EpisodeRecorder(path, {"rate_hz": 50, "prompt": "p"})
    record_ticks(recorder, tick_times(0.6))
    recorder.sync()
    intact_bytes = path.stat().st_size
    record_ticks(recorder, tick_times(0.6) + 0.6)
    recorder.sync()
    with open(path, "r+b") as f:  # a record cut in the middle, as by a power loss during the write
        f.truncate(intact_bytes + (path.stat().st_size - intact_bytes) // 2)
    episode = load_episode(path)
    assert episode.ticks == 30 and "is truncated" in episode.truncated and "cut short" in episode.truncated
    assert "TRUNCATED" in episode.summary()

    config = make_config()
    result = replay_episode(episode, config, arm=open_arm(config.arm))
    assert result.ticks == 30 and result.truncated and "truncated" in result.summary()


def test_the_record_path_is_checked_before_the_run_starts(tmp_path):
    policy = make_policy()
    (tmp_path / "a_folder.episode").mkdir()
    with pytest.raises(EpisodeError, match="a_folder.episode: cannot write the episode here"):
        run_loop(make_config(), policy, "x", 0.5, record_path=str(tmp_path / "a_folder.episode"))
    assert policy.calls == 0  # refused before the loop ran


def test_a_loop_that_refuses_to_start_still_closes_its_episode_file(tmp_path):
    from pi0edge.errors import ConfigError

    path = tmp_path / "ep.episode"
    config = make_config()
    policy = make_policy(robot_action_dim=1)  # narrower than the configured joints: ControlLoop refuses to start
    with pytest.raises(ConfigError):
        run_loop(config, policy, "x", 0.5, record_path=str(path))
    episode = load_episode(path)  # closed with its end record: a complete, empty episode
    assert episode.ticks == 0 and episode.truncated is None


def test_a_version_1_npz_episode_still_loads(tmp_path):
    path = tmp_path / "old.npz"
    meta = {"format": "pi0edge-episode", "version": 1, "rate_hz": 50, "prompt": "old"}
    np.savez(path, meta=np.array(json.dumps(meta)), tick_command=np.zeros((4, 3)), tick_status=np.array(["run"] * 4),
             tick_late_ms=np.zeros(4), infer_latency_ms=np.zeros(0), infer_accepted=np.zeros(0, bool))
    episode = load_episode(path)
    assert episode.ticks == 4 and episode.truncated is None and episode.meta["prompt"] == "old"


def test_cli_run_records_and_replay_prints(tmp_path, monkeypatch, capsys):
    config_path = tmp_path / "robot.yaml"
    config_path.write_text(yaml.safe_dump(base_config_dict()))
    monkeypatch.setattr(robot_cli, "_load_policy", lambda bundle, backend: make_policy(goal=[0.2, 0.2, 0.2]))
    # No bundle behind this policy, so nothing for the deployment check to compare (test_contract_check.py)
    monkeypatch.setattr(contract_check, "check_binding", lambda config, bundle: (contract_check.CheckReport(), None))
    episode = tmp_path / "ep.episode"
    code = main(["run", "--config", str(config_path), "--bundle", "unused", "--prompt", "pick",
                 "--duration-s", "0.6", "--record", str(episode)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "control loop:" in out.out and "period error ms" in out.out and "Hz" in out.err  # summary + status
    assert episode.is_file()

    assert main(["replay", str(episode)]) == 0
    printed = capsys.readouterr().out
    assert "prompt 'pick'" in printed and "ticks by status" in printed

    assert main(["replay", str(episode), "--config", str(config_path), "--speed", "2"]) == 0
    assert "replay:" in capsys.readouterr().out


def test_replay_summary_cuts_a_long_prompt_to_80_characters(tmp_path, capsys):
    path, prompt = tmp_path / "ep.episode", "fold the towel in half, then " * 20
    run_loop(make_config(), make_policy(), prompt, 0.3, record_path=str(path))
    assert main(["replay", str(path)]) == 0
    printed = capsys.readouterr().out
    assert f"prompt {prompt[:80]!r}... ({len(prompt)} chars)," in printed and prompt[:81] not in printed


def test_cli_reports_user_errors_without_traceback(tmp_path, capsys):
    bad = tmp_path / "robot.yaml"
    data = base_config_dict()
    data["rate_hz"] = 0
    bad.write_text(yaml.safe_dump(data))
    assert main(["run", "--config", str(bad), "--bundle", "b", "--prompt", "p"]) == 1
    assert "rate_hz" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing.npz")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_module_is_light_to_import():
    import subprocess
    import sys

    code = ("import sys, pi0edge.robot_io.cli; "
            "heavy = [m for m in ('torch', 'cv2', 'pyrealsense2', 'zmq', 'gym_aloha', 'mujoco', 'onnxruntime') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "[]"


def test_robot_io_never_imports_torch():
    import pathlib

    for path in pathlib.Path(robot_cli.__file__).parent.glob("*.py"):
        assert "import torch" not in path.read_text(), path


def test_cli_run_loads_only_the_manifest_here_and_runs_the_bundle_in_its_own_process(tmp_path, tiny_bundle_factory,
                                                                                      capsys):
    from pi0edge.robot_io.policy_spec import PolicyHandle, PolicySpec

    bundle, _ = tiny_bundle_factory("pi0")
    policy = robot_cli._load_policy(str(bundle), "ort-cpu")
    assert isinstance(policy, PolicyHandle) and policy.spec == PolicySpec(str(bundle), "ort-cpu")
    assert policy._policy is None  # no model in the loop's process

    data = base_config_dict()
    data["joints"] = {"names": [f"j{i}" for i in range(6)]}  # the tiny bundle's 6 robot dims
    data["binding"] = {"masked_cameras": ["left_wrist_0_rgb", "right_wrist_0_rgb"]}  # one camera: front
    data["arm"]["dof"] = 6
    data["safety"] = {"stale_frame_s": 0.2, "inference_timeout_s": 30.0}
    config_path = tmp_path / "robot.yaml"
    config_path.write_text(yaml.safe_dump(data))
    code = main(["run", "--config", str(config_path), "--bundle", str(bundle), "--prompt", "pick",
                 "--duration-s", "2", "--no-status"])
    out = capsys.readouterr()
    assert code == 0, out.err
    # The tiny bundle's chunk is shorter than its latency here, so the arm may only wait: count chunks, not motion.
    chunks = int(re.search(r"inference: (\d+) chunks", out.out).group(1))
    assert chunks > 0 and "policy_error" not in out.out, out.out


def test_cli_run_with_an_aloha_config_without_the_sim_extra_fails_before_loading_the_bundle(capsys, monkeypatch):
    from pi0edge.robot_io.config import example_config_path

    monkeypatch.setitem(sys.modules, "gym_aloha", None)  # not installed, whatever this machine has
    monkeypatch.setattr(robot_cli, "_load_policy", lambda bundle, backend: pytest.fail("the bundle was loaded"))
    code = main(["run", "--config", str(example_config_path("aloha.yaml")), "--bundle", "b", "--prompt", "p"])
    assert code == 1
    assert "pip install 'pi0edge[sim]'" in capsys.readouterr().err


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class _Stats:
    calls = 0

    def status_line(self) -> str:
        self.calls += 1
        return f"status {self.calls}"


def test_status_without_a_terminal_is_one_line_per_10_s_and_on_a_terminal_redraws_each_time():
    times = iter([0.0, 0.5, 1.0, 9.9, 10.0, 10.5, 20.4, 20.6])
    log = _Stream(tty=False)
    show, interactive = robot_cli._status_printer(log, clock=lambda: next(times))
    stats = _Stats()
    for _ in range(8):
        show(stats)
    assert not interactive and log.getvalue() == "status 1\nstatus 2\nstatus 3\n"

    terminal = _Stream(tty=True)
    show, interactive = robot_cli._status_printer(terminal, clock=lambda: 0.0)
    for _ in range(3):
        show(_Stats())
    assert interactive and terminal.getvalue().count("\r\033[K") == 3 and "\n" not in terminal.getvalue()
