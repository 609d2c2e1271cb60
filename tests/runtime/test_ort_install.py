"""One onnxruntime per install: a clear error without any, and CUDA/cuDNN loaded from the nvidia-* wheels
through onnxruntime.preload_dlls() (not as a side effect of importing torch)."""

from __future__ import annotations

import sys
import types

import pytest

import pi0edge.runtime
from pi0edge.errors import MissingExtraError
from pi0edge.runtime.backends.cuda_libs import preload_cuda_libraries
from pi0edge.runtime.backends.ort_install import OnnxRuntimeMissingError, import_onnxruntime


def _fake_ort(with_preload: bool = True, fails: bool = False) -> types.ModuleType:
    ort = types.ModuleType("onnxruntime")
    ort.calls = []
    if with_preload:
        def preload_dlls(**kwargs):
            ort.calls.append(kwargs)
            if fails:
                raise OSError("libcudnn.so.9: cannot open shared object file")
        ort.preload_dlls = preload_dlls
    return ort


def test_policy_without_any_onnxruntime_names_the_cpu_gpu_and_jetson_installs(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(OnnxRuntimeMissingError) as info:
        pi0edge.runtime.__getattr__("Policy")
    message = str(info.value)
    for install in ("pi0edge[cpu]", "pi0edge[gpu]", "pi0edge[jetson]", "docs/install.md"):
        assert install in message
    assert isinstance(info.value, MissingExtraError)  # the CLI reports missing extras without a traceback


def test_import_onnxruntime_returns_the_installed_module():
    import onnxruntime

    assert import_onnxruntime() is onnxruntime


def test_preload_calls_onnxruntime_preload_dlls_for_cuda_and_cudnn():
    ort = _fake_ort()
    assert preload_cuda_libraries(ort) is True
    assert ort.calls == [{"cuda": True, "cudnn": True}]


def test_preload_is_a_no_op_for_an_onnxruntime_without_preload_dlls():
    assert preload_cuda_libraries(_fake_ort(with_preload=False)) is False


def test_preload_failure_is_logged_not_raised(caplog):
    ort = _fake_ort(fails=True)
    assert preload_cuda_libraries(ort) is False
    assert len(ort.calls) == 1 and "libcudnn.so.9" in caplog.text

