"""Calibration output files: all written or none, and readable by another user (a ROS node) as a plain
open() would make them (0666 & ~umask), not mkstemp's owner-only 0600."""

from __future__ import annotations

import os
import stat

from pi0edge.calibration.outputs import write_files_atomically

GROUP_AND_OTHERS_READ_UMASK = 0o022


def test_outputs_get_the_mode_open_would_give_under_the_umask(tmp_path):
    previous = os.umask(GROUP_AND_OTHERS_READ_UMASK)
    try:
        written = write_files_atomically({tmp_path / "cam.camera_info.yaml": "a: 1\n", tmp_path / "cam.png": b"\x89"})
    finally:
        os.umask(previous)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~GROUP_AND_OTHERS_READ_UMASK, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.camera_info.yaml", "cam.png"]  # no temp files left
