"""core/atomic.py `staged_dir`: the one rule every folder writer (bundle, quantized bundle, bf16 emulation,
engines) follows: the folder appears whole on success, and a failure leaves the old one and no leftovers."""

from __future__ import annotations

import pytest

from pi0edge.atomic import staged_dir


def _tree(folder) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_staged_dir_replaces_the_old_folder_whole_and_leaves_no_hidden_folders(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_dir(out) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".bundle.partial-")
        (staging / "new.txt").write_text("new")
        assert _tree(out) == {"old.txt": "old"}  # readers still see the old folder while it is built
    assert _tree(out) == {"new.txt": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_staged_dir_failure_keeps_the_old_folder_and_removes_the_staging(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_dir(out) as staging:
        (staging / "half.onnx").write_text("half")
        raise KeyboardInterrupt  # Ctrl-C mid-write
    assert _tree(out) == {"old.txt": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_staged_dir_failure_on_a_new_folder_leaves_nothing(tmp_path):
    out = tmp_path / "sub" / "engines"
    with pytest.raises(RuntimeError), staged_dir(out) as staging:
        (staging / "prefix.plan").write_bytes(b"x")
        raise RuntimeError("build failed")
    assert list((tmp_path / "sub").iterdir()) == []
