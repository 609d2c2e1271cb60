"""The runtime against eager PyTorch on the same GPU, same weights, same inputs, same noise: one short run.

    python benchmarks/gpu_latency.py --models pi0 pi05 --cameras 3 --budget-s 480 --json $OUT/gpu.json
    python benchmarks/gpu_latency.py --dry-run --json /tmp/gpu.json      # the same code on a CPU, tiny, < 60 s
    python benchmarks/gpu_latency.py --models pi0fast --fast-tokens 64   # the Pi0-FAST row (benchmarks/gpu_fast.py)

Per model (full-size pi0 and pi0.5 by default): a random model (export/random_checkpoint.py's init, built in
memory: no checkpoint file), exported with `pi0edge export`'s defaults at --precision; then, round-robin after
warm-up, each variant's chunk:
- eager torch (`Pi0Model.sample_actions`) with --eager-dtypes weights (docs/model.md's float32 islands kept),
  fed the runtime's own preprocessed arrays;
- the runtime (`Policy.infer`) per variant of --backend (gpu_variants.RUNTIME_VARIANTS: ort-cuda with IO
  binding, CUDA graph on and off). `chunk ms` = prefix + denoise + read-out (what eager measures, plus the
  copy out); `infer ms` = end to end, also resize-with-pad, tokenizing and normalizing.
p50/p99 per stage and per chunk, peak GPU memory, and each variant's max abs error of the normalized actions
against eager float32 on the same noise.

One device call is short and precious, so: every variant is guarded (its error is recorded, the others still
run); a tiny-size preflight of every variant comes first, and a variant that fails it is skipped at full size
with that error; --budget-s skips what would not fit (recorded under "skipped") and shortens the timing; the
JSON and the markdown table are rewritten after every step. Without onnxruntime-gpu (the wheel could not be
staged) it falls back to eager torch + ort-cpu and says so in the output and both files.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from gpu_fast import FAST_RUNTIME_VARIANTS, fast_eager_runner, fast_policy_runner, token_agreement
from gpu_report import markdown, write_outputs
from gpu_variants import (
    EAGER_DTYPES,
    RUNTIME_VARIANTS,
    eager_runner,
    measure,
    nontorch_gpu_mb,
    policy_runner,
    summarize,
)

from pi0edge.export.bundle import write_bundle
from pi0edge.export.checkpoint.loader import build_model
from pi0edge.export.config import PRESETS, Pi0Config
from pi0edge.export.fast_bundle import write_fast_bundle
from pi0edge.export.fast_checkpoint import write_test_fast_tokenizer
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
# first guesses (s) of each step's cost at full size on a lent H100/H200, replaced by what the run measures
FULL_SIZE_GUESS_S = {"build": 40.0, "export": 120.0, "load": 60.0, "timing": 30.0}


def log(message: str, start: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)


def random_model(cfg: Pi0Config, seed: int = 0) -> Pi0Model:
    """Full-size capable: parameters built on the meta device, then filled one by one (1x memory). A Pi0FastModel
    for a Pi0-FAST config."""
    with torch.device("meta"):
        model = build_model(cfg)
    state = {name: torch.cat(list(random_chunks(name, shape, seed))).reshape(shape)
             for name, shape in parameter_shapes(cfg).items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def norm_stats(robot_dim: int) -> NormStats:
    return NormStats.from_arrays("mean_std", "openpi", random_stats_arrays(robot_dim, 0, "state"),
                                 random_stats_arrays(robot_dim, 1, "action"))


def export(model: Pi0Model, out: Path, precision: str, tokenizer: Path) -> float:
    if (out / "bundle.yaml").is_file():
        return 0.0  # exported by an earlier call on the same machine, or by --export-only in the background
    start = time.perf_counter()
    dim = min(ROBOT_DIM, model.cfg.state_dim, model.cfg.action_dim)
    if model.cfg.model_type == "pi0fast":  # its FAST tokenizer fitted on synthetic chunks of the robot's width
        fast = write_test_fast_tokenizer(out.with_name(out.name + "-fast-tokenizer"), model.cfg, dim)
        write_fast_bundle(model, out, norm_stats=norm_stats(dim), tokenizer_path=tokenizer, fast_tokenizer_dir=fast,
                          robot_state_dim=dim, robot_action_dim=dim, fast_width=dim, precision=precision)
        return time.perf_counter() - start
    write_bundle(model, out, norm_stats=norm_stats(dim), tokenizer_path=tokenizer, robot_state_dim=dim,
                 robot_action_dim=dim, precision=precision, optimize=DEFAULT_OPTIMIZE)
    return time.perf_counter() - start


def load_cuda_libraries(backend: str) -> bool:
    """GPU backends: CUDA/cuDNN from the nvidia-* wheels through onnxruntime.preload_dlls(), explicitly: the
    runtime never imports torch, so the benchmark must not depend on torch having loaded them first."""
    if backend == "ort-cpu":
        return False
    return preload_cuda_libraries(import_onnxruntime("benchmarks/gpu_latency.py"))


def ort_providers() -> list[str]:
    try:
        return list(import_onnxruntime("benchmarks/gpu_latency.py").get_available_providers())
    except Exception:  # noqa: BLE001  no onnxruntime at all: eager torch still runs
        return []


@dataclass(frozen=True)
class Budget:
    """The run's wall-time allowance: a step that would not fit is skipped and recorded, not started."""

    start_s: float
    total_s: float

    def left_s(self) -> float:
        return self.total_s - (time.perf_counter() - self.start_s)

    def allows(self, cost_s: float, what: str, skipped: list, **where) -> bool:
        if self.left_s() >= cost_s:
            return True
        reason = f"needs ~{cost_s:.0f} s, {max(self.left_s(), 0):.0f} s of --budget-s {self.total_s:.0f} left"
        skipped.append({"what": what, **where, "reason": reason})
        log(f"SKIPPED {what} {where}: {reason}")
        return False


