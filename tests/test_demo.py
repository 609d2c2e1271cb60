"""`pi0edge demo`, the README's main job: random checkpoint -> export -> ort-cpu -> closed loop on the sim arm."""

from __future__ import annotations

from pi0edge.cli import main


def test_demo_exports_infers_profiles_and_closes_the_loop_on_the_sim_arm(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--duration-s", "1"]) == 0
    out = capsys.readouterr().out
    for stage in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert stage in out
    assert "actions (50, 6)" in out and "total" in out
    assert "control loop:" in out and "deadline misses" in out
    assert (tmp_path / "bundle" / "bundle.yaml").is_file()


def test_demo_rejects_a_negative_duration(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--duration-s", "-1"]) == 1
    assert "--duration-s" in capsys.readouterr().err
