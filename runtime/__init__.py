"""The lean runtime: bundle -> actions, with no torch. See docs/runtime.md."""

from pi0edge.runtime.types import ActionChunk, ChunkInternals, ChunkTimings, Observation

__all__ = ["ActionChunk", "ChunkInternals", "ChunkTimings", "Observation", "Policy"]


def __getattr__(name: str):
    # Policy pulls in onnxruntime; keep `import pi0edge.runtime` cheap for robot_io and the CLI. Without any
    # onnxruntime (pyproject's base dependencies name none), say which extra brings one.
    if name == "Policy":
        from pi0edge.runtime.backends.ort_install import import_onnxruntime

        import_onnxruntime("the pi0edge runtime (Policy)")
        from pi0edge.runtime.policy import Policy

        return Policy
    raise AttributeError(name)
