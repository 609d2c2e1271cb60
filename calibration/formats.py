"""Camera files: ROS camera_info YAML (what camera_calibration_parsers reads and
camera_info_manager serves) and OpenCV FileStorage YAML (what cv2.FileStorage reads back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pi0edge.calibration.camera import CameraModel
from pi0edge.calibration.errors import CalibrationFileError


def _matrix(rows: int, cols: int, values: np.ndarray) -> dict[str, Any]:
    return {"rows": rows, "cols": cols, "data": [float(v) for v in np.asarray(values, float).reshape(-1)]}


def ros_camera_info_text(camera: CameraModel) -> str:
    import yaml

    data = {
        "image_width": camera.width,
        "image_height": camera.height,
        "camera_name": camera.name,
        "camera_matrix": _matrix(3, 3, camera.camera_matrix),
        "distortion_model": camera.distortion_model,
        "distortion_coefficients": _matrix(1, camera.distortion.size, camera.distortion),
        # monocular: no rectifying rotation
        "rectification_matrix": _matrix(3, 3, np.eye(3)),
        "projection_matrix": _matrix(3, 4, camera.projection_matrix()),
    }
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=1000)


def opencv_yaml_text(camera: CameraModel, extra: dict[str, float | int | str] | None = None) -> str:
    """The layout of OpenCV's calibration sample (camera_matrix, distortion_coefficients, image_width...)."""
    from pi0edge.errors import require

    cv2 = require("cv2", "calib", "camera calibration")
    fs = cv2.FileStorage("camera.yaml", cv2.FILE_STORAGE_WRITE | cv2.FILE_STORAGE_MEMORY)
    fs.write("camera_name", camera.name)
    fs.write("image_width", camera.width)
    fs.write("image_height", camera.height)
    fs.write("camera_matrix", camera.camera_matrix)
    fs.write("distortion_model", camera.distortion_model)
    fs.write("distortion_coefficients", camera.distortion.reshape(1, -1))
    fs.write("projection_matrix", camera.projection_matrix())
    for key, value in (extra or {}).items():
        fs.write(key, value)
    return fs.releaseAndGetString()


def _ros_matrix(data: dict, key: str, path: Path) -> np.ndarray:
    try:
        block = data[key]
        values = np.asarray(block["data"], dtype=np.float64)
        return values.reshape(int(block["rows"]), int(block["cols"]))
    except KeyError as exc:
        raise CalibrationFileError(f"{path}: field '{key}' is missing {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise CalibrationFileError(f"{path}: field '{key}' is not a rows x cols matrix: {exc}") from None


def read_camera_file(path: Path | str) -> CameraModel:
    """Either format, told apart by OpenCV's `%YAML:1.0` header."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationFileError(f"cannot read camera file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if text.lstrip().startswith("%YAML:1.0"):
        return _read_opencv(path)
    import yaml

    from pi0edge.yaml_io import load_yaml

    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise CalibrationFileError(f"camera file {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CalibrationFileError(f"camera file {path}: expected a ROS camera_info mapping")
    for key in ("image_width", "image_height", "camera_matrix", "distortion_coefficients"):
        if key not in data:
            raise CalibrationFileError(f"camera file {path}: missing field '{key}'")
    projection = _ros_matrix(data, "projection_matrix", path) if "projection_matrix" in data else None
    try:
        return CameraModel(
            int(data["image_width"]),
            int(data["image_height"]),
            _ros_matrix(data, "camera_matrix", path),
            _ros_matrix(data, "distortion_coefficients", path).reshape(-1),
            str(data.get("distortion_model", "plumb_bob")),
            str(data.get("camera_name", path.stem)),
            projection,
        )
    except CalibrationFileError as exc:
        raise CalibrationFileError(f"camera file {path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CalibrationFileError(f"camera file {path}: {exc}") from None


def _read_opencv(path: Path) -> CameraModel:
    from pi0edge.errors import require

    cv2 = require("cv2", "calib", "camera calibration")
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except cv2.error as exc:
        raise CalibrationFileError(f"camera file {path}: OpenCV cannot parse it: {exc.err}") from None
    try:

        def node(key: str):
            n = fs.getNode(key)
            if n.empty():
                raise CalibrationFileError(f"camera file {path}: missing field '{key}'")
            return n

        k = node("camera_matrix").mat()
        d = node("distortion_coefficients").mat()
        if k is None or d is None:
            raise CalibrationFileError(f"camera file {path}: camera_matrix / distortion_coefficients are not matrices")
        model_node = fs.getNode("distortion_model")
        name_node = fs.getNode("camera_name")
        p_node = fs.getNode("projection_matrix")
        return CameraModel(
            int(node("image_width").real()),
            int(node("image_height").real()),
            k,
            d.reshape(-1),
            model_node.string() if not model_node.empty() else ("plumb_bob"),
            name_node.string() if not name_node.empty() else path.stem,
            p_node.mat() if not p_node.empty() else None,
        )
    finally:
        fs.release()
