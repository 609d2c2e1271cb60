"""The engine build and the tensorrt backend against recording fakes of TensorRT 10 / 11 and cuda-python
(tests/runtime/fake_gpu.py): what they call, in which order, on which stream. No GPU needed."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from fake_gpu import PRECISION_FLAGS, CallLog, fake_cudart, fake_tensorrt

import pi0edge.runtime.backends.cuda_runtime as cuda_runtime
import pi0edge.runtime.backends.tensorrt as trt_backend
from pi0edge import contract as c
from pi0edge.errors import ConfigError
from pi0edge.export.engine_build import build_engines
from pi0edge.manifest import load_manifest
from pi0edge.schedule import euler_schedule

STREAM_CALLS = {"cudaMemcpyAsync": -1, "cudaStreamSynchronize": 1, "cudaStreamBeginCapture": 1,
                "cudaStreamEndCapture": 1, "cudaGraphLaunch": 2, "execute_async_v3": 2}  # call -> stream argument


@pytest.fixture
def fake_gpu(monkeypatch, tiny_bundle_factory, tmp_path):
    """-> make(flavour, bundle precision) -> (bundle copy, call log); tensorrt and cudart replaced by fakes."""

    def make(flavour: str, precision: str = "float32", rtc: bool = False):
        bundle = tmp_path / f"bundle-{flavour}-{precision}{'-rtc' if rtc else ''}"
        shutil.copytree(tiny_bundle_factory("pi0", precision, rtc=rtc)[0], bundle)
        manifest = load_manifest(bundle)
        graph_io = {g: (manifest.graphs[g].inputs, manifest.graphs[g].outputs)
                    for g in (c.PREFIX_GRAPH, c.DENOISE_STEP_GRAPH)}
        calls = CallLog()
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(flavour, calls, graph_io))
        rt = fake_cudart(calls)
        monkeypatch.setattr(cuda_runtime, "load_cudart", lambda: rt)
        monkeypatch.setattr(trt_backend, "load_cudart", lambda: rt)
        return bundle, calls

    return make


# ---- the build: strongly typed on TensorRT 10 and 11 -----------------------------------------------------


@pytest.mark.parametrize("flavour", ["10", "11"])
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_build_is_strongly_typed_with_no_precision_flag_on_tensorrt_10_and_11(fake_gpu, flavour, precision):
    bundle, calls = fake_gpu(flavour, precision)
    report = build_engines(bundle, None, 1, workspace_gb=1)
    assert [call for call in calls if call[0] == "create_network"] == [("create_network", True)] * 2
    assert not [call for call in calls if call[0] == "set_flag" and call[1] in PRECISION_FLAGS]
    assert [call[1] for call in calls if call[0] == "build_serialized_network"] == ["prefix", "denoise_step"]
    assert ("set_memory_pool_limit", "WORKSPACE", 1 << 30) in calls
    assert report.fingerprint.precision == {"float32": "fp32", "float16": "fp16"}[precision]
    assert (report.engine_dir / "prefix.plan").read_bytes() == b"fake-plan:prefix"


@pytest.mark.parametrize("flavour", ["10", "11"])
def test_fp16_from_a_float32_bundle_is_refused_not_built_weakly_typed(fake_gpu, flavour):
    bundle, calls = fake_gpu(flavour)
    with pytest.raises(ConfigError, match="pi0edge export --precision float16"):
        build_engines(bundle, "fp16", 1)
    assert "set_flag" not in calls.names() and "build_serialized_network" not in calls.names()


# ---- the backend: one stream, async copies, one synchronize per chunk ---------------------------------------


def _chunk(backend, manifest, seed: int) -> np.ndarray:
    """One chunk as Policy runs it with the whole loop."""
    rng = np.random.default_rng(seed)
    cams, size, length = len(manifest.cameras), manifest.image_size, manifest.max_token_len
    times, dt = euler_schedule(manifest.num_steps)
    backend.prepare(1, times, dt)
    backend.run_prefix(rng.integers(0, 256, (1, cams, size, size, 3), dtype=np.uint8), np.ones((1, cams), bool),
                       np.ones((1, length), np.int64), np.ones((1, length), bool))
    backend.set_noise(rng.standard_normal((1, manifest.action_horizon, manifest.action_dim), dtype=np.float32),
                      rng.standard_normal((1, manifest.state_dim), dtype=np.float32))
    backend.run_loop()
    return backend.read_actions()


@pytest.mark.parametrize("use_cuda_graph", [True, False])
def test_every_copy_and_launch_of_a_chunk_is_async_on_the_one_stream_with_one_synchronize(fake_gpu,
                                                                                         use_cuda_graph):
    bundle, calls = fake_gpu("10")
    build_engines(bundle, None, 1)
    manifest = load_manifest(bundle)
    backend = trt_backend.TensorRTBackend(manifest, use_cuda_graph=use_cuda_graph)
    stream = backend.stream.ptr
    for chunk in range(3):  # eager, then capture, then replay
        start = len(calls)
        _chunk(backend, manifest, seed=chunk)
        chunk_calls = calls[start:]
        names = [call[0] for call in chunk_calls]
        assert "cudaMemcpy" not in names and "cudaDeviceSynchronize" not in names  # nothing off the stream
        for call in chunk_calls:
            if call[0] in STREAM_CALLS:
                assert int(call[STREAM_CALLS[call[0]]]) == stream, call
        assert names.count("cudaStreamSynchronize") == 1 and names[-1] == "cudaStreamSynchronize"
        launches = [i for i, n in enumerate(names) if n in ("execute_async_v3", "cudaGraphLaunch")]
        copies = [call for call in chunk_calls if call[0] == "cudaMemcpyAsync"]
        assert copies[-1][4].name == "cudaMemcpyDeviceToHost" and names.index("cudaStreamSynchronize") > launches[-1]
        if chunk == 2 and use_cuda_graph:
            assert names.count("cudaGraphLaunch") == 1 and names.count("execute_async_v3") == 1  # prefix + graph
    backend.close()


def test_per_step_constants_are_uploaded_async_on_the_stream_not_with_a_blocking_memcpy(fake_gpu):
    bundle, calls = fake_gpu("11")
    build_engines(bundle, None, 1)
    manifest = load_manifest(bundle)
    backend = trt_backend.TensorRTBackend(manifest, use_cuda_graph=False)
    start = len(calls)
    times, dt = euler_schedule(manifest.num_steps)
    backend.prepare(1, times, dt)
    uploads = [call for call in calls[start:] if call[0].startswith("cudaMemcpy")]
    assert uploads and all(call[0] == "cudaMemcpyAsync" and int(call[-1]) == backend.stream.ptr for call in uploads)
    backend.close()


def test_an_rtc_bundle_binds_its_guidance_inputs_and_stages_them_on_the_stream(fake_gpu):
    bundle, calls = fake_gpu("10", rtc=True)
    build_engines(bundle, None, 1)
    manifest = load_manifest(bundle)
    backend = trt_backend.TensorRTBackend(manifest, use_cuda_graph=False)
    times, dt = euler_schedule(manifest.num_steps)
    backend.prepare(1, times, dt)  # every step context binds every input, the guidance ones included
    start = len(calls)
    horizon, width = manifest.action_horizon, manifest.action_dim
    backend.set_guidance(np.ones((1, horizon, width), np.float32), np.ones((1, horizon), np.float32),
                         np.full(1, 10.0, np.float32))
    copies = [call for call in calls[start:] if call[0].startswith("cudaMemcpy")]
    assert len(copies) == 3 and all(call[0] == "cudaMemcpyAsync" and int(call[-1]) == backend.stream.ptr
                                    for call in copies)
    backend.close()
