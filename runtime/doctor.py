"""`pi0edge doctor`: can this machine run pi0edge, and this bundle, on which backend, and if not, what to
install. Machine facts come from runtime/machine_info.py, provider start-up from runtime/provider_probe.py;
with a bundle, every backend is tried for real (a Policy built, one synthetic chunk run) and the bundle's
weights are compared with the free memory they would load into.

Exit status (`doctor_exit_code`): 0 when at least one backend runs the bundle, or, without a bundle, when at
least one ONNX Runtime provider starts; else 1.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from pi0edge.errors import Pi0EdgeError
from pi0edge.manifest import Manifest, load_manifest
from pi0edge.runtime.machine_info import machine_summary
from pi0edge.runtime.memory_budget import weights_mb
from pi0edge.runtime.policy import AUTO_ORDER, Policy
from pi0edge.runtime.profile import synthetic_observation
from pi0edge.runtime.provider_probe import probe_providers

GPU_INSTALL = ("pip install 'pi0edge[gpu]' (onnxruntime-gpu, CUDA 12 and cuDNN 9 wheels; never next to the "
               "CPU onnxruntime)")


def try_backend(bundle_dir: Path, backend: str) -> dict:
    """Build a Policy on `backend` and run one synthetic chunk: the proof that it runs this bundle."""
    t0 = time.perf_counter()
    try:
        with Policy(bundle_dir, backend=backend) as policy:
            load_ms = (time.perf_counter() - t0) * 1e3
            chunk = policy.infer(synthetic_observation(policy))
            return {"backend": backend, "runs": True, "providers": list(policy.providers),
                    "load_ms": load_ms, "chunk_ms": chunk.timings_ms["total_ms"]}
    except Exception as exc:  # noqa: BLE001 - every failure is a diagnosis to print, not a crash
        reason = str(exc) if isinstance(exc, Pi0EdgeError) else f"{type(exc).__name__}: {exc}"
        return {"backend": backend, "runs": False, "error": reason}


def memory_fit(manifest: Manifest, machine: dict) -> dict:
    """Whether the weights fit in the free memory of the first GPU and in available host memory."""
    need = weights_mb(manifest)
    gpus = machine["gpus"]
    gpu_free = gpus[0]["memory_free_mb"] if gpus else None
    host_free = machine["cpu"]["memory_available_mb"]
    return {"weights_mb": need, "gpu_free_mb": gpu_free, "fits_gpu": None if gpu_free is None else need <= gpu_free,
            "host_available_mb": host_free, "fits_host": None if host_free is None else need <= host_free}


def check_bundle(bundle_dir: Path, machine: dict) -> dict:
    try:
        manifest = load_manifest(bundle_dir)
    except Pi0EdgeError as exc:
        return {"path": str(bundle_dir), "error": str(exc), "backends": []}
    return {"path": str(bundle_dir), "model_type": manifest.model_type, "precision": manifest.precision,
            "memory": memory_fit(manifest, machine),
            "backends": [try_backend(bundle_dir, name) for name in AUTO_ORDER]}


def advice(report: dict) -> list[str]:
    """What to install or fix, from what the probes found."""
    machine, tips = report["machine"], []
    dists = machine["onnxruntime_distributions"]
    if len(dists) > 1:
        tips.append(f"both {' and '.join(dists)} are installed and shadow each other: pip uninstall -y "
                    f"{' '.join(dists)}, then pip install 'pi0edge[gpu]' (GPU) or 'pi0edge' (CPU)")
    if not dists:
        tips.append("no onnxruntime installed: pip install pi0edge (CPU) or 'pi0edge[gpu]' (NVIDIA GPU)")
    started = {p["provider"] for p in report["providers"] if p["started"]}
    if (machine["gpus"] or machine["jetson"]) and "CUDAExecutionProvider" not in started:
        tips.append("an NVIDIA GPU is here but ONNX Runtime's CUDA provider does not start: " + GPU_INSTALL
                    + "; on a Jetson, the onnxruntime-gpu wheel for your JetPack (docs/jetson.md)")
    if machine["tensorrt"] is None and machine["gpus"]:
        tips.append("TensorRT is not importable (the tensorrt backend, fastest): pip install 'pi0edge[trt]'")
    bundle = report.get("bundle")
    if bundle and bundle.get("memory", {}).get("fits_gpu") is False:
        tips.append("the bundle's weights do not fit in free GPU memory: export --precision float16, or free "
                    "the GPU")
    return tips


def diagnose(bundle_dir: str | Path | None = None) -> dict:
    machine = machine_summary()
    report = {"machine": machine, "providers": [asdict(p) for p in probe_providers()]}
    if bundle_dir is not None:
        report["bundle"] = check_bundle(Path(bundle_dir), machine)
    report["advice"] = advice(report)
    report["ok"] = doctor_exit_code(report) == 0
    return report


def doctor_exit_code(report: dict) -> int:
    if "bundle" in report:
        return 0 if any(b["runs"] for b in report["bundle"]["backends"]) else 1
    return 0 if any(p["started"] for p in report["providers"]) else 1


def _gpu_lines(machine: dict) -> list[str]:
    if not machine["gpus"]:
        return ["GPU         none (no nvidia-smi, or it lists no GPU)"]
    lines = []
    for i, g in enumerate(machine["gpus"]):
        cc = g["compute_capability"] or "unknown"
        lines.append(f"GPU {i}       {g['name']}, {g['memory_free_mb']:.0f} / {g['memory_total_mb']:.0f} MB free, "
                     f"compute capability {cc}, precisions {', '.join(g['precisions']) or 'unknown'}")
    lines.append(f"driver      {machine['gpus'][0]['driver']}, CUDA {machine['cuda_driver_version'] or 'unknown'}")
    return lines


def _machine_lines(machine: dict) -> list[str]:
    cpu = machine["cpu"]
    mem = f", {cpu['memory_available_mb']:.0f} MB available" if cpu["memory_available_mb"] is not None else ""
    lines = [f"Python      {machine['python']}", f"OS          {machine['os']}",
             f"CPU         {cpu['model']}, {cpu['cores']} cores{mem}", *_gpu_lines(machine)]
    libs = ", ".join(f"{what} {found}" for what, found in machine["gpu_libraries"].items())
    lines.append(f"libraries   {libs}")
    if machine["gpu_wheels"]:
        lines.append("GPU wheels  " + ", ".join(f"{k} {v}" for k, v in machine["gpu_wheels"].items()))
    lines.append(f"TensorRT    {machine['tensorrt'] or 'not installed'}")
    if machine["jetson"]:
        j = machine["jetson"]
        lines.append(f"Jetson      {j['model']}, L4T {j['l4t']}, JetPack {j['jetpack'] or 'unknown'}")
    dists = machine["onnxruntime_distributions"]
    lines.append("onnxruntime " + (", ".join(f"{k} {v}" for k, v in dists.items()) or "not installed"))
    return lines


def _bundle_lines(bundle: dict) -> list[str]:
    lines = [f"bundle      {bundle['path']}"]
    if "error" in bundle:
        return lines + [f"  cannot be read: {bundle['error']}"]
    mem = bundle["memory"]
    lines.append(f"  {bundle['model_type']}, {bundle['precision']}, weights {mem['weights_mb']:.0f} MB")
    for where, key, free in (("GPU", "fits_gpu", "gpu_free_mb"), ("host", "fits_host", "host_available_mb")):
        if mem[key] is not None:
            lines.append(f"  fits in free {where} memory ({mem[free]:.0f} MB): {'yes' if mem[key] else 'NO'}")
    for b in bundle["backends"]:
        if b["runs"]:
            lines.append(f"  {b['backend']:<9} runs it on {b['providers'][0]}: load {b['load_ms']:.0f} ms, one "
                         f"chunk {b['chunk_ms']:.1f} ms")
        else:
            lines.append(f"  {b['backend']:<9} does not: {b['error']}")
    return lines


def render_text(report: dict) -> str:
    lines = _machine_lines(report["machine"])
    for p in report["providers"]:
        state = "started" if p["started"] else "FAILED"
        lines.append(f"provider    {p['provider']} {state} ({p['time_ms']:.0f} ms): {p['detail']}")
    if "bundle" in report:
        lines += _bundle_lines(report["bundle"])
    lines += [f"advice      {tip}" for tip in report["advice"]]
    lines.append("verdict     " + ("OK" if report["ok"] else "nothing can run" + (" this bundle" if "bundle" in
                                                                                  report else "")))
    return "\n".join(lines)
