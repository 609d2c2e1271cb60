"""Pi0-FAST on the CPU, same run: the eager torch reference (`Pi0FastModel.generate`, its own KV cache) vs the
ort-cpu prefix + decode_step graphs driven by the runtime's decode loop (runtime/fast_decode.py).

    python benchmarks/fast_cpu.py --preset mid --repeats 5 --json fast_cpu.json

One chunk = the prefix once + a fixed number of decode steps (no end marker counts, so both sides decode the
whole --tokens budget: random weights would otherwise stop at different places), 3 cameras, batch 1, float32,
random weights, preprocessing and detokenizing excluded on both sides. The runners are gpu_latency.py's
pi0fast ones (benchmarks/gpu_fast.py): prefix and decode loop are timed within one chunk, ms per token is the
decode loop over the steps after the first token. The two variants alternate after a
warm-up so load from other processes falls on both alike; medians are reported with the load average before
and after (the machines are shared: compare only ratios from one run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from gpu_fast import PREFIX_INPUTS, fast_eager_runner, fast_policy_runner

from pi0edge.atomic import write_text_atomic
from pi0edge.export.bundle import export_bundle
from pi0edge.export.checkpoint import load_checkpoint
from pi0edge.export.config import PRESETS
from pi0edge.export.random_checkpoint import write_random_checkpoint
from pi0edge.runtime import Policy
from pi0edge.runtime.profile import synthetic_observation


def run(args: argparse.Namespace, work: Path) -> dict:
    cfg = replace(PRESETS[args.preset]("pi0fast"), max_action_tokens=args.tokens)
    robot_dim = min(14, cfg.action_dim, cfg.state_dim)  # ALOHA-like where the model is wide enough
    checkpoint = write_random_checkpoint(work / "checkpoint", cfg, robot_state_dim=robot_dim,
                                         robot_action_dim=robot_dim)
    export_bundle(checkpoint, work / "bundle")
    model = load_checkpoint(checkpoint).model.eval()
    rows: dict[str, list[dict]] = {"eager torch": [], "ort-cpu graphs": []}
    load_before = os.getloadavg()
    options = {"intra_op_threads": args.ort_threads} if args.ort_threads else {}
    with Policy(work / "bundle", **options) as policy:
        feeds = policy.preprocess([synthetic_observation(policy)])
        torch_feeds = {k: torch.from_numpy(np.asarray(feeds[k])) for k in PREFIX_INPUTS}
        # the same runners as benchmarks/gpu_latency.py's pi0fast row: prefix and decode loop from one call
        eager, _ = fast_eager_runner(model, torch_feeds, "cpu")
        ort = fast_policy_runner(policy, feeds, {})
        for round_ in range(args.warmup + args.repeats):
            chunks = {"eager torch": eager(), "ort-cpu graphs": ort()}
            if round_ >= args.warmup:
                for name, chunk in chunks.items():
                    rows[name].append(chunk | {"token_ms": chunk["denoise_ms"] / max(args.tokens - 1, 1)})
    result = {name: {key: statistics.median(r[key] for r in samples) for key in ("chunk_ms", "prefix_ms",
                                                                                  "token_ms")}
              for name, samples in rows.items()}
    eager_ms = result["eager torch"]["chunk_ms"]
    for entry in result.values():
        entry["time_vs_eager"] = entry["chunk_ms"] / eager_ms
    return {"preset": args.preset, "tokens": args.tokens, "repeats": args.repeats, "results": result,
            "ort_threads": args.ort_threads,
            "load_before": load_before, "load_after": os.getloadavg(), "torch_threads": torch.get_num_threads(),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}}


def table(record: dict) -> str:
    lines = ["| variant | chunk ms | prefix ms | ms per token | time vs eager |", "|---|---|---|---|---|"]
    for name, r in record["results"].items():
        lines.append(f"| {name} | {r['chunk_ms']:.1f} | {r['prefix_ms']:.1f} | {r['token_ms']:.2f} | "
                     f"{r['time_vs_eager']:.3f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "mid"), default="mid")
    parser.add_argument("--tokens", type=int, default=64, help="decode budget: every chunk decodes this many")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=2, help="eager torch's intra-op threads")
    parser.add_argument("--ort-threads", type=int, default=None,
                        help="ONNX Runtime's intra-op threads (default: its own, one per core)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="pi0edge-fast-cpu-") as tmp:
        record = run(args, Path(tmp))
    print(f"{args.preset} pi0fast, {args.tokens} tokens per chunk, median of {args.repeats} "
          f"(load {record['load_before'][0]:.1f} -> {record['load_after'][0]:.1f})")
    print(table(record))
    if args.json:
        write_text_atomic(args.json, json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
