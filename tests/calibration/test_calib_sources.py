"""Image files in calibration: read in the channel order they were written in (OpenCV files are BGR, frames
in memory are RGB as robot_io delivers them), so the grey image the detector sees is the file's true grey."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from calib_synth import CHARUCO, NOISE_GREY

from pi0edge.calibration.boards import parse_board
from pi0edge.calibration.detect import BoardDetector, to_gray
from pi0edge.calibration.sources import capture_views, grab_frame, iter_folder, read_image

# BT.601 luma: blue weighs 0.114 and red 0.299, so swapping them moves grey by up to this much
BLUE_RED_SWAP_GREY = round((0.299 - 0.114) * 255)


def red_blue_view(grey_view: np.ndarray) -> np.ndarray:
    """A BGR image of the board printed in red (light squares) and blue (dark squares): read in the right
    channel order its grey keeps the board's contrast; with red and blue swapped the contrast inverts."""
    light = grey_view.astype(np.float64) / 255.0
    bgr = np.stack([255.0 * (1.0 - light), np.zeros_like(light), 255.0 * light], axis=-1)
    return np.round(bgr).astype(np.uint8)


@pytest.fixture(scope="module")
def board_view(charuco_renderer) -> np.ndarray:
    rng = np.random.default_rng(80)
    return charuco_renderer.render(charuco_renderer.random_pose(rng, (0.25, 0.45), 30.0), rng, NOISE_GREY)


@pytest.mark.parametrize("channels", [3, 4])
def test_grey_of_a_colour_file_equals_opencv_bgr2gray_of_imread(tmp_path, board_view, channels):
    bgr = red_blue_view(board_view)
    if channels == 4:
        bgr = np.concatenate([bgr, np.full(bgr.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    path = tmp_path / "view.png"
    cv2.imwrite(str(path), bgr)
    expected = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)
    swapped = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_RGB2GRAY)
    assert np.abs(expected.astype(int) - swapped.astype(int)).max() >= BLUE_RED_SWAP_GREY - 1  # the order matters
    np.testing.assert_array_equal(to_gray(read_image(path)), expected)


def test_red_and_blue_board_file_is_detected_in_the_files_channel_order(tmp_path, board_view):
    folder = tmp_path / "views"
    folder.mkdir()
    cv2.imwrite(str(folder / "red_blue.png"), red_blue_view(board_view))
    detector = BoardDetector(parse_board(CHARUCO))
    reference = detector.detect(board_view)
    [(name, image)] = list(iter_folder(folder))
    detection = detector.detect(image, name)
    assert detection is not None and detection.count == reference.count
    np.testing.assert_array_equal(detection.ids, reference.ids)


def test_grey_and_rgb_frames_in_memory_are_taken_as_they_are(board_view):
    rgb = np.stack([board_view, np.zeros_like(board_view), 255 - board_view], axis=-1)
    np.testing.assert_array_equal(to_gray(board_view), board_view)
    np.testing.assert_array_equal(to_gray(rgb), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


class ReplayCamera:
    """A camera opener for capture_views/grab_frame: replays RGB frames, as robot_io's cameras deliver them."""

    def __init__(self, frames: list[np.ndarray]):
        self.frames, self.opened_with = frames, []

    def __call__(self, spec):
        self.opened_with.append(spec)
        return self

    def __enter__(self):
        self.index = 0
        return self

    def __exit__(self, *exc_info):
        return False

    def read(self):
        frame = self.frames[self.index % len(self.frames)]
        self.index += 1
        return SimpleNamespace(image=frame)


def test_live_views_come_from_the_opener_passed_in_and_are_saved_as_files_that_read_back_rgb(tmp_path, board_view):
    rgb = np.stack([board_view, 255 - board_view, np.zeros_like(board_view)], axis=-1)
    camera = ReplayCamera([np.zeros_like(rgb), rgb])
    views = capture_views({"kind": "replay"}, camera, lambda image: image.any(), 2, 60.0, tmp_path / "saved")
    assert camera.opened_with == [{"kind": "replay"}]
    assert [name for name, _ in views] == ["view_000.png", "view_001.png"]
    np.testing.assert_array_equal(read_image(tmp_path / "saved" / "view_001.png"), rgb)
    np.testing.assert_array_equal(grab_frame({"kind": "replay"}, ReplayCamera([rgb]), settle_frames=2), rgb)
