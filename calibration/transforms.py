"""Rigid transforms: 4x4 matrices, quaternions (x, y, z, w), the distance between two poses, and the
transform YAML that hand-eye and RealSense extrinsics are written in.

Convention: a Transform with parent_frame P and child_frame C is the pose of C in P; its matrix maps
points from C coordinates to P coordinates (p_P = T @ p_C), as a ROS tf from P to C."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pi0edge.calibration.errors import CalibrationFileError
from pi0edge.calibration.yaml_io import read_yaml_file


def make_transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = np.asarray(rotation, float).reshape(3, 3)
    out[:3, 3] = np.asarray(translation, float).reshape(3)
    return out


def invert(transform: np.ndarray) -> np.ndarray:
    r, t = transform[:3, :3], transform[:3, 3]
    return make_transform(r.T, -r.T @ t)


def quaternion_from_matrix(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) with w >= 0, from the largest-diagonal branch (stable near 180 deg)."""
    m = np.asarray(rotation, float)[:3, :3]
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    q = np.asarray(q) / np.linalg.norm(q)
    return -q if q[3] < 0 else q


def matrix_from_quaternion(quaternion_xyzw) -> np.ndarray:
    x, y, z, w = np.asarray(quaternion_xyzw, float) / np.linalg.norm(quaternion_xyzw)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotation_angle_deg(rotation: np.ndarray) -> float:
    cos = (np.trace(np.asarray(rotation)[:3, :3]) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


def pose_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(translation mm, rotation deg) of inv(a) @ b: how far b is from a."""
    delta = invert(a) @ b
    return float(np.linalg.norm(delta[:3, 3]) * 1000.0), rotation_angle_deg(delta)


def as_rotation(matrix: np.ndarray, what: str) -> np.ndarray:
    """Check a 3x3 is a proper rotation (files written by hand drift from orthonormal)."""
    r = np.asarray(matrix, float)
    if r.shape != (3, 3) or not np.isfinite(r).all():
        raise CalibrationFileError(f"{what}: rotation must be a finite 3x3 matrix")
    if np.abs(r.T @ r - np.eye(3)).max() > 1e-3 or np.linalg.det(r) < 0:
        raise CalibrationFileError(f"{what}: the 3x3 part is not a rotation (not orthonormal or det < 0)")
    u, _, vt = np.linalg.svd(r)
    return u @ vt


@dataclass(frozen=True, eq=False)
class Transform:
    parent_frame: str
    child_frame: str
    matrix: np.ndarray  # 4x4, p_parent = matrix @ p_child; metres

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, float)
        if m.shape != (4, 4):
            raise CalibrationFileError(f"transform {self.parent_frame}->{self.child_frame}: matrix must be 4x4")
        object.__setattr__(self, "matrix", m)

    def to_dict(self) -> dict[str, Any]:
        return {
            "parent_frame": self.parent_frame,
            "child_frame": self.child_frame,
            "translation_m": [float(v) for v in self.matrix[:3, 3]],
            "quaternion_xyzw": [float(v) for v in quaternion_from_matrix(self.matrix[:3, :3])],
            "matrix": [[float(v) for v in row] for row in self.matrix],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "transform") -> Transform:
        if not isinstance(data, dict):
            raise CalibrationFileError(f"{source}: a transform must be a mapping")
        return cls(
            str(data.get("parent_frame", "parent")),
            str(data.get("child_frame", "child")),
            pose_from_fields(data, source),
        )


def pose_from_fields(data: dict[str, Any], source: str) -> np.ndarray:
    """A 4x4 from `matrix`, or from `translation_m` (or `translation_mm`) plus `quaternion_xyzw`."""
    try:
        if "matrix" in data:
            m = np.asarray(data["matrix"], float)
            if m.shape != (4, 4):
                raise CalibrationFileError(f"{source}: 'matrix' must be 4x4, got shape {m.shape}")
            return make_transform(as_rotation(m[:3, :3], source), m[:3, 3])
        if "translation_m" in data:
            t = np.asarray(data["translation_m"], float)
        elif "translation_mm" in data:
            t = np.asarray(data["translation_mm"], float) / 1000.0
        else:
            raise CalibrationFileError(f"{source}: needs 'matrix' or 'translation_m' + 'quaternion_xyzw'")
        q = np.asarray(data["quaternion_xyzw"], float)
    except KeyError as exc:
        raise CalibrationFileError(f"{source}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise CalibrationFileError(f"{source}: not numbers: {exc}") from None
    if t.shape != (3,) or q.shape != (4,) or not (np.isfinite(t).all() and np.isfinite(q).all()):
        raise CalibrationFileError(f"{source}: translation needs 3 finite numbers and quaternion_xyzw 4")
    if abs(np.linalg.norm(q) - 1.0) > 1e-2:
        raise CalibrationFileError(f"{source}: quaternion_xyzw {q.tolist()} is not unit length (xyzw order?)")
    return make_transform(matrix_from_quaternion(q), t)


def transform_yaml_text(transform: Transform, extra: dict[str, Any] | None = None) -> str:
    import yaml

    return yaml.safe_dump(
        {**transform.to_dict(), **(extra or {})}, sort_keys=False, default_flow_style=None, width=1000
    )


def read_transform_file(path: Path | str) -> Transform:
    data = read_yaml_file(path, "transform")
    return Transform.from_dict(data, source=f"transform file {path}")
