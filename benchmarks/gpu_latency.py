"""The runtime against eager PyTorch on the same device, same inputs, same noise.

    python benchmarks/gpu_latency.py --model pi0 --cameras 3 1 --precision float16 --json $OUT/pi0.json

For each camera count: a random model (export/random_checkpoint.py's init, built in memory: no checkpoint
file is written), exported with `pi0edge export`'s defaults (optimized graphs and the loop graph) at
--precision; then, round-robin after warm-up so that load falls on every variant alike, each variant's
chunk time:
- eager: `Pi0Model.sample_actions` on --device with float32 weights and with bfloat16 weights (docs/model.md's
  float32 islands kept), fed the runtime's own preprocessed arrays (preprocessing excluded);
- the runtime: `Policy.infer` per variant of --backend. `model ms` = prefix + denoise + read-out and
  unnormalize (what eager measures, plus the copy out); `infer ms` = end to end, also resize-with-pad of
  the 480x640 frames, tokenizing and normalizing.
Each variant's normalized actions are compared with eager float32's on the same noise (max abs error).
Results are written to --json after each camera count, so a run cut short keeps what it measured.

On a CPU (`--size tiny --device cpu --backend ort-cpu`) the same code runs in seconds: the tests run it so
that it still works when a GPU session comes (docs/benchmarks.md, "GPU", has the device-session recipe).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pi0edge.atomic import write_text_atomic
from pi0edge.export.bundle import write_bundle
from pi0edge.export.config import PRESETS, Pi0Config
from pi0edge.export.model import Pi0Model
from pi0edge.export.optimize import DEFAULT_OPTIMIZE
from pi0edge.export.random_checkpoint import parameter_shapes, random_chunks
from pi0edge.export.random_checkpoint import random_norm_stats as random_stats_arrays
from pi0edge.export.tokenizer import MAX_TEST_VOCAB, train_test_tokenizer
from pi0edge.normalization import NormStats
from pi0edge.runtime import Policy
from pi0edge.runtime.backends.cuda_libs import preload_cuda_libraries
from pi0edge.runtime.backends.ort_install import import_onnxruntime
from pi0edge.runtime.profile import synthetic_observation

ROBOT_DIM = 14  # ALOHA-like: 14 joints, zero-padded to the model's 32 (fewer in small configs)
# (variant name, backend, Policy options); a backend's variants in the order they are reported
RUNTIME_VARIANTS = {
    "ort-cuda": [("ort-cuda, CUDA graphs (prefix + loop)", "ort-cuda", {"enable_cuda_graph": True}),
                 ("ort-cuda, loop as one CUDA graph", "ort-cuda", {"enable_cuda_graph": True,
                                                                   "cuda_graph_prefix": False}),
                 ("ort-cuda, loop graph", "ort-cuda", {}),
                 ("ort-cuda, step by step", "ort-cuda", {"whole_loop": False})],
    "ort-cpu": [("ort-cpu, loop graph", "ort-cpu", {}), ("ort-cpu, step by step", "ort-cpu", {"whole_loop": False})],
}
EAGER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def log(message: str, start: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)


def random_model(cfg: Pi0Config, seed: int = 0) -> Pi0Model:
    """Full-size capable: parameters built on the meta device, then filled one by one (1x memory)."""
    with torch.device("meta"):
        model = Pi0Model(cfg)
    state = {name: torch.cat(list(random_chunks(name, shape, seed))).reshape(shape)
             for name, shape in parameter_shapes(cfg).items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def norm_stats(robot_dim: int) -> NormStats:
    return NormStats.from_arrays("mean_std", "openpi", random_stats_arrays(robot_dim, 0, "state"),
                                 random_stats_arrays(robot_dim, 1, "action"))


def export(model: Pi0Model, out: Path, precision: str, tokenizer: Path) -> float:
    if (out / "bundle.yaml").is_file():
        return 0.0  # exported by an earlier call on the same machine
    start = time.perf_counter()
    dim = min(ROBOT_DIM, model.cfg.state_dim, model.cfg.action_dim)
    write_bundle(model, out, norm_stats=norm_stats(dim), tokenizer_path=tokenizer, robot_state_dim=dim,
                 robot_action_dim=dim, precision=precision, optimize=DEFAULT_OPTIMIZE)
    return time.perf_counter() - start


def load_cuda_libraries(backend: str) -> bool:
    """GPU backends: CUDA/cuDNN from the nvidia-* wheels through onnxruntime.preload_dlls(), explicitly: the
    runtime never imports torch, so the benchmark must not depend on torch having loaded them first."""
    if backend == "ort-cpu":
        return False
    return preload_cuda_libraries(import_onnxruntime("benchmarks/gpu_latency.py"))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(variants: dict, warmup: int, iters: int, errors: dict[str, str]) -> dict[str, list[dict]]:
    """Round-robin: warm-up rounds, then `iters` timed rounds of every variant. A variant that fails (a CUDA
    graph that cannot be captured, say) is dropped with its error recorded: one device call is precious."""
    samples = {name: [] for name in variants}
    for i in range(warmup + iters):
        for name, run in list(variants.items()):
            try:
                result = run()
            except Exception as exc:  # noqa: BLE001
                errors[name] = f"{type(exc).__name__}: {exc}"
                log(f"{name} failed: {errors[name]}")
                del variants[name], samples[name]
                continue
            if i >= warmup:
                samples[name].append(result)
    return samples


def summarize(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {"p50": round(float(np.median(arr)), 3), "p90": round(float(np.percentile(arr, 90)), 3),
            "min": round(float(arr.min()), 3)}


@dataclass
class Models:
    """One random model, built once and shared by every camera count: the export source, its eager copies on
    the device (one per --eager-dtypes; the weights do not depend on the camera count) and a tokenizer."""

    source: Pi0Model
    eager: dict[str, Pi0Model]
    tokenizer: Path


def bench_cameras(models: Models, cameras: int, args: argparse.Namespace, work: Path) -> dict:
    model, eager_models = models.source, models.eager
    cfg = replace(model.cfg, cameras=model.cfg.cameras[:cameras] if cameras <= len(model.cfg.cameras)
                  else tuple(f"camera_{i}" for i in range(cameras)))
    model.cfg = cfg  # the weights do not depend on the camera count; the prefix length does
    bundle = work / f"{cfg.model_type}-{args.size}-{cameras}cam-{args.precision}"
    export_s = export(model, bundle, args.precision, models.tokenizer)
    log(f"{cameras} camera(s): exported {bundle} in {export_s:.0f} s")

    policies, errors = {}, {}
    for name, backend, options in RUNTIME_VARIANTS[args.backend]:
        try:
            policies[name] = Policy(bundle, backend, verify_checksums=False, **options)
        except Exception as exc:  # noqa: BLE001  (recorded: the other variants still run)
            errors[name] = f"{type(exc).__name__}: {exc}"
        log(f"loaded {name} on {', '.join(policies[name].providers)}" if name in policies
            else f"{name} could not start: {errors[name]}")
    if not policies:
        raise SystemExit(f"no runtime variant could start: {errors}")
    first = next(iter(policies.values()))
    obs = synthetic_observation(first, seed=0)
    noise = np.random.default_rng(1).standard_normal((1, cfg.action_horizon, cfg.action_dim), dtype=np.float32)
    feeds = first.preprocess([obs])
    device = args.device
    eager_obs = {k: torch.from_numpy(v).to(device) for k, v in feeds.items() if v is not None}
    eager_obs.setdefault("state", torch.zeros(1, cfg.state_dim, device=device))
    eager_noise = torch.from_numpy(noise).to(device)

    def run_eager(m: Pi0Model) -> dict:
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            m.sample_actions(eager_obs, eager_noise)
        synchronize(device)
        return {"model_ms": (time.perf_counter() - start) * 1e3}

    def run_policy(policy: Policy) -> dict:
        t = policy.infer(obs, noise=noise).timings_ms
        return {"model_ms": t["prefix_ms"] + t["denoise_ms"] + t["postprocess_ms"], "infer_ms": t["total_ms"],
                "prefix_ms": t["prefix_ms"], "denoise_ms": t["denoise_ms"], "preprocess_ms": t["preprocess_ms"]}

    variants = {f"eager torch {d}": (lambda m=m: run_eager(m)) for d, m in eager_models.items()}
    variants |= {name: (lambda p=p: run_policy(p)) for name, p in policies.items()}
    samples = measure(variants, args.warmup, args.iters, errors)
    policies = {name: p for name, p in policies.items() if name in samples}

    reference = None
    if "float32" in eager_models:
        with torch.inference_mode():
            reference = eager_models["float32"].sample_actions(eager_obs, eager_noise).cpu().numpy()
    results = {}
    for name, rows in samples.items():
        entry = {key: summarize([r[key] for r in rows]) for key in rows[0]}
        if name in policies and reference is not None:
            policies[name].infer(obs, noise=noise)
            entry["max_abs_action_error_vs_eager_float32"] = float(np.abs(
                policies[name].backend.read_actions() - reference).max())
        results[name] = entry
    fastest_eager = min(results[f"eager torch {d}"]["model_ms"]["p50"] for d in eager_models)
    for name in policies:
        results[name]["speedup_vs_fastest_eager"] = round(fastest_eager / results[name]["model_ms"]["p50"], 2)
        results[name]["providers"] = list(policies[name].providers)  # where it really ran
    for policy in policies.values():
        policy.close()
    return {"cameras": cameras, "prefix_tokens": cfg.prefix_len, "export_s": round(export_s, 1),
            "bundle": str(bundle), "variants": results, "errors": errors}


def build(args: argparse.Namespace, work: Path) -> Models:
    """The random model of args.size, its eager copies on args.device, and a tokenizer whose ids all fit
    its vocabulary."""
    cfg = PRESETS[args.size](args.model)
    vocab = min(MAX_TEST_VOCAB, cfg.vocab_size)  # every id the tokenizer emits must be a row of the embedding
    tokenizer = work / f"tokenizer-{vocab}.model"
    if not tokenizer.is_file():
        train_test_tokenizer(tokenizer, vocab)
    log(f"building a random {args.size} {args.model} model")
    model = random_model(cfg)
    eager = {d: copy.deepcopy(model).to(device=args.device, dtype=EAGER_DTYPES[d]) for d in args.eager_dtypes}
    log(f"eager models on {args.device}: {list(eager)}")
    return Models(model, eager, tokenizer)


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(record: dict) -> str:
    lines = ["| cameras | variant | model ms p50 | infer ms p50 (end to end) | speed-up vs fastest eager | "
             "max abs error vs eager fp32 |", "|---|---|---|---|---|---|"]
    for run in record["runs"]:
        for name, r in run["variants"].items():
            infer = r.get("infer_ms", {}).get("p50", "-")
            lines.append(f"| {run['cameras']} | {name} | {r['model_ms']['p50']} | {infer} | "
                         f"{r.get('speedup_vs_fastest_eager', '-')} | "
                         f"{r.get('max_abs_action_error_vs_eager_float32', '-')} |")
        lines += [f"| {run['cameras']} | {name} | failed: {error} | | | |" for name, error in run["errors"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("pi0", "pi05"), default="pi0")
    parser.add_argument("--size", choices=tuple(PRESETS), default="full")
    parser.add_argument("--cameras", type=int, nargs="+", default=[3])
    parser.add_argument("--precision", choices=("float32", "float16", "bfloat16"), default="float16")
    parser.add_argument("--backend", choices=tuple(RUNTIME_VARIANTS), default="ort-cuda")
    parser.add_argument("--device", default="cuda", help="where eager torch runs (cuda, cpu)")
    parser.add_argument("--eager-dtypes", nargs="+", choices=tuple(EAGER_DTYPES), default=["float32", "bfloat16"],
                        help="eager weight dtypes; float32 is also the accuracy reference")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="bundles are kept here and reused (default: a temp dir)")
    parser.add_argument("--json", default=None, help="write the record here (after each camera count)")
    parser.add_argument("--no-preflight", dest="preflight", action="store_false",
                        help="skip the tiny-size run of every variant that comes first (a few seconds)")
    args = parser.parse_args(argv)
    preloaded = load_cuda_libraries(args.backend)  # before torch touches CUDA (machine() below)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="pi0edge-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    record = {"command": "python benchmarks/gpu_latency.py " + " ".join(argv if argv is not None else
                                                                        __import__("sys").argv[1:]),
              "model": args.model, "size": args.size, "precision": args.precision, "backend": args.backend,
              "device": args.device, "iters": args.iters, "warmup": args.warmup, "machine": machine(args.device),
              "cuda_libraries_preloaded": preloaded, "runs": []}
    if args.preflight and args.size != "tiny":
        # seconds at tiny size: a variant that cannot run on this machine shows before minutes of full size
        tiny_args = argparse.Namespace(**{**vars(args), "size": "tiny", "iters": 1, "warmup": 1})
        record["preflight"] = [bench_cameras(build(tiny_args, work), 3, tiny_args, work)]
        log(f"preflight (tiny): errors {record['preflight'][0]['errors'] or 'none'}")
    models = build(args, work)
    for cameras in args.cameras:
        record["runs"].append(bench_cameras(models, cameras, args, work))
        if args.json:
            write_text_atomic(Path(args.json), json.dumps(record, indent=2) + "\n")
        log(f"{cameras} camera(s) done")
    print(table(record))
    return record


if __name__ == "__main__":
    main()
