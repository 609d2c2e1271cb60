"""`pi0edge profile` prints its table and writes valid JSON and a Chrome-trace file."""

from __future__ import annotations

import json

from pi0edge.cli import main


def test_profile_command_writes_json_summary_and_chrome_trace(tiny_bundle_factory, tmp_path, capsys):
    bundle_dir, model = tiny_bundle_factory("pi0")
    json_path, trace_path = tmp_path / "profile.json", tmp_path / "trace.json"
    code = main(["profile", str(bundle_dir), "--iters", "4", "--warmup", "1", "--json", str(json_path),
                 "--trace", str(trace_path), "--per-step"])  # step by step (the default runs the loop graph)
    assert code == 0
    out = capsys.readouterr().out
    assert "prefix" in out and "step 9" in out and "total" in out and "peak host memory" in out

    summary = json.loads(json_path.read_text())
    assert summary["backend"] == "ort-cpu" and summary["iters"] == 4
    stages = summary["stages_ms"]
    expected = {"preprocess", "prefix", "denoise (all)", "postprocess", "total"} | {f"step {k}" for k in range(10)}
    assert set(stages) == expected
    for stats in stages.values():
        assert 0 <= stats["p50"] <= stats["p95"] <= stats["p99"]
    assert stages["total"]["p50"] >= stages["prefix"]["p50"]
    assert summary["peak_host_memory_mb"] > 0

    trace = json.loads(trace_path.read_text())
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len([e for e in events if e["cat"] == "chunk"]) == 4
    assert len([e for e in events if e["name"] == "step 0"]) == 4
    for e in events:
        assert {"name", "ph", "ts", "dur", "pid", "tid"} <= set(e) and e["dur"] >= 0
    chunk0 = next(e for e in events if e["name"] == "chunk 0")
    stages0 = [e for e in events if e["cat"] == "stage"][:13]
    assert stages0[0]["ts"] == chunk0["ts"]  # stages laid out inside their chunk
    assert stages0[-1]["ts"] + stages0[-1]["dur"] <= chunk0["ts"] + chunk0["dur"] + 1


def test_profile_of_a_missing_bundle_exits_1_with_a_message(tmp_path, capsys):
    assert main(["profile", str(tmp_path / "missing")]) == 1
    assert "not a bundle directory" in capsys.readouterr().err


def test_profile_of_a_fast_bundle_reports_prefix_ms_per_token_and_tokens_per_chunk(tiny_bundle_factory, tmp_path,
                                                                                  capsys):
    bundle_dir, _ = tiny_bundle_factory("pi0fast")
    json_path, trace_path = tmp_path / "profile.json", tmp_path / "trace.json"
    assert main(["profile", str(bundle_dir), "--iters", "2", "--warmup", "1", "--json", str(json_path),
                 "--trace", str(trace_path)]) == 0
    out = capsys.readouterr().out
    assert "ms per token" in out and "tokens/chunk" in out
    summary = json.loads(json_path.read_text())
    assert {"prefix", "ms per token", "decode (all)", "total"} <= set(summary["stages_ms"])
    assert 1 <= summary["tokens_per_chunk"]["p50"] <= 32  # the tiny bundle's max_action_tokens
    events = json.loads(trace_path.read_text())["traceEvents"]
    assert any(e["name"] == "token 1" for e in events)
