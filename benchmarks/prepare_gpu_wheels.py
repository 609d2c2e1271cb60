"""onnxruntime-gpu for a bare GPU machine that has no network, carried in parts (docs/benchmarks.md, "GPU").

A device call carries at most 64 MiB (the working tree, ~2 MiB, included); the onnxruntime-gpu 1.31.1 wheel
for cp312 manylinux x86_64 is 255.6 MB (243.8 MiB), so it travels as 5 parts of <= 60 MiB, one per call,
staged into /tmp on the machine while it stays warm. The CUDA 13 runtime, cuBLAS, cuFFT, cuRAND, NVRTC and
cuDNN 9 it loads (its `cuda` and `cudnn` extras) are already on the lent machines' image as the nvidia-* wheels
of torch 2.11+cu130, so nothing else is carried; --with-cuda-libs adds them for a machine without them.

    here:   python benchmarks/prepare_gpu_wheels.py prepare         # -> benchmarks/.whl/ (git-ignored)
    there:  python3 benchmarks/prepare_gpu_wheels.py stage          # each call: carried parts -> /tmp
    there:  python3 benchmarks/prepare_gpu_wheels.py install        # join, check sha256, swap onnxruntimes

`install` checks every part's and the whole file's sha256 against manifest.json, then uninstalls the CPU
onnxruntime and installs onnxruntime-gpu with `pip install --no-index --no-deps`: one onnxruntime, never two
(both own the `onnxruntime` module). Exit status 3 when a part is missing or corrupt: the caller then
benchmarks without it (eager torch and ort-cpu) and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CARRY_DIR = HERE / ".whl"  # benchmarks/.gitignore ignores it; a device call carries its parts by name
STAGE_DIR = Path("/tmp/pi0edge-wheel-parts")  # survives between calls while the machine stays warm
PART_BYTES = 60 * 2**20
ORT_GPU = "onnxruntime-gpu==1.31.1"
CUDA_LIBS = ("nvidia-cuda-runtime~=13.0", "nvidia-cublas", "nvidia-cudnn-cu13~=9.0", "nvidia-cufft~=12.0",
             "nvidia-curand~=10.0", "nvidia-cuda-nvrtc~=13.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
MANIFEST = "manifest.json"


class WheelPartsError(RuntimeError):
    """A part is missing or its bytes are not the ones prepared: the message names the file."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_file(path: Path, out: Path, part_bytes: int = PART_BYTES) -> dict:
    """path -> out/<name>.part-00, -01, ...; -> its manifest entry (sha256 of the whole and of each part)."""
    parts = []
    with open(path, "rb") as f:
        for index, block in enumerate(iter(lambda: f.read(part_bytes), b"")):
            part = out / f"{path.name}.part-{index:02d}"
            part.write_bytes(block)
            parts.append({"name": part.name, "bytes": len(block), "sha256": sha256(part)})
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256(path), "parts": parts}


def join_file(entry: dict, parts_dir: Path, out_dir: Path) -> Path:
    """Check each part, join them, check the whole; -> the joined file. WheelPartsError names what is wrong."""
    for part in entry["parts"]:
        path = parts_dir / part["name"]
        if not path.is_file():
            raise WheelPartsError(f"{path} is missing: carry it in a device call and run `stage` (docs/benchmarks.md)")
        if sha256(path) != part["sha256"]:
            raise WheelPartsError(f"{path}: sha256 differs from {MANIFEST}'s; re-run `prepare` here and carry it again")
    joined = out_dir / entry["name"]
    with open(joined, "wb") as out:
        for part in entry["parts"]:
            with open(parts_dir / part["name"], "rb") as f:
                shutil.copyfileobj(f, out)
    if sha256(joined) != entry["sha256"]:
        raise WheelPartsError(f"{joined}: the joined parts' sha256 differs from {MANIFEST}'s")
    return joined


def prepare(out: Path, with_cuda_libs: bool) -> dict:
    """pip download (no dependencies, cp312 manylinux x86_64) -> parts + manifest.json in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    download = out / "download"
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    requirements = [ORT_GPU, *(CUDA_LIBS if with_cuda_libs else ())]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(download),
                    *requirements], check=True)
    # onnxruntime-gpu first: `install` installs in this order
    wheels = sorted(download.glob("*.whl"), key=lambda p: (not p.name.startswith("onnxruntime_gpu"), p.name))
    manifest = {"part_bytes": PART_BYTES, "files": [split_file(w, out) for w in wheels]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(download)
    return manifest


def stage(carried: Path, staged: Path) -> list[str]:
    """Copy the parts (and the manifest) this call carried to the staging folder; -> what it now holds."""
    staged.mkdir(parents=True, exist_ok=True)
    for path in sorted(carried.glob("*")) if carried.is_dir() else []:
        if path.is_file():
            shutil.copy2(path, staged / path.name)
    return sorted(p.name for p in staged.iterdir())


def install(staged: Path) -> list[Path]:
    """Join and check every wheel of the manifest, then swap the CPU onnxruntime for onnxruntime-gpu."""
    manifest_path = staged / MANIFEST
    if not manifest_path.is_file():
        raise WheelPartsError(f"{manifest_path} is missing: carry benchmarks/.whl/{MANIFEST} in a device call")
    entries = json.loads(manifest_path.read_text())["files"]
    wheels = [join_file(entry, staged, staged) for entry in entries]  # all checked before anything changes
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "uninstall", "-y", "-q", "onnxruntime"], check=False)  # absent is fine
    subprocess.run([*pip, "install", "-q", "--no-index", "--no-deps", "--no-compile", *map(str, wheels)], check=True)
    return wheels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("prepare", "stage", "install"))
    parser.add_argument("--carry-dir", type=Path, default=CARRY_DIR)
    parser.add_argument("--stage-dir", type=Path, default=STAGE_DIR)
    parser.add_argument("--with-cuda-libs", action="store_true", help="also carry the nvidia-* CUDA 13 wheels")
    args = parser.parse_args(argv)
    if args.step == "prepare":
        manifest = prepare(args.carry_dir, args.with_cuda_libs)
        for entry in manifest["files"]:
            print(f"{entry['name']}: {entry['bytes'] / 2**20:.1f} MiB in {len(entry['parts'])} part(s)")
        return 0
    if args.step == "stage":
        print("staged:", " ".join(stage(args.carry_dir, args.stage_dir)))
        return 0
    try:
        for wheel in install(args.stage_dir):
            print(f"installed {wheel.name}")
    except WheelPartsError as exc:
        print(f"NOT INSTALLED: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
