"""Full-size INT8 / FP8 quantization: action error against float32 and peak memory of each stage.

    python benchmarks/quantize_full.py --model pi0 --workdir /tmp/pi0edge-full --modes int8 fp8

Stages, each in its own process so its peak RSS (the child's ru_maxrss) is its own:
1. the float32 bundle: a random full-size checkpoint exported with `pi0edge export --precision float32`
   (benchmarks/full_size.py's stages; reused when <workdir>/<model>-float32-bundle exists);
2. per mode: `quantize_bundle` (what `pi0edge quantize` runs): calibration chunks on the float32 policy, the
   float32 reference chunks, each graph's activation ranges and streamed Q/DQ writing, the quantized chunks;
   the action error is the one recorded in the new bundle.yaml.
Prints a JSON record; docs/quantization.md quotes it. Needs ~24 GB RAM and ~45 GB disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from full_size import run_stage  # noqa: E402  (the benchmarks folder is not a package)


def quantize_stage(bundle: Path, out: Path, mode: str, calib_chunks: int, eval_chunks: int) -> dict:
    return run_stage(
        "from pi0edge.export.quantize import QuantizeOptions, quantize_bundle\n"
        f"r = quantize_bundle({str(bundle)!r}, {str(out)!r}, QuantizeOptions({mode!r}, calib_chunks={calib_chunks}, "
        f"eval_chunks={eval_chunks}), overwrite=True)\n"
        "result = {**r.error.to_dict(), 'quantize_s': {g: round(s, 1) for g, s in r.quantize_s.items()}, "
        "'quantized_gemms': r.quantized_gemms, 'calibration_samples': r.calibration_samples, "
        "'float_chunk_ms': round(r.float_chunk_ms), 'quant_chunk_ms': round(r.quant_chunk_ms), "
        "'total_s': round(r.total_s, 1)}\n"
        f"result['bundle_gb'] = round(sum(p.stat().st_size for p in r.bundle_dir.iterdir()) / 1e9, 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("pi0", "pi05"), default="pi0")
    parser.add_argument("--workdir", default="/tmp/pi0edge-full")
    parser.add_argument("--modes", nargs="+", choices=("int8", "fp8"), default=["int8", "fp8"])
    parser.add_argument("--calib-chunks", type=int, default=2)
    parser.add_argument("--eval-chunks", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the quantized bundles (~5 GB each)")
    args = parser.parse_args()
    work = Path(args.workdir)
    bundle = work / f"{args.model}-float32-bundle"
    record = {"model": args.model, "machine": platform.platform(), "cpu_count": os.cpu_count(),
              "calib_chunks": args.calib_chunks, "eval_chunks": args.eval_chunks}
    if not (bundle / "bundle.yaml").is_file():
        proc = subprocess.run([sys.executable, str(Path(__file__).parent / "full_size.py"), "--model", args.model,
                               "--precision", "float32", "--skip-infer", "--workdir", str(work)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"float32 export failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        record["float32_export"] = json.loads(proc.stdout[proc.stdout.index("{"):])
    record["float32_bundle_gb"] = round(sum(p.stat().st_size for p in bundle.iterdir()) / 1e9, 2)
    for mode in args.modes:
        out = work / f"{args.model}-{mode}-bundle"
        record[mode] = quantize_stage(bundle, out, mode, args.calib_chunks, args.eval_chunks)
        print(json.dumps({mode: record[mode]}), flush=True)
        if not args.keep:
            shutil.rmtree(out)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
