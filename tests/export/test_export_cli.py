"""`pi0edge export`: checkpoint directory -> bundle, atomically; failures leave no half bundle behind."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pi0edge.cli import main
from pi0edge.export.config import tiny
from pi0edge.export.random_checkpoint import write_random_checkpoint
from pi0edge.manifest import load_manifest
from pi0edge.runtime import Observation, Policy


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "pi0"
    write_random_checkpoint(out, tiny("pi0"), robot_state_dim=6, robot_action_dim=6)
    return out


def _observation(policy: Policy) -> Observation:
    return Observation({"base_0_rgb": np.zeros((48, 64, 3), np.uint8)}, policy.manifest.norm_stats.state.a.copy(),
                       "pick up the cube")


@pytest.mark.parametrize("flags,optimized", [([], True), (["--no-optimize"], False),
                                             (["--disable", "fold_dt", "--disable", "precompute_time"], True)])
def test_export_command_writes_a_bundle_the_runtime_runs(checkpoint, tmp_path, capsys, flags, optimized):
    out = tmp_path / "bundle"
    assert main(["export", str(checkpoint), "-o", str(out), *flags]) == 0
    assert "wrote" in capsys.readouterr().out
    manifest = load_manifest(out)
    assert manifest.raw["source"]["layout"] == "lerobot"
    assert any(manifest.raw["optimizations"].get(k) for k in ("fold_norms", "fuse_qkv")) == optimized
    with Policy(out) as policy:
        chunk = policy.infer(_observation(policy))
    assert chunk.actions.shape == (10, 6) and np.isfinite(chunk.actions).all()


def test_export_refuses_to_overwrite_a_bundle_without_the_flag(checkpoint, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["export", str(checkpoint), "-o", str(out), "--no-optimize"]) == 0
    before = (out / "bundle.yaml").read_bytes()
    assert main(["export", str(checkpoint), "-o", str(out)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "bundle.yaml").read_bytes() == before


def test_failed_export_leaves_the_old_bundle_intact_and_no_partial_folder(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    assert main(["export", str(checkpoint), "-o", str(out), "--no-optimize"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash in the middle of the export")

    monkeypatch.setattr("pi0edge.export.bundle.export_graphs", broken)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["export", str(checkpoint), "-o", str(out), "--overwrite"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no .bundle.partial-* left


def test_export_without_a_tokenizer_says_how_to_pass_one(checkpoint, tmp_path, capsys):
    bare = shutil.copytree(checkpoint, tmp_path / "ckpt")
    (bare / "tokenizer.model").unlink()
    assert main(["export", str(bare), "-o", str(tmp_path / "bundle")]) == 1
    assert "--tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()


def test_unknown_optimization_name_is_refused_with_the_choices(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "b"), "--disable", "fold_everything"]) == 1
    assert "fold_norms" in capsys.readouterr().err


def test_optimized_bundle_refuses_a_step_count_it_was_not_exported_for_naming_cli_flags(checkpoint, tmp_path, capsys):
    from pi0edge.errors import ObservationError

    out = tmp_path / "bundle"
    assert main(["export", str(checkpoint), "-o", str(out), "--num-steps", "5"]) == 0
    assert load_manifest(out).graphs["denoise_loop"].num_steps == 5
    with Policy(out, whole_loop=False) as policy:
        assert len(policy.infer(_observation(policy)).timings_ms["step_ms"]) == 5
        with pytest.raises(ObservationError, match="exported for 5 steps.*--num-steps 10") as err:
            policy.infer(_observation(policy), num_steps=10)
        assert "num_steps=" not in str(err.value)  # the hint names CLI flags, not Python parameters
    assert main(["profile", str(out), "--num-steps", "10", "--iters", "1", "--warmup", "0"]) == 1
    err = capsys.readouterr().err
    assert "--num-steps" in err and "num_steps=" not in err and "whole_loop=" not in err


def test_bundle_for_a_robot_wider_than_the_model_is_refused_before_export(tmp_path):
    from pi0edge.errors import CheckpointError
    from pi0edge.export.bundle import write_bundle
    from pi0edge.export.model import Pi0Model
    from pi0edge.normalization import NormStats

    cfg = tiny("pi0")
    wide = cfg.state_dim + 1
    stats = {"mean": np.zeros(wide), "std": np.ones(wide)}
    tokenizer = tmp_path / "tokenizer.model"
    tokenizer.write_bytes(b"checked after the dims")
    norm_stats = NormStats.from_arrays("mean_std", "openpi", stats, stats)
    with pytest.raises(CheckpointError, match=f"state {wide} / action {wide} dims but the model only"):
        write_bundle(Pi0Model(cfg), tmp_path / "b", norm_stats=norm_stats, tokenizer_path=tokenizer,
                     robot_state_dim=wide, robot_action_dim=wide)
    assert not (tmp_path / "b").exists()


def test_several_openpi_statistics_are_refused_naming_the_asset_id_flag(tmp_path):
    from pi0edge.errors import CheckpointError
    from pi0edge.export.checkpoint.stats import openpi_stats

    for asset in ("aloha", "droid"):
        (tmp_path / "assets" / asset).mkdir(parents=True)
        (tmp_path / "assets" / asset / "norm_stats.json").write_text("{}")
    with pytest.raises(CheckpointError, match="choose one with --asset-id") as err:
        openpi_stats(tmp_path, "pi0", None)
    assert "asset_id=" not in str(err.value)


def test_export_help_offers_the_asset_id_flag(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--asset-id" in capsys.readouterr().out


def test_export_help_lists_every_file_the_export_writes(checkpoint, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["export", str(checkpoint), "-o", str(out)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = capsys.readouterr().out
    for path in out.iterdir():
        assert (path.name if not path.name.endswith(".onnx.data") else "*.onnx.data") in help_text, path.name
    for name in ("prefix.onnx", "denoise_step.onnx", "denoise_loop.onnx", "tokenizer.model", "bundle.yaml"):
        assert name in help_text


def test_export_asset_id_picks_one_of_several_openpi_statistics(tmp_path, capsys):
    ckpt = tmp_path / "openpi"
    write_random_checkpoint(ckpt, tiny("pi0"), layout="openpi", robot_state_dim=6, robot_action_dim=6)
    shutil.copytree(ckpt / "assets" / "robot", ckpt / "assets" / "other")
    assert main(["export", str(ckpt), "-o", str(tmp_path / "a")]) == 1
    assert "--asset-id" in capsys.readouterr().err
    assert main(["export", str(ckpt), "-o", str(tmp_path / "b"), "--asset-id", "other"]) == 0
