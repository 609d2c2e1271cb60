"""The one ONNX Runtime of an install: present or a clear error naming the extras (docs/install.md).

`onnxruntime` (CPU) and `onnxruntime-gpu` both own the `onnxruntime` module, so pyproject's base dependencies
name neither and each install adds exactly one: the `cpu` extra, the `gpu` extra (CUDA 13), or on a Jetson
JetPack's own onnxruntime-gpu wheel (`jetson` extra, nothing from pip).
"""

from __future__ import annotations

from types import ModuleType

from pi0edge.errors import MissingExtraError, Pi0EdgeError

ORT_INSTALL_HINT = ("pip install 'pi0edge[cpu]' (CPU), 'pi0edge[gpu]' (onnxruntime-gpu for CUDA 13), or on a "
                    "Jetson NVIDIA's onnxruntime-gpu wheel for your JetPack with 'pi0edge[jetson]' "
                    "(docs/install.md); never two of them in one environment")


class OnnxRuntimeMissingError(MissingExtraError):
    """No onnxruntime distribution is installed; the message names the extras that bring one."""

    def __init__(self, purpose: str):
        Pi0EdgeError.__init__(self, f"{purpose} needs ONNX Runtime, which is not installed: {ORT_INSTALL_HINT}")
        self.module, self.extra = "onnxruntime", "cpu"


def import_onnxruntime(purpose: str = "the pi0edge runtime") -> ModuleType:
    """`import onnxruntime`, or OnnxRuntimeMissingError naming the `cpu`, `gpu` and `jetson` installs."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxRuntimeMissingError(purpose) from exc
    return onnxruntime
