"""ONNX Runtime backends: `ort-cpu` (the embedded default), `ort-cuda` and `ort-trt` (onnxruntime-gpu).

Zero-copy loop (DESIGN.md, "Runtime"): every tensor lives in an OrtValue allocated once per batch
size on the backend's device. The prefix writes the KV cache straight into the OrtValues the step graph
reads; x_t ping-pongs between two OrtValues; one IOBinding per Euler step is built in `prepare`, so a
step is a single `run_with_iobinding` call with no allocation, no binding and no copy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pi0edge import contract as c
from pi0edge.errors import BackendUnavailableError
from pi0edge.manifest import Manifest

log = logging.getLogger(__name__)

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bool": np.bool_, "int64": np.int64,
                "uint8": np.uint8}


def available_ort_backends() -> list[str]:
    """The ORT backends this machine's onnxruntime build offers, fastest first."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [name for name in ("ort-trt", "ort-cuda", "ort-cpu") if PROVIDERS[name] in have]


class OrtBackend:
    """One ORT session per graph, sharing device buffers through IOBinding."""

    def __init__(self, manifest: Manifest, name: str = "ort-cpu", *, device_id: int = 0,
                 intra_op_threads: int | None = None, enable_cuda_graph: bool = False):
        import onnxruntime as ort

        if name not in PROVIDERS:
            raise BackendUnavailableError(f"unknown ORT backend {name!r}; choose one of {sorted(PROVIDERS)}")
        if PROVIDERS[name] not in ort.get_available_providers():
            extra = "" if name == "ort-cpu" else " (install onnxruntime-gpu: pip install 'pi0edge[gpu]', "
            "and never next to the CPU onnxruntime)"
            raise BackendUnavailableError(f"backend {name} needs ONNX Runtime's {PROVIDERS[name]}, which this "
                                          f"onnxruntime build does not offer{extra}; available: "
                                          f"{ort.get_available_providers()}")
        if manifest.precision == "bfloat16" and name == "ort-cpu":
            raise BackendUnavailableError("bfloat16 bundles need a GPU backend; export float32 for ort-cpu")
        self.name, self.manifest = name, manifest
        self.device = "cpu" if name == "ort-cpu" else "cuda"
        self.device_id = device_id
        self.enable_cuda_graph = enable_cuda_graph and self.device == "cuda"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        # Each session has its own intra-op pool, whose workers by default keep spinning after Run() returns:
        # the prefix pool then steals a core from every following step (mid() pi0 on 2 cores: 8.8 -> 6.8 ms a
        # step with this off), and both pools from the rest of the process between chunks. Spinning within
        # a Run is kept.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self._ort = ort
        self.prefix_session = ort.InferenceSession(
            str(manifest.path(manifest.graphs[c.PREFIX_GRAPH].file)), options, providers=self._providers(False))
        self.step_session = ort.InferenceSession(
            str(manifest.path(manifest.graphs[c.DENOISE_STEP_GRAPH].file)), options,
            providers=self._providers(self.enable_cuda_graph))
        self._check_io()
        self._batch = None
        self._dtypes: dict[str, type] = {}

    # ---- setup ----------------------------------------------------------------------------------

    def _providers(self, cuda_graph: bool) -> list:
        if self.name == "ort-cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": self.device_id, "enable_cuda_graph": int(cuda_graph)})
        if self.name == "ort-cuda":
            return [cuda]
        cache = self.manifest.bundle_dir / "engines" / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        trt = ("TensorrtExecutionProvider", {
            "device_id": self.device_id, "trt_fp16_enable": self.manifest.precision == "float16",
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)})
        return [trt, cuda]

    def _check_io(self) -> None:
        """The sessions' I/O must be what bundle.yaml promises (DESIGN.md: checked at load)."""
        for graph, session in ((c.PREFIX_GRAPH, self.prefix_session), (c.DENOISE_STEP_GRAPH, self.step_session)):
            entry = self.manifest.graphs[graph]
            got_in = tuple(i.name for i in session.get_inputs())
            got_out = tuple(o.name for o in session.get_outputs())
            if set(got_in) != set(entry.input_names) or set(got_out) != set(entry.output_names):
                raise BackendUnavailableError(
                    f"{self.manifest.path(entry.file)}: graph I/O {got_in} -> {got_out} differs from bundle.yaml "
                    f"{entry.input_names} -> {entry.output_names}")

    def _alloc(self, graph: str, name: str, batch: int):
        spec = self.manifest.graphs[graph].io(name)
        shape = [batch if d == "B" else d for d in spec["shape"]]
        dtype = NUMPY_DTYPES[spec["dtype"]]
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
        pg, sg = c.PREFIX_GRAPH, c.DENOISE_STEP_GRAPH
        self._host, self._dev = {}, {}
        for name in self.manifest.graphs[pg].input_names:
            self._host[name], self._dev[name] = self._alloc(pg, name, batch)
        for name in self.manifest.graphs[pg].output_names:
            self._host[name], self._dev[name] = self._alloc(pg, name, batch)
        for name in (c.STATE,) if c.STATE in self.manifest.graphs[sg].input_names else ():
            self._host[name], self._dev[name] = self._alloc(sg, name, batch)
        self._x = [self._alloc(sg, c.X_T, batch) for _ in range(2)]  # the ping-pong pair
        uses_index = c.STEP_INDEX in self.manifest.graphs[sg].input_names
        per_step = []
        for k, t_value in enumerate(times):
            if uses_index:
                per_step.append({c.STEP_INDEX: self._const(np.full(batch, k, np.int64))})
            else:
                per_step.append({c.TIME: self._const(np.full(batch, t_value, np.float32)),
                                 c.DT: self._const(np.full(batch, dt, np.float32))})
        self._per_step_values = per_step  # keep the constants alive while bound

        self._prefix_binding = self.prefix_session.io_binding()
        for name in self.manifest.graphs[pg].input_names:
            self._prefix_binding.bind_ortvalue_input(name, self._dev[name])
        for name in self.manifest.graphs[pg].output_names:
            self._prefix_binding.bind_ortvalue_output(name, self._dev[name])

        self._step_bindings = []
        velocity = c.VELOCITY in self.manifest.graphs[sg].output_names
        if velocity:
            self._host[c.VELOCITY], self._dev[c.VELOCITY] = self._alloc(sg, c.VELOCITY, batch)
        for k in range(len(times)):
            io = self.step_session.io_binding()
            src, dst = self._x[k % 2][1], self._x[(k + 1) % 2][1]
            io.bind_ortvalue_input(c.X_T, src)
            io.bind_ortvalue_output(c.X_NEXT, dst)
            for name, value in per_step[k].items():
                io.bind_ortvalue_input(name, value)
            for name in (c.PAST_KEYS, c.PAST_VALUES, c.PREFIX_MASK, c.STATE):
                if name in self.manifest.graphs[sg].input_names:
                    io.bind_ortvalue_input(name, self._dev[name])
            if velocity:
                io.bind_ortvalue_output(c.VELOCITY, self._dev[c.VELOCITY])
            self._step_bindings.append(io)
        self._num_steps = len(times)
        self._run_options = self._ort.RunOptions()
        # ORT CUDA graphs: one captured graph per binding, told apart by gpu_graph_id (captured on the first
        # run of each id, replayed after); all inputs/outputs already sit at fixed device addresses.
        self._step_run_options = []
        self._graph_generation = getattr(self, "_graph_generation", 0) + 1  # new buffers: never replay old graphs
        for k in range(len(times)):
            options = self._ort.RunOptions()
            if self.enable_cuda_graph:
                options.add_run_config_entry("gpu_graph_id", str(self._graph_generation * 1000 + k + 1))
            self._step_run_options.append(options)
        self._batch = key

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

    def run_step(self, step: int) -> None:
        self.step_session.run_with_iobinding(self._step_bindings[step], self._step_run_options[step])

    def read_actions(self) -> np.ndarray:
        host, dev = self._x[self._num_steps % 2]
        return host.copy() if host is not None else dev.numpy()

    def read_kv(self) -> tuple[np.ndarray, np.ndarray]:
        """The cache as host arrays (tests and debugging only)."""
        return tuple(self._host[n].copy() if self._host[n] is not None else self._dev[n].numpy()
                     for n in (c.PAST_KEYS, c.PAST_VALUES))

    def buffer_addresses(self) -> dict[str, int]:
        """Device addresses of the long-lived buffers: stable across chunks when nothing is reallocated."""
        out = {name: value.data_ptr() for name, value in self._dev.items()}
        out.update({f"x{i}": slot[1].data_ptr() for i, slot in enumerate(self._x)})
        return out

    def synchronize(self) -> None:
        pass  # run_with_iobinding returns after the outputs are written

    def close(self) -> None:
        self.prefix_session = self.step_session = None
        self._batch = None


def bundle_graph_path(manifest: Manifest, graph: str) -> Path:
    return manifest.path(manifest.graphs[graph].file)
