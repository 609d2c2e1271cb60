"""`pi0edge doctor` on this CPU machine (CPU provider started, GPU none, the tiny bundle runs on ort-cpu and
fits), and the parsing of what nvidia-smi and a Jetson's release files say, from faked output."""

from __future__ import annotations

import json
import os
import stat

import pytest

from pi0edge.cli import main
from pi0edge.runtime import doctor, machine_info
from pi0edge.runtime.provider_probe import ProviderProbe, tiny_add_model

FAKE_SMI = """#!/bin/sh
case "$1" in
  --query-gpu=*) echo "NVIDIA H200, 143771, 143181, 9.0, 570.86.15" ;;
  *) echo "| NVIDIA-SMI 570.86.15    Driver Version: 570.86.15    CUDA Version: 12.8 |" ;;
esac
"""


@pytest.fixture
def no_nvidia_smi(monkeypatch):
    monkeypatch.setattr(machine_info.shutil, "which", lambda name: None)


@pytest.fixture
def fake_nvidia_smi(monkeypatch, tmp_path):
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text(FAKE_SMI)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")


def test_doctor_without_bundle_exits_0_with_cpu_provider_started_and_gpu_none(no_nvidia_smi, tmp_path, capsys):
    out = tmp_path / "doctor.json"
    assert main(["doctor", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CPUExecutionProvider started" in text and "GPU         none" in text
    report = json.loads(out.read_text())
    assert report["machine"]["gpus"] == [] and report["ok"] is True
    cpu = next(p for p in report["providers"] if p["provider"] == "CPUExecutionProvider")
    assert cpu["started"] is True and cpu["time_ms"] > 0


def test_doctor_with_a_bundle_says_ort_cpu_runs_it_and_its_weights_fit(tiny_bundle_factory, no_nvidia_smi, capsys):
    bundle_dir, _ = tiny_bundle_factory("pi0")
    assert main(["doctor", str(bundle_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    backends = {b["backend"]: b for b in report["bundle"]["backends"]}
    assert list(backends) == ["tensorrt", "ort-trt", "ort-cuda", "ort-cpu"]
    assert backends["ort-cpu"]["runs"] and backends["ort-cpu"]["providers"][0] == "CPUExecutionProvider"
    assert backends["ort-cpu"]["chunk_ms"] > 0
    memory = report["bundle"]["memory"]
    assert memory["weights_mb"] > 0 and memory["fits_host"] is True and memory["fits_gpu"] is None


def test_doctor_exits_1_when_the_bundle_is_missing_or_no_provider_starts(tmp_path, monkeypatch, no_nvidia_smi):
    assert main(["doctor", str(tmp_path / "missing")]) == 1
    monkeypatch.setattr(doctor, "probe_providers",
                        lambda: [ProviderProbe("CPUExecutionProvider", False, 1.0, "RuntimeError: broken")])
    assert main(["doctor"]) == 1


def test_faked_nvidia_smi_gives_name_memory_compute_capability_driver_and_cuda(fake_nvidia_smi, capsys):
    gpus, cuda = machine_info.nvidia_gpus()
    assert [(g.name, g.memory_total_mb, g.memory_free_mb, g.compute_capability, g.driver) for g in gpus] == [
        ("NVIDIA H200", 143771.0, 143181.0, "9.0", "570.86.15")]
    assert cuda == "12.8"
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "NVIDIA H200, 143181 / 143771 MB free, compute capability 9.0" in text
    assert "CUDA 12.8" in text
    assert "CUDA provider does not start" in text  # a GPU, and only the CPU onnxruntime here


def test_nvidia_smi_csv_without_a_compute_capability_keeps_the_gpu():
    (gpu,) = machine_info.parse_nvidia_smi_csv("Orin (nvgpu), [N/A], [N/A], [N/A], 540.4.0\n")
    assert gpu.name == "Orin (nvgpu)" and gpu.compute_capability is None and gpu.driver == "540.4.0"


@pytest.mark.parametrize(("cc", "precisions"), [
    ("5.3", ["fp32", "fp16"]), ("7.5", ["fp32", "fp16", "int8"]), ("8.7", ["fp32", "fp16", "int8", "bf16"]),
    ("8.9", ["fp32", "fp16", "int8", "bf16", "fp8"]), (None, [])])
def test_precisions_follow_the_compute_capability(cc, precisions):
    assert machine_info.supported_precisions(cc) == precisions


def test_jetson_model_and_l4t_release_are_read_from_their_files(tmp_path):
    assert machine_info.jetson_info(tmp_path) is None
    (tmp_path / "etc").mkdir()
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic\n")
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    assert machine_info.jetson_info(tmp_path) == {"model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "R36.4.3",
                                                  "jetpack": "6"}


def test_both_onnxruntime_distributions_installed_are_warned_about(no_nvidia_smi):
    machine = machine_info.machine_summary() | {"onnxruntime_distributions": {"onnxruntime": "1.22.0",
                                                                              "onnxruntime-gpu": "1.22.0"}}
    tips = doctor.advice({"machine": machine, "providers": []})
    assert any("both onnxruntime and onnxruntime-gpu" in tip and "pip uninstall" in tip for tip in tips)


def test_the_probe_graph_is_a_valid_onnx_model():
    onnx = pytest.importorskip("onnx", reason="onnx is the export extra")
    model = onnx.load_from_string(tiny_add_model())
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Add"]
