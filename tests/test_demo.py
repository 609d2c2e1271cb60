"""`pi0edge demo`, the README's main job: random checkpoint -> export -> ort-cpu -> closed loop on the sim arm."""

from __future__ import annotations

import logging
import sys

import pytest

from pi0edge.cli import main


def test_demo_exports_infers_profiles_and_closes_the_loop_on_the_sim_arm(tmp_path, capsys, caplog, monkeypatch):
    def no_permission(*args):
        raise PermissionError("not root")  # as for most users: SCHED_FIFO needs root or CAP_SYS_NICE

    monkeypatch.setattr("os.sched_setscheduler", no_permission, raising=False)
    caplog.set_level(logging.INFO)
    assert main(["demo", "--workdir", str(tmp_path), "--duration-s", "1"]) == 0
    out = capsys.readouterr().out
    for stage in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert stage in out
    assert "actions (50, 6)" in out and "total" in out
    assert "control loop:" in out and "deadline misses" in out
    assert (tmp_path / "bundle" / "bundle.yaml").is_file()
    # The export default runs the loop graph: one call, its time shown as the denoise time (not "0 steps").
    assert "(10 steps in one loop-graph call)" in out and " 0 steps" not in out
    # The normal path warns about nothing: no e-stop key without a terminal and unfed policy cameras are info.
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []
    assert sum("get no robot camera" in r.getMessage() for r in caplog.records) == 1


def test_demo_runs_pi0fast_through_export_inference_and_the_loop(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("os.sched_setscheduler", lambda *args: None, raising=False)
    assert main(["demo", "--model", "pi0fast", "--workdir", str(tmp_path), "--duration-s", "1"]) == 0
    out = capsys.readouterr().out
    assert "actions (50, 6)" in out and "tokens at" in out and "ms per token" in out
    # random weights write no "Action: ... |" answer: the demo says so, and the loop holds instead of moving
    assert "malformed decode" in out and "control loop:" in out
    assert (tmp_path / "bundle" / "fast_tokenizer" / "tokenizer.json").is_file()


@pytest.mark.parametrize("duration", ["-1", "0", "nan"])
def test_demo_rejects_a_duration_that_is_not_a_positive_finite_number(tmp_path, capsys, duration):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--workdir", str(tmp_path), f"--duration-s={duration}"])
    assert exit_.value.code == 2
    assert "--duration-s" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()


def test_demo_sim_aloha_without_the_sim_extra_fails_before_exporting(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gym_aloha", None)  # not installed, whatever this machine has
    assert main(["demo", "--workdir", str(tmp_path), "--sim", "aloha", "--duration-s", "1"]) == 1
    assert "pip install 'pi0edge[sim]'" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "bundle").exists()
