"""ONNX Runtime backends: `ort-cpu` (the embedded default), `ort-cuda` and `ort-trt` (onnxruntime-gpu).

Zero-copy loop (docs/runtime.md, "One chunk"): every tensor lives in an OrtValue allocated once per batch
size on the backend's device. The prefix writes the KV cache straight into the OrtValues the step graph
reads; x_t ping-pongs between two OrtValues; one IOBinding per Euler step is built in `prepare`, so a
step is a single `run_with_iobinding` call with no allocation, no binding and no copy.

Whole loop: a bundle with a `denoise_loop` graph (export/onnx/loop_graph.py) runs all steps as ONE session
call (`run_loop`) from the noise buffer into the actions buffer; the step graph is then not loaded. With
`enable_cuda_graph` on ort-cuda that call is one captured CUDA graph (ORT captures per run), and so is the
prefix unless `cuda_graph_prefix=False`: a chunk is then two graph launches. whole_loop
None (default) uses it when the bundle has it; False runs step by step (per-step timings in `profile`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pi0edge import contract as c
from pi0edge.errors import BackendUnavailableError, BundleError
from pi0edge.manifest import MANIFEST_NAME, Manifest

from .cuda_libs import preload_cuda_libraries
from .ort_install import import_onnxruntime

log = logging.getLogger(__name__)

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}


def available_ort_backends() -> list[str]:
    """The ORT backends this machine's onnxruntime build offers, fastest first."""
    ort = import_onnxruntime("the ONNX Runtime backends")

    have = set(ort.get_available_providers())
    return [name for name in ("ort-trt", "ort-cuda", "ort-cpu") if PROVIDERS[name] in have]


