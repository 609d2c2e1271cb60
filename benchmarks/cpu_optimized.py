"""CPU, same run: eager torch reference vs the plain ort-cpu graphs vs the optimized ones (export/optimize.py),
step by step and as the one-call loop graph (export/onnx/loop_graph.py).

    python benchmarks/cpu_optimized.py --model pi0 --repeats 15

One chunk = the prefix once + num_steps Euler steps (3 cameras, batch 1, float32, random `mid()` weights),
preprocessing excluded on every side (it is the same numpy code for both bundles). The variants run
round-robin after a warm-up, so load from other processes falls on all of them alike; the median of the
repeats is reported, with the prefix and per-step medians for the ORT variants (the runtime's own buffers
and IOBindings: OrtBackend.prepare/run_prefix/run_step or run_loop; for the loop graph, its time / steps).
Prints a markdown table with ratios vs eager
(time vs eager: the runtime issue's target is <= 0.5x for the optimized graphs), the load average before and
after the timed rounds (the machines are shared: compare only runs at similar load), and a JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pi0edge.export.bundle import write_bundle
from pi0edge.export.config import mid
from pi0edge.export.model import Pi0Model
from pi0edge.export.optimize import OptimizeOptions
from pi0edge.export.tokenizer import train_test_tokenizer
from pi0edge.manifest import load_manifest
from pi0edge.normalization import NormStats
from pi0edge.runtime.backends.ort import OrtBackend
from pi0edge.schedule import euler_schedule


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def export(model: Pi0Model, out: Path, optimize: OptimizeOptions | None) -> Path:
    dim = model.cfg.state_dim
    stats = NormStats.from_arrays("mean_std", "openpi", {"mean": np.zeros(dim), "std": np.ones(dim)},
                                  {"mean": np.zeros(dim), "std": np.ones(dim)})
    out.parent.mkdir(parents=True, exist_ok=True)
    # The ORT loop never tokenizes, but a bundle's tokenizer must load (export checks it).
    tokenizer = train_test_tokenizer(out.parent / "tokenizer.model", model.cfg.vocab_size)
    write_bundle(model, out, norm_stats=stats, tokenizer_path=tokenizer, robot_state_dim=dim, robot_action_dim=dim,
                 optimize=optimize)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("pi0", "pi05"), default="pi0")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-steps", type=int, default=10)
    args = parser.parse_args()

    cfg = mid(args.model)
    if cfg.num_steps != args.num_steps:
        from dataclasses import replace

        cfg = replace(cfg, num_steps=args.num_steps)
    torch.manual_seed(0)
    model = Pi0Model(cfg).eval()
    work = Path(tempfile.mkdtemp(prefix="pi0edge-cpu-opt-"))
    t0 = time.perf_counter()
    bundles = {"plain": export(model, work / "plain" / "bundle", None),
               "optimized": export(model, work / "optimized" / "bundle", OptimizeOptions())}
    export_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    s = cfg.vision.image_size
    feeds = {"images": rng.integers(0, 256, (1, cfg.num_cameras, s, s, 3), dtype=np.uint8),
             "image_masks": np.ones((1, cfg.num_cameras), bool),
             "tokens": np.concatenate([rng.integers(4, cfg.vocab_size, (1, 20)),
                                       np.zeros((1, cfg.max_token_len - 20), np.int64)], axis=1),
             "token_masks": np.arange(cfg.max_token_len)[None] < 20,
             "state": rng.standard_normal((1, cfg.state_dim)).astype(np.float32)}
    noise = rng.standard_normal((1, cfg.action_horizon, cfg.action_dim)).astype(np.float32)
    times, dt = euler_schedule(cfg.num_steps)
    obs_t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    backends = {"plain": OrtBackend(load_manifest(bundles["plain"]), "ort-cpu"),
                "optimized": OrtBackend(load_manifest(bundles["optimized"]), "ort-cpu", whole_loop=False),
                "loop": OrtBackend(load_manifest(bundles["optimized"]), "ort-cpu", whole_loop=True)}
    for backend in backends.values():
        backend.prepare(1, times, dt)

    def run_eager() -> dict:
        start = time.perf_counter()
        model.sample_actions(obs_t, torch.from_numpy(noise), num_steps=cfg.num_steps)
        return {"chunk_ms": (time.perf_counter() - start) * 1e3}

    def run_ort(backend: OrtBackend) -> dict:
        start = time.perf_counter()
        backend.run_prefix(feeds["images"], feeds["image_masks"], feeds["tokens"], feeds["token_masks"])
        backend.set_noise(noise, None if cfg.is_pi05 else feeds["state"])
        prefix_done = time.perf_counter()
        if backend.whole_loop:
            backend.run_loop()
        else:
            for k in range(len(times)):
                backend.run_step(k)
        end = time.perf_counter()
        return {"chunk_ms": (end - start) * 1e3, "prefix_ms": (prefix_done - start) * 1e3,
                "step_ms": (end - prefix_done) * 1e3 / len(times)}

    variants = {"eager torch (sample_actions)": run_eager, "ort-cpu plain": lambda: run_ort(backends["plain"]),
                "ort-cpu optimized": lambda: run_ort(backends["optimized"]),
                "ort-cpu optimized, loop graph": lambda: run_ort(backends["loop"])}
    samples: dict[str, list[dict]] = {name: [] for name in variants}
    load_before = os.getloadavg()
    for i in range(args.warmup + args.repeats):
        for name, fn in variants.items():  # round-robin: outside load hits every variant alike
            result = fn()
            if i >= args.warmup:
                samples[name].append(result)
    load_after = os.getloadavg()
    # the two bundles compute the same chunk
    outs = {name: backend.read_actions() for name, backend in backends.items()}
    max_diff = float(np.abs(outs["plain"] - outs["optimized"]).max())
    loop_diff = float(np.abs(outs["loop"] - outs["optimized"]).max())

    def med(name: str, key: str) -> float | None:
        values = [r[key] for r in samples[name] if key in r]
        return statistics.median(values) if values else None

    eager = med("eager torch (sample_actions)", "chunk_ms")
    command = f"python benchmarks/cpu_optimized.py --model {args.model} --repeats {args.repeats}"
    print(f"`{command}`  \n{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), onnxruntime {__import__('onnxruntime').__version__}; "
          f"mid() {args.model}, {cfg.num_cameras} cameras, batch 1, {cfg.num_steps} steps, float32, "
          f"median of {args.repeats} after {args.warmup} warm-up; load average (1/5/15 min) "
          f"{'/'.join(f'{x:.2f}' for x in load_before)} before, {'/'.join(f'{x:.2f}' for x in load_after)} after\n")
    print("| variant | chunk ms | prefix ms | step ms | time vs eager | speed-up vs eager |\n|---|---|---|---|---|---|")
    record = {"command": command, "cpu": cpu_model(), "cores": os.cpu_count(), "model": args.model,
              "config": "mid", "export_s": round(export_s, 1), "plain_vs_optimized_max_abs_diff": max_diff,
              "steps_vs_loop_max_abs_diff": loop_diff,
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in load_after], "results": {}}
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    for name in variants:
        chunk, prefix, step = med(name, "chunk_ms"), med(name, "prefix_ms"), med(name, "step_ms")
        print(f"| {name} | {chunk:.1f} | {fmt(prefix)} | {fmt(step)} | {chunk / eager:.3f}x | {eager / chunk:.2f}x |")
        record["results"][name] = {"chunk_ms": round(chunk, 2), "prefix_ms": prefix and round(prefix, 2),
                                   "step_ms": step and round(step, 2), "time_vs_eager": round(chunk / eager, 3),
                                   "speedup_vs_eager": round(eager / chunk, 3)}
    print(f"\nplain vs optimized actions: max |diff| {max_diff:.1e}; step by step vs loop graph: {loop_diff:.1e}")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
