"""benchmarks/gpu_latency.py keeps working between GPU sessions: the same code at tiny size on the CPU."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_latency  # noqa: E402
import gpu_variants  # noqa: E402

DRY_RUN_VARIANTS = ("eager torch float32", "ort-cpu, loop graph")


def table_row(markdown: str, model: str, variant: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith(f"| {model} | 3 | {variant} |")]


def test_dry_run_writes_json_and_a_markdown_row_per_variant_for_pi0_and_pi05(tmp_path):
    out = tmp_path / "gpu.json"
    record = gpu_latency.main(["--dry-run", "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert json.loads(out.read_text()) == record
    markdown = out.with_suffix(".md").read_text()
    assert record["skipped"] == [] and "fallback" not in record and "preflight" not in record  # tiny: no preflight
    assert [(run["model"], run["cameras"]) for run in record["runs"]] == [("pi0", 3), ("pi05", 3)]
    for run in record["runs"]:
        assert run["errors"] == {}
        assert set(run["variants"]) == set(DRY_RUN_VARIANTS)
        for name, entry in run["variants"].items():
            assert len(table_row(markdown, run["model"], name)) == 1
            assert entry["chunk_ms"]["p99"] >= entry["chunk_ms"]["p50"] > 0
            assert entry["prefix_ms"]["p50"] > 0 and entry["denoise_ms"]["p50"] > 0
            assert entry["max_abs_action_error_vs_float32"] < 1e-4
            assert entry["peak_gpu_mb"] is None  # no GPU: nothing to read
        ort = run["variants"]["ort-cpu, loop graph"]
        assert ort["infer_ms"]["p50"] >= ort["chunk_ms"]["p50"] and ort["speedup_vs_fastest_eager"] > 0
        assert ort["providers"] == ["CPUExecutionProvider"]  # where it really ran


def test_a_budget_that_is_spent_skips_each_model_and_records_why_without_failing(tmp_path):
    out = tmp_path / "gpu.json"
    record = gpu_latency.main(["--dry-run", "--budget-s", "0", "--workdir", str(tmp_path), "--json", str(out)])
    assert record["runs"] == []
    assert [(s["model"], s["what"]) for s in record["skipped"]] == [("pi0", "the whole model"),
                                                                    ("pi05", "the whole model")]
    assert all("--budget-s 0" in s["reason"] for s in record["skipped"])
    markdown = out.with_suffix(".md").read_text()
    assert sum("SKIPPED" in line for line in markdown.splitlines()) == 2


def test_without_onnxruntime_gpu_it_falls_back_to_ort_cpu_and_says_so_in_both_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_latency, "ort_providers", lambda: ["CPUExecutionProvider"])
    out = tmp_path / "gpu.json"
    record = gpu_latency.main(["--size", "tiny", "--device", "cpu", "--models", "pi0", "--budget-s", "0",
                               "--workdir", str(tmp_path), "--json", str(out)])
    assert record["backend"] == "ort-cpu" and "NO ort-cuda FIGURES" in record["fallback"]
    assert json.loads(out.read_text())["fallback"] == record["fallback"]
    assert f"**FALLBACK: {record['fallback']}**" in out.with_suffix(".md").read_text()
    assert "!!! FALLBACK" in capsys.readouterr().out


def test_a_variant_failing_the_preflight_is_recorded_and_skipped_at_full_size_the_run_goes_on(tmp_path, monkeypatch):
    broken = ("ort-cuda on a machine without it", "ort-cuda", {})
    monkeypatch.setitem(gpu_variants.RUNTIME_VARIANTS, "ort-cpu", [*gpu_variants.RUNTIME_VARIANTS["ort-cpu"], broken])
    args = gpu_latency.parse_args(["--dry-run", "--models", "pi0", "pi05", "--workdir", str(tmp_path)])
    real_build = gpu_latency.build

    def build(args, model_type, work, with_eager=True):
        if model_type == "pi05":
            raise MemoryError("out of host memory")
        return real_build(args, model_type, work, with_eager)

    monkeypatch.setattr(gpu_latency, "build", build)
    record = {}
    failed = gpu_latency.preflight(args, tmp_path, record)
    assert list(failed) == [broken[0]]  # ort-cpu itself started
    assert record["preflight"][1] == {"model": "pi05", "error": "MemoryError: out of host memory"}
    errors = {}
    policies = gpu_latency.load_policies(Path(record["preflight"][0]["bundle"]), args, failed, errors)
    assert list(policies) == ["ort-cpu, loop graph"]
    assert errors == {broken[0]: f"skipped: failed in the tiny preflight: {failed[broken[0]]}"}
    for policy in policies.values():
        policy.close()


def test_a_variant_that_fails_is_recorded_and_the_others_still_run():
    errors = {}

    def broken():
        raise RuntimeError("CUDA graph capture failed")

    samples = gpu_variants.measure({"ok": lambda: {"chunk_ms": 1.0}, "broken": broken}, warmup=1, iters=2,
                                   errors=errors)
    assert samples == {"ok": [{"chunk_ms": 1.0}] * 2}
    assert errors == {"broken": "RuntimeError: CUDA graph capture failed"}


def test_timing_stops_after_the_round_that_reaches_the_deadline():
    samples = gpu_variants.measure({"ok": lambda: {"chunk_ms": 1.0}}, warmup=1, iters=50, errors={}, deadline_s=0.0)
    assert samples == {"ok": [{"chunk_ms": 1.0}]}


def test_summary_has_p50_p99_min_and_count():
    assert gpu_variants.summarize([1.0, 2.0, 3.0, 100.0]) == {"p50": 2.5, "p99": 97.09, "min": 1.0, "n": 4}


def test_gpu_latency_benchmark_preloads_cuda_libraries_for_ort_cuda_only(monkeypatch):
    ort = types.ModuleType("onnxruntime")
    ort.calls = []
    ort.preload_dlls = lambda **kwargs: ort.calls.append(kwargs)
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    assert gpu_latency.load_cuda_libraries("ort-cpu") is False and ort.calls == []
    assert gpu_latency.load_cuda_libraries("ort-cuda") is True and ort.calls == [{"cuda": True, "cudnn": True}]


def test_dry_run_flag_means_tiny_cpu_ort_cpu_eager_float32():
    args = gpu_latency.parse_args(["--dry-run", "--json", "x/gpu.json"])
    assert (args.size, args.device, args.backend, args.precision, args.eager_dtypes) == (
        "tiny", "cpu", "ort-cpu", "float32", ["float32"])
    assert args.markdown == Path("x/gpu.md") and isinstance(args, argparse.Namespace)


def test_the_device_session_script_rehearses_on_a_cpu_and_writes_json_and_markdown(tmp_path):
    env = {**os.environ, "SKIP_ORT_GPU": "1", "PY": sys.executable, "CARRY": str(tmp_path / "carry"),
           "STAGE": str(tmp_path / "stage"), "SITE": str(tmp_path / "site"), "WORK": str(tmp_path / "work"),
           "OUT": str(tmp_path / "out")}
    subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_session.sh"), "run", "--dry-run", "--models", "pi0"],
                   env=env, check=True, capture_output=True, timeout=300)
    record = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert [run["model"] for run in record["runs"]] == ["pi0"] and record["skipped"] == []
    assert set(record["runs"][0]["variants"]) == set(DRY_RUN_VARIANTS)
    assert (tmp_path / "site" / "pi0edge" / "runtime").is_symlink()  # the tree's code, no build step
    assert len(table_row((tmp_path / "out" / "gpu.md").read_text(), "pi0", "ort-cpu, loop graph")) == 1


def test_export_only_writes_the_bundles_that_the_timed_run_then_reuses(tmp_path):
    work = tmp_path / "work"
    record = gpu_latency.main(["--dry-run", "--export-only", "--models", "pi0", "--workdir", str(work)])
    assert record["runs"] == [] and record["skipped"] == []
    assert (work / "pi0-tiny-3cam-float32" / "bundle.yaml").is_file()
    record = gpu_latency.main(["--dry-run", "--models", "pi0", "--workdir", str(work)])
    assert record["runs"][0]["export_s"] == 0.0  # found, not exported again
    assert set(record["runs"][0]["variants"]) == set(DRY_RUN_VARIANTS)


def test_a_reference_that_cannot_run_is_recorded_and_the_timings_are_kept():
    class Broken:
        def sample_actions(self, observation, noise):
            raise RuntimeError("CUDA out of memory")

    models = gpu_latency.Models(source=None, eager={}, reference=Broken(), tokenizer=Path("t"))
    state = {"eager torch float16": {"actions": torch.zeros(1, 2, 3), "peak_gpu_mb": None}}
    errors = {}
    results = gpu_latency.summaries({"eager torch float16": [{"chunk_ms": 2.0}]}, models, ({}, None), state, {},
                                    (None, None), errors)
    assert results == {"eager torch float16": {"chunk_ms": gpu_variants.summarize([2.0]), "peak_gpu_mb": None}}
    assert errors == {"eager torch float32 reference": "RuntimeError: CUDA out of memory"}


def test_dry_run_pi0fast_row_times_eager_and_the_decode_loop_on_the_same_tokens(tmp_path):
    out = tmp_path / "gpu.json"
    record = gpu_latency.main(["--dry-run", "--models", "pi0fast", "--fast-tokens", "6", "--workdir",
                               str(tmp_path / "work"), "--json", str(out)])
    (run,) = record["runs"]
    assert run["model"] == "pi0fast" and run["errors"] == {}
    assert set(run["variants"]) == {"eager torch float32", "ort-cpu, decode loop"}
    markdown = out.with_suffix(".md").read_text()
    for name, entry in run["variants"].items():
        assert len(table_row(markdown, "pi0fast", name)) == 1
        assert entry["prefix_ms"]["p50"] > 0 and entry["denoise_ms"]["p50"] > 0  # the decode loop's column
        assert entry["tokens_equal_to_float32"] == 1.0  # greedy, float32: the same six tokens
    assert run["variants"]["ort-cpu, decode loop"]["speedup_vs_fastest_eager"] > 0