@dataclass
class Models:
    """One random model: the export source, its eager copies on the device (one per --eager-dtypes), the
    float32 reference on the device (one of the eager copies when float32 is timed too) and a tokenizer."""

    source: Pi0Model
    eager: dict[str, Pi0Model]
    reference: Pi0Model
    tokenizer: Path


def build(args: argparse.Namespace, model_type: str, work: Path, with_eager: bool = True) -> Models:
    cfg = PRESETS[args.size](model_type)
    if model_type == "pi0fast" and getattr(args, "fast_tokens", None):
        cfg = replace(cfg, max_action_tokens=args.fast_tokens)
    vocab = min(MAX_TEST_VOCAB, cfg.vocab_size)  # every id the tokenizer emits must be a row of the embedding
    tokenizer = work / f"tokenizer-{vocab}.model"
    if not tokenizer.is_file():
        train_test_tokenizer(tokenizer, vocab)
    log(f"building a random {args.size} {model_type} model")
    model = random_model(cfg)
    if not with_eager:
        return Models(model, {}, model, tokenizer)
    eager = {d: copy.deepcopy(model).to(args.device).to_precision(EAGER_DTYPES[d]) for d in args.eager_dtypes}
    reference = eager.get("float32") or copy.deepcopy(model).to(args.device)
    log(f"eager models on {args.device}: {list(eager)} (+ float32 reference)")
    return Models(model, eager, reference, tokenizer)


def bundle_dir(work: Path, cfg: Pi0Config, args: argparse.Namespace) -> Path:
    return work / f"{cfg.model_type}-{args.size}-{len(cfg.cameras)}cam-{args.precision}"


def with_cameras(model: Pi0Model, cameras: int) -> Pi0Config:
    """The weights do not depend on the camera count; the prefix length does."""
    cfg = model.cfg
    names = cfg.cameras[:cameras] if cameras <= len(cfg.cameras) else tuple(f"camera_{i}" for i in range(cameras))
    model.cfg = replace(cfg, cameras=names)
    return model.cfg


