"""The native TensorRT backend (`tensorrt`): engines from `pi0edge build`, TensorRT 10's tensor API, cuda-python.

Zero-copy loop (docs/runtime.md, "One chunk"), as in the ORT backend but with raw device addresses:
- every device buffer is cudaMalloc'd once per batch size in `prepare`; the prefix engine writes the KV cache
  and prefix mask straight into the buffers the step engine reads;
- x_t ping-pongs between two buffers; the per-step t/dt (or step_index) are device constants uploaded once;
- one execution context per Euler step, its tensor addresses set once in `prepare`: a step is a single
  `execute_async_v3` with nothing to bind. The contexts share the engine's one optimization profile (allowed
  since TensorRT 10.0, PROFILE_SHARING_0806 on by default) and one scratch allocation: they run in order on
  one stream, so their activations never overlap in time. Fixed addresses per context are also what CUDA
  graph capture needs;
- inputs go through pinned host staging buffers (async copies at bus speed), the chunk comes back through one;
- one stream orders everything: every copy (inputs, per-step constants, the chunk out) is a cudaMemcpyAsync on
  it and every launch goes on it, with one synchronize at the end of the chunk. A blocking cudaMemcpy would
  run on the legacy default stream, which this non-blocking stream does not wait for;
- optionally the whole step loop is captured as one CUDA graph (`run_loop`): one launch for all steps.

The engine folder is chosen by GPU and TensorRT version, and its fingerprint checked against this machine
and bundle (runtime/backends/engine_fingerprint.py); a stale or missing engine is refused with the command
that rebuilds it.
Not thread-safe: one backend per thread, as with any TensorRT execution context.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from pi0edge import contract as c
from pi0edge.errors import BackendUnavailableError, BundleError, MissingExtraError
from pi0edge.manifest import Manifest
from pi0edge.runtime.backends.cuda_runtime import (
    CudaError,
    CudaGraph,
    DeviceBuffer,
    PinnedArray,
    Stream,
    device_info,
    load_cudart,
)
from pi0edge.runtime.backends.engine_fingerprint import (
    ENGINES_DIR,
    GRAPHS,
    NATIVE_PRECISION,
    EngineFingerprint,
    default_engine_dir,
    fingerprint_mismatches,
    import_tensorrt,
    onnx_digests,
    read_engine_yaml,
    rebuild_command,
    stale_engine_message,
)

log = logging.getLogger(__name__)

# bundle.yaml dtype -> (trt.DataType member, numpy dtype for host staging); bfloat16 never crosses to the host.
TRT_DTYPES = {"float32": "FLOAT", "float16": "HALF", "bfloat16": "BF16", "bool": "BOOL", "int64": "INT64",
              "int32": "INT32", "uint8": "UINT8"}
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "bool": 1, "int64": 8, "int32": 4, "uint8": 1}

_TRT_LOGGER = None  # TensorRT wants one logger per process


def _logger(trt):
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


class TensorRTBackend:
    """Prefix and denoise_step engines sharing device buffers; see the module docstring."""

    name = "tensorrt"
    providers = ("tensorrt",)  # its own engines: no ONNX Runtime provider
    device = "cuda"

    def __init__(self, manifest: Manifest, device_id: int = 0, use_cuda_graph: bool = True,
                 engine_dir: str | Path | None = None, precision: str | None = None):
        try:
            trt = import_tensorrt("the tensorrt backend")
        except MissingExtraError as exc:
            raise BackendUnavailableError(str(exc)) from exc
        self._trt = trt
        self._rt = load_cudart()
        self.gpu = device_info(self._rt, device_id)  # also selects the device for everything below
        self.manifest, self.device_id, self.use_cuda_graph = manifest, device_id, use_cuda_graph
        self.whole_loop = use_cuda_graph  # Policy calls run_loop (one graph launch) instead of run_step(k)
        self.engine_dir = Path(engine_dir) if engine_dir else default_engine_dir(
            manifest.bundle_dir, self.gpu.name, trt.__version__)
        self.fingerprint: EngineFingerprint | None = None
        self.fingerprint, engine_yaml = self._check_fingerprint(precision)
        self._runtime = trt.Runtime(_logger(trt))
        self._engines = {graph: self._load_engine(graph, engine_yaml) for graph in GRAPHS}
        self._check_io()
        self.stream = Stream(self._rt)
        self._scratch = self._shared_scratch()
        self._prefix_ctx = self._new_context(c.PREFIX_GRAPH)
        self._key = None
        self._dev: dict[str, DeviceBuffer] = {}
        self._host: dict[str, PinnedArray] = {}
        self._x: list[DeviceBuffer] = []
        self._consts: list[dict[str, DeviceBuffer]] = []
        self._const_sources: list[np.ndarray] = []  # host side of the constants' async uploads, kept until freed
        self._actions: PinnedArray | None = None
        self._step_ctx: list = []
        self._graph: CudaGraph | None = None
        self._graph_failed = False
        self._in_flight: set[str] = set()  # staging buffers an async copy may still be reading
        log.info("tensorrt backend: %s (%s, max batch %d) on %s", self.engine_dir, self.fingerprint.precision,
                 self.fingerprint.max_batch, self.gpu.name)

    # ---- loading and checks -------------------------------------------------------------------------

    def _rebuild(self, precision: str | None = None, max_batch: int | None = None) -> str:
        fp = self.fingerprint
        precision = precision or (fp.precision if fp else NATIVE_PRECISION.get(self.manifest.precision, "fp16"))
        return rebuild_command(self.manifest.bundle_dir, precision, max_batch or (fp.max_batch if fp else 1))

    def _check_fingerprint(self, precision: str | None) -> tuple[EngineFingerprint, dict]:
        trt, m = self._trt, self.manifest
        if not (self.engine_dir / "engine.yaml").is_file():
            root = m.bundle_dir / ENGINES_DIR
            others = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
                if root.is_dir() else []
            found = f" (engines found for: {', '.join(others)})" if others else ""
            raise BackendUnavailableError(
                f"no TensorRT engines for {self.gpu.name} with TensorRT {trt.__version__} in {self.engine_dir}"
                f"{found}; build them on this machine: {self._rebuild(precision)}")
        try:
            engine, raw = read_engine_yaml(self.engine_dir)
        except BundleError as exc:
            raise BackendUnavailableError(f"{exc}: {self._rebuild(precision)}") from exc
        expected = EngineFingerprint(trt.__version__, self.gpu.name, self.gpu.compute_capability, onnx_digests(m),
                                     precision or engine.precision, engine.max_batch)
        problems = fingerprint_mismatches(engine, expected)
        if problems:
            raise BackendUnavailableError(stale_engine_message(self.engine_dir, m.bundle_dir, problems,
                                                               expected.precision, engine.max_batch))
        return engine, raw

    def _load_engine(self, graph: str, engine_yaml: dict):
        info = engine_yaml["plans"].get(graph)
        if not isinstance(info, dict) or "file" not in info or "sha256" not in info:
            raise BackendUnavailableError(f"{self.engine_dir}/engine.yaml lists no plan for {graph}; rebuild: "
                                          f"{self._rebuild()}")
        path = self.engine_dir / info["file"]
        if not path.is_file():
            raise BackendUnavailableError(f"{path}: missing; rebuild: {self._rebuild()}")
        data = path.read_bytes()
        # A truncated or corrupted plan can crash deserialization instead of failing cleanly: check it first.
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise BackendUnavailableError(f"{path}: sha256 differs from engine.yaml (corrupted or replaced); "
                                          f"rebuild: {self._rebuild()}")
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendUnavailableError(f"{path}: TensorRT {self._trt.__version__} could not deserialize it "
                                          f"(see TensorRT's log); rebuild: {self._rebuild()}")
        return engine

    def _check_io(self) -> None:
        """The engines' tensors must be what bundle.yaml promises: names, direction and dtype."""
        trt = self._trt
        for graph in GRAPHS:
            engine, entry = self._engines[graph], self.manifest.graphs[graph]
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = {n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
            outputs = set(names) - inputs
            if inputs != set(entry.input_names) or outputs != set(entry.output_names):
                raise BackendUnavailableError(
                    f"{self.engine_dir}/{graph}.plan: engine I/O {sorted(inputs)} -> {sorted(outputs)} differs from "
                    f"bundle.yaml {list(entry.input_names)} -> {list(entry.output_names)}; rebuild: {self._rebuild()}")
            for spec in (*entry.inputs, *entry.outputs):
                want = getattr(trt.DataType, TRT_DTYPES[spec["dtype"]])
                got = engine.get_tensor_dtype(spec["name"])
                if got != want:
                    raise BackendUnavailableError(
                        f"{self.engine_dir}/{graph}.plan: tensor {spec['name']} is {got}, bundle.yaml says "
                        f"{spec['dtype']}; rebuild: {self._rebuild()}")

    def _shared_scratch(self) -> DeviceBuffer | None:
        """One activation scratch for every context (TensorRT >= 10.1); None: each context allocates its own."""
        trt = self._trt
        sizes = [getattr(e, "device_memory_size_v2", None) for e in self._engines.values()]
        if (None in sizes or not hasattr(trt, "ExecutionContextAllocationStrategy")
                or not hasattr(trt.IExecutionContext, "set_device_memory")):
            return None
        return DeviceBuffer(self._rt, max(sizes), "TensorRT activation scratch")

    def _new_context(self, graph: str):
        engine = self._engines[graph]
        if self._scratch is not None:
            ctx = engine.create_execution_context(self._trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if ctx is not None:
                ctx.set_device_memory(self._scratch.ptr, self._scratch.nbytes)
        else:
            ctx = engine.create_execution_context()
        if ctx is None:
            raise CudaError(f"TensorRT could not create an execution context for {graph} (out of GPU memory?)")
        return ctx

    # ---- buffers, once per batch size -----------------------------------------------------------------

    def _shape(self, graph: str, name: str, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "B" else int(d) for d in self.manifest.graphs[graph].io(name)["shape"])

    def _nbytes(self, graph: str, name: str, batch: int) -> int:
        dtype = self.manifest.graphs[graph].io(name)["dtype"]
        return int(np.prod(self._shape(graph, name, batch))) * ITEMSIZE[dtype]

    def _pinned(self, graph: str, name: str, batch: int) -> PinnedArray:
        dtype = self.manifest.graphs[graph].io(name)["dtype"]
        return PinnedArray(self._rt, self._shape(graph, name, batch), c.NUMPY_DTYPES[dtype], name)

    def _bind(self, ctx, graph: str, addresses: dict[str, int], batch: int) -> None:
        """Set every input shape, check the output shapes TensorRT infers, set every tensor address."""
        entry = self.manifest.graphs[graph]
        for name in entry.input_names:
            if not ctx.set_input_shape(name, self._shape(graph, name, batch)):
                raise CudaError(f"TensorRT rejected shape {self._shape(graph, name, batch)} for {graph}.{name}")
        for name in entry.output_names:
            got = tuple(ctx.get_tensor_shape(name))
            if got != self._shape(graph, name, batch):
                raise CudaError(f"{graph}.{name}: engine output shape {got}, bundle.yaml gives "
                                f"{self._shape(graph, name, batch)}")
        for name in (*entry.input_names, *entry.output_names):
            if not ctx.set_tensor_address(name, addresses[name]):
                raise CudaError(f"TensorRT rejected the address of {graph}.{name}")

    def prepare(self, batch: int, times: np.ndarray, dt: float) -> None:
        key = (batch, tuple(times.tolist()), float(dt))
        if self._key == key:
            return
        if batch > self.fingerprint.max_batch:
            raise BackendUnavailableError(f"batch {batch} exceeds the engines' max batch {self.fingerprint.max_batch};"
                                          f" rebuild: {self._rebuild(max_batch=batch)}")
        self._release_batch()
        pg, sg = c.PREFIX_GRAPH, c.DENOISE_STEP_GRAPH
        prefix, step = self.manifest.graphs[pg], self.manifest.graphs[sg]
        dev, host = self._dev, self._host
        for name in (*prefix.input_names, *prefix.output_names):
            dev[name] = DeviceBuffer(self._rt, self._nbytes(pg, name, batch), name)
        for name in prefix.input_names:
            host[name] = self._pinned(pg, name, batch)
        for name in (c.PAST_KEYS, c.PAST_VALUES, c.PREFIX_MASK):
            if self._shape(pg, name, batch) != self._shape(sg, name, batch):
                raise BundleError(f"bundle.yaml: {name} is {self._shape(pg, name, batch)} out of the prefix graph but "
                                  f"{self._shape(sg, name, batch)} into the step graph")
        self._bind(self._prefix_ctx, pg, {n: dev[n].ptr for n in dev}, batch)

        # x ping-pong pair, state, the optional velocity output, and the chunk's pinned in/out staging
        self._x = [DeviceBuffer(self._rt, self._nbytes(sg, c.X_T, batch), f"x{i}") for i in range(2)]
        host[c.X_T] = self._pinned(sg, c.X_T, batch)
        self._actions = self._pinned(sg, c.X_NEXT, batch)
        guidance = tuple(s.name for s in c.RTC_INPUTS)
        for name in (c.STATE, *guidance):
            if name in step.input_names:
                dev[name] = DeviceBuffer(self._rt, self._nbytes(sg, name, batch), name)
                host[name] = self._pinned(sg, name, batch)
        if c.VELOCITY in step.output_names:
            dev[c.VELOCITY] = DeviceBuffer(self._rt, self._nbytes(sg, c.VELOCITY, batch), c.VELOCITY)

        # per-step constants, uploaded once: the loop never writes t or dt
        for k in range(len(times)):
            consts = {}
            for name, value in c.step_time_feeds(step.input_names, k, times, dt, batch).items():
                consts[name] = DeviceBuffer(self._rt, value.nbytes, f"{name}[{k}]")
                self._const_sources.append(consts[name].upload(value, self.stream))
            self._consts.append(consts)

        shared = {n: dev[n].ptr for n in (c.PAST_KEYS, c.PAST_VALUES, c.PREFIX_MASK, c.STATE, c.VELOCITY, *guidance)
                  if n in dev}
        for k in range(len(times)):
            ctx = self._new_context(sg)
            addresses = {**shared, c.X_T: self._x[k % 2].ptr, c.X_NEXT: self._x[(k + 1) % 2].ptr,
                         **{n: b.ptr for n, b in self._consts[k].items()}}
            self._bind(ctx, sg, addresses, batch)
            self._step_ctx.append(ctx)
        self._num_steps = len(times)
        self._key = key

    def _release_batch(self) -> None:
        if self._key is not None:
            self.synchronize()  # queued work may still use the buffers about to be freed
        if self._graph is not None:
            self._graph.destroy()
            self._graph = None
        self._graph_failed = False
        self._step_ctx = []  # contexts go before the buffers they point at
        for buffer in (*self._dev.values(), *self._x, *(b for consts in self._consts for b in consts.values())):
            buffer.free()
        for pinned in (*self._host.values(), *([self._actions] if self._actions is not None else [])):
            pinned.free()
        self._dev, self._host, self._x, self._consts, self._actions = {}, {}, [], [], None
        self._const_sources = []
        self._in_flight.clear()
        self._key = None

    # ---- the per-chunk calls ------------------------------------------------------------------------

    def _stage(self, name: str, value: np.ndarray) -> None:
        """Host array -> pinned staging -> async copy to its device buffer on the stream."""
        if name in self._in_flight:  # written again before the last copy out of it was waited for
            self.synchronize()
        staging = self._host[name]
        np.copyto(staging.array, value, casting="same_kind")
        staging.to_device(self._dev[name] if name != c.X_T else self._x[0], self.stream)
        self._in_flight.add(name)

    def _enqueue(self, ctx, what: str) -> None:
        if not ctx.execute_async_v3(self.stream.ptr):
            raise CudaError(f"TensorRT could not enqueue {what} (see TensorRT's log above)")

    def run_prefix(self, images: np.ndarray, image_masks: np.ndarray, tokens: np.ndarray,
                   token_masks: np.ndarray) -> None:
        for name, value in ((c.IMAGES, images), (c.IMAGE_MASKS, image_masks), (c.TOKENS, tokens),
                            (c.TOKEN_MASKS, token_masks)):
            self._stage(name, value)
        self._enqueue(self._prefix_ctx, "the prefix engine")

    def set_noise(self, noise: np.ndarray, state: np.ndarray | None) -> None:
        self._stage(c.X_T, noise.astype(np.float32, copy=False))
        if state is not None and c.STATE in self._host:
            self._stage(c.STATE, state.astype(np.float32, copy=False))

    def set_guidance(self, leftover: np.ndarray, prefix_weights: np.ndarray, max_guidance_weight: np.ndarray) -> None:
        for name, value in ((c.RTC_LEFTOVER, leftover), (c.RTC_PREFIX_WEIGHTS, prefix_weights),
                            (c.RTC_MAX_GUIDANCE_WEIGHT, max_guidance_weight)):
            self._stage(name, value.astype(np.float32, copy=False))

    def run_step(self, step: int) -> None:
        self._enqueue(self._step_ctx[step], f"denoise step {step}")

    def run_loop(self) -> None:
        """All Euler steps. With use_cuda_graph: the first call runs them one by one (TensorRT wants each
        context enqueued once before capture) and then captures them; later calls replay one CUDA graph."""
        if self._graph is not None:
            self._graph.launch()
            return
        for k in range(self._num_steps):
            self.run_step(k)
        if self.use_cuda_graph and not self._graph_failed:
            self._capture()

    def _capture(self) -> None:
        graph = CudaGraph(self._rt, self.stream)
        try:
            graph.begin()
            try:
                for k, ctx in enumerate(self._step_ctx):
                    self._enqueue(ctx, f"denoise step {k} (capture)")
            except CudaError:
                graph.abort()
                raise
            graph.end()
        except CudaError as exc:
            # Engines with data-dependent shapes, loops or some plugins cannot be captured: stay eager.
            graph.destroy()
            self._graph_failed = True
            log.warning("CUDA graph capture of the step loop failed (%s); the steps run one by one", exc)
            return
        self._graph = graph
        log.info("captured the %d-step loop as one CUDA graph", self._num_steps)

    @property
    def captured(self) -> bool:
        """Whether `run_loop` replays a CUDA graph."""
        return self._graph is not None

    def read_actions(self) -> np.ndarray:
        self._actions.from_device(self._x[self._num_steps % 2], self.stream)
        self.synchronize()
        return self._actions.array.copy()

    def _read_prefix_output(self, name: str) -> np.ndarray:
        """A prefix output copied to the host through a temporary pinned buffer (debugging only)."""
        dtype = self.manifest.graphs[c.PREFIX_GRAPH].io(name)["dtype"]
        if dtype not in c.NUMPY_DTYPES:
            raise BackendUnavailableError(f"{name} is {dtype}, which has no numpy dtype to copy it to the host; "
                                          "inspect a float16 or float32 bundle instead")
        pinned = self._pinned(c.PREFIX_GRAPH, name, self._key[0])
        try:
            pinned.from_device(self._dev[name], self.stream)
            self.synchronize()
            return pinned.array.copy()
        finally:
            pinned.free()

    def read_kv(self) -> tuple[np.ndarray, np.ndarray]:
        return self._read_prefix_output(c.PAST_KEYS), self._read_prefix_output(c.PAST_VALUES)

    def read_prefix_mask(self) -> np.ndarray:
        return self._read_prefix_output(c.PREFIX_MASK)

    def buffer_addresses(self) -> dict[str, int]:
        """Device addresses of the long-lived buffers: stable across chunks when nothing is reallocated."""
        out = {name: buffer.ptr for name, buffer in self._dev.items()}
        out.update({f"x{i}": buffer.ptr for i, buffer in enumerate(self._x)})
        return out

    def synchronize(self) -> None:
        self.stream.synchronize()
        self._in_flight.clear()

    def close(self) -> None:
        if self.stream is None:
            return
        self.stream.synchronize()
        self._release_batch()
        self._prefix_ctx = None
        if self._scratch is not None:
            self._scratch.free()
        self._engines = {}
        self._runtime = None
        self.stream.destroy()
        self.stream = None
