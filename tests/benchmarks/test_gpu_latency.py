"""benchmarks/gpu_latency.py keeps working between GPU sessions: the same code at tiny size on the CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_latency  # noqa: E402


def test_latency_benchmark_runs_every_variant_per_camera_count_and_records_errors(tmp_path):
    out = tmp_path / "latency.json"
    record = gpu_latency.main(["--size", "tiny", "--device", "cpu", "--backend", "ort-cpu", "--precision", "float32",
                               "--cameras", "3", "1", "--iters", "1", "--warmup", "0", "--eager-dtypes", "float32",
                               "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert json.loads(out.read_text()) == record
    assert "preflight" not in record  # already tiny: nothing to check first
    assert [run["cameras"] for run in record["runs"]] == [3, 1]
    assert record["runs"][0]["prefix_tokens"] > record["runs"][1]["prefix_tokens"]  # one camera: fewer tokens
    for run in record["runs"]:
        variants = run["variants"]
        assert run["errors"] == {}
        assert set(variants) == {"eager torch float32", "ort-cpu, loop graph", "ort-cpu, step by step"}
        for name in ("ort-cpu, loop graph", "ort-cpu, step by step"):
            assert variants[name]["max_abs_action_error_vs_eager_float32"] < 1e-4
            assert variants[name]["infer_ms"]["p50"] >= variants[name]["model_ms"]["p50"] > 0
            assert variants[name]["speedup_vs_fastest_eager"] > 0
            assert variants[name]["providers"] == ["CPUExecutionProvider"]  # where it really ran


def test_a_variant_that_fails_is_recorded_and_the_others_still_run():
    errors = {}

    def broken():
        raise RuntimeError("CUDA graph capture failed")

    samples = gpu_latency.measure({"ok": lambda: {"model_ms": 1.0}, "broken": broken}, warmup=1, iters=2,
                                  errors=errors)
    assert samples == {"ok": [{"model_ms": 1.0}] * 2}
    assert errors == {"broken": "RuntimeError: CUDA graph capture failed"}


def test_gpu_latency_benchmark_preloads_cuda_libraries_for_ort_cuda_only(monkeypatch):
    import types

    ort = types.ModuleType("onnxruntime")
    ort.calls = []
    ort.preload_dlls = lambda **kwargs: ort.calls.append(kwargs)
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    assert gpu_latency.load_cuda_libraries("ort-cpu") is False and ort.calls == []
    assert gpu_latency.load_cuda_libraries("ort-cuda") is True and ort.calls == [{"cuda": True, "cudnn": True}]
