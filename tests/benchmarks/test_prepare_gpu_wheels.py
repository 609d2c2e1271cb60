"""benchmarks/prepare_gpu_wheels.py: the onnxruntime-gpu wheel travels in parts and arrives byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import prepare_gpu_wheels as wheels  # noqa: E402


def staged_wheel(tmp_path: Path, data: bytes, part_bytes: int) -> tuple[Path, dict]:
    """A fake wheel split as `prepare` splits, its parts and manifest staged as `stage` stages them."""
    source, carried, staged = tmp_path / "src", tmp_path / "carried", tmp_path / "staged"
    source.mkdir(), carried.mkdir()
    wheel = source / "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(data)
    manifest = {"part_bytes": part_bytes, "files": [wheels.split_file(wheel, carried, part_bytes)]}
    (carried / wheels.MANIFEST).write_text(json.dumps(manifest))
    wheels.stage(carried, staged)
    return staged, manifest


def test_parts_are_at_most_the_part_size_and_join_back_to_the_same_sha256(tmp_path):
    data = bytes(range(256)) * 41 + b"tail"
    staged, manifest = staged_wheel(tmp_path, data, part_bytes=1000)
    entry = manifest["files"][0]
    assert [p["bytes"] for p in entry["parts"]] == [1000] * 10 + [500]
    joined = wheels.join_file(entry, staged, tmp_path)
    assert joined.read_bytes() == data and entry["sha256"] == wheels.sha256(joined)


def test_default_parts_leave_room_for_the_working_tree_in_a_64_mib_call():
    assert wheels.PART_BYTES <= 60 * 2**20


def test_a_corrupt_part_is_refused_naming_the_file(tmp_path):
    staged, manifest = staged_wheel(tmp_path, b"x" * 2500, part_bytes=1000)
    part = staged / manifest["files"][0]["parts"][1]["name"]
    part.write_bytes(b"y" * 1000)
    with pytest.raises(wheels.WheelPartsError, match=f"{part.name}: sha256 differs"):
        wheels.join_file(manifest["files"][0], staged, tmp_path)


def test_a_missing_part_stops_install_before_onnxruntime_is_touched(tmp_path, monkeypatch):
    staged, manifest = staged_wheel(tmp_path, b"x" * 2500, part_bytes=1000)
    (staged / manifest["files"][0]["parts"][2]["name"]).unlink()
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    assert wheels.main(["install", "--stage-dir", str(staged)]) == 3
    assert calls == []  # the CPU onnxruntime is still there for the fallback


def test_install_swaps_the_cpu_onnxruntime_for_the_gpu_wheel_offline(tmp_path, monkeypatch):
    staged, _ = staged_wheel(tmp_path, b"x" * 2500, part_bytes=1000)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd[3:]))
    assert wheels.main(["install", "--stage-dir", str(staged)]) == 0
    wheel = staged / "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
    assert calls == [["uninstall", "-y", "-q", "onnxruntime"],  # first: never two onnxruntimes
                     ["install", "-q", "--no-index", "--no-deps", "--no-compile", str(wheel)]]
