"""core/atomic.py: folders appear whole or not at all, a killed writer's leftovers do not pile up, and files get
the permissions a plain open() would give."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from pi0edge.atomic import make_staging_dir, remove_stale_staging, stage_bytes, swap_dir_into_place, write_text_atomic


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_staging_of_a_killed_writer_is_removed_and_a_live_writers_is_kept(tmp_path):
    out = tmp_path / "bundle"
    killed = tmp_path / f".bundle.partial-{dead_pid()}-abc123"
    (killed / "prefix.onnx.data").parent.mkdir()
    (killed / "prefix.onnx.data").write_bytes(b"13 GB in real life")
    moved_aside = tmp_path / f".bundle.old-{dead_pid()}"
    moved_aside.mkdir()
    live = make_staging_dir(out)  # this process: alive
    other = tmp_path / ".other.partial-1-x"  # another bundle's folder: not ours to touch
    other.mkdir()
    assert not killed.exists() and not moved_aside.exists()
    assert live.is_dir() and other.is_dir()
    assert remove_stale_staging(out) == []  # the live one stays
    (live / "bundle.yaml").write_text("format_version: 1\n")
    swap_dir_into_place(live, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-1-x", "bundle"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_files_get_the_mode_open_would_give_not_mkstemps_0600(tmp_path, umask):
    """A reader under another user (a ROS node) must be able to read what we write: 0666 & ~umask."""
    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "written.yaml", "a: 1\n")
        staged = stage_bytes(tmp_path / "staged.yaml", b"a: 1\n")
        (tmp_path / "plain.yaml").write_text("a: 1\n")
    finally:
        os.umask(previous)
    expected = stat.S_IMODE((tmp_path / "plain.yaml").stat().st_mode)
    assert expected == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "written.yaml").stat().st_mode) == expected
    assert stat.S_IMODE(staged.stat().st_mode) == expected
    assert staged.parent == tmp_path and staged.name.startswith(".staged.yaml.") and staged.read_bytes() == b"a: 1\n"
