"""Atomic writes: readers see the old file/folder or the new one, never half of either.

Files: a temp file in the same folder, fsync, rename. Folders (bundles, engine sets): built in a hidden
staging folder, then renamed into place; an old folder is moved aside first and removed last.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def default_mode(directory: bool = False) -> int:
    """What open()/mkdir() would give under the current umask (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def stage_bytes(path: Path, data: bytes, mode: int | None = None) -> Path:
    """data in a hidden temp file beside path, fsynced, with `mode` (default: open()'s); -> the temp file, for the
    caller to os.replace onto path (writers of several files stage them all first, then rename). The mode is
    set before the data is written, so a secret (mode 0o600) is never readable by others, even half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_bytes_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    tmp = stage_bytes(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    write_bytes_atomic(path, text.encode(), mode)


def make_staging_dir(out_dir: Path) -> Path:
    """A hidden sibling folder to build out_dir in (same filesystem, so the final rename is atomic).

    Its name carries the writer's pid: the leftovers of a writer that was killed (SIGKILL, the OOM killer,
    a power cut: no cleanup ran) are removed here, since a full-size bundle's leftovers are ~13 GB. A folder
    whose writer is still alive (another export to the same place) is left alone."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-{os.getpid()}-"))
    os.chmod(staging, default_mode(directory=True))
    return staging


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove out_dir's staging and moved-aside folders whose writing process is gone; -> what was removed."""
    removed = []
    for kind in ("partial", "old"):
        for path in out_dir.parent.glob(f".{out_dir.name}.{kind}-*"):
            pid = path.name[len(f".{out_dir.name}.{kind}-"):].split("-")[0]
            if pid.isdigit() and not _process_alive(int(pid)) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if removed:
        log.warning("removed the leftovers of an interrupted write: %s", ", ".join(str(p) for p in removed))
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def swap_dir_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; an old one is moved aside first and removed last."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """Build a folder atomically: `with staged_dir(out) as staging:` write into `staging`. A normal exit renames
    it into place (an old out_dir is moved aside first and removed last); any exception, Ctrl-C included,
    removes it and leaves out_dir as it was. Every writer of a folder (bundle, quantized bundle, engines) uses
    this one rule."""
    out_dir = Path(out_dir)
    staging = make_staging_dir(out_dir)
    try:
        yield staging
        swap_dir_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
