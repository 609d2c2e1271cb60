"""Refuse, before allocating, a bundle whose weights cannot fit where they would load.

A session reads every graph file into host memory (ONNX Runtime and TensorRT alike, before any copy to the
GPU), so the weights must fit in the host's available memory whatever the backend; a GPU backend also needs
them in the GPU's free memory. On a Jetson the GPU shares the host's memory, and nvidia-smi reports no
GPU memory there: the host check covers it. The bound is the weights alone, a floor: a bundle refused here
could never load, and one that passes may still need up to ~2x its weights at peak (docs/benchmarks.md,
section 2). Unknown free memory (no /proc/meminfo, no nvidia-smi) skips that check.
"""

from __future__ import annotations

from pi0edge.errors import InsufficientMemoryError
from pi0edge.manifest import Manifest
from pi0edge.runtime import machine_info

GPU_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt")
SMALLER = ("export it smaller (`pi0edge export --precision float16` halves a float32 bundle; "
           "`pi0edge quantize --mode int8` quarters it) or free memory; `pi0edge doctor BUNDLE` shows the budget")


def weights_mb(manifest: Manifest) -> float:
    """The bundle's graph files (weights included), the tokenizer left out."""
    sizes = [manifest.path(name).stat().st_size for name in manifest.files
             if name != manifest.tokenizer_file and manifest.path(name).is_file()]
    return sum(sizes) / (1 << 20)


def gpu_free_mb() -> float | None:
    """Free memory of the first GPU nvidia-smi lists; None without nvidia-smi or on a Jetson (shared memory)."""
    gpus, _ = machine_info.nvidia_gpus()
    free = gpus[0].memory_free_mb if gpus else None
    return free if free and free > 0 else None


def check_weights_fit(manifest: Manifest, backend: str) -> None:
    """InsufficientMemoryError naming the bundle, the sizes and the way out when the weights cannot fit."""
    need = weights_mb(manifest)
    host = machine_info.memory_available_mb()
    if host is not None and need > host:
        raise InsufficientMemoryError(f"{manifest.bundle_dir}: its weights take {need:.0f} MB and the host has "
                                      f"{host:.0f} MB available; {SMALLER}")
    gpu = gpu_free_mb() if backend in GPU_BACKENDS else None
    if gpu is not None and need > gpu:
        raise InsufficientMemoryError(f"{manifest.bundle_dir}: its weights take {need:.0f} MB and the GPU has "
                                      f"{gpu:.0f} MB free (backend {backend}); {SMALLER}")
