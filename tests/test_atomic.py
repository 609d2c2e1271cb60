"""pi0edge/atomic.py: folders appear whole or not at all, and a killed writer's leftovers do not pile up."""

from __future__ import annotations

import subprocess
import sys

from pi0edge.atomic import make_staging_dir, remove_stale_staging, swap_dir_into_place


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
