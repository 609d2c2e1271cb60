""""Board not found" says which board and dictionary were looked for, and when markers were seen but the
layout does not match the board given (wrong squares, another board's markers, a pre-4.6 legacy board)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from calib_synth import CHARUCO, CHESSBOARD, NOISE_GREY, Renderer, pinhole_camera

from pi0edge.calibration.boards import parse_board
from pi0edge.calibration.detect import BoardDetector, NotFound
from pi0edge.cli import main

SWAPPED_SQUARES = "charuco:squares_x=5,squares_y=7,square_mm=30,marker_mm=22,dict=DICT_5X5_100"
TOO_SMALL = "charuco:squares_x=3,squares_y=3,square_mm=30,marker_mm=22,dict=DICT_5X5_100"  # ids 0-3
EVEN_ROWS = "charuco:squares_x=6,squares_y=6,square_mm=30,marker_mm=22,dict=DICT_5X5_100"


@pytest.fixture(scope="module")
def charuco_view(charuco_renderer) -> np.ndarray:
    rng = np.random.default_rng(90)
    return charuco_renderer.render(charuco_renderer.random_pose(rng, (0.3, 0.45), 25.0), rng, NOISE_GREY)


def find(board: str, image: np.ndarray):
    return BoardDetector(parse_board(board)).find(image)


def test_no_marker_names_the_board_and_the_dictionary_looked_for():
    miss = find(CHARUCO, np.full((480, 640), 128, np.uint8))
    assert isinstance(miss, NotFound) and miss.marker_ids == ()
    assert f"no ArUco marker of DICT_5X5_100 found while looking for {CHARUCO}" in miss.reason


def test_markers_found_with_swapped_squares_say_the_layout_does_not_match(charuco_view):
    miss = find(SWAPPED_SQUARES, charuco_view)
    assert isinstance(miss, NotFound) and len(miss.marker_ids) >= 4
    assert f"markers of DICT_5X5_100 found (ids {min(miss.marker_ids)}-" in miss.reason
    assert f"ChArUco corners fit {SWAPPED_SQUARES}: the layout does not match" in miss.reason


def test_markers_outside_the_boards_ids_say_it_is_another_board(charuco_view):
    miss = find(TOO_SMALL, charuco_view)
    assert isinstance(miss, NotFound)
    assert "has ids 0-3: the layout does not match (another board" in miss.reason


def test_even_rows_board_in_the_other_legacy_pattern_suggests_legacy():
    renderer = Renderer(pinhole_camera(), parse_board(EVEN_ROWS))
    rng = np.random.default_rng(91)
    image = renderer.render(renderer.random_pose(rng, (0.3, 0.45), 20.0), rng, NOISE_GREY)
    assert BoardDetector(parse_board(EVEN_ROWS)).detect(image) is not None
    miss = find(EVEN_ROWS + ",legacy=true", image)
    assert isinstance(miss, NotFound) and miss.marker_ids
    assert "legacy=true for a board made by OpenCV < 4.6" in miss.reason


def test_missing_chessboard_names_its_inner_corner_count():
    miss = find(CHESSBOARD, np.full((480, 640), 128, np.uint8))
    assert isinstance(miss, NotFound) and "no chessboard with 9x6 inner corners found" in miss.reason


def test_intrinsics_cli_error_names_the_board_and_says_the_layout_does_not_match(tmp_path, charuco_view, capsys):
    images = tmp_path / "views"
    images.mkdir()
    cv2.imwrite(str(images / "a_blank.png"), np.full((480, 640), 128, np.uint8))
    cv2.imwrite(str(images / "b_board.png"), charuco_view)
    args = ["calibrate", "intrinsics", "--images", str(images), "--out", str(tmp_path / "out")]
    assert main([*args, "--board", SWAPPED_SQUARES]) == 1
    err = capsys.readouterr().err
    assert "the board was not found in any of the 2 images; b_board.png: " in err
    assert "the layout does not match" in err and "DICT_5X5_100" in err
    assert not (tmp_path / "out").exists()
