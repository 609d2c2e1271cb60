"""Fakes of `tensorrt` (a TensorRT 10 and a TensorRT 11 flavour) and of cuda-python's runtime module, which
record every call in one shared log: the engine build and the tensorrt backend run against them on a CPU.

They model only what the code under test calls, with the documented names (TensorRT Python API:
Builder.create_network, OnnxParser.parse_from_file, IBuilderConfig.set_memory_pool_limit /
set_flag / clear_flag, build_serialized_network, Runtime.deserialize_cuda_engine, ICudaEngine.num_io_tensors /
get_tensor_name / get_tensor_mode / get_tensor_dtype, IExecutionContext.set_input_shape / set_tensor_address /
execute_async_v3; cuda.bindings.runtime: cudaMalloc, cudaMemcpyAsync, cudaStreamBeginCapture, ...). A
name the real module lacks is missing here too, so code that calls it fails in the test.
"""

from __future__ import annotations

import ctypes
import enum
import types

PRECISION_FLAGS = ("FP16", "BF16", "INT8", "FP8")


class CallLog(list):
    """(call name, *arguments) tuples in call order, shared by the fakes of one test."""

    def names(self) -> list[str]:
        return [call[0] for call in self]


# ---- tensorrt --------------------------------------------------------------------------------------------