def load_policies(bundle: Path, args: argparse.Namespace, skip: dict[str, str], errors: dict[str, str],
                  variants: dict = RUNTIME_VARIANTS) -> dict:
    """Every runtime variant of --backend that starts; a failure is recorded, never raised."""
    policies = {}
    for name, backend, options in variants[args.backend]:
        if name in skip:
            errors[name] = f"skipped: failed in the tiny preflight: {skip[name]}"
            continue
        try:
            policies[name] = Policy(bundle, backend, verify_checksums=False, **options)
            log(f"loaded {name} on {', '.join(policies[name].providers)}")
        except Exception as exc:  # noqa: BLE001  (recorded: the other variants still run)
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} could not start: {errors[name]}")
    return policies


def inputs_for(bundle: Path, policies: dict, cfg: Pi0Config, device: str):
    """The observation, noise and the runtime's preprocessed arrays (as eager's tensors): one set for all."""
    helper = next(iter(policies.values()), None) or Policy(bundle, "ort-cpu", verify_checksums=False)
    obs = synthetic_observation(helper, seed=0)
    noise = np.random.default_rng(1).standard_normal((1, cfg.action_horizon, cfg.action_dim), dtype=np.float32)
    feeds = helper.preprocess([obs])
    eager_obs = {k: torch.from_numpy(v).to(device) for k, v in feeds.items() if v is not None}
    eager_obs.setdefault("state", torch.zeros(1, cfg.state_dim, device=device))
    return obs, noise, eager_obs, torch.from_numpy(noise).to(device)


def summaries(samples: dict, models: Models, eager_inputs: tuple, eager_state: dict, policies: dict,
              runtime_inputs: tuple, errors: dict[str, str]) -> dict:
    """p50/p99 per stage, each variant's max abs action error against eager float32 on the same noise, and the
    runtime's speed-up over the faster eager variant."""
    (eager_obs, eager_noise), (obs, noise) = eager_inputs, runtime_inputs
    try:
        with torch.inference_mode():
            reference = models.reference.sample_actions(eager_obs, eager_noise).float().cpu().numpy()
    except Exception as exc:  # noqa: BLE001  (out of memory, say: the timings stand without their errors)
        reference, errors["eager torch float32 reference"] = None, f"{type(exc).__name__}: {exc}"
    results = {}
    for name, rows in samples.items():
        if not rows:
            errors[name] = "no timed chunk fitted the budget"
            continue
        entry = {key: summarize([r[key] for r in rows]) for key in rows[0]}
        if name in eager_state:
            actions = eager_state[name]["actions"].float().cpu().numpy()
            entry["peak_gpu_mb"] = eager_state[name]["peak_gpu_mb"]
        else:
            policies[name].infer(obs, noise=noise)
            actions = policies[name].backend.read_actions()
            entry["providers"] = list(policies[name].providers)  # where it really ran
        if reference is not None:
            entry["max_abs_action_error_vs_float32"] = float(np.abs(actions - reference).max())
        results[name] = entry
    eager_p50 = [r["chunk_ms"]["p50"] for n, r in results.items() if n in eager_state]
    for name in (n for n in results if n in policies and eager_p50):
        results[name]["speedup_vs_fastest_eager"] = round(min(eager_p50) / results[name]["chunk_ms"]["p50"], 2)
    return results


