"""Full size (slow: ~13 GB of random weights, tens of minutes on 2 cores): export a random pi0 / pi0.5
checkpoint in LeRobot layout to a float16 (and a bfloat16) bundle, run one chunk on ort-cpu (bfloat16: its
float32 emulation), compare it with the eager float32 reference on the same noise, and record time and peak
memory of each stage.

    python -m pytest -m slow tests/export/test_full_size.py -s
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# float16 graphs against the float32 eager reference at full size, random weights (see docs/benchmarks.md).
ACTION_ATOL_FP16_FULL = 5e-2
# bfloat16 graphs, run as their float32 emulation (export/onnx/bf16_emulation.py), same comparison: measured
# 3.6e-2 (pi0) and 1.2e-2 (pi0.5) (docs/benchmarks.md).
ACTION_ATOL_BF16_FULL = 1e-1


def run_full_size(workdir: Path, model_type: str, precision: str) -> dict:
    """benchmarks/full_size.py --compare-reference in its own process; -> its JSON record (printed too)."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "full_size.py"), "--model", model_type,
                          "--precision", precision, "--workdir", str(workdir), "--compare-reference"],
                         capture_output=True, text=True, timeout=4 * 3600)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads(out.stdout[out.stdout.index("{"):])
    print(json.dumps(record, indent=2))
    return record


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_full_size_random_checkpoint_exports_to_float16_and_runs_one_chunk(tmp_path, model_type):
    record = run_full_size(tmp_path, model_type, "float16")
    assert record["export"]["bundle_gb"] > 5  # both graphs of a ~3.3 B-parameter model in float16
    assert record["infer"]["chunk_ms"] > 0
    assert record["reference"]["max_abs_action_error"] <= ACTION_ATOL_FP16_FULL


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_full_size_random_checkpoint_exports_to_bfloat16_and_its_emulation_runs_one_chunk(tmp_path, model_type):
    record = run_full_size(tmp_path, model_type, "bfloat16")
    assert record["export"]["bundle_gb"] > 5  # bf16 weights: 2 bytes each, as float16
    assert record["emulate"]["bundle_gb"] > 1.8 * record["export"]["bundle_gb"]  # float32 weights
    assert record["infer"]["chunk_ms"] > 0
    assert 0 < record["reference"]["max_abs_action_error"] <= ACTION_ATOL_BF16_FULL
