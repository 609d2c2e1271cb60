"""The TensorRT engine folder as the runtime reads it: where it lives, its fingerprint, and when it is stale.

    BUNDLE/engines/<gpu-slug>-trt<version>/{prefix.plan, denoise_step.plan, engine.yaml}

engine.yaml holds the fingerprint (TensorRT version, GPU name, compute capability, the graphs' sha256,
precision, max batch). `pi0edge build` (export/engine_build.py) writes it; the `tensorrt` backend recomputes
what it can and refuses an engine whose fingerprint differs, with the command that rebuilds it. It lives in
runtime/ so that the runtime never imports the export package (docs/architecture.md, "Layering rules").
Plain Python: no TensorRT needed except in `import_tensorrt`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from pi0edge import contract as c
from pi0edge.errors import BundleError, MissingExtraError
from pi0edge.manifest import Manifest, read_yaml_mapping

ENGINES_DIR = "engines"
FINGERPRINT_NAME = "engine.yaml"
ENGINE_FORMAT_VERSION = 1
GRAPHS = (c.PREFIX_GRAPH, c.DENOISE_STEP_GRAPH)
# The precision a bundle's graphs carry in their ONNX dtypes (bundle.yaml "precision").
NATIVE_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
FINGERPRINT_FIELDS = ("tensorrt_version", "gpu_name", "compute_capability", "onnx_sha256", "precision", "max_batch")
TENSORRT_HINT = ("on a Jetson, TensorRT comes with JetPack: apt install python3-libnvinfer; on a desktop, from "
                 "NVIDIA's tensorrt wheels or tarball")


@dataclass(frozen=True)
class EngineFingerprint:
    """What an engine depends on. Any field that differs from this machine and bundle makes it stale."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    onnx_sha256: dict[str, str] = field(hash=False)  # graph file (and its .data) -> sha256, from bundle.yaml
    precision: str
    max_batch: int

    def to_dict(self) -> dict:
        return {"tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
                "compute_capability": self.compute_capability, "onnx_sha256": dict(self.onnx_sha256),
                "precision": self.precision, "max_batch": self.max_batch}

    @classmethod
    def from_dict(cls, d: dict, where: Path) -> EngineFingerprint:
        if not isinstance(d, dict):
            raise BundleError(f"{where}: 'fingerprint' must be a mapping")
        missing = [name for name in FINGERPRINT_FIELDS if name not in d]
        if missing:
            raise BundleError(f"{where}: fingerprint field(s) {missing} missing; rebuild the engines")
        if not isinstance(d["onnx_sha256"], dict):
            raise BundleError(f"{where}: fingerprint field 'onnx_sha256' must map file names to sha256")
        return cls(str(d["tensorrt_version"]), str(d["gpu_name"]), str(d["compute_capability"]),
                   {str(k): str(v) for k, v in d["onnx_sha256"].items()}, str(d["precision"]), int(d["max_batch"]))


def gpu_slug(gpu_name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090'; Jetson AGX Orin reports 'Orin' -> 'orin'."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return slug or "unknown-gpu"


def engine_dir_name(gpu_name: str, tensorrt_version: str) -> str:
    return f"{gpu_slug(gpu_name)}-trt{tensorrt_version}"


def default_engine_dir(bundle_dir: str | Path, gpu_name: str, tensorrt_version: str) -> Path:
    return Path(bundle_dir) / ENGINES_DIR / engine_dir_name(gpu_name, tensorrt_version)


def onnx_digests(manifest: Manifest) -> dict[str, str]:
    """The sha256 of each graph file and of its external-data file (`<graph>.onnx.data`), from bundle.yaml."""
    files = manifest.files
    out = {}
    for graph in GRAPHS:
        name = manifest.graphs[graph].file
        for f in (name, name + ".data"):
            if f in files:
                out[f] = str(files[f])
    return out


def rebuild_command(bundle_dir: str | Path, precision: str, max_batch: int) -> str:
    return f"pi0edge build {bundle_dir} --precision {precision} --max-batch {max_batch}"


def fingerprint_mismatches(engine: EngineFingerprint, expected: EngineFingerprint) -> list[str]:
    """One line per fingerprint field where the engine differs from what this machine and bundle need."""
    problems = []
    for name in FINGERPRINT_FIELDS:
        got, want = getattr(engine, name), getattr(expected, name)
        if name == "onnx_sha256":
            changed = sorted(f for f in set(got) | set(want) if got.get(f) != want.get(f))
            if changed:
                problems.append(f"onnx_sha256: {', '.join(changed)} changed since the engine was built")
        elif got != want:
            problems.append(f"{name}: engine has {got!r}, needed {want!r}")
    return problems


def stale_engine_message(engine_dir: Path, bundle_dir: str | Path, problems: list[str], precision: str,
                         max_batch: int) -> str:
    return (f"{engine_dir}: the TensorRT engines are stale ({'; '.join(problems)}); rebuild them on this machine: "
            f"{rebuild_command(bundle_dir, precision, max_batch)}")


def read_engine_yaml(engine_dir: Path) -> tuple[EngineFingerprint, dict]:
    """-> (the fingerprint, the whole engine.yaml); a missing, unreadable or unknown-format file -> BundleError."""
    path = engine_dir / FINGERPRINT_NAME
    if not path.is_file():
        raise BundleError(f"{engine_dir}: no {FINGERPRINT_NAME}; the engine folder is incomplete")
    raw = read_yaml_mapping(path)
    version = raw.get("format_version")
    if version != ENGINE_FORMAT_VERSION:
        raise BundleError(f"{path}: engine format version {version!r} is not the one this pi0edge reads "
                          f"({ENGINE_FORMAT_VERSION}); rebuild the engines")
    for key in ("fingerprint", "plans"):
        if not isinstance(raw.get(key), dict):
            raise BundleError(f"{path}: field '{key}' is missing")
    return EngineFingerprint.from_dict(raw["fingerprint"], path), raw


class TensorRTMissingError(MissingExtraError):
    """MissingExtraError plus where TensorRT really comes from: pip alone does not reach NVIDIA's libraries."""

    def __init__(self, purpose: str):
        super().__init__("tensorrt", "trt", purpose)
        self.msg = f"{self.args[0]} ({TENSORRT_HINT})"  # ImportError's __str__ prints msg
        self.args = (self.msg,)


def import_tensorrt(purpose: str) -> ModuleType:
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTMissingError(purpose) from exc
    return tensorrt
