"""Loading an openpi JAX (orbax) checkpoint: wall time and peak RSS of the writer and of the loader.

    flock /work/fullsize.lock nice -n 5 timeout 3000 python benchmarks/openpi_jax_load.py --preset full \
        --model pi0 --dtype bfloat16 --workdir /tmp/pi0edge-openpi-jax

Two stages, each in its own process so its peak RSS (ru_maxrss of the child) is its own:
1. write a random checkpoint of the preset with the real orbax-checkpoint, in openpi's tree
   (export/random_orbax.py; reused when present);
2. `load_checkpoint` it as `pi0edge export` does (a float32 model by default, NaN/Inf scan, sha256 of
   params/), reading the store with tensorstore, no JAX.
Prints a JSON record (and writes it with --json); docs/export.md and docs/benchmarks.md quote it. The
loader's peak is compared with the float32 model's bytes: "one copy of the weights" is the model itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from full_size import run_stage  # noqa: E402  (a sibling script: the same per-stage child process)

from pi0edge.atomic import write_text_atomic  # noqa: E402

# The child of stage 2: the load as `pi0edge export` does it, then what the peak is compared with.
LOAD_STAGE = """
import math, time
from pathlib import Path
import torch
from pi0edge.export.checkpoint import load_checkpoint
from pi0edge.export.checkpoint.orbax_io import list_arrays

start = time.perf_counter()
ckpt = load_checkpoint({ckpt!r}, dtype={load_dtype}, settings={{"action_horizon": 50}})
load_s = time.perf_counter() - start
itemsize = {{"F32": 4, "BF16": 2, "F16": 2, "F64": 8}}
arrays = list_arrays(Path({ckpt!r}) / "params").values()
result = {{"load_s": round(load_s, 1), "model_type": ckpt.config.model_type, "layout": ckpt.layout,
          "model_bytes": sum(p.nbytes for p in ckpt.model.state_dict().values()),
          "largest_stored_array_bytes": max(math.prod(a.shape) * itemsize[a.dtype] for a in arrays)}}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "mid", "full"), default="full")
    parser.add_argument("--model", choices=("pi0", "pi05"), default="pi0")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16",
                        help="the stored weights' dtype (bfloat16 halves the disk)")
    parser.add_argument("--load-dtype", choices=("float32", "stored"), default="float32",
                        help="the model's dtype: float32 as `pi0edge export` loads for its optimized graphs, or the "
                             "stored one (as --no-optimize --precision bfloat16 loads a bfloat16 checkpoint)")
    parser.add_argument("--workdir", default="/tmp/pi0edge-openpi-jax")
    parser.add_argument("--json", type=Path, help="also write the record here")
    args = parser.parse_args(argv)
    ckpt = Path(args.workdir) / f"{args.preset}-{args.model}-{args.dtype}"
    record = {"preset": args.preset, "model": args.model, "stored_dtype": args.dtype,
              "machine": platform.platform(), "cpu_count": os.cpu_count()}
    if not (ckpt / "params" / "commit_success.txt").is_file():
        record["write"] = run_stage(
            "from pi0edge.export.config import PRESETS; from pi0edge.export.random_orbax import "
            f"write_orbax_checkpoint; write_orbax_checkpoint({str(ckpt)!r}, PRESETS[{args.preset!r}]({args.model!r}), "
            f"dtype={args.dtype!r}); result = {{}}")
    record["params_bytes"] = sum(p.stat().st_size for p in (ckpt / "params").rglob("*") if p.is_file())
    load_dtype = "None" if args.load_dtype == "stored" else f"torch.{args.load_dtype}"
    record["load_dtype"] = args.load_dtype
    record["load"] = run_stage(LOAD_STAGE.format(ckpt=str(ckpt), load_dtype=load_dtype))
    load = record["load"]
    load["peak_over_model"] = round(load["peak_rss_mb"] * 2**20 / load["model_bytes"], 3)
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        write_text_atomic(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
