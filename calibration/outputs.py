"""Writing a set of output files so that a failure leaves the old files as they were.

Every output is rendered to bytes before anything touches the disk; then each goes to a temp file in
its own directory (same filesystem, so os.replace is atomic) and only when all temp files are written
are they moved into place. A crash can at worst leave some outputs new and some old, never a half file.
The temp files come from pi0edge.atomic, so outputs get the permissions a plain open() would give."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pi0edge.atomic import stage_bytes
from pi0edge.calibration.errors import CalibrationError


def write_files_atomically(files: Mapping[Path | str, bytes | str]) -> list[Path]:
    staged: list[tuple[Path, Path]] = []
    try:
        for path, content in files.items():
            path = Path(path)
            data = content.encode() if isinstance(content, str) else bytes(content)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                staged.append((stage_bytes(path, data), path))
            except OSError as exc:
                raise CalibrationError(f"cannot write {path}: {exc.strerror or exc}") from None
        for tmp, path in staged:
            os.replace(tmp, path)
        staged = []
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return [Path(p) for p in files]
