"""Action error of `pi0edge export`'s default bundle (optimized graphs, loop graph) against the eager reference.

    python benchmarks/export_error.py --configs tiny mid --models pi0 pi05 --precisions float32 float16

Per config, model and precision: a random model (seed 0; norm weights randomized, else folding them would be
trivially exact), exported with the default optimizations, run through the runtime's ORT CPU backend (the
loop graph, as a robot runs it) on one random observation (3 cameras, a 20-token prompt, batch 1); the eager
`Pi0Model.sample_actions` in float32 is the reference. Prints a markdown row per case and a JSON record.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pi0edge.export import config as configs
from pi0edge.export.bundle import write_bundle
from pi0edge.export.model import Pi0Model
from pi0edge.export.optimize import OptimizeOptions
from pi0edge.export.tokenizer import train_test_tokenizer
from pi0edge.manifest import load_manifest
from pi0edge.normalization import NormStats
from pi0edge.runtime.backends.ort import OrtBackend
from pi0edge.schedule import euler_schedule


def random_model(cfg) -> Pi0Model:
    torch.manual_seed(0)
    model = Pi0Model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight") and "dense" not in name:
                base = 1.0 if "layer_norm" in name or "post_layernorm" in name else 0.0  # LayerNorm vs RMSNorm
                p.copy_(base + torch.randn(p.shape, generator=g) * 0.3)
    return model


def measure(config_name: str, model_type: str, precision: str, work: Path) -> dict:
    cfg = getattr(configs, config_name)(model_type)
    model = random_model(cfg)
    dim = cfg.state_dim
    stats = NormStats.from_arrays("mean_std", "openpi", {"mean": np.zeros(dim), "std": np.ones(dim)},
                                  {"mean": np.zeros(dim), "std": np.ones(dim)})
    out = work / f"{config_name}-{model_type}-{precision}"
    out.mkdir(parents=True)
    tokenizer = train_test_tokenizer(out / "tokenizer.model", cfg.vocab_size)
    start = time.perf_counter()
    write_bundle(model, out / "bundle", norm_stats=stats, tokenizer_path=tokenizer, robot_state_dim=dim,
                 robot_action_dim=dim, precision=precision, optimize=OptimizeOptions())
    export_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    s = cfg.vision.image_size
    n = min(20, cfg.max_token_len)
    feeds = {"images": rng.integers(0, 256, (1, cfg.num_cameras, s, s, 3), dtype=np.uint8),
             "image_masks": np.ones((1, cfg.num_cameras), bool),
             "tokens": np.concatenate([rng.integers(4, cfg.vocab_size, (1, n)),
                                       np.zeros((1, cfg.max_token_len - n), np.int64)], axis=1),
             "token_masks": np.arange(cfg.max_token_len)[None] < n,
             "state": rng.standard_normal((1, cfg.state_dim)).astype(np.float32)}
    noise = rng.standard_normal((1, cfg.action_horizon, cfg.action_dim)).astype(np.float32)
    expected = model.sample_actions({k: torch.from_numpy(v) for k, v in feeds.items()}, torch.from_numpy(noise),
                                    num_steps=cfg.num_steps).numpy()
    times, dt = euler_schedule(cfg.num_steps)
    backend = OrtBackend(load_manifest(out / "bundle"), "ort-cpu", whole_loop=True)
    backend.prepare(1, times, dt)
    backend.run_prefix(feeds["images"], feeds["image_masks"], feeds["tokens"], feeds["token_masks"])
    backend.set_noise(noise, None if cfg.is_pi05 else feeds["state"])
    backend.run_loop()
    actions = backend.read_actions()
    err = float(np.abs(actions - expected).max())
    return {"config": config_name, "model": model_type, "precision": precision, "max_abs_err": err,
            "rel_err": err / float(np.abs(expected).max()), "export_s": round(export_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--models", nargs="+", default=["pi0", "pi05"])
    parser.add_argument("--precisions", nargs="+", default=["float32", "float16"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pi0edge-export-error-"))
    print("| config | model | precision | max abs action error | relative | export s |\n|---|---|---|---|---|---|")
    records = []
    for config_name in args.configs:
        for model_type in args.models:
            for precision in args.precisions:
                r = measure(config_name, model_type, precision, work)
                records.append(r)
                print(f"| {r['config']} | {r['model']} | {r['precision']} | {r['max_abs_err']:.2e} | "
                      f"{r['rel_err']:.2e} | {r['export_s']} |", flush=True)
    print(json.dumps(records))


if __name__ == "__main__":
    main()
