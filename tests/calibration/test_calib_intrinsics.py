"""Intrinsics accuracy on rendered views with known intrinsics, view rejection, and quality warnings."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from calib_synth import CHARUCO, pinhole_camera, write_views

from pi0edge.calibration.boards import parse_board
from pi0edge.calibration.detect import BoardDetector
from pi0edge.calibration.intrinsics import IntrinsicsOptions, calibrate_intrinsics
from pi0edge.calibration.report import quality_warnings
from pi0edge.calibration.sources import iter_folder

FOCAL_REL_TOL = 0.005  # 0.5 %
PRINCIPAL_POINT_TOL_PX = 2.0
MAX_RMS_PX = 0.5


def _calibrate(folder, board_text, model="pinhole"):
    detector = BoardDetector(parse_board(board_text))
    views = [(name, detector.detect(image)) for name, image in iter_folder(folder)]
    size = (views and next(iter_folder(folder))[1].shape[1::-1]) or None
    return calibrate_intrinsics(views, tuple(size), IntrinsicsOptions(model=model))


def _assert_close_to(camera, truth):
    assert abs(camera.fx / truth.fx - 1) < FOCAL_REL_TOL, (camera.fx, truth.fx)
    assert abs(camera.fy / truth.fy - 1) < FOCAL_REL_TOL, (camera.fy, truth.fy)
    assert abs(camera.cx - truth.cx) < PRINCIPAL_POINT_TOL_PX, (camera.cx, truth.cx)
    assert abs(camera.cy - truth.cy) < PRINCIPAL_POINT_TOL_PX, (camera.cy, truth.cy)


def test_charuco_pinhole_recovers_focal_principal_point_and_low_rms(charuco_folder):
    result = _calibrate(charuco_folder, CHARUCO)
    truth = pinhole_camera()
    _assert_close_to(result.camera, truth)
    assert result.rms_px < MAX_RMS_PX
    assert result.camera.distortion_model == "plumb_bob"
    # k1 dominates the distortion: it must come back close too
    assert abs(result.camera.distortion[0] - truth.distortion[0]) < 0.02
    assert not result.rejected


def test_chessboard_pinhole_recovers_focal_principal_point_and_low_rms(chessboard_folder):
    folder, renderer = chessboard_folder
    result = _calibrate(folder, renderer.board.describe())
    _assert_close_to(result.camera, renderer.camera)
    assert result.rms_px < MAX_RMS_PX


def test_fisheye_model_recovers_focal_principal_point_and_low_rms(fisheye_folder):
    folder, renderer = fisheye_folder
    result = _calibrate(folder, CHARUCO, model="fisheye")
    assert result.camera.distortion_model == "equidistant"
    _assert_close_to(result.camera, renderer.camera)
    assert result.rms_px < MAX_RMS_PX


def test_warped_view_is_rejected_as_outlier_and_does_not_pull_the_result(tmp_path, charuco_folder, charuco_renderer):
    """A view whose corners do not fit any pinhole pose (the image wobbles by +-3 px, like a bent board or a
    rolling-shutter frame) must be rejected with its error as the reason."""
    folder = tmp_path / "views"
    shutil.copytree(charuco_folder, folder)
    rng = np.random.default_rng(11)
    image = charuco_renderer.render(charuco_renderer.random_pose(rng, (0.3, 0.4), 30.0), rng)
    ys, xs = np.mgrid[0:480, 0:640].astype(np.float32)
    wobble_x = xs + 3.0 * np.sin(2 * np.pi * ys / 90.0)
    wobble_y = ys + 3.0 * np.sin(2 * np.pi * xs / 110.0)
    cv2.imwrite(str(folder / "zz_warped.png"), cv2.remap(image, wobble_x, wobble_y, cv2.INTER_LINEAR))
    result = _calibrate(folder, CHARUCO)
    rejected = {v.name: v.reason for v in result.rejected}
    assert "zz_warped.png" in rejected and "reprojection RMS" in rejected["zz_warped.png"]
    _assert_close_to(result.camera, pinhole_camera())
    assert result.rms_px < MAX_RMS_PX


def test_few_views_in_one_corner_of_the_image_raise_coverage_and_count_warnings(tmp_path, charuco_renderer):
    rng = np.random.default_rng(21)
    poses = []
    while len(poses) < 6:
        pose = charuco_renderer.random_pose(rng, (0.55, 0.7), 40.0)
        if charuco_renderer.corners_px(pose)[:, 0].max() < 420:  # left part of the image only
            poses.append(pose)
    write_views(tmp_path, charuco_renderer, poses, seed=22)
    result = _calibrate(tmp_path, CHARUCO)
    warnings = " | ".join(quality_warnings(result))
    assert "views used" in warnings
    assert "covered" in warnings


@pytest.mark.parametrize("k_coefficients", [2, 3])
def test_k_coefficients_option_fixes_or_estimates_k3(charuco_folder, k_coefficients):
    detector = BoardDetector(parse_board(CHARUCO))
    views = [(n, detector.detect(i)) for n, i in iter_folder(charuco_folder)]
    result = calibrate_intrinsics(views, (640, 480), IntrinsicsOptions(k_coefficients=k_coefficients))
    assert (result.camera.distortion[4] == 0.0) == (k_coefficients == 2)