def fake_tensorrt(flavour: str, calls: CallLog, graph_io: dict[str, tuple[list, list]]) -> types.ModuleType:
    """flavour "10" (10.3, JetPack 6: weak typing still there) or "11" (no BuilderFlag.FP16/BF16/INT8).
    graph_io: graph name ("prefix", "denoise_step") -> (input specs, output specs) as bundle.yaml lists them."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = {"10": "10.3.0.30", "11": "11.0.0.9"}[flavour]
    flags = ["TF32", "REFIT", "DEBUG"] + (list(PRECISION_FLAGS) if flavour == "10" else [])
    trt.BuilderFlag = enum.Enum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1}
                                                     if flavour == "11" else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "TACTIC_SHARED_MEMORY"])
    trt.LayerType = enum.Enum("LayerType", ["QUANTIZE", "DEQUANTIZE", "MATRIX_MULTIPLY"])
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = enum.Enum("DataType", ["FLOAT", "HALF", "BF16", "BOOL", "INT64", "INT32", "UINT8"])
    trt.ExecutionContextAllocationStrategy = enum.Enum("ExecutionContextAllocationStrategy",
                                                       ["STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"])
    dtypes = {"float32": "FLOAT", "float16": "HALF", "bfloat16": "BF16", "bool": "BOOL", "int64": "INT64",
              "int32": "INT32", "uint8": "UINT8"}

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Tensor:
        def __init__(self, name):
            self.name = name

    class Network:
        def __init__(self, strongly_typed: bool):
            self.strongly_typed, self.inputs, self.outputs = strongly_typed, [], []
            self.num_layers = 0

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            graph = path.rsplit("/", 1)[-1].removesuffix(".onnx")
            calls.append(("parse_from_file", graph))
            inputs, outputs = graph_io[graph]
            self.network.inputs = [Tensor(s["name"]) for s in inputs]
            self.network.outputs = [Tensor(s["name"]) for s in outputs]
            self.network.graph = graph
            return True

    class TimingCache:
        def serialize(self):
            return b"timing-cache"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("profile.set_shape", name, lo, opt, hi))

    class BuilderConfig:
        def __init__(self):
            self.flags = set()

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag.name))
            self.flags.add(flag.name)

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag.name))
            self.flags.discard(flag.name)

        def add_optimization_profile(self, profile):
            return 0

        def create_timing_cache(self, data):
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            strongly_typed = bool(flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            calls.append(("create_network", strongly_typed))
            return Network(strongly_typed)

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            precision = sorted(config.flags & set(PRECISION_FLAGS))
            if flavour == "11" and not network.strongly_typed:
                raise RuntimeError("TensorRT 11 builds strongly typed networks only")
            if network.strongly_typed and precision:  # TensorRT's own rule: an error, no engine
                calls.append(("build_refused", network.graph, precision))
                return None
            calls.append(("build_serialized_network", network.graph))
            return memoryview(f"fake-plan:{network.graph}".encode())

    class Engine:
        def __init__(self, graph):
            inputs, outputs = graph_io[graph]
            self.graph, self.specs = graph, {s["name"]: s for s in (*inputs, *outputs)}
            self.modes = {**{s["name"]: trt.TensorIOMode.INPUT for s in inputs},
                          **{s["name"]: trt.TensorIOMode.OUTPUT for s in outputs}}
            self.names = [s["name"] for s in (*inputs, *outputs)]
            self.device_memory_size_v2 = 4096

        num_io_tensors = property(lambda self: len(self.names))

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return self.modes[name]

        def get_tensor_dtype(self, name):
            return getattr(trt.DataType, dtypes[self.specs[name]["dtype"]])

        def create_execution_context(self, strategy=None):
            return ExecutionContext(self)

    class ExecutionContext:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_device_memory(self, ptr, size):
            self.scratch = ptr

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            batch = self.shapes["x_t" if "x_t" in self.shapes else "images"][0]
            return tuple(batch if d == "B" else int(d) for d in self.engine.specs[name]["shape"])

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            calls.append(("execute_async_v3", self.engine.graph, int(stream_handle)))
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine(bytes(data).decode().removeprefix("fake-plan:"))

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.IExecutionContext = ExecutionContext
    return trt


# ---- cuda.bindings.runtime -------------------------------------------------------------------------------


def fake_cudart(calls: CallLog) -> types.ModuleType:
    """Every call returns (error 0, *values) as cuda-python does; pinned host memory is real memory."""
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaMemcpyKind = enum.Enum("cudaMemcpyKind", ["cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost",
                                                     "cudaMemcpyDeviceToDevice"])
    rt.cudaStreamCaptureMode = enum.Enum("cudaStreamCaptureMode", ["cudaStreamCaptureModeGlobal",
                                                                   "cudaStreamCaptureModeThreadLocal"])
    rt.cudaStreamNonBlocking = 1
    state = {"next_ptr": 0x10000, "next_stream": 0x7000, "host": {}}

    def _record(name):
        def call(*args):
            calls.append((name, *args))
            return (0,)
        return call

    def cudaGetDeviceProperties(device):
        prop = types.SimpleNamespace(name=b"Fake GPU\x00", major=8, minor=7, totalGlobalMem=8 << 30)
        return 0, prop

    def cudaStreamCreateWithFlags(flags):
        state["next_stream"] += 1
        calls.append(("cudaStreamCreateWithFlags", flags))
        return 0, state["next_stream"]

    def cudaMalloc(nbytes):
        state["next_ptr"] += (nbytes + 255) // 256 * 256
        return 0, state["next_ptr"]

    def cudaMallocHost(nbytes):
        buffer = (ctypes.c_uint8 * nbytes)()
        state["host"][ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    def cudaStreamEndCapture(stream):
        calls.append(("cudaStreamEndCapture", stream))
        return 0, "graph"

    def cudaGraphInstantiate(graph, flags):
        calls.append(("cudaGraphInstantiate", graph))
        return 0, "graph-exec"

    rt.cudaGetDeviceCount = lambda: (0, 1)
    rt.cudaSetDevice = lambda device: (0,)
    rt.cudaGetDeviceProperties = cudaGetDeviceProperties
    rt.cudaStreamCreateWithFlags = cudaStreamCreateWithFlags
    rt.cudaMalloc, rt.cudaMallocHost = cudaMalloc, cudaMallocHost
    rt.cudaFree = rt.cudaFreeHost = lambda ptr: (0,)
    rt.cudaStreamEndCapture, rt.cudaGraphInstantiate = cudaStreamEndCapture, cudaGraphInstantiate
    for name in ("cudaMemcpy", "cudaMemcpyAsync", "cudaStreamSynchronize", "cudaStreamDestroy",
                 "cudaStreamBeginCapture", "cudaGraphLaunch", "cudaGraphExecDestroy", "cudaGraphDestroy",
                 "cudaGetLastError", "cudaDeviceSynchronize"):
        setattr(rt, name, _record(name))
    rt.cudaGetErrorName = lambda err: (0, b"cudaErrorFake")
    rt.cudaGetErrorString = lambda err: (0, b"fake error")
    return rt