class OrtBackend:
    """One ORT session per graph, sharing device buffers through IOBinding."""

    def __init__(self, manifest: Manifest, name: str = "ort-cpu", *, device_id: int = 0,
                 intra_op_threads: int | None = None, enable_cuda_graph: bool = False, cuda_graph_prefix: bool = True,
                 whole_loop: bool | None = None):
        ort = import_onnxruntime(f"backend {name}")

        if name not in PROVIDERS:
            raise BackendUnavailableError(f"unknown ORT backend {name!r}; choose one of {sorted(PROVIDERS)}")
        _check_precision(manifest, name)
        if PROVIDERS[name] not in ort.get_available_providers():
            extra = "" if name == "ort-cpu" else (" (install onnxruntime-gpu: pip install 'pi0edge[gpu]', "
                                                  "and never next to the CPU onnxruntime)")
            raise BackendUnavailableError(f"backend {name} needs ONNX Runtime's {PROVIDERS[name]}, which this "
                                          f"onnxruntime build does not offer{extra}; available: "
                                          f"{ort.get_available_providers()}")
        if name != "ort-cpu":
            preload_cuda_libraries(ort)  # CUDA/cuDNN from the nvidia-* wheels, without torch (cuda_libs.py)
        self.name, self.manifest = name, manifest
        self.device = "cpu" if name == "ort-cpu" else "cuda"
        self.device_id = device_id
        self.enable_cuda_graph = enable_cuda_graph and self.device == "cuda"
        self._prefix_cuda_graph = self.enable_cuda_graph and cuda_graph_prefix
        options = session_options(ort, intra_op_threads)
        has_loop = c.DENOISE_LOOP_GRAPH in manifest.graphs
        if whole_loop and not has_loop:
            raise BackendUnavailableError(f"{manifest.bundle_dir}: no {c.DENOISE_LOOP_GRAPH} graph in this bundle; "
                                          "re-export it with this pi0edge (precompute_time on), or run step by step")
        self.whole_loop = has_loop if whole_loop is None else whole_loop
        # Only the graphs that run are loaded: each session would hold its own copy of the expert's weights.
        self._denoise_graph = c.DENOISE_LOOP_GRAPH if self.whole_loop else c.DENOISE_STEP_GRAPH
        self._ort = ort
        self.prefix_session = self._session(c.PREFIX_GRAPH, options, self._prefix_cuda_graph)
        self.denoise_session = self._session(self._denoise_graph, options, self.enable_cuda_graph)
        # What really runs, as ONNX Runtime reports it (the requested provider first, proven in _session).
        self.providers = tuple(self.prefix_session.get_providers())
        self._check_io()
        self._batch = None
        self._dtypes: dict[str, type] = {}

    # ---- setup ----------------------------------------------------------------------------------

    def _session(self, graph: str, options, cuda_graph: bool):
        """One InferenceSession, proven to run on the requested provider: ONNX Runtime falls back to the CPU
        provider without an error when CUDA or TensorRT fails to initialise."""
        path = self.manifest.path(self.manifest.graphs[graph].file)
        providers = self._providers(cuda_graph)
        try:
            session = self._ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            if self.name == "ort-cpu":
                raise  # a graph the CPU provider refuses is the bundle's fault, reported as ORT words it
            # A GPU provider that throws while starting (no device, bad device_id, missing library).
            raise BackendUnavailableError(f"backend {self.name}: {PROVIDERS[self.name]} could not start a session "
                                          f"for {path}: {exc}; {GPU_CAUSES[self.name]}") from exc
        check_session_providers(self._ort, self.name, session.get_providers(), path)
        return session

    def _providers(self, cuda_graph: bool) -> list:
        if self.name == "ort-cpu":
            return ["CPUExecutionProvider"]
        if self.name == "ort-cuda":
            return [("CUDAExecutionProvider", {"device_id": self.device_id, "enable_cuda_graph": int(cuda_graph)})]
        # ort-trt: the TensorRT provider's own option names; the CUDA provider only takes the nodes TensorRT
        # rejects, so the graph capture is TensorRT's (trt_cuda_graph_enable), never CUDA's.
        cache = self.manifest.bundle_dir / "engines" / "ort-trt"
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailableError(f"ort-trt keeps its engine and timing caches in {cache}, which cannot be "
                                          f"created ({exc}); make the bundle writable or copy it") from exc
        # No trt_fp16_enable: the graphs are strongly typed (a float16 bundle is float16 in the graph), and
        # letting TensorRT lower a float32 bundle would change its numerics behind the manifest's back.
        trt = ("TensorrtExecutionProvider", {
            "device_id": self.device_id, "trt_cuda_graph_enable": int(cuda_graph),
            "trt_engine_cache_enable": 1, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": 1, "trt_timing_cache_path": str(cache)})
        return [trt, ("CUDAExecutionProvider", {"device_id": self.device_id})]

    def _check_io(self) -> None:
        """The sessions' I/O must be what bundle.yaml promises (checked at load, docs/runtime.md): names, then
        every static dim, so an edited manifest fails here, naming the field, never inside a run."""
        for graph, session in ((c.PREFIX_GRAPH, self.prefix_session), (self._denoise_graph, self.denoise_session)):
            check_session_io(self.manifest, graph, session)

    def _alloc(self, graph: str, name: str, batch: int):
        spec = self.manifest.graphs[graph].io(name)
        shape = [batch if d == "B" else d for d in spec["shape"]]
        dtype = c.NUMPY_DTYPES[spec["dtype"]]
        self._dtypes[name] = dtype
        if self.device == "cpu":
            # A numpy array owned by us, wrapped without copy: host writes land in the bound tensor.
            array = np.zeros(shape, dtype)
            return array, self._ort.OrtValue.ortvalue_from_numpy(array)
        return None, self._ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", self.device_id)

    def prepare(self, batch: int, times: np.ndarray, dt: float) -> None:
        key = (batch, tuple(times.tolist()), float(dt))
        if self._batch == key:
            return
        pg, sg = c.PREFIX_GRAPH, self._denoise_graph
        self._host, self._dev = {}, {}
        for name in (*self.manifest.graphs[pg].input_names, *self.manifest.graphs[pg].output_names):
            self._host[name], self._dev[name] = self._alloc(pg, name, batch)
        for name in (c.STATE, *(s.name for s in c.RTC_INPUTS)):
            if name in self.manifest.graphs[sg].input_names:
                self._host[name], self._dev[name] = self._alloc(sg, name, batch)
        self._x = [self._alloc(sg, c.X_T, batch) for _ in range(2)]  # the ping-pong pair (loop: noise, actions)

        self._prefix_binding = self.prefix_session.io_binding()
        for name in self.manifest.graphs[pg].input_names:
            self._prefix_binding.bind_ortvalue_input(name, self._dev[name])
        for name in self.manifest.graphs[pg].output_names:
            self._prefix_binding.bind_ortvalue_output(name, self._dev[name])

        self._graph_generation = getattr(self, "_graph_generation", 0) + 1  # new buffers: never replay old graphs
        if self.whole_loop:
            self._bind_loop(len(times))
        else:
            self._bind_steps(batch, times, dt)
        self._run_options = self._graph_run_options(0, self._prefix_cuda_graph)
        self._batch = key

    def _cached_inputs(self, binding) -> None:
        """The step/loop inputs that live in the prefix's buffers (KV cache, mask), the state and the RTC inputs."""
        for name in (c.PAST_KEYS, c.PAST_VALUES, c.PREFIX_MASK, c.STATE, *(s.name for s in c.RTC_INPUTS)):
            if name in self.manifest.graphs[self._denoise_graph].input_names:
                binding.bind_ortvalue_input(name, self._dev[name])

    def _graph_run_options(self, graph_id: int, captured: bool | None = None):
        """ORT CUDA graphs: one captured graph per binding, told apart by gpu_graph_id (captured on the first
        run of each id, replayed after); every input and output already sits at a fixed device address."""
        options = self._ort.RunOptions()
        if self.enable_cuda_graph if captured is None else captured:
            options.add_run_config_entry("gpu_graph_id", str(self._graph_generation * 1000 + graph_id))
        return options

    def _bind_loop(self, num_steps: int) -> None:
        unrolled = self.manifest.graphs[c.DENOISE_LOOP_GRAPH].num_steps
        if num_steps != unrolled:
            raise BackendUnavailableError(f"{self.manifest.bundle_dir}: the {c.DENOISE_LOOP_GRAPH} graph unrolls "
                                          f"{unrolled} steps, {num_steps} were asked for (--num-steps); add --per-step "
                                          "to run the step graph instead")
        io = self.denoise_session.io_binding()
        io.bind_ortvalue_input(c.X_T, self._x[0][1])
        io.bind_ortvalue_output(c.ACTIONS, self._x[1][1])
        self._cached_inputs(io)
        self._loop_binding, self._loop_run_options = io, self._graph_run_options(1)
        self._actions_slot = self._x[1]

    def _bind_steps(self, batch: int, times: np.ndarray, dt: float) -> None:
        sg = c.DENOISE_STEP_GRAPH
        step_inputs = self.manifest.graphs[sg].input_names
        per_step = [{name: self._const(value)
                     for name, value in c.step_time_feeds(step_inputs, k, times, dt, batch).items()}
                    for k in range(len(times))]
        self._per_step_values = per_step  # keep the constants alive while bound
        velocity = c.VELOCITY in self.manifest.graphs[sg].output_names
        if velocity:
            self._host[c.VELOCITY], self._dev[c.VELOCITY] = self._alloc(sg, c.VELOCITY, batch)
        self._step_bindings = []
        for k in range(len(times)):
            io = self.denoise_session.io_binding()
            io.bind_ortvalue_input(c.X_T, self._x[k % 2][1])
            io.bind_ortvalue_output(c.X_NEXT, self._x[(k + 1) % 2][1])
            for name, value in per_step[k].items():
                io.bind_ortvalue_input(name, value)
            self._cached_inputs(io)
            if velocity:
                io.bind_ortvalue_output(c.VELOCITY, self._dev[c.VELOCITY])
            self._step_bindings.append(io)
        self._step_run_options = [self._graph_run_options(k + 1) for k in range(len(times))]
        self._actions_slot = self._x[len(times) % 2]

    def _const(self, array: np.ndarray):
        if self.device == "cpu":
            return self._ort.OrtValue.ortvalue_from_numpy(array)
        return self._ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id)

    def _write(self, name: str, value: np.ndarray, slot=None) -> None:
        host, dev = slot if slot is not None else (self._host[name], self._dev[name])
        if host is not None:
            np.copyto(host, value, casting="same_kind")
        else:
            dev.update_inplace(np.ascontiguousarray(value, dtype=self._dtypes.get(name, np.float32)))

    # ---- the per-chunk calls ----------------------------------------------------------------------

    def run_prefix(self, images, image_masks, tokens, token_masks) -> None:
        for name, value in ((c.IMAGES, images), (c.IMAGE_MASKS, image_masks), (c.TOKENS, tokens),
                            (c.TOKEN_MASKS, token_masks)):
            self._write(name, value)
        self.prefix_session.run_with_iobinding(self._prefix_binding, self._run_options)

    def set_noise(self, noise: np.ndarray, state: np.ndarray | None) -> None:
        self._write(c.X_T, noise.astype(np.float32, copy=False), slot=self._x[0])
        if state is not None and c.STATE in self._dev:
            self._write(c.STATE, state)

    def set_guidance(self, leftover: np.ndarray, prefix_weights: np.ndarray, max_guidance_weight: np.ndarray) -> None:
        for name, value in ((c.RTC_LEFTOVER, leftover), (c.RTC_PREFIX_WEIGHTS, prefix_weights),
                            (c.RTC_MAX_GUIDANCE_WEIGHT, max_guidance_weight)):
            self._write(name, value)

    def run_step(self, step: int) -> None:
        if self.whole_loop:
            raise BackendUnavailableError("this backend runs the whole loop (run_loop); open it with "
                                          "whole_loop=False to run single steps")
        self.denoise_session.run_with_iobinding(self._step_bindings[step], self._step_run_options[step])

    def run_loop(self) -> None:
        """All Euler steps in one session call: noise buffer in, actions buffer out."""
        self.denoise_session.run_with_iobinding(self._loop_binding, self._loop_run_options)

    def read_actions(self) -> np.ndarray:
        host, dev = self._actions_slot
        return host.copy() if host is not None else dev.numpy()

    def _read(self, name: str) -> np.ndarray:
        host, dev = self._host[name], self._dev[name]
        return host.copy() if host is not None else dev.numpy()

    def read_kv(self) -> tuple[np.ndarray, np.ndarray]:
        """The cache as host arrays (tests and debugging only)."""
        return self._read(c.PAST_KEYS), self._read(c.PAST_VALUES)

    def read_prefix_mask(self) -> np.ndarray:
        return self._read(c.PREFIX_MASK)

    def buffer_addresses(self) -> dict[str, int]:
        """Device addresses of the long-lived buffers: stable across chunks when nothing is reallocated."""
        out = {name: value.data_ptr() for name, value in self._dev.items()}
        out.update({f"x{i}": slot[1].data_ptr() for i, slot in enumerate(self._x)})
        return out

    def synchronize(self) -> None:
        pass  # run_with_iobinding returns after the outputs are written

    def close(self) -> None:
        self.prefix_session = self.denoise_session = None
        self._batch = None


GPU_CAUSES = {
    "ort-cuda": "the CUDA provider could not initialise: check the NVIDIA driver (nvidia-smi), and that the CUDA 12 "
                "runtime and cuDNN 9 libraries onnxruntime-gpu needs are installed (pip install 'pi0edge[gpu]' "
                "brings them as nvidia-* wheels) and match its build",
    "ort-trt": "the TensorRT provider could not initialise: check that TensorRT's libraries (libnvinfer) of the "
               "version this onnxruntime-gpu was built against are on the loader path, besides the CUDA and cuDNN "
               "libraries and the NVIDIA driver (nvidia-smi)",
}


def check_session_providers(ort, name: str, session_providers, graph_path) -> None:
    """Refuse a session whose first provider is not the one `name` asked for, naming the cause that can be
    told apart: a provider this onnxruntime does not offer (library missing, or the CPU-only distribution),
    or one it offers that failed to initialise (driver, CUDA, cuDNN or TensorRT libraries)."""
    wanted = PROVIDERS[name]
    got = list(session_providers)
    if got and got[0] == wanted:
        return
    if wanted not in ort.get_available_providers():
        cause = (f"this onnxruntime does not offer {wanted} (available: {ort.get_available_providers()}): the "
                 "CPU-only onnxruntime is installed, or installed next to onnxruntime-gpu; pip uninstall "
                 "onnxruntime onnxruntime-gpu, then pip install 'pi0edge[gpu]'")
    else:
        cause = GPU_CAUSES.get(name, f"{wanted} failed to initialise")
    raise BackendUnavailableError(f"backend {name}: the session for {graph_path} runs on {got} instead of "
                                  f"{wanted}; {cause} (`pi0edge doctor` shows which providers start)")


def _check_precision(manifest: Manifest, name: str) -> None:
    """Refuse a precision an ORT provider cannot run, before any session is built (minutes on TensorRT)."""
    if manifest.precision == "bfloat16":
        where = ("the CPU provider has no bfloat16 kernels for these graphs" if name == "ort-cpu" else
                 "the CUDA provider does not implement bfloat16 Conv at opset 19 (the vision tower's patch "
                 "embedding), and ORT's TensorRT provider hands such nodes to it")
        raise BackendUnavailableError(
            f"{manifest.bundle_dir}: a bfloat16 bundle cannot run on {name}: {where}; export with --precision "
            "float16 for ort-cuda / ort-trt (or float32 for ort-cpu), or run this bundle on the tensorrt backend")
    for graph in manifest.graphs.values():
        for io in (*graph.inputs, *graph.outputs):
            if io["dtype"] not in c.NUMPY_DTYPES:
                raise BackendUnavailableError(f"{manifest.bundle_dir}: {graph.file} input/output {io['name']} is "
                                              f"{io['dtype']}, which has no host dtype (contract.NUMPY_DTYPES); "
                                              "ORT backends run float32 and float16 bundles")


def session_options(ort, intra_op_threads: int | None):
    """The SessionOptions every pi0edge ORT session runs with (the flow-matching backends and Pi0-FAST's decoder)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    # Each session has its own intra-op pool, whose workers by default keep spinning after Run() returns:
    # the prefix pool then steals a core from every following step (mid() pi0 on 2 cores: 8.8 -> 6.8 ms a
    # step with this off), and both pools from the rest of the process between chunks. Spinning within
    # a Run is kept.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def check_session_io(manifest: Manifest, graph: str, session) -> None:
    """A session's I/O must be what bundle.yaml records for `graph`: the names, then every static dim."""
    entry = manifest.graphs[graph]
    got_in = tuple(i.name for i in session.get_inputs())
    got_out = tuple(o.name for o in session.get_outputs())
    if set(got_in) != set(entry.input_names) or set(got_out) != set(entry.output_names):
        raise BackendUnavailableError(f"{manifest.path(entry.file)}: graph I/O {got_in} -> {got_out} differs from "
                                      f"bundle.yaml {entry.input_names} -> {entry.output_names}")
    for kind, args in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        for arg in args:
            _check_shape(manifest, graph, kind, arg.name, arg.shape)


def _check_shape(manifest: Manifest, graph: str, kind: str, name: str, graph_shape: list) -> None:
    """A static dim of the graph must equal bundle.yaml's; the graph's symbolic batch dim matches anything."""
    recorded = manifest.graphs[graph].io(name)["shape"]
    static = [d if isinstance(d, int) else None for d in graph_shape]
    if len(recorded) != len(static) or any(g is not None and g != r for g, r in zip(static, recorded, strict=True)):
        raise BundleError(f"{manifest.bundle_dir / MANIFEST_NAME}: field 'graphs.{graph}.{kind}' gives {name} shape "
                          f"{recorded}, but {manifest.graphs[graph].file} has {list(graph_shape)}; bundle.yaml was "
                          "edited or is corrupted: re-export the bundle")


def bundle_graph_path(manifest: Manifest, graph: str) -> Path:
    return manifest.path(manifest.graphs[graph].file)
