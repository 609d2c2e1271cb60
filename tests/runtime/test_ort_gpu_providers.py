"""ORT GPU backends prove where they run, with a fake onnxruntime (no GPU here): a session that fell back
to the CPU provider is refused with its cause, ort-trt passes the TensorRT provider's own options, bfloat16
is refused before any session is built, and `auto` falls through to ort-cpu saying why."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import types

import numpy as np
import onnxruntime as real_ort
import pytest

from pi0edge import contract as c
from pi0edge.errors import BackendUnavailableError
from pi0edge.manifest import PRECISIONS, load_manifest
from pi0edge.runtime.backends.ort import OrtBackend, check_session_providers

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


class FakeSession:
    """A session that reports `started` as its providers; I/O comes from a real CPU session of the graph."""

    def __init__(self, path: str, started: list[str]):
        self._real = real_ort.InferenceSession(path, providers=[CPU])
        self._started = started

    def get_providers(self):
        return list(self._started)

    def get_inputs(self):
        return self._real.get_inputs()

    def get_outputs(self):
        return self._real.get_outputs()


def fake_onnxruntime(monkeypatch, available: list[str], gpu_starts: bool, raises: Exception | None = None):
    """Install a fake `onnxruntime` offering `available`; GPU sessions start on what they asked for when
    gpu_starts, else on the CPU provider (ONNX Runtime's silent fallback). CPU-only requests get real sessions.
    -> the list of (graph path, providers) each InferenceSession call received."""
    calls = []

    def inference_session(path, options=None, providers=None):
        calls.append((path, providers))
        if providers == [CPU]:
            return real_ort.InferenceSession(path, options, providers=providers)
        if raises is not None:
            raise raises
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        return FakeSession(path, [*names, CPU] if gpu_starts else [CPU])

    fake = types.SimpleNamespace(
        get_available_providers=lambda: list(available), InferenceSession=inference_session,
        SessionOptions=real_ort.SessionOptions, GraphOptimizationLevel=real_ort.GraphOptimizationLevel,
        RunOptions=real_ort.RunOptions, OrtValue=real_ort.OrtValue)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    return calls


@pytest.fixture
def bundle(tiny_bundle_factory, tmp_path):
    """A private copy: ort-trt creates its cache folder inside the bundle."""
    return shutil.copytree(tiny_bundle_factory("pi0")[0], tmp_path / "bundle")


def _with_precision(bundle, precision: str):
    return dataclasses.replace(load_manifest(bundle), precision=precision)


@pytest.mark.parametrize(("name", "cause"), [("ort-cuda", "cuDNN"), ("ort-trt", "libnvinfer")])
def test_gpu_session_that_silently_fell_back_to_cpu_is_refused_with_its_cause(bundle, monkeypatch, name, cause):
    fake_onnxruntime(monkeypatch, [TRT, CUDA, CPU], gpu_starts=False)
    with pytest.raises(BackendUnavailableError) as err:
        OrtBackend(load_manifest(bundle), name)
    message = str(err.value)
    assert f"runs on ['{CPU}'] instead of" in message and cause in message and "prefix.onnx" in message


def test_provider_missing_from_the_distribution_names_the_cpu_only_onnxruntime(monkeypatch):
    fake = types.SimpleNamespace(get_available_providers=lambda: [CPU])
    with pytest.raises(BackendUnavailableError, match=r"CPU-only onnxruntime.*pi0edge\[gpu\]"):
        check_session_providers(fake, "ort-cuda", [CPU], "bundle/prefix.onnx")


def test_gpu_session_that_throws_while_starting_is_unavailable_not_a_crash(bundle, monkeypatch):
    fake_onnxruntime(monkeypatch, [CUDA, CPU], gpu_starts=True, raises=RuntimeError("CUDA failure 100: no device"))
    with pytest.raises(BackendUnavailableError, match="no device.*nvidia-smi"):
        OrtBackend(load_manifest(bundle), "ort-cuda")


def test_gpu_sessions_that_start_on_their_provider_are_accepted_and_reported(bundle, monkeypatch):
    fake_onnxruntime(monkeypatch, [CUDA, CPU], gpu_starts=True)
    backend = OrtBackend(load_manifest(bundle), "ort-cuda")
    assert backend.providers == (CUDA, CPU) and backend.device == "cuda"


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_ort_trt_passes_tensorrt_option_names_and_caches_in_the_bundle(bundle, monkeypatch, precision):
    calls = fake_onnxruntime(monkeypatch, [TRT, CUDA, CPU], gpu_starts=True)
    OrtBackend(_with_precision(bundle, precision), "ort-trt", enable_cuda_graph=True)
    cache = bundle / "engines" / "ort-trt"
    assert cache.is_dir() and len(calls) == 2
    for _, providers in calls:
        (trt_name, trt), (cuda_name, cuda) = providers
        assert (trt_name, cuda_name) == (TRT, CUDA)
        assert trt["trt_cuda_graph_enable"] == 1 and "enable_cuda_graph" not in trt
        assert "enable_cuda_graph" not in cuda  # the capture is TensorRT's, not the fallback provider's
        assert trt["trt_engine_cache_enable"] == 1 and trt["trt_engine_cache_path"] == str(cache)
        assert trt["trt_timing_cache_enable"] == 1 and trt["trt_timing_cache_path"] == str(cache)
        assert "trt_fp16_enable" not in trt  # precision comes from the (strongly typed) graph


@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt"])
def test_bfloat16_bundle_on_ort_gpu_is_refused_before_any_session(bundle, monkeypatch, name):
    calls = fake_onnxruntime(monkeypatch, [TRT, CUDA, CPU], gpu_starts=True)
    with pytest.raises(BackendUnavailableError, match=r"bfloat16 Conv at opset 19.*--precision float16.*tensorrt"):
        OrtBackend(_with_precision(bundle, "bfloat16"), name)
    assert calls == []


@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt"])
def test_float16_bundle_is_allowed_on_ort_gpu_backends(bundle, monkeypatch, name):
    fake_onnxruntime(monkeypatch, [TRT, CUDA, CPU], gpu_starts=True)
    assert OrtBackend(_with_precision(bundle, "float16"), name).providers[0] in (CUDA, TRT)


def test_host_dtype_map_covers_every_precision_but_bfloat16():
    for precision in PRECISIONS:
        if precision == "bfloat16":
            assert precision not in c.NUMPY_DTYPES  # never crosses to the host
        else:
            assert np.dtype(c.NUMPY_DTYPES[precision]).name == precision


def test_graph_io_without_a_host_dtype_is_refused_at_load_naming_it(bundle):
    manifest = load_manifest(bundle)
    prefix = manifest.graphs[c.PREFIX_GRAPH]
    outputs = tuple({**o, "dtype": "bfloat16"} if o["name"] == c.PAST_KEYS else o for o in prefix.outputs)
    graphs = {**manifest.graphs, c.PREFIX_GRAPH: dataclasses.replace(prefix, outputs=outputs)}
    with pytest.raises(BackendUnavailableError, match="past_keys is bfloat16, which has no host dtype"):
        OrtBackend(dataclasses.replace(manifest, graphs=graphs), "ort-cpu")


def _tensorrt_unavailable(monkeypatch):
    import pi0edge.runtime.backends.tensorrt as trt_module

    class NoTensorRT:
        def __init__(self, manifest, **options):
            raise BackendUnavailableError("TensorRT is not installed (test)")

    monkeypatch.setattr(trt_module, "TensorRTBackend", NoTensorRT)


def test_auto_falls_through_a_failing_cuda_to_ort_cpu_logging_each_skip(bundle, monkeypatch, caplog):
    from pi0edge.runtime.policy import Policy

    _tensorrt_unavailable(monkeypatch)
    fake_onnxruntime(monkeypatch, [CUDA, CPU], gpu_starts=False)
    with caplog.at_level(logging.INFO, logger="pi0edge.runtime.policy"), Policy(bundle, backend="auto") as policy:
        assert policy.backend_name == "ort-cpu" and policy.providers == (CPU,)
        assert policy.infer(policy_observation(policy)).actions.shape == (policy.action_horizon, 6)
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auto: skipped")]
    assert [s.split(":")[1].split()[-1] for s in skips] == ["tensorrt", "ort-trt", "ort-cuda"]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.getMessage().startswith("auto: skipped"))
    assert "does not offer" in skips[1] and "instead of CUDAExecutionProvider" in skips[2]


def policy_observation(policy):
    from pi0edge.runtime.profile import synthetic_observation

    return synthetic_observation(policy)


def test_profile_json_names_the_backend_and_provider_that_ran(bundle, monkeypatch, tmp_path, capsys):
    from pi0edge.cli import main

    _tensorrt_unavailable(monkeypatch)
    fake_onnxruntime(monkeypatch, [CPU], gpu_starts=False)
    out = tmp_path / "profile.json"
    assert main(["profile", str(bundle), "--backend", "auto", "--iters", "1", "--warmup", "0", "--json",
                 str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["backend"] == "ort-cpu" and summary["providers"] == [CPU]
    assert f"on ort-cpu ({CPU})" in capsys.readouterr().out
