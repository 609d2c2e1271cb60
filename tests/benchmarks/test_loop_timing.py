"""benchmarks/loop_timing.py: the options the docs cite work, and the last line is a ready-to-paste table row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import loop_timing  # noqa: E402


def test_loop_timing_runs_process_inference_beside_background_load_and_prints_a_markdown_row(tmp_path, capsys):
    out = tmp_path / "timing.json"
    argv = ["--duration-s", "0.5", "--background-load", "1", "--inference", "process", "--latency-s", "0.01",
            "--json", str(out)]
    assert loop_timing.main(argv) == 0
    figures = json.loads(out.read_text())
    assert figures["inference"] == "process" and figures["background_load"] == 1 and figures["inferences"] > 0
    assert figures["realtime_priority"] == 0  # SCHED_FIFO is opt-in
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("| `python benchmarks/loop_timing.py --duration-s 0.5 --background-load 1")
    assert last.count("|") == 10 and f"{figures['deadline_misses']} / {figures['ticks']}" in last


def test_loop_timing_refuses_a_negative_background_load(capsys):
    with pytest.raises(SystemExit):
        loop_timing.main(["--background-load", "-1"])
    assert "--background-load must be >= 0" in capsys.readouterr().err
