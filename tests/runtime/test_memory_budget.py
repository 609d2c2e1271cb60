"""A bundle whose weights cannot fit is refused at load, naming the sizes and the way out, before any
backend allocates (runtime/memory_budget.py)."""

from __future__ import annotations

import pytest

from pi0edge.errors import InsufficientMemoryError
from pi0edge.manifest import load_manifest
from pi0edge.runtime import machine_info, memory_budget, policy
from pi0edge.runtime.machine_info import GpuInfo
from pi0edge.runtime.policy import Policy


@pytest.fixture
def bundle(tiny_bundle_factory):
    return tiny_bundle_factory("pi0")[0]


def _no_backend_allowed(*args, **kwargs):
    raise AssertionError("a backend was created for a bundle that cannot fit")


def _gpu(free_mb: float) -> GpuInfo:
    return GpuInfo(name="Fake GPU", memory_total_mb=1000.0, memory_free_mb=free_mb, compute_capability="8.9",
                   driver="999.0")


def test_weights_larger_than_available_host_memory_are_refused_before_a_backend_allocates(bundle, monkeypatch):
    need = memory_budget.weights_mb(load_manifest(bundle))
    monkeypatch.setattr(machine_info, "memory_available_mb", lambda: need / 2)
    monkeypatch.setattr(policy, "make_backend", _no_backend_allowed)
    with pytest.raises(InsufficientMemoryError, match=r"weights take \d+ MB and the host has \d+ MB available"
                                                      r".*--precision float16"):
        Policy(bundle)


def test_weights_larger_than_free_gpu_memory_are_refused_for_a_gpu_backend_only(bundle, monkeypatch):
    need = memory_budget.weights_mb(load_manifest(bundle))
    monkeypatch.setattr(machine_info, "nvidia_gpus", lambda: ([_gpu(need / 2)], "13.0"))
    monkeypatch.setattr(policy, "make_backend", _no_backend_allowed)
    with pytest.raises(InsufficientMemoryError, match="GPU has .* free \\(backend ort-cuda\\)"):
        Policy(bundle, backend="ort-cuda")
    memory_budget.check_weights_fit(load_manifest(bundle), "ort-cpu")  # the CPU backend does not need the GPU


def test_a_bundle_that_fits_loads_and_unknown_free_memory_skips_the_check(bundle, monkeypatch):
    monkeypatch.setattr(machine_info, "memory_available_mb", lambda: None)
    monkeypatch.setattr(machine_info, "nvidia_gpus", lambda: ([_gpu(0.0)], None))  # a Jetson reports no memory
    memory_budget.check_weights_fit(load_manifest(bundle), "ort-cuda")
    with Policy(bundle) as loaded:
        assert loaded.backend_name == "ort-cpu"
