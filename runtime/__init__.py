"""The lean runtime: bundle -> actions, with no torch. See DESIGN.md, "Runtime"."""

from pi0edge.runtime.types import ActionChunk, Observation

__all__ = ["ActionChunk", "Observation", "Policy"]


def __getattr__(name: str):
    # Policy pulls in onnxruntime; keep `import pi0edge.runtime` cheap for robot_io and the CLI.
    if name == "Policy":
        from pi0edge.runtime.policy import Policy

        return Policy
    raise AttributeError(name)
