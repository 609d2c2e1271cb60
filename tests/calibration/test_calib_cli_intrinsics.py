"""`pi0edge calibrate intrinsics` end to end: the files it writes are readable by what reads them (ROS
camera_info layout, cv2.FileStorage, JSON, PNG), and bad input gives a clear error and writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from calib_synth import CHARUCO, pinhole_camera

from pi0edge.calibration.formats import read_camera_file
from pi0edge.cli import main

OUTPUTS = ("cam.camera_info.yaml", "cam.opencv.yaml", "cam.report.json", "cam.report.txt", "cam.coverage.png")


def run(*args: str) -> int:
    return main(["calibrate", *map(str, args)])


def intrinsics(images: Path, out: Path, board: str = CHARUCO, *extra: str) -> int:
    return run("intrinsics", "--images", images, "--board", board, "--out", out, "--name", "cam", *extra)


@pytest.fixture(scope="module")
def calibrated(charuco_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    assert intrinsics(charuco_folder, out) == 0
    return out


def test_writes_ros_camera_info_in_the_camera_calibration_parsers_layout(calibrated):
    data = yaml.safe_load((calibrated / "cam.camera_info.yaml").read_text())
    assert data["image_width"] == 640 and data["image_height"] == 480 and data["camera_name"] == "cam"
    assert data["distortion_model"] == "plumb_bob"
    for key, (rows, cols) in {
        "camera_matrix": (3, 3),
        "distortion_coefficients": (1, 5),
        "rectification_matrix": (3, 3),
        "projection_matrix": (3, 4),
    }.items():
        assert data[key]["rows"] == rows and data[key]["cols"] == cols and len(data[key]["data"]) == rows * cols
    k = np.array(data["camera_matrix"]["data"]).reshape(3, 3)
    assert abs(k[0, 0] / pinhole_camera().fx - 1) < 0.005


def test_writes_opencv_yaml_that_cv2_filestorage_reads_back(calibrated):
    fs = cv2.FileStorage(str(calibrated / "cam.opencv.yaml"), cv2.FILE_STORAGE_READ)
    k = fs.getNode("camera_matrix").mat()
    d = fs.getNode("distortion_coefficients").mat()
    assert k.shape == (3, 3) and d.shape == (1, 5)
    assert int(fs.getNode("image_width").real()) == 640
    ros = read_camera_file(calibrated / "cam.camera_info.yaml")
    ocv = read_camera_file(calibrated / "cam.opencv.yaml")
    np.testing.assert_allclose(ros.camera_matrix, ocv.camera_matrix, rtol=1e-9)
    np.testing.assert_allclose(ros.distortion, ocv.distortion, rtol=1e-9, atol=1e-12)


def test_report_has_rms_per_view_errors_coverage_and_a_coverage_png(calibrated):
    report = json.loads((calibrated / "cam.report.json").read_text())
    assert report["rms_px"] < 0.5
    assert len(report["views"]) == 20 and all(v["rms_px"] is not None for v in report["views"])
    assert 0.0 < report["coverage"]["fraction"] <= 1.0
    assert "RMS reprojection error" in (calibrated / "cam.report.txt").read_text()
    png = cv2.imread(str(calibrated / "cam.coverage.png"))
    assert png.shape == (480, 640, 3)


def test_strict_flag_fails_when_the_report_has_warnings(charuco_folder, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(charuco_folder.iterdir())[:6]:
        shutil.copy(path, few)
    assert intrinsics(few, tmp_path / "out", CHARUCO, "--strict") == 1
    assert "WARNINGS" in (tmp_path / "out" / "cam.report.txt").read_text()


# --- bad input: a clear error naming what is wrong, and no output written or overwritten -------------


@pytest.fixture
def previous_outputs(tmp_path) -> Path:
    """An output folder holding the files of an earlier run: a failed run must leave them untouched."""
    out = tmp_path / "out"
    out.mkdir()
    for name in OUTPUTS:
        (out / name).write_text("previous")
    return out


def assert_untouched(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no new files, no temp files left
    assert all((out / name).read_text() == "previous" for name in OUTPUTS)


def test_no_board_in_any_image_is_an_error_and_writes_nothing(tmp_path, previous_outputs, capsys):
    images = tmp_path / "blank"
    images.mkdir()
    for i in range(6):
        cv2.imwrite(str(images / f"b{i}.png"), np.full((480, 640), 120 + i, np.uint8))
    assert intrinsics(images, previous_outputs) == 1
    assert "board was not found in any of the 6 images" in capsys.readouterr().err
    assert_untouched(previous_outputs)


def test_too_few_views_is_an_error_and_writes_nothing(charuco_folder, tmp_path, previous_outputs, capsys):
    images = tmp_path / "three"
    images.mkdir()
    for path in sorted(charuco_folder.iterdir())[:3]:
        shutil.copy(path, images)
    assert intrinsics(images, previous_outputs) == 1
    assert "too few usable views: 3" in capsys.readouterr().err
    assert_untouched(previous_outputs)


def test_images_of_different_sizes_are_an_error_naming_the_file(charuco_folder, tmp_path, previous_outputs, capsys):
    images = tmp_path / "mixed"
    shutil.copytree(charuco_folder, images)
    cv2.imwrite(str(images / "view_999.png"), np.zeros((720, 1280), np.uint8))
    assert intrinsics(images, previous_outputs) == 1
    err = capsys.readouterr().err
    assert "view_999.png is 1280x720" in err and "640x480" in err
    assert_untouched(previous_outputs)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "broken.png is corrupted"),
        ("text.jpg", b"this is not an image", "text.jpg is corrupted"),
        ("empty.png", b"", "empty.png is empty"),
    ],
)
def test_corrupted_image_is_an_error_naming_the_file(
    charuco_folder, tmp_path, previous_outputs, capsys, name, content, expected
):
    images = tmp_path / "corrupt"
    shutil.copytree(charuco_folder, images)
    (images / name).write_bytes(content)
    assert intrinsics(images, previous_outputs) == 1
    assert expected in capsys.readouterr().err
    assert_untouched(previous_outputs)


def test_truncated_jpeg_is_an_error_naming_the_file(charuco_folder, tmp_path, previous_outputs, capsys):
    images = tmp_path / "truncated"
    shutil.copytree(charuco_folder, images)
    ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(next(charuco_folder.iterdir()))))
    (images / "cut.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    assert intrinsics(images, previous_outputs) == 1
    assert "cut.jpg is corrupted" in capsys.readouterr().err
    assert_untouched(previous_outputs)


@pytest.mark.parametrize(
    "board, expected",
    [
        ("charuco:squares_x=7,squares_y=5,square_mm=30,marker_mm=31", "'marker_mm' (31) must be smaller than"),
        ("charuco:squares_x=7,squares_y=5,square_mm=30,marker_mm=22,dict=DICT_9X9_1", "'dictionary' is 'DICT_9X9_1'"),
        ("chessboard:cols=9,rows=six,square_mm=25", "'rows' has value 'six'"),
        ("chessboard:cols=9,rows=6,square_mm=-25", "'square_mm' must be a positive number, got -25.0"),
        ("chessboard:cols=9,rows=6", "missing field(s) square_mm"),
        ("charuco:squares_x=20,squares_y=20,square_mm=30,marker_mm=22,dict=DICT_4X4_50", "needs 200 markers"),
        ("hexagon:size=3", "'type' is 'hexagon'"),
    ],
)
def test_inconsistent_board_spec_is_an_error_naming_the_field(
    charuco_folder, previous_outputs, capsys, board, expected
):
    assert intrinsics(charuco_folder, previous_outputs, board) == 1
    assert expected in capsys.readouterr().err
    assert_untouched(previous_outputs)


def test_board_described_in_a_yaml_file_works_like_the_command_line(tmp_path, charuco_folder):
    board_file = tmp_path / "board.yaml"
    board_file.write_text(
        "type: charuco\nsquares_x: 7\nsquares_y: 5\nsquare_mm: 30\nmarker_mm: 22\ndictionary: DICT_5X5_100\n"
    )
    assert intrinsics(charuco_folder, tmp_path / "out", str(board_file)) == 0
    assert json.loads((tmp_path / "out" / "cam.report.json").read_text())["board"]["squares_x"] == 7


def test_missing_image_folder_is_an_error(tmp_path, capsys):
    assert intrinsics(tmp_path / "nope", tmp_path / "out") == 1
    assert "nope does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_live_camera_source_goes_through_robot_io_open_camera(charuco_folder, tmp_path):
    """--camera uses robot_io's camera interface; its synthetic camera replays a folder like a live one."""
    pytest.importorskip("pi0edge.robot_io.cameras", reason="robot_io cameras not available in this checkout")
    spec = f"{{kind: synthetic, folder: {charuco_folder}, width: 640, height: 480}}"
    code = run(
        "intrinsics",
        "--camera",
        spec,
        "--board",
        CHARUCO,
        "--out",
        tmp_path / "out",
        "--name",
        "cam",
        "--views",
        "8",
        "--timeout-s",
        "30",
        "--save-images",
        tmp_path / "captured",
    )
    assert code == 0
    assert len(list((tmp_path / "captured").glob("*.png"))) == 8
    assert json.loads((tmp_path / "out" / "cam.report.json").read_text())["views_total"] == 8
