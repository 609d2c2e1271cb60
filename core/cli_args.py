"""argparse types for the CLIs: a bad value is refused while the command line is parsed, with argparse's
usage error (exit code 2) naming the flag and the value, before anything loads or runs.

`float("nan")` and `float("inf")` parse as floats, so a plain `type=float` lets `--duration-s nan` through
(a loop that never stops); these types refuse them."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (durations, speeds)."""
    value = _number(text, float, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (iterations, steps, threads)."""
    value = _number(text, int, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (warm-up iterations: 0 means none)."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a resource share: 0 means none)."""
    value = _number(text, float, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def non_empty_text(text: str) -> str:
    """Text with at least one non-space character (a prompt)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must not be empty or only whitespace, got {text!r}")
    return text


def writable_file(text: str) -> str:
    """A file path the command can create or replace: its folder exists and is writable, and the path is
    not a folder. Checked at parse time so a long run does not fail at its very end."""
    path = Path(text).expanduser()
    folder = path.parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file path")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"folder {str(folder)!r} of {text!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text!r} is not writable (permission denied)")
    return text