def bench_cameras(models: Models, cameras: int, args: argparse.Namespace, work: Path, timing_deadline_s: float,
                  skip: dict[str, str]) -> dict:
    cfg = with_cameras(models.source, cameras)
    bundle = bundle_dir(work, cfg, args)
    export_s = export(models.source, bundle, args.precision, models.tokenizer)
    log(f"{cfg.model_type}, {cameras} camera(s): exported {bundle} in {export_s:.0f} s")
    errors: dict[str, str] = {}
    if cfg.model_type == "pi0fast":
        results = bench_fast(models, bundle, args, timing_deadline_s, skip, errors)
        return {"model": cfg.model_type, "cameras": cameras, "prefix_tokens": cfg.prefix_len,
                "export_s": round(export_s, 1), "bundle": str(bundle), "variants": results, "errors": errors}
    policies = load_policies(bundle, args, skip, errors)
    obs, noise, eager_obs, eager_noise = inputs_for(bundle, policies, cfg, args.device)

    variants, eager_state, policy_mem = {}, {}, {}
    for dtype, model in models.eager.items():
        variants[f"eager torch {dtype}"], eager_state[f"eager torch {dtype}"] = eager_runner(
            model, eager_obs, eager_noise, args.device)
    for name, policy in policies.items():
        before = nontorch_gpu_mb(args.device)
        variants[name] = policy_runner(policy, obs, noise)
        try:
            variants[name]()  # the first chunk allocates the arenas and captures the CUDA graphs
        except Exception as exc:  # noqa: BLE001
            errors[name] = f"{type(exc).__name__}: {exc}"
            del variants[name]
            continue
        after = nontorch_gpu_mb(args.device)
        policy_mem[name] = None if before is None else round(after - before, 1)
    samples = measure(variants, args.warmup, args.iters, errors, deadline_s=timing_deadline_s)

    results = summaries(samples, models, (eager_obs, eager_noise), eager_state, policies, (obs, noise), errors)
    results |= {name: r | {"peak_gpu_mb": policy_mem[name]} for name, r in results.items() if name in policy_mem}
    for policy in policies.values():
        policy.close()
    return {"model": cfg.model_type, "cameras": cameras, "prefix_tokens": cfg.prefix_len,
            "export_s": round(export_s, 1), "bundle": str(bundle), "variants": results, "errors": errors}


def bench_fast(models: Models, bundle: Path, args: argparse.Namespace, deadline_s: float, skip: dict[str, str],
               errors: dict[str, str]) -> dict:
    """Pi0-FAST (benchmarks/gpu_fast.py): eager generate per dtype vs the runtime's decode loop, same arrays."""
    policies = load_policies(bundle, args, skip, errors, FAST_RUNTIME_VARIANTS)
    helper = next(iter(policies.values()), None) or Policy(bundle, "ort-cpu", verify_checksums=False)
    feeds = helper.preprocess([synthetic_observation(helper, seed=0)])
    eager_obs = {k: torch.from_numpy(v).to(args.device) for k, v in feeds.items() if v is not None}
    variants, states = {}, {}
    for dtype, model in models.eager.items():
        variants[f"eager torch {dtype}"], states[f"eager torch {dtype}"] = fast_eager_runner(model, eager_obs,
                                                                                           args.device)
    for name, policy in policies.items():
        states[name] = {}
        variants[name] = fast_policy_runner(policy, feeds, states[name])
    samples = measure(variants, args.warmup, args.iters, errors, deadline_s=deadline_s)
    reference = reference_tokens(models.reference, eager_obs, errors)
    results = {name: {key: summarize([r[key] for r in rows]) for key in rows[0]}
               | {"tokens_equal_to_float32": token_agreement(states[name].get("tokens"), reference)}
               for name, rows in samples.items() if rows}
    eager_p50 = [r["chunk_ms"]["p50"] for n, r in results.items() if n.startswith("eager")]
    for name in (n for n in results if n in policies and eager_p50):
        results[name]["speedup_vs_fastest_eager"] = round(min(eager_p50) / results[name]["chunk_ms"]["p50"], 2)
        results[name]["providers"] = list(policies[name].providers)
    for policy in policies.values():
        policy.close()
    return results


