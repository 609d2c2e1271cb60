"""What this machine is, for `pi0edge doctor`: CPU, NVIDIA GPUs (through nvidia-smi), driver, CUDA / cuDNN /
TensorRT libraries, Jetson model and L4T release, the onnxruntime distributions installed, and the
precisions a GPU supports by compute capability. Every probe answers "none" / "not found" rather than fail.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

NVIDIA_SMI_QUERY = "name,memory.total,memory.free,compute_cap,driver_version"
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
# Minimum compute capability per precision (NVIDIA's CUDA / TensorRT support matrices).
PRECISION_MIN_CC = {"fp32": (0, 0), "fp16": (5, 3), "int8": (6, 1), "bf16": (8, 0), "fp8": (8, 9)}
# The libraries ONNX Runtime's GPU providers and TensorRT load: loader name -> what it is.
GPU_LIBRARIES = {"cudart": "CUDA runtime", "cublas": "cuBLAS", "cudnn": "cuDNN", "nvinfer": "TensorRT"}
# The pip wheels that carry them instead (found by onnxruntime.preload_dlls, not by the system loader).
GPU_WHEELS = ("nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12", "nvidia-cudnn-cu12", "tensorrt", "tensorrt-cu12")
L4T_TO_JETPACK = {"36": "6", "35": "5", "34": "5 (developer preview)", "32": "4"}


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_total_mb: float
    memory_free_mb: float
    compute_capability: str | None  # "8.7"; None where nvidia-smi cannot report it
    driver: str

    def to_json(self) -> dict:
        return asdict(self) | {"precisions": supported_precisions(self.compute_capability)}


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "[N/A]" (Jetson, MIG)
        return float("nan")


def parse_nvidia_smi_csv(text: str) -> list[GpuInfo]:
    """`nvidia-smi --query-gpu=NVIDIA_SMI_QUERY --format=csv,noheader,nounits` -> one GpuInfo per line."""
    gpus = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 5:
            continue
        name, total, free, cc, driver = fields
        cc = cc if re.fullmatch(r"\d+\.\d+", cc) else None
        gpus.append(GpuInfo(name, _number(total), _number(free), cc, driver))
    return gpus


def parse_cuda_version(nvidia_smi_banner: str) -> str | None:
    """The CUDA version the driver supports, from plain `nvidia-smi`'s banner ("CUDA Version: 12.4")."""
    match = re.search(r"CUDA Version:\s*([\d.]+)", nvidia_smi_banner)
    return match.group(1) if match else None


def _run(args: list[str]) -> str | None:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def nvidia_gpus() -> tuple[list[GpuInfo], str | None]:
    """-> (the GPUs nvidia-smi lists, the driver's CUDA version); ([], None) without nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], None
    text = _run([smi, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"])
    if text is None:  # drivers before compute_cap was a query field
        text = _run([smi, f"--query-gpu={NVIDIA_SMI_QUERY.replace('compute_cap', 'pstate')}",
                     "--format=csv,noheader,nounits"])
    return parse_nvidia_smi_csv(text or ""), parse_cuda_version(_run([smi]) or "")


def supported_precisions(compute_capability: str | None) -> list[str]:
    if compute_capability is None:
        return []
    major, minor = (int(p) for p in compute_capability.split("."))
    return [p for p, cc in PRECISION_MIN_CC.items() if (major, minor) >= cc]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_available_mb() -> float | None:
    """MemAvailable from /proc/meminfo (on a Jetson the GPU shares it), None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def jetson_info(root: Path = Path("/")) -> dict | None:
    """Jetson model (/proc/device-tree/model) and L4T release (/etc/nv_tegra_release, "# R36 (release),
    REVISION: 3.0, ...") with its JetPack major version; None off a Jetson."""
    release_file, model_file = root / "etc/nv_tegra_release", root / "proc/device-tree/model"
    if not release_file.exists():
        return None
    model = model_file.read_bytes().rstrip(b"\x00").decode(errors="replace").strip() if model_file.exists() else None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release_file.read_text(errors="replace"))
    l4t = f"R{match.group(1)}.{match.group(2)}" if match else None
    jetpack = L4T_TO_JETPACK.get(match.group(1)) if match else None
    return {"model": model, "l4t": l4t, "jetpack": jetpack}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_versions(distributions) -> dict[str, str]:
    return {d: v for d in distributions if (v := _version(d)) is not None}


def gpu_libraries() -> dict[str, str]:
    """Loader-visible GPU libraries: 'CUDA runtime' -> 'libcudart.so.12' or 'not found'."""
    return {what: ctypes.util.find_library(lib) or "not found" for lib, what in GPU_LIBRARIES.items()}


def tensorrt_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt  # noqa: PLC0415 - optional, and slow to import

        return str(tensorrt.__version__)
    except Exception:  # noqa: BLE001 - installed but broken (missing libnvinfer): say so as "not importable"
        return "installed, not importable"


def machine_summary() -> dict:
    gpus, cuda = nvidia_gpus()
    return {
        "python": platform.python_version(), "os": platform.platform(),
        "cpu": {"model": cpu_model(), "cores": os.cpu_count(), "memory_available_mb": memory_available_mb()},
        "gpus": [g.to_json() for g in gpus], "cuda_driver_version": cuda,
        "gpu_libraries": gpu_libraries(), "gpu_wheels": installed_versions(GPU_WHEELS),
        "tensorrt": tensorrt_version(), "jetson": jetson_info(),
        "onnxruntime_distributions": installed_versions(ORT_DISTRIBUTIONS),
    }
