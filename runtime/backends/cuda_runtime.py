"""Thin helpers over cuda-python's runtime API (`cuda.bindings.runtime`): device info, streams, device and
pinned host buffers, and stream capture into a CUDA graph. Nothing else.

cuda-python returns `(error, *values)` from every call instead of raising, so each call goes through
`check`, which turns a non-success code into a `CudaError` naming the call and CUDA's own message. Without a
driver the calls return cudaErrorInsufficientDriver: `load_cudart` / `device_info` turn that into
`BackendUnavailableError`, so `auto` falls back to another backend with the reason.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from pi0edge.errors import BackendUnavailableError, Pi0EdgeError

TRT_EXTRA = "trt"


class CudaError(Pi0EdgeError, RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error."""


def load_cudart() -> ModuleType:
    """cuda-python's runtime module: `cuda.bindings.runtime` (cuda-python >= 12.6) or the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart

        return cudart
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the tensorrt backend needs cuda-python for device memory and streams, which is not installed: "
            f"pip install 'pi0edge[{TRT_EXTRA}]'") from exc


def check(cudart: ModuleType, result, what: str):
    """Unpack a cuda-python result: raise on error, else return the value(s) after the error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        _, name = cudart.cudaGetErrorName(err)
        _, text = cudart.cudaGetErrorString(err)
        raise CudaError(f"{what} failed: {_decode(name)} ({_decode(text)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _decode(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str  # "8.7" (Orin), "8.9" (Ada), "9.0" (Hopper)
    total_memory_bytes: int


def device_info(cudart: ModuleType, device_id: int = 0) -> DeviceInfo:
    """Select the device and describe it; no usable device or driver -> BackendUnavailableError."""
    try:
        count = check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if device_id >= count:
            raise BackendUnavailableError(f"CUDA device {device_id} requested but this machine has {count}")
        check(cudart, cudart.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
        prop = check(cudart, cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
    except (CudaError, RuntimeError) as exc:  # cuda-python raises RuntimeError when libcuda cannot be loaded
        raise BackendUnavailableError(f"no usable CUDA GPU: {exc}") from exc
    name = _decode(prop.name).split("\x00", 1)[0].strip()
    return DeviceInfo(device_id, name, f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem))


class Stream:
    """A non-blocking stream: work on it does not serialize with the legacy default stream, and only a
    non-default stream can be captured into a CUDA graph."""

    def __init__(self, cudart: ModuleType):
        self._rt = cudart
        self.handle = check(cudart, cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                            "cudaStreamCreateWithFlags")

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        check(self._rt, self._rt.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.handle is not None:
            check(self._rt, self._rt.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


class DeviceBuffer:
    """cudaMalloc'd memory (256-byte aligned, as TensorRT requires for tensor addresses)."""

    def __init__(self, cudart: ModuleType, nbytes: int, what: str):
        self._rt, self.nbytes, self.what = cudart, max(int(nbytes), 1), what
        self.ptr = int(check(cudart, cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes} bytes for {what})"))

    def upload(self, array: np.ndarray, stream: Stream) -> np.ndarray:
        """Async host -> device copy on `stream`, ordered with the kernels on it (a blocking cudaMemcpy runs on
        the legacy default stream, which a non-blocking stream does not wait for: a race with queued work).
        For constants written once in prepare. -> the contiguous source: keep it alive until the stream is
        synchronized (CUDA may read pageable memory after the call returns)."""
        array = np.ascontiguousarray(array)
        if array.nbytes > self.nbytes:
            raise ValueError(f"{self.what}: {array.nbytes} bytes do not fit in {self.nbytes}")
        check(self._rt, self._rt.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes,
                                                 self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle),
              f"upload {self.what}")
        return array

    def free(self) -> None:
        if self.ptr:
            check(self._rt, self._rt.cudaFree(self.ptr), f"cudaFree({self.what})")
            self.ptr = 0


class PinnedArray:
    """A numpy array over page-locked host memory (cudaMallocHost): async copies from and to it overlap with
    the host and run at full bus speed; from pageable memory the driver stages through a bounce buffer."""

    def __init__(self, cudart: ModuleType, shape: tuple[int, ...], dtype, what: str):
        self._rt, self.what = cudart, what
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        self.ptr = int(check(cudart, cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes} bytes for {what})"))
        raw = (ctypes.c_uint8 * nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, np.uint8, count=int(np.prod(shape)) * dtype.itemsize).view(dtype).reshape(shape)

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def to_device(self, dst: DeviceBuffer, stream: Stream) -> None:
        check(self._rt, self._rt.cudaMemcpyAsync(dst.ptr, self.ptr, self.nbytes,
                                                 self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle),
              f"copy {self.what} to the device")

    def from_device(self, src: DeviceBuffer, stream: Stream) -> None:
        check(self._rt, self._rt.cudaMemcpyAsync(self.ptr, src.ptr, self.nbytes,
                                                 self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle),
              f"copy {self.what} to the host")

    def free(self) -> None:
        if self.ptr:
            self.array = None
            check(self._rt, self._rt.cudaFreeHost(self.ptr), f"cudaFreeHost({self.what})")
            self.ptr = 0


class CudaGraph:
    """Work enqueued on a stream between `begin` and `end`, replayed by `launch` with one driver call."""

    def __init__(self, cudart: ModuleType, stream: Stream):
        self._rt, self.stream = cudart, stream
        self.graph = self.exec = None

    def begin(self) -> None:
        # Thread-local: other threads of the robot process (cameras, arms) may make CUDA calls meanwhile.
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(self._rt, self._rt.cudaStreamBeginCapture(self.stream.handle, mode), "cudaStreamBeginCapture")

    def end(self) -> None:
        self.graph = check(self._rt, self._rt.cudaStreamEndCapture(self.stream.handle), "cudaStreamEndCapture")
        self.exec = check(self._rt, self._rt.cudaGraphInstantiate(self.graph, 0), "cudaGraphInstantiate")

    def abort(self) -> None:
        """End a failed capture and drop what it recorded, leaving the stream usable for eager work."""
        err, graph = self._rt.cudaStreamEndCapture(self.stream.handle)
        if int(err) == 0 and graph is not None:
            self._rt.cudaGraphDestroy(graph)
        self._rt.cudaGetLastError()  # reset the (non-sticky) error the failed capture recorded

    def launch(self) -> None:
        check(self._rt, self._rt.cudaGraphLaunch(self.exec, self.stream.handle), "cudaGraphLaunch")

    def destroy(self) -> None:
        if self.exec is not None:
            check(self._rt, self._rt.cudaGraphExecDestroy(self.exec), "cudaGraphExecDestroy")
            self.exec = None
        if self.graph is not None:
            check(self._rt, self._rt.cudaGraphDestroy(self.graph), "cudaGraphDestroy")
            self.graph = None
