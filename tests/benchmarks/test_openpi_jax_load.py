"""benchmarks/openpi_jax_load.py at the tiny preset: writes the orbax checkpoint, loads it in a child process and
records the documented figures (the figures themselves are timings and memory: not checked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorstore", reason="the loader needs the [openpi] extra (tensorstore)")
pytest.importorskip("orbax.checkpoint", reason="the writer needs orbax-checkpoint + jax (dev)")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import openpi_jax_load  # noqa: E402


def test_openpi_jax_load_tiny_writes_then_loads_and_records_peak_rss_against_the_model(tmp_path, capsys):
    out = tmp_path / "record.json"
    assert openpi_jax_load.main(["--preset", "tiny", "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == record
    assert (record["preset"], record["model"], record["stored_dtype"], record["load_dtype"]) == (
        "tiny", "pi0", "bfloat16", "float32")
    assert record["write"]["peak_rss_mb"] > 0 and record["params_bytes"] > 0
    load = record["load"]
    assert (load["layout"], load["model_type"]) == ("openpi-jax", "pi0")
    assert load["model_bytes"] > load["largest_stored_array_bytes"] > 0
    assert load["peak_over_model"] == round(load["peak_rss_mb"] * 2**20 / load["model_bytes"], 3)