def reference_tokens(model, observation: dict, errors: dict[str, str]) -> np.ndarray | None:
    """Eager float32's tokens for the same budget, untimed (None, recorded, when it cannot run)."""
    try:
        with torch.inference_mode():
            return model.generate({k: observation[k] for k in ("images", "image_masks", "tokens", "token_masks")},
                                  ()).cpu().numpy()
    except Exception as exc:  # noqa: BLE001  (out of memory, say: the timings stand without the comparison)
        errors["eager torch float32 reference"] = f"{type(exc).__name__}: {exc}"
        return None


def machine(device: str, providers: list[str]) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": None, "onnxruntime_providers": providers}
    try:
        info["onnxruntime"] = import_onnxruntime().__version__
    except Exception:  # noqa: BLE001
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_mb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**20)
    return info


def preflight(args: argparse.Namespace, work: Path, record: dict) -> dict[str, str]:
    """Every variant once at tiny size (seconds): -> {variant: error} for those that cannot run here. Never
    raises: a preflight that breaks is recorded and the full-size run goes on with every variant."""
    tiny = argparse.Namespace(**{**vars(args), "size": "tiny", "iters": 1, "warmup": 1})
    failed, record["preflight"] = {}, []
    for model_type in args.models:
        try:
            run = bench_cameras(build(tiny, model_type, work), 3, tiny, work, time.perf_counter() + 60, {})
        except Exception as exc:  # noqa: BLE001
            record["preflight"].append({"model": model_type, "error": f"{type(exc).__name__}: {exc}"})
            continue
        record["preflight"].append(run)
        failed |= {name: error for name, error in run["errors"].items() if not name.startswith("eager")}
    log(f"preflight (tiny): failed {failed or 'none'}")
    return failed


def guess_s(args: argparse.Namespace, seen: dict[str, float], step: str) -> float:
    return seen.get(step, FULL_SIZE_GUESS_S[step] if args.size == "full" else 0.0)


