"""Drift check: an unmoved camera passes, a 5 mm or 1 degree move fails; exit codes 0 / 1 / 2 for scripts;
the library call the control loop uses."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from calib_synth import CHARUCO, rotation, transform

from pi0edge.calibration.boards import parse_board
from pi0edge.calibration.drift import DriftResult, check_drift, save_reference
from pi0edge.calibration.errors import BoardNotFoundError, ImageError
from pi0edge.calibration.formats import ros_camera_info_text
from pi0edge.calibration.transforms import invert
from pi0edge.cli import main

ROTATION_MEASURE_TOL_DEG = 0.3
TRANSLATION_MEASURE_TOL_MM = 1.0
REFERENCE_POSE = transform(rotation(20.0, -15.0, 5.0), [-0.09, -0.06, 0.45])


def moved(camera_motion: np.ndarray) -> np.ndarray:
    """Board pose seen by a camera that moved by camera_motion (new camera pose in the old camera frame)."""
    return invert(camera_motion) @ REFERENCE_POSE


@pytest.fixture(scope="module")
def reference(tmp_path_factory, charuco_renderer):
    folder = tmp_path_factory.mktemp("drift")
    image = charuco_renderer.render(REFERENCE_POSE, np.random.default_rng(60))
    path = folder / "reference.yaml"
    save_reference(charuco_renderer.camera, parse_board(CHARUCO), image, path, "reference.png")
    return path


def view(renderer, pose, seed=61):
    return renderer.render(pose, np.random.default_rng(seed))


def test_unmoved_camera_passes(reference, charuco_renderer):
    result = check_drift(view(charuco_renderer, REFERENCE_POSE), reference)
    assert isinstance(result, DriftResult)
    assert result.passed, result.message
    assert result.translation_mm < 0.5 and result.rotation_deg < 0.1


@pytest.mark.parametrize("direction", [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
def test_5mm_move_is_detected_and_measured(reference, charuco_renderer, direction):
    motion = transform(np.eye(3), 0.005 * np.array(direction, float))
    result = check_drift(view(charuco_renderer, moved(motion)), reference)
    assert not result.passed
    assert abs(result.translation_mm - 5.0) < TRANSLATION_MEASURE_TOL_MM, result.message


@pytest.mark.parametrize("axis", [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
def test_1deg_rotation_is_detected_and_measured(reference, charuco_renderer, axis):
    motion = transform(rotation(*(1.0 * np.array(axis, float))), np.zeros(3))
    result = check_drift(view(charuco_renderer, moved(motion)), reference)
    assert not result.passed
    # single-view PnP trades a small pitch/yaw for a lateral shift: the angle is measured to ~0.2 deg
    assert abs(result.rotation_deg - 1.0) < ROTATION_MEASURE_TOL_DEG, result.message


def test_thresholds_can_be_loosened_by_the_caller(reference, charuco_renderer):
    motion = transform(np.eye(3), [0.005, 0.0, 0.0])
    result = check_drift(view(charuco_renderer, moved(motion)), reference, max_mm=10.0, max_deg=2.0)
    assert result.passed and result.thresholds.max_mm == 10.0


def test_image_without_board_or_of_another_size_cannot_be_checked(reference):
    with pytest.raises(BoardNotFoundError, match="board not found"):
        check_drift(np.full((480, 640), 128, np.uint8), reference)
    with pytest.raises(ImageError, match="is 320x240 but the calibration is for 640x480"):
        check_drift(np.zeros((240, 320, 3), np.uint8), reference)


def test_cli_exit_codes_pass_0_moved_1_error_2(tmp_path, charuco_renderer, capsys):
    intrinsics = tmp_path / "cam.yaml"
    intrinsics.write_text(ros_camera_info_text(charuco_renderer.camera))
    ref_image, same, shifted, blank = (tmp_path / f"{n}.png" for n in ("ref", "same", "shifted", "blank"))
    cv2.imwrite(str(ref_image), view(charuco_renderer, REFERENCE_POSE, 70))
    cv2.imwrite(str(same), view(charuco_renderer, REFERENCE_POSE, 71))
    cv2.imwrite(str(shifted), view(charuco_renderer, moved(transform(np.eye(3), [0, 0.005, 0])), 72))
    cv2.imwrite(str(blank), np.full((480, 640), 90, np.uint8))
    ref = tmp_path / "ref.yaml"

    def check(*args):
        return main(["calibrate", "check", "--reference", str(ref), *map(str, args)])

    assert check("--save-reference", "--image", ref_image, "--intrinsics", intrinsics, "--board", CHARUCO) == 0
    assert ref.exists()
    assert check("--image", same) == 0
    assert check("--image", shifted) == 1
    capsys.readouterr()
    assert check("--image", shifted, "--json") == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False
    assert check("--image", blank) == 2
    assert check("--image", tmp_path / "missing.png") == 2
    assert "missing.png" in capsys.readouterr().err
    assert check("--image", same, "--max-mm", "0.0001") == 1


def test_save_reference_failure_leaves_an_existing_reference_untouched(tmp_path, charuco_renderer):
    intrinsics = tmp_path / "cam.yaml"
    intrinsics.write_text(ros_camera_info_text(charuco_renderer.camera))
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((480, 640), 90, np.uint8))
    ref = tmp_path / "ref.yaml"
    ref.write_text("previous")
    code = main(
        [
            "calibrate",
            "check",
            "--reference",
            str(ref),
            "--save-reference",
            "--image",
            str(blank),
            "--intrinsics",
            str(intrinsics),
            "--board",
            CHARUCO,
        ]
    )
    assert code == 2 and ref.read_text() == "previous"
