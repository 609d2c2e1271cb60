"""CUDA and cuDNN for onnxruntime-gpu from the nvidia-* pip wheels, without torch.

`pi0edge[gpu]` installs onnxruntime-gpu[cuda,cudnn]: the CUDA runtime, cuBLAS and cuDNN arrive as nvidia-*
wheels under site-packages/nvidia/, which the dynamic loader does not search. Importing torch first used to
load them as a side effect; the runtime never imports torch, so it asks onnxruntime to load them
(`onnxruntime.preload_dlls()`, onnxruntime-gpu >= 1.21) before the first CUDA session is created. A system
CUDA (a Jetson's JetPack, /usr/local/cuda on the loader path) is found without it, so a failure only logs.
"""

from __future__ import annotations

import logging
from types import ModuleType

log = logging.getLogger(__name__)


def preload_cuda_libraries(ort: ModuleType) -> bool:
    """Load CUDA and cuDNN for `ort` (the imported onnxruntime) if it can; -> whether preload_dlls ran.

    Call it before creating a session with the CUDA or TensorRT execution provider. The CPU onnxruntime and
    onnxruntime-gpu < 1.21 have no preload_dlls: nothing to do.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return False
    try:
        preload(cuda=True, cudnn=True)
    except Exception as exc:  # noqa: BLE001  a missing wheel or a library the loader refuses: not fatal here
        log.warning("onnxruntime.preload_dlls() could not load CUDA/cuDNN from the nvidia-* wheels (%s); "
                    "relying on the system's loader path", exc)
        return False
    return True
