"""Files and small pieces: camera files round-trip, transforms and quaternions, atomic writes, the CLI's
help and import walls."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from calib_synth import fisheye_camera, pinhole_camera, rotation

from pi0edge.calibration.errors import CalibrationError, CalibrationFileError
from pi0edge.calibration.formats import opencv_yaml_text, read_camera_file, ros_camera_info_text
from pi0edge.calibration.outputs import write_files_atomically
from pi0edge.calibration.transforms import matrix_from_quaternion, quaternion_from_matrix, rotation_angle_deg


@pytest.mark.parametrize("make", [pinhole_camera, fisheye_camera])
@pytest.mark.parametrize("writer, suffix", [(ros_camera_info_text, "camera_info.yaml"), (opencv_yaml_text, "cv.yaml")])
def test_camera_files_round_trip(tmp_path, make, writer, suffix):
    camera = make()
    path = tmp_path / f"c.{suffix}"
    path.write_text(writer(camera))
    back = read_camera_file(path)
    np.testing.assert_allclose(back.camera_matrix, camera.camera_matrix)
    np.testing.assert_allclose(back.distortion, camera.distortion)
    assert back.distortion_model == camera.distortion_model and back.image_size == camera.image_size


def test_camera_file_missing_a_field_names_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "image_width: 640\nimage_height: 480\ncamera_matrix: {rows: 3, cols: 3, data: [1,0,0,0,1,0,0,0,1]}\n"
    )
    with pytest.raises(CalibrationFileError, match="missing field 'distortion_coefficients'"):
        read_camera_file(path)


@pytest.mark.parametrize("angles", [(0, 0, 0), (10, -20, 30), (179, 1, -2), (-90, 45, 180)])
def test_quaternion_round_trip(angles):
    r = rotation(*angles)
    q = quaternion_from_matrix(r)
    assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
    np.testing.assert_allclose(matrix_from_quaternion(q), r, atol=1e-12)
    assert rotation_angle_deg(r @ rotation(0, 0, 1.0) @ r.T) == pytest.approx(1.0)


def test_atomic_write_failure_leaves_earlier_files_unchanged(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("old")
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("file")
    with pytest.raises(CalibrationError, match="cannot write"):
        write_files_atomically({good: "new", blocker / "b.txt": "new"})
    assert good.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "not_a_dir"]


def test_calibrate_help_works_and_importing_the_cli_loads_neither_cv2_nor_torch():
    code = (
        "import sys; from pi0edge.cli import build_parser; build_parser(); "
        "import pi0edge.calibration.drift, pi0edge.calibration.handeye, pi0edge.calibration.intrinsics; "
        "print(sorted(m for m in ('cv2', 'torch', 'pyrealsense2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    help_text = subprocess.run(
        [sys.executable, "-m", "pi0edge.cli", "calibrate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for step in ("intrinsics", "realsense", "handeye", "check"):
        assert step in help_text
