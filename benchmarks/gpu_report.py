"""benchmarks/gpu_latency.py's outputs: the JSON record and its markdown table, both written atomically after
every step so that a run cut short keeps what it measured."""

from __future__ import annotations

import json
from pathlib import Path

from pi0edge.atomic import write_text_atomic

COLUMNS = ("model", "cameras", "variant", "chunk ms p50", "chunk ms p99", "prefix ms p50 / p99",
           "denoise ms p50 / p99", "infer ms p50 / p99 (end to end)", "peak GPU MiB", "max abs error vs fp32",
           "speed-up vs fastest eager", "status")


def _pair(entry: dict, stage: str) -> str:
    s = entry.get(stage)
    return f"{s['p50']} / {s['p99']}" if s else "-"


def _error(entry: dict) -> str:
    error = entry.get("max_abs_action_error_vs_float32")
    return "-" if error is None else f"{error:.3g}"


def variant_rows(run: dict) -> list[str]:
    rows = []
    for name, r in run["variants"].items():
        chunk = r["chunk_ms"]
        cells = [run["model"], run["cameras"], name, chunk["p50"], chunk["p99"], _pair(r, "prefix_ms"),
                 _pair(r, "denoise_ms"), _pair(r, "infer_ms"), r.get("peak_gpu_mb") or "-",
                 _error(r), r.get("speedup_vs_fastest_eager", "-"),
                 f"ok ({chunk['n']} chunks)"]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    for name, error in run["errors"].items():
        cells = [run["model"], run["cameras"], name, *["-"] * 8, "FAILED: " + error.replace("|", "/")[:300]]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return rows


def markdown(record: dict) -> str:
    lines = [f"# GPU latency: {record['machine'].get('gpu', record['device'])}", "",
             f"`{record['command']}`", "",
             f"precision {record['precision']}, budget {record['budget_s']} s, "
             f"onnxruntime {record['machine'].get('onnxruntime')}, torch {record['machine'].get('torch')}", ""]
    if record.get("fallback"):
        lines += [f"**FALLBACK: {record['fallback']}**", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for run in record["runs"]:
        lines += variant_rows(run)
    for skip in record["skipped"]:
        lines.append(f"| {skip['model']} | {skip.get('cameras', '-')} | {skip['what']} | " + "- | " * 8
                     + f"SKIPPED: {skip['reason']} |")
    return "\n".join(lines) + "\n"


def write_outputs(record: dict, json_path: Path | None, markdown_path: Path | None) -> None:
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(record, indent=2) + "\n")
    if markdown_path is not None:
        write_text_atomic(markdown_path, markdown(record))
