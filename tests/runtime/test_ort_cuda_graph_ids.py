"""ORT CUDA-graph bookkeeping, checked on the CPU build: which run gets which gpu_graph_id. The capture itself
needs ort-cuda (a GPU session: benchmarks/gpu_latency.py); here the ids are what can go wrong unseen."""

from __future__ import annotations

from pi0edge.export.optimize import DEFAULT_OPTIMIZE
from pi0edge.manifest import load_manifest
from pi0edge.runtime.backends.ort import OrtBackend
from pi0edge.schedule import euler_schedule


def graph_ids(backend: OrtBackend) -> dict[str, str]:
    runs = {"prefix": backend._run_options}
    if backend.whole_loop:
        runs["loop"] = backend._loop_run_options
    else:
        runs |= {f"step {k}": o for k, o in enumerate(backend._step_run_options)}
    return {name: _graph_id(options) for name, options in runs.items()}


def _graph_id(options) -> str | None:
    try:
        return options.get_run_config_entry("gpu_graph_id")
    except RuntimeError:  # "does not have configuration with key": a run that is not captured
        return None


def captured_backend(bundle_dir, **options) -> OrtBackend:
    backend = OrtBackend(load_manifest(bundle_dir), "ort-cpu", **options)
    backend.enable_cuda_graph = True  # as ort-cuda would set it; the CPU provider never sees the ids
    backend._prefix_cuda_graph = options.get("cuda_graph_prefix", True)
    return backend


def test_every_captured_run_has_its_own_graph_id_and_new_buffers_get_new_ids(tiny_bundle_factory):
    bundle_dir, _ = tiny_bundle_factory("pi0", optimize=DEFAULT_OPTIMIZE)
    times, dt = euler_schedule(10)
    for whole_loop in (True, False):
        backend = captured_backend(bundle_dir, whole_loop=whole_loop)
        backend.prepare(1, times, dt)
        first = graph_ids(backend)
        assert None not in first.values() and len(set(first.values())) == len(first) == (2 if whole_loop else 11)
        backend.prepare(1, times, dt)  # same batch: same buffers, same graphs replayed
        assert graph_ids(backend) == first
        backend.prepare(2, times, dt)  # new buffers: a graph captured on the old addresses must never replay
        assert not set(graph_ids(backend).values()) & set(first.values())


def test_prefix_run_is_not_captured_when_asked(tiny_bundle_factory):
    bundle_dir, _ = tiny_bundle_factory("pi0", optimize=DEFAULT_OPTIMIZE)
    backend = captured_backend(bundle_dir, cuda_graph_prefix=False)
    backend.prepare(1, *euler_schedule(10))
    ids = graph_ids(backend)
    assert ids["prefix"] is None and ids["loop"] is not None