def bench_model(model_type: str, args: argparse.Namespace, work: Path, record: dict, ctx: dict) -> None:
    """One model, every camera count, under the budget; what does not fit is recorded under "skipped"."""
    budget, seen, skipped = ctx["budget"], ctx["seen"], record["skipped"]
    left_models = len(args.models) - args.models.index(model_type) - 1
    per_model = sum(guess_s(args, seen, s) for s in ("build", "export", "load", "timing"))
    if not budget.allows(per_model - guess_s(args, seen, "timing") / 2, "the whole model", skipped,
                         model=model_type):
        return
    start = time.perf_counter()
    try:
        models = build(args, model_type, work, with_eager=not args.export_only)
    except Exception as exc:  # noqa: BLE001  (out of memory, say: the next model may still fit)
        skipped.append({"what": "the whole model", "model": model_type, "reason": f"failed: {exc!r}"[:500]})
        return
    seen["build"] = time.perf_counter() - start
    for cameras in args.cameras:
        if args.export_only:
            export(models.source, bundle_dir(work, with_cameras(models.source, cameras), args), args.precision,
                   models.tokenizer)
            continue
        deadline = min(time.perf_counter() + args.timing_s,
                       budget.start_s + budget.total_s - left_models * per_model - 10.0)
        start = time.perf_counter()
        try:
            run = bench_cameras(models, cameras, args, work, deadline, ctx["skip"])
        except Exception as exc:  # noqa: BLE001
            skipped.append({"what": "every variant", "model": model_type, "cameras": cameras,
                            "reason": f"failed: {exc!r}"[:500]})
            write_outputs(record, ctx["json"], ctx["markdown"])
            continue
        seen["export"] = max(run["export_s"], seen.get("export", 0.0))
        seen["load"] = max(time.perf_counter() - start - run["export_s"] - args.timing_s, 0.0)
        record["runs"].append(run)
        write_outputs(record, ctx["json"], ctx["markdown"])
        log(f"{model_type}, {cameras} camera(s) done")
    del models
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("pi0", "pi05", "pi0fast"), default=["pi0", "pi05"],
                        help="pi0fast: the Pi0-FAST row (benchmarks/gpu_fast.py)")
    parser.add_argument("--fast-tokens", type=int, default=None,
                        help="Pi0-FAST: tokens decoded per chunk (default: the preset's max_action_tokens)")
    parser.add_argument("--size", choices=tuple(PRESETS), default="full")
    parser.add_argument("--cameras", type=int, nargs="+", default=[3])
    parser.add_argument("--precision", choices=("float32", "float16", "bfloat16"), default="float16")
    parser.add_argument("--backend", choices=tuple(RUNTIME_VARIANTS), default="ort-cuda")
    parser.add_argument("--device", default="cuda", help="where eager torch runs (cuda, cpu)")
    parser.add_argument("--eager-dtypes", nargs="+", choices=tuple(EAGER_DTYPES), default=["float16", "bfloat16"],
                        help="eager weight dtypes timed; float32 is always run once as the accuracy reference")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timing-s", type=float, default=30.0, help="at most this long timing one model")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="wall-time guard: steps that would not fit are skipped and recorded")
    parser.add_argument("--workdir", default=None, help="bundles are kept here and reused (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="the record, rewritten after every step")
    parser.add_argument("--markdown", type=Path, default=None, help="the table (default: --json with .md)")
    parser.add_argument("--no-preflight", dest="preflight", action="store_false",
                        help="skip the tiny-size run of every variant that comes first (a few seconds)")
    parser.add_argument("--export-only", action="store_true",
                        help="only build and export the bundles into --workdir (a background step while the "
                             "onnxruntime-gpu parts are staged)")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny: ort-cpu and eager float32 (what CI runs; < 60 s)")
    args = parser.parse_args(argv)
    if args.dry_run:
        args = argparse.Namespace(**{**vars(args), "size": "tiny", "device": "cpu", "backend": "ort-cpu",
                                     "precision": "float32", "eager_dtypes": ["float32"],
                                     "iters": min(args.iters, 3), "warmup": 1})
    if args.markdown is None and args.json is not None:
        args.markdown = args.json.with_suffix(".md")
    return args


def fall_back_if_no_gpu_ort(args: argparse.Namespace, providers: list[str], record: dict) -> None:
    if args.backend != "ort-cuda" or "CUDAExecutionProvider" in providers:
        return
    record["fallback"] = (f"onnxruntime-gpu is not installed here (onnxruntime providers: {providers}): "
                          "NO ort-cuda FIGURES; eager torch and ort-cpu only (docs/benchmarks.md, GPU)")
    print("\n" + "!" * 100 + f"\n!!! FALLBACK: {record['fallback']}\n" + "!" * 100 + "\n", flush=True)
    args.backend = "ort-cpu"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    budget = Budget(time.perf_counter(), args.budget_s)
    try:
        preloaded = load_cuda_libraries(args.backend)  # before torch touches CUDA (machine() below)
    except Exception:  # noqa: BLE001  no onnxruntime at all: the fallback below says so
        preloaded = False
    providers = ort_providers()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pi0edge-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    record = {"command": "python benchmarks/gpu_latency.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "models": args.models, "size": args.size, "precision": args.precision, "backend": args.backend,
              "device": args.device, "iters": args.iters, "warmup": args.warmup, "budget_s": args.budget_s,
              "machine": machine(args.device, providers), "cuda_libraries_preloaded": preloaded,
              "runs": [], "skipped": []}
    if not args.export_only:
        fall_back_if_no_gpu_ort(args, providers, record)
    record["backend"] = args.backend
    skip = preflight(args, work, record) if args.preflight and args.size != "tiny" and not args.export_only else {}
    ctx = {"budget": budget, "seen": {}, "skip": skip, "json": args.json, "markdown": args.markdown}
    for model_type in args.models:
        bench_model(model_type, args, work, record, ctx)
    record["wall_s"] = round(time.perf_counter() - budget.start_s, 1)
    write_outputs(record, args.json, args.markdown)
    print(markdown(record))
    return record


if __name__ == "__main__":
    main()
