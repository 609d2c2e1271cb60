"""Full-size export and one chunk on ort-cpu, with wall time and peak memory of each stage.

    python benchmarks/full_size.py --model pi0 --precision float16 --workdir /tmp/pi0edge-full

Each stage runs in its own process so its peak RSS (ru_maxrss of the child) is its own:
1. write a random full-size checkpoint in LeRobot layout (float32 weights, ~13 GB; reused when present);
2. `pi0edge export` it at the given precision;
3. load the bundle on ort-cpu and infer one chunk (3 cameras, 10 steps).
bfloat16: ort-cpu has no bf16 kernels, so between 2 and 3 the bundle is rewritten into float32 graphs that
round every bf16 result (export/onnx/bf16_emulation.py) and that emulated bundle is the one run.
Prints a JSON record; docs/benchmarks.md quotes it. Needs ~24 GB RAM and ~35 GB disk (bfloat16: ~50 GB).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def run_stage(code: str) -> dict:
    """Run python code that sets `result = {...}` in a child process; -> that dict plus the child's wall time
    and its own peak RSS (ru_maxrss read inside the child, so stages do not mask each other)."""
    epilogue = ("\nimport json as _j, resource as _r\nresult['peak_rss_mb'] = "
                "round(_r.getrusage(_r.RUSAGE_SELF).ru_maxrss / 1024)\nprint(_j.dumps(result))\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code + epilogue], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"stage failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("pi0", "pi05"), default="pi0")
    parser.add_argument("--precision", choices=("float32", "float16", "bfloat16"), default="float16")
    parser.add_argument("--workdir", default="/tmp/pi0edge-full")
    parser.add_argument("--skip-infer", action="store_true")
    parser.add_argument("--plain", action="store_true", help="export the plain graphs (no optimizations)")
    parser.add_argument("--compare-reference", action="store_true",
                        help="also run the eager float32 reference on the same inputs and noise (slow)")
    args = parser.parse_args()
    work = Path(args.workdir)
    variant = f"{args.precision}-plain" if args.plain else args.precision
    ckpt, bundle = work / f"{args.model}-checkpoint", work / f"{args.model}-{variant}-bundle"
    work.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "precision": args.precision, "optimized": not args.plain,
              "machine": platform.platform(),
              "cpu_count": __import__("os").cpu_count()}

    if not (ckpt / "model.safetensors").is_file():
        record["write_checkpoint"] = run_stage(
            "from pi0edge.export.config import full; from pi0edge.export.random_checkpoint import "
            f"write_random_checkpoint; write_random_checkpoint({str(ckpt)!r}, full({args.model!r}), "
            "robot_state_dim=14, robot_action_dim=14); result = {}")
    weights = (ckpt / "model.safetensors").stat().st_size
    record["checkpoint_weights_gb"] = round(weights / 1e9, 2)

    record["export"] = run_stage(
        "from pi0edge.export.bundle import export_bundle; from pi0edge.export.optimize import DEFAULT_OPTIMIZE; "
        f"r = export_bundle({str(ckpt)!r}, {str(bundle)!r}, precision={args.precision!r}, overwrite=True, "
        f"check_finite=False, optimize={'None' if args.plain else 'DEFAULT_OPTIMIZE'}); "
        "result = {'export_s': round(r.export_s, 1), 'bundle_gb': round(r.bundle_bytes / 1e9, 2)}")
    graph_bytes = sum(p.stat().st_size for p in bundle.iterdir() if ".onnx" in p.name)
    record["graph_weights_gb"] = round(graph_bytes / 1e9, 2)
    record["export"]["peak_rss_over_checkpoint"] = round(record["export"]["peak_rss_mb"] * 2**20 / weights, 2)

    run_bundle = bundle
    if args.precision == "bfloat16" and not args.skip_infer:  # ort-cpu runs the float32 emulation of the graphs
        run_bundle = work / f"{args.model}-{variant}-emulated-bundle"
        record["emulate"] = run_stage(
            "from pi0edge.export.onnx.bf16_emulation import write_emulated_bundle\n"
            f"r = write_emulated_bundle({str(bundle)!r}, {str(run_bundle)!r}, overwrite=True, verify_checksums=False)\n"
            "result = {'emulate_s': round(r.emulate_s, 1), 'bundle_gb': round(r.bundle_bytes / 1e9, 2)}")
        graph_bytes = sum(p.stat().st_size for p in run_bundle.iterdir() if ".onnx" in p.name)

    if not args.skip_infer:
        record["infer"] = run_stage(
            "import json, time\nfrom pi0edge.runtime import Policy\nfrom pi0edge.runtime.profile import "
            "synthetic_observation\nimport numpy as np\n"
            f"t = time.perf_counter(); p = Policy({str(run_bundle)!r}, verify_checksums=False); "
            "load = time.perf_counter() - t\nobs = synthetic_observation(p)\n"
            "m = p.manifest; noise = np.random.default_rng(0).standard_normal((1, m.action_horizon, m.action_dim), "
            "dtype=np.float32)\nc = p.infer(obs, noise=noise)\n"
            "feeds = {k: v for k, v in p.preprocess([obs]).items() if v is not None}\n"
            f"np.savez({str(work / 'infer.npz')!r}, noise=noise, actions=p.backend.read_actions(), **feeds)\n"
            "result = {'load_s': round(load, 1), 'chunk_ms': round(c.timings_ms['total_ms']), "
            "'prefix_ms': round(c.timings_ms['prefix_ms']), 'denoise_ms': round(c.timings_ms['denoise_ms']), "
            # a bundle with the unrolled loop graph runs all steps in one call: no per-step time
            "'step_ms': round(c.timings_ms['step_ms'][-1]) if c.timings_ms['step_ms'] else None}")
        record["infer"]["peak_rss_over_graph_weights"] = round(record["infer"]["peak_rss_mb"] * 2**20 / graph_bytes, 2)
        if args.compare_reference:
            record["reference"] = run_stage(
                "import numpy as np, torch, time\nfrom pi0edge.export.checkpoint import load_checkpoint\n"
                f"d = dict(np.load({str(work / 'infer.npz')!r}))\n"
                f"m = load_checkpoint({str(ckpt)!r}, hash_weights=False, check_finite=False).model\n"
                "obs = {k: torch.from_numpy(v) for k, v in d.items() if k not in ('noise', 'actions')}\n"
                "obs.setdefault('state', torch.zeros(1, m.cfg.state_dim))\nt = time.perf_counter()\n"
                "ref = m.sample_actions(obs, torch.from_numpy(d['noise'])).numpy()\n"
                "result = {'eager_chunk_s': round(time.perf_counter() - t, 1), "
                "'max_abs_action_error': float(np.abs(ref - d['actions']).max())}")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
