"""TensorRT: `pi0edge build` and the native `tensorrt` backend.

Two halves. The pure parts (fingerprint, engine folder naming, staleness and its rebuild command, precision
rules, optimization-profile shapes, the CLI without TensorRT) run everywhere. The real build and the parity
against ort-cpu are marked `gpu` and need `import tensorrt` to work: TensorRT cannot be installed on the CI
machines (PyPI has placeholders only), so there they are skipped, never faked.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pi0edge import contract as c
from pi0edge.errors import BackendUnavailableError, BundleError, ConfigError, MissingExtraError
from pi0edge.export.engine_build import (
    build_engines,
    check_gpu_supports,
    profile_shapes,
    register_build,
    resolve_precision,
)
from pi0edge.manifest import load_manifest
from pi0edge.runtime.backends.engine_fingerprint import (
    FINGERPRINT_NAME,
    EngineFingerprint,
    default_engine_dir,
    engine_dir_name,
    fingerprint_mismatches,
    gpu_slug,
    onnx_digests,
    read_engine_yaml,
    rebuild_command,
    stale_engine_message,
)

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
NO_TENSORRT_REASON = ("TensorRT is not installed (PyPI has only placeholders; it comes with JetPack or NVIDIA's "
                      "wheels): real builds and parity run where `import tensorrt` works")

# TensorRT fp32 (TF32 off) against ORT CPU, 10 Euler steps on tiny random weights: kernels differ only in
# summation order, so the bound is loose against float32 rounding yet catches any wiring error (a swapped
# buffer or a wrong t is O(1)). Not yet measured on a GPU here: see docs/tensorrt.md.
ACTION_ATOL_TRT_FP32 = 1e-3
# float16 engines (strongly typed from a float16 bundle) against float32 ort-cpu: as the ONNX float16 parity bound.
ACTION_ATOL_TRT_FP16 = 3e-2
# A replayed CUDA graph runs the very kernels of the eager loop on the same buffers.
ACTION_ATOL_GRAPH_REPLAY = 1e-6


def _fingerprint(**overrides) -> EngineFingerprint:
    values = {"tensorrt_version": "10.3.0.30", "gpu_name": "Orin", "compute_capability": "8.7",
              "onnx_sha256": {"prefix.onnx": "a" * 64, "denoise_step.onnx": "b" * 64}, "precision": "fp16",
              "max_batch": 1}
    values.update(overrides)
    return EngineFingerprint(**values)


# ---- naming -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu,version,expected", [
    ("NVIDIA GeForce RTX 4090", "10.7.0.23", "nvidia-geforce-rtx-4090-trt10.7.0.23"),
    ("Orin", "10.3.0.30", "orin-trt10.3.0.30"),
    ("NVIDIA H100 80GB HBM3", "11.4.0", "nvidia-h100-80gb-hbm3-trt11.4.0"),
    ("NVIDIA Jetson AGX Thor (T5000)", "10.13.3", "nvidia-jetson-agx-thor-t5000-trt10.13.3"),
])
def test_engine_dir_name_is_gpu_slug_and_tensorrt_version(gpu, version, expected):
    assert engine_dir_name(gpu, version) == expected
    assert default_engine_dir("/b", gpu, version) == Path("/b/engines") / expected


def test_gpu_slug_never_empty():
    assert gpu_slug("???") == "unknown-gpu"


# ---- fingerprint and staleness --------------------------------------------------------------------------


def test_fingerprint_roundtrips_through_engine_yaml_dict():
    fp = _fingerprint(max_batch=4)
    assert EngineFingerprint.from_dict(yaml.safe_load(yaml.safe_dump(fp.to_dict())), Path("x")) == fp


def test_fingerprint_from_dict_names_missing_fields():
    d = _fingerprint().to_dict()
    del d["compute_capability"]
    with pytest.raises(BundleError, match="compute_capability"):
        EngineFingerprint.from_dict(d, Path("engine.yaml"))


def test_identical_fingerprints_have_no_mismatch():
    assert fingerprint_mismatches(_fingerprint(), _fingerprint()) == []


@pytest.mark.parametrize("field,value", [
    ("tensorrt_version", "10.7.0.23"), ("gpu_name", "NVIDIA GeForce RTX 4090"), ("compute_capability", "8.9"),
    ("precision", "bf16"), ("max_batch", 2), ("onnx_sha256", {"prefix.onnx": "c" * 64, "denoise_step.onnx": "b" * 64}),
])
def test_each_differing_fingerprint_field_is_reported(field, value):
    problems = fingerprint_mismatches(_fingerprint(), _fingerprint(**{field: value}))
    assert len(problems) == 1 and problems[0].startswith(field)
    if field == "onnx_sha256":
        assert "prefix.onnx" in problems[0] and "denoise_step.onnx" not in problems[0]


def test_stale_message_contains_the_exact_rebuild_command():
    problems = fingerprint_mismatches(_fingerprint(), _fingerprint(tensorrt_version="10.7.0.23"))
    message = stale_engine_message(Path("/robot/bundle/engines/orin-trt10.3.0.30"), "/robot/bundle", problems,
                                   "fp16", 2)
    assert "pi0edge build /robot/bundle --precision fp16 --max-batch 2" in message
    assert "10.3.0.30" in message and "10.7.0.23" in message
    assert rebuild_command("b", "bf16", 1) == "pi0edge build b --precision bf16 --max-batch 1"


def test_read_engine_yaml_refuses_missing_unknown_and_incomplete(tmp_path):
    with pytest.raises(BundleError, match="no engine.yaml"):
        read_engine_yaml(tmp_path)
    (tmp_path / FINGERPRINT_NAME).write_text(yaml.safe_dump({"format_version": 99}))
    with pytest.raises(BundleError, match="format version 99"):
        read_engine_yaml(tmp_path)
    (tmp_path / FINGERPRINT_NAME).write_text(yaml.safe_dump({"format_version": 1, "plans": {}}))
    with pytest.raises(BundleError, match="'fingerprint' is missing"):
        read_engine_yaml(tmp_path)
    (tmp_path / FINGERPRINT_NAME).write_text(yaml.safe_dump(
        {"format_version": 1, "fingerprint": _fingerprint().to_dict(), "plans": {}}))
    assert read_engine_yaml(tmp_path)[0] == _fingerprint()


# ---- from a tiny bundle's manifest ------------------------------------------------------------------------


def test_onnx_digests_are_the_manifest_checksums_of_both_graphs(tiny_bundle_factory):
    manifest = load_manifest(tiny_bundle_factory("pi0")[0])
    digests = onnx_digests(manifest)
    files = manifest.files
    assert {"prefix.onnx", "denoise_step.onnx"} <= set(digests)
    assert all(digests[f] == files[f] for f in digests)
    assert "tokenizer.model" not in digests


def test_profile_shapes_put_batch_1_opt_max_on_the_batch_dim_only(tiny_bundle_factory):
    manifest = load_manifest(tiny_bundle_factory("pi0")[0])
    prefix = profile_shapes(manifest.graphs[c.PREFIX_GRAPH], max_batch=4, opt_batch=1)
    assert set(prefix) == set(manifest.graphs[c.PREFIX_GRAPH].input_names)
    cams, size = len(manifest.cameras), manifest.image_size
    assert prefix[c.IMAGES] == ((1, cams, size, size, 3), (1, cams, size, size, 3), (4, cams, size, size, 3))
    assert prefix[c.TOKENS] == ((1, manifest.max_token_len), (1, manifest.max_token_len), (4, manifest.max_token_len))
    step = profile_shapes(manifest.graphs[c.DENOISE_STEP_GRAPH], max_batch=2)
    assert set(step) == set(manifest.graphs[c.DENOISE_STEP_GRAPH].input_names)
    kv = manifest.graphs[c.DENOISE_STEP_GRAPH].io(c.PAST_KEYS)["shape"]  # [layers, B, T, K, D]: batch is dim 1
    assert step[c.PAST_KEYS][0][1] == 1 and step[c.PAST_KEYS][2][1] == 2
    assert step[c.PAST_KEYS][2][0] == kv[0] and step[c.PAST_KEYS][2][2:] == tuple(kv[2:])
    h, a = manifest.action_horizon, manifest.action_dim
    assert step[c.X_T] == ((1, h, a), (2, h, a), (2, h, a))  # opt defaults to max_batch


@pytest.mark.parametrize("max_batch,opt", [(0, None), (-1, None), (2, 3), (2, 0)])
def test_profile_shapes_refuse_bad_batch(tiny_bundle_factory, max_batch, opt):
    manifest = load_manifest(tiny_bundle_factory("pi0")[0])
    with pytest.raises(ConfigError):
        profile_shapes(manifest.graphs[c.PREFIX_GRAPH], max_batch, opt)


# ---- precision rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bundle,requested,expected", [
    ("float16", None, ("fp16", False)),
    ("float16", "fp16", ("fp16", False)),
    ("bfloat16", None, ("bf16", False)),
    ("float32", None, ("fp32", False)),
    ("float16", "fp8", ("fp8", True)),
    ("float16", "int8", ("int8", True)),
])
def test_resolve_precision_is_the_bundles_own_or_a_qdq_one(bundle, requested, expected):
    assert resolve_precision(bundle, requested) == expected


@pytest.mark.parametrize("bundle,requested,match", [
    ("float16", "bf16", "--precision fp16"),  # strong typing: the ONNX dtypes decide
    ("bfloat16", "fp16", "--precision bf16"),
    ("float16", "fp32", "--precision fp16"),
    ("float32", "fp16", "export --precision float16"),  # no weakly typed FP16 flag, on TensorRT 10 either
    ("float32", "bf16", "export --precision bfloat16"),
    ("float32", "fp4", "must be one of"),
])
def test_resolve_precision_refuses_what_cannot_be_built(bundle, requested, match):
    with pytest.raises(ConfigError, match=match):
        resolve_precision(bundle, requested)


def test_fp8_on_orin_is_refused_with_the_int8_alternative():
    with pytest.raises(ConfigError, match="int8"):
        check_gpu_supports("fp8", "8.7", "Orin")
    with pytest.raises(ConfigError, match="8.0"):
        check_gpu_supports("bf16", "7.5", "Tesla T4")
    check_gpu_supports("fp8", "8.9", "NVIDIA GeForce RTX 4090")
    check_gpu_supports("fp8", "10.0", "NVIDIA B200")
    check_gpu_supports("fp16", "8.7", "Orin")


def test_calibration_based_int8_is_refused_not_pretended(tiny_bundle_factory):
    with pytest.raises(ConfigError, match="Q/DQ"):
        build_engines(tiny_bundle_factory("pi0")[0], "int8", calibration="calib.npz")


# ---- the command and the backend without TensorRT ----------------------------------------------------------


def test_build_help_lists_the_options():
    parser = argparse.ArgumentParser(prog="pi0edge")
    register_build(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build", "b", "--precision", "bf16", "--max-batch", "3", "--timing-cache", "t.cache"])
    assert (args.bundle, args.precision, args.max_batch, args.timing_cache) == ("b", "bf16", 3, "t.cache")
    out = subprocess.run([sys.executable, "-m", "pi0edge.cli", "build", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for option in ("--precision", "--max-batch", "--timing-cache", "fp16", "bf16", "fp8"):
        assert option in out.stdout


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_exits_with_the_extra_named_not_a_traceback(tiny_bundle_factory):
    bundle = tiny_bundle_factory("pi0")[0]
    out = subprocess.run([sys.executable, "-m", "pi0edge.cli", "build", str(bundle), "--precision", "fp32"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "pi0edge[trt]" in out.stderr and "JetPack" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
def test_backend_without_tensorrt_is_unavailable_and_auto_falls_back(tiny_bundle_factory):
    from pi0edge.runtime.backends.tensorrt import TensorRTBackend
    from pi0edge.runtime.policy import Policy

    bundle = tiny_bundle_factory("pi0")[0]
    with pytest.raises(BackendUnavailableError, match=r"pi0edge\[trt\]"):
        TensorRTBackend(load_manifest(bundle))
    with Policy(bundle, backend="auto") as policy:
        assert policy.backend.name.startswith("ort-")


def test_missing_tensorrt_error_is_a_missing_extra():
    from pi0edge.runtime.backends.engine_fingerprint import TensorRTMissingError

    error = TensorRTMissingError("pi0edge build")
    assert isinstance(error, MissingExtraError) and error.extra == "trt"
    assert "pi0edge[trt]" in str(error) and "JetPack" in str(error)


def test_build_and_tensorrt_backend_never_import_torch():
    code = ("import sys; import pi0edge.export.engine_build, pi0edge.runtime.backends.tensorrt, "
            "pi0edge.runtime.backends.cuda_runtime; assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_cuda_errors_name_the_call():
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed (the [trt] extra)")
    from pi0edge.runtime.backends.cuda_runtime import CudaError, check, load_cudart

    rt = load_cudart()
    assert check(rt, (rt.cudaError_t.cudaSuccess, 7), "x") == 7
    with pytest.raises(CudaError, match=r"cudaMalloc\(16\) failed: cudaErrorMemoryAllocation"):
        check(rt, (rt.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc(16)")


def test_no_gpu_makes_the_device_unavailable_not_a_crash():
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed (the [trt] extra)")
    from pi0edge.runtime.backends.cuda_runtime import device_info, load_cudart

    rt = load_cudart()
    err, count = rt.cudaGetDeviceCount()
    if int(err) == 0 and count > 0:
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(BackendUnavailableError, match="no usable CUDA GPU"):
        device_info(rt, 0)


# ---- real builds: GPU + TensorRT ---------------------------------------------------------------------------


def _random_inputs(manifest, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cams, size, length = len(manifest.cameras), manifest.image_size, manifest.max_token_len
    token_masks = np.zeros((batch, length), np.bool_)
    for i in range(batch):
        token_masks[i, : rng.integers(3, length + 1)] = True
    image_masks = np.ones((batch, cams), np.bool_)
    image_masks[:, -1] = cams == 1  # the last camera missing, as the runtime feeds it
    return {c.IMAGES: rng.integers(0, 256, (batch, cams, size, size, 3), dtype=np.uint8),
            c.IMAGE_MASKS: image_masks,
            c.TOKENS: np.where(token_masks, rng.integers(4, manifest.vocab_size,
                                                         (batch, length)), 0).astype(np.int64),
            c.TOKEN_MASKS: token_masks,
            "noise": rng.standard_normal((batch, manifest.action_horizon, manifest.action_dim), dtype=np.float32),
            "state": rng.standard_normal((batch, manifest.state_dim), dtype=np.float32)}


def _run(backend, manifest, inputs: dict, loop: bool = False) -> np.ndarray:
    from pi0edge.schedule import euler_schedule

    times, dt = euler_schedule(manifest.num_steps)
    backend.prepare(inputs["noise"].shape[0], times, dt)
    backend.run_prefix(inputs[c.IMAGES], inputs[c.IMAGE_MASKS], inputs[c.TOKENS], inputs[c.TOKEN_MASKS])
    backend.set_noise(inputs["noise"], None if manifest.is_pi05 else inputs["state"])
    if loop:
        backend.run_loop()
    else:
        for k in range(len(times)):
            backend.run_step(k)
    return backend.read_actions()


@pytest.fixture(scope="module")
def trt_env():
    pytest.importorskip("tensorrt", reason=NO_TENSORRT_REASON)
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed (the [trt] extra)")
    from cuda.bindings import runtime as rt

    err, count = rt.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        pytest.skip("no CUDA GPU on this machine")


@pytest.fixture(scope="module")
def built_bundles(trt_env, tiny_bundle_factory, tmp_path_factory):
    """Copies of the tiny bundles (engines are written into the bundle) with engines built once per module."""
    cache: dict = {}

    def get(model_type: str, bundle_precision: str, engine_precision: str, max_batch: int = 2):
        key = (model_type, bundle_precision, engine_precision, max_batch)
        if key not in cache:
            src = tiny_bundle_factory(model_type, bundle_precision)[0]
            dst = tmp_path_factory.mktemp(f"trt-{model_type}-{bundle_precision}-{engine_precision}") / "bundle"
            shutil.copytree(src, dst)
            report = build_engines(dst, engine_precision, max_batch)
            cache[key] = (dst, report)
        return cache[key]

    return get


@pytest.mark.gpu
@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
@pytest.mark.parametrize("batch", [1, 2])
def test_fp32_engines_match_ort_cpu_eager_and_cuda_graph(built_bundles, model_type, batch):
    from pi0edge.runtime.backends.ort import OrtBackend
    from pi0edge.runtime.backends.tensorrt import TensorRTBackend

    bundle, report = built_bundles(model_type, "float32", "fp32")
    assert (report.engine_dir / "prefix.plan").is_file() and (report.engine_dir / "denoise_step.plan").is_file()
    assert report.timing_cache.is_file()
    manifest = load_manifest(bundle)
    inputs = _random_inputs(manifest, batch, seed=batch)
    reference = _run(OrtBackend(manifest, "ort-cpu"), manifest, inputs)
    trt = TensorRTBackend(manifest, use_cuda_graph=True)
    try:
        eager = _run(trt, manifest, inputs)
        addresses = trt.buffer_addresses()
        first_loop = _run(trt, manifest, inputs, loop=True)  # eager steps, then capture
        replayed = _run(trt, manifest, inputs, loop=True)  # one CUDA graph launch
        assert trt.buffer_addresses() == addresses, "buffers were reallocated between chunks"
    finally:
        trt.close()
    np.testing.assert_allclose(eager, reference, atol=ACTION_ATOL_TRT_FP32, rtol=0)
    np.testing.assert_allclose(first_loop, eager, atol=ACTION_ATOL_GRAPH_REPLAY, rtol=0)
    np.testing.assert_allclose(replayed, eager, atol=ACTION_ATOL_GRAPH_REPLAY, rtol=0)


@pytest.mark.gpu
def test_fp16_engines_from_a_float16_bundle_match_float32_ort_cpu(built_bundles, tiny_bundle_factory):
    from pi0edge.runtime.backends.ort import OrtBackend
    from pi0edge.runtime.backends.tensorrt import TensorRTBackend

    bundle, report = built_bundles("pi0", "float16", "fp16")
    assert report.strongly_typed
    reference_manifest = load_manifest(tiny_bundle_factory("pi0", "float32")[0])  # same seed, same weights
    manifest = load_manifest(bundle)
    inputs = _random_inputs(manifest, 1, seed=3)
    reference = _run(OrtBackend(reference_manifest, "ort-cpu"), reference_manifest, inputs)
    trt = TensorRTBackend(manifest)
    try:
        got = _run(trt, manifest, inputs, loop=True)
    finally:
        trt.close()
    np.testing.assert_allclose(got, reference, atol=ACTION_ATOL_TRT_FP16, rtol=0)


@pytest.mark.gpu
def test_policy_on_tensorrt_equals_policy_on_ort_cpu(built_bundles):
    from pi0edge.runtime import Observation, Policy

    bundle, _ = built_bundles("pi0", "float32", "fp32")
    rng = np.random.default_rng(0)
    manifest = load_manifest(bundle)
    obs = Observation({manifest.cameras[0]: rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)},
                      rng.standard_normal(manifest.robot_state_dim).astype(np.float32), "pick up the red cube")
    noise = rng.standard_normal((manifest.action_horizon, manifest.action_dim), dtype=np.float32)
    with Policy(bundle, backend="ort-cpu") as ort_policy, Policy(bundle, backend="tensorrt") as trt_policy:
        expected = ort_policy.infer(obs, noise=noise).actions
        got = trt_policy.infer(obs, noise=noise).actions
    np.testing.assert_allclose(got, expected, atol=ACTION_ATOL_TRT_FP32 * 10, rtol=1e-3)  # robot units: unnormalized


@pytest.mark.gpu
def test_stale_engine_is_refused_with_the_rebuild_command(built_bundles, tmp_path):
    from pi0edge.runtime.backends.tensorrt import TensorRTBackend

    bundle, report = built_bundles("pi0", "float32", "fp32")
    stale = tmp_path / "stale"
    shutil.copytree(report.engine_dir, stale)
    raw = yaml.safe_load((stale / FINGERPRINT_NAME).read_text())
    raw["fingerprint"]["tensorrt_version"] = "9.0.0"
    (stale / FINGERPRINT_NAME).write_text(yaml.safe_dump(raw))
    with pytest.raises(BackendUnavailableError, match=r"tensorrt_version.*pi0edge build .* --precision fp32 "
                                                      r"--max-batch 2"):
        TensorRTBackend(load_manifest(bundle), engine_dir=stale)
    with pytest.raises(BackendUnavailableError, match="precision"):
        TensorRTBackend(load_manifest(bundle), precision="fp16")


@pytest.mark.gpu
def test_corrupted_plan_and_oversized_batch_are_refused(built_bundles, tmp_path):
    from pi0edge.runtime.backends.tensorrt import TensorRTBackend
    from pi0edge.schedule import euler_schedule

    bundle, report = built_bundles("pi0", "float32", "fp32")
    broken = tmp_path / "broken"
    shutil.copytree(report.engine_dir, broken)
    plan = broken / "denoise_step.plan"
    plan.write_bytes(plan.read_bytes()[: plan.stat().st_size // 2])
    with pytest.raises(BackendUnavailableError, match="sha256"):
        TensorRTBackend(load_manifest(bundle), engine_dir=broken)
    trt = TensorRTBackend(load_manifest(bundle))
    try:
        times, dt = euler_schedule(10)
        with pytest.raises(BackendUnavailableError, match="--max-batch 3"):
            trt.prepare(3, times, dt)
    finally:
        trt.close()
