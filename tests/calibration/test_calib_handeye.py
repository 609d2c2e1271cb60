"""Hand-eye: every OpenCV method recovers a known camera mounting from synthetic robot/board poses, in both
setups; end to end from rendered images through the CLI; pose files in YAML and CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from calib_synth import CHARUCO, rotation, transform, write_views

from pi0edge.calibration.formats import read_camera_file
from pi0edge.calibration.handeye import METHODS, read_robot_poses, solve_hand_eye
from pi0edge.calibration.transforms import (
    Transform,
    invert,
    pose_difference,
    quaternion_from_matrix,
    read_transform_file,
)
from pi0edge.cli import main

MAX_ERROR_MM = 1.0
MAX_ERROR_DEG = 0.1

# ground truth: a camera 8 cm ahead of and 5 cm above the flange, looking down-forward
T_GRIPPER_CAMERA = transform(rotation(-20.0, 5.0, 90.0), [0.02, -0.05, 0.08])
T_BASE_BOARD = transform(rotation(180.0, 0.0, 30.0), [0.55, 0.10, 0.02])  # board on the table, face up
T_BASE_CAMERA = transform(rotation(-120.0, 0.0, -90.0), [1.1, 0.0, 0.6])  # fixed camera looking at the robot
T_GRIPPER_BOARD = transform(rotation(0.0, 0.0, 15.0), [0.0, 0.0, 0.05])


def eye_in_hand_data(camera_board_poses):
    """Robot poses that put the hand camera at each requested board-in-camera pose."""
    return [T_BASE_BOARD @ invert(c) @ invert(T_GRIPPER_CAMERA) for c in camera_board_poses]


def eye_to_hand_data(camera_board_poses):
    return [T_BASE_CAMERA @ c @ invert(T_GRIPPER_BOARD) for c in camera_board_poses]


@pytest.mark.parametrize("setup", ["eye-in-hand", "eye-to-hand"])
def test_every_method_recovers_the_transform_from_exact_poses(charuco_renderer, setup):
    rng = np.random.default_rng(30)
    board_poses = [charuco_renderer.random_pose(rng, (0.3, 0.6), 40.0) for _ in range(12)]
    robot = eye_in_hand_data(board_poses) if setup == "eye-in-hand" else eye_to_hand_data(board_poses)
    truth = T_GRIPPER_CAMERA if setup == "eye-in-hand" else T_BASE_CAMERA
    result = solve_hand_eye(robot, board_poses, setup)
    assert set(result.methods) == set(METHODS)
    for name, method in result.methods.items():
        mm, deg = pose_difference(truth, method.transform)
        assert mm < MAX_ERROR_MM and deg < MAX_ERROR_DEG, (name, mm, deg)
    assert result.max_disagreement_mm < MAX_ERROR_MM and not result.warnings
    target_truth = T_BASE_BOARD if setup == "eye-in-hand" else T_GRIPPER_BOARD
    assert pose_difference(target_truth, result.target)[0] < MAX_ERROR_MM


def test_consensus_avoids_a_method_that_disagrees_with_the_rest():
    from pi0edge.calibration import handeye

    rng = np.random.default_rng(31)
    board_poses = [transform(rotation(*rng.uniform(-35, 35, 3)), [rng.uniform(-0.1, 0.1), 0.0, 0.5]) for _ in range(10)]
    robot = eye_in_hand_data(board_poses)
    # noise on the robot poses: methods differ slightly; the medoid must be one of them and agreement reported
    noisy = [p @ transform(rotation(*rng.normal(0, 0.05, 3)), rng.normal(0, 0.0005, 3)) for p in robot]
    result = handeye.solve_hand_eye(noisy, board_poses, "eye-in-hand")
    assert result.chosen in METHODS
    assert result.max_disagreement_mm > 0 and len(result.pairwise) == 10
    mm, deg = pose_difference(T_GRIPPER_CAMERA, result.transform)
    assert mm < 3.0 and deg < 0.3


def test_too_few_views_is_an_error():
    from pi0edge.calibration.errors import CalibrationError

    with pytest.raises(CalibrationError, match="at least 3 views"):
        solve_hand_eye([np.eye(4)] * 2, [np.eye(4)] * 2)


def _write_poses(path, robot_poses, names, fmt):
    if fmt == "csv":
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "x", "y", "z", "qx", "qy", "qz", "qw"])
            for name, pose in zip(names, robot_poses, strict=True):
                writer.writerow([name, *pose[:3, 3], *quaternion_from_matrix(pose[:3, :3])])
    else:
        entries = [
            {
                "image": n,
                **{
                    k: v
                    for k, v in Transform("base", "tool", p).to_dict().items()
                    if k in ("translation_m", "quaternion_xyzw")
                },
            }
            for n, p in zip(names, robot_poses, strict=True)
        ]
        path.write_text(yaml.safe_dump({"poses": entries}) if fmt == "yaml" else json.dumps(entries))


@pytest.mark.parametrize("setup, fmt", [("eye-in-hand", "yaml"), ("eye-to-hand", "csv")])
def test_cli_recovers_the_transform_from_rendered_images_within_1mm_and_0_1deg(tmp_path, charuco_renderer, setup, fmt):
    """End to end: rendered views (noise, distortion) -> detection -> solvePnP with the true intrinsics ->
    all methods -> consensus written as transform YAML."""
    rng = np.random.default_rng(40 if setup == "eye-in-hand" else 41)
    board_poses = [charuco_renderer.random_pose(rng, (0.25, 0.4), 40.0, min_visible=0.9) for _ in range(15)]
    robot = eye_in_hand_data(board_poses) if setup == "eye-in-hand" else eye_to_hand_data(board_poses)
    images = tmp_path / "images"
    paths = write_views(images, charuco_renderer, board_poses, seed=42)
    poses_file = tmp_path / f"poses.{fmt}"
    _write_poses(poses_file, robot, [p.name for p in paths], fmt)
    assert len(read_robot_poses(poses_file)) == 15
    intrinsics = tmp_path / "cam.yaml"
    from pi0edge.calibration.formats import ros_camera_info_text

    intrinsics.write_text(ros_camera_info_text(charuco_renderer.camera))
    assert read_camera_file(intrinsics).fx == charuco_renderer.camera.fx
    out = tmp_path / "out"
    code = main(
        [
            "calibrate",
            "handeye",
            "--images",
            str(images),
            "--poses",
            str(poses_file),
            "--intrinsics",
            str(intrinsics),
            "--board",
            CHARUCO,
            "--setup",
            setup,
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = read_transform_file(out / "handeye.yaml")
    truth = T_GRIPPER_CAMERA if setup == "eye-in-hand" else T_BASE_CAMERA
    mm, deg = pose_difference(truth, result.matrix)
    print(f"{setup}: hand-eye error {mm:.3f} mm, {deg:.4f} deg")
    assert mm < MAX_ERROR_MM and deg < MAX_ERROR_DEG
    assert (result.parent_frame, result.child_frame) == (
        ("tool0", "camera_optical_frame") if setup == "eye-in-hand" else ("base_link", "camera_optical_frame")
    )
    report = json.loads((out / "handeye.report.json").read_text())
    assert set(report["methods"]) == set(METHODS) and report["agreement"]["max_translation_mm"] >= 0
    text = yaml.safe_load((out / "handeye.yaml").read_text())
    np.testing.assert_allclose(np.array(text["matrix"]), result.matrix)
    assert len(text["quaternion_xyzw"]) == 4 and len(text["translation_m"]) == 3


def test_pose_count_mismatch_without_image_names_is_an_error_and_writes_nothing(tmp_path, charuco_renderer, capsys):
    rng = np.random.default_rng(50)
    board_poses = [charuco_renderer.random_pose(rng, (0.3, 0.5), 30.0) for _ in range(4)]
    write_views(tmp_path / "images", charuco_renderer, board_poses, seed=51)
    poses = [{"translation_m": [0, 0, 0], "quaternion_xyzw": [0, 0, 0, 1]}] * 3
    (tmp_path / "poses.yaml").write_text(yaml.safe_dump(poses))
    from pi0edge.calibration.formats import ros_camera_info_text

    (tmp_path / "cam.yaml").write_text(ros_camera_info_text(charuco_renderer.camera))
    code = main(
        [
            "calibrate",
            "handeye",
            "--images",
            str(tmp_path / "images"),
            "--poses",
            str(tmp_path / "poses.yaml"),
            "--intrinsics",
            str(tmp_path / "cam.yaml"),
            "--board",
            CHARUCO,
            "--setup",
            "eye-in-hand",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    assert "3 poses for 4 images" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pose_file_with_a_non_unit_quaternion_names_the_pose(tmp_path):
    from pi0edge.calibration.errors import CalibrationFileError

    path = tmp_path / "poses.yaml"
    path.write_text(yaml.safe_dump([{"translation_m": [0, 0, 0], "quaternion_xyzw": [0, 0, 0, 2]}]))
    with pytest.raises(CalibrationFileError, match=r"pose 0: quaternion_xyzw .* not unit length"):
        read_robot_poses(path)


MILLIMETRES_AS_METRES = [550.0, 100.0, 20.0]  # a gripper 0.55 m out, written in mm under a metres field


@pytest.mark.parametrize(
    "fmt, expected",
    [
        ("yaml", r"pose 0: the gripper would be 559\.4 m from the base \(translation_m \[550\.0, 100\.0, 20\.0\]\)"),
        ("matrix", r"pose 0: the gripper would be 559\.4 m from the base \(matrix \[550\.0, 100\.0, 20\.0\]\)"),
        ("csv", r"line 2: the gripper would be 559\.4 m from the base \(x,y,z \[550\.0, 100\.0, 20\.0\]\)"),
    ],
)
def test_pose_translation_in_millimetres_given_as_metres_is_refused(tmp_path, fmt, expected):
    from pi0edge.calibration.errors import CalibrationFileError

    pose = transform(np.eye(3), MILLIMETRES_AS_METRES)
    if fmt == "csv":
        path = tmp_path / "poses.csv"
        _write_poses(path, [pose], ["view_000.png"], "csv")
    else:
        path = tmp_path / "poses.yaml"
        entry = {"translation_m": MILLIMETRES_AS_METRES, "quaternion_xyzw": [0, 0, 0, 1]}
        path.write_text(yaml.safe_dump([{"matrix": pose.tolist()} if fmt == "matrix" else entry]))
    with pytest.raises(CalibrationFileError, match=expected) as error:
        read_robot_poses(path)
    assert "millimetres given as metres" in str(error.value)


def test_pose_in_millimetres_under_translation_mm_is_read_as_metres(tmp_path):
    path = tmp_path / "poses.yaml"
    path.write_text(yaml.safe_dump([{"translation_mm": MILLIMETRES_AS_METRES, "quaternion_xyzw": [0, 0, 0, 1]}]))
    [pose] = read_robot_poses(path)
    np.testing.assert_allclose(pose.T_base_gripper[:3, 3], np.array(MILLIMETRES_AS_METRES) / 1000.0)


BOARD_VIEWS, BLANK_VIEWS = 9, 3  # 9 good views: under the default --min-views of 10


@pytest.fixture(scope="module")
def partly_blank(tmp_path_factory, charuco_renderer):
    """9 rendered views plus 3 images without the board (view_009..011), a pose for each, and the intrinsics."""
    import cv2

    from pi0edge.calibration.formats import ros_camera_info_text

    folder = tmp_path_factory.mktemp("handeye_partly_blank")
    rng = np.random.default_rng(43)
    board_poses = [charuco_renderer.random_pose(rng, (0.25, 0.4), 40.0, min_visible=0.9) for _ in range(BOARD_VIEWS)]
    paths = write_views(folder / "images", charuco_renderer, board_poses, seed=44)
    blanks = [folder / "images" / f"view_{BOARD_VIEWS + i:03d}.png" for i in range(BLANK_VIEWS)]
    for path in blanks:
        cv2.imwrite(str(path), np.full((480, 640), 128, np.uint8))
    robot = eye_in_hand_data(board_poses)
    _write_poses(folder / "poses.yaml", robot + robot[:BLANK_VIEWS], [p.name for p in paths + blanks], "yaml")
    (folder / "cam.yaml").write_text(ros_camera_info_text(charuco_renderer.camera))
    return folder


def handeye_cli(folder, out, *extra: str) -> int:
    """The CLI on a folder from `partly_blank`; a later --poses in extra replaces the folder's."""
    args = ["--images", folder / "images", "--poses", folder / "poses.yaml", "--intrinsics", folder / "cam.yaml"]
    args += ["--board", CHARUCO, "--setup", "eye-in-hand", "--out", out, *extra]
    return main(["calibrate", "handeye", *map(str, args)])


# robot pose errors far above a real arm's: enough to make the five methods disagree
BAD_ROBOT_ROTATION_SIGMA_DEG = 2.0
BAD_ROBOT_TRANSLATION_SIGMA_M = 0.005


def with_bad_robot_noise(pose: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    jitter_deg = rng.normal(0, BAD_ROBOT_ROTATION_SIGMA_DEG, 3)
    return pose @ transform(rotation(*jitter_deg), rng.normal(0, BAD_ROBOT_TRANSLATION_SIGMA_M, 3))


def test_strict_refuses_fewer_good_views_than_min_views_listing_the_skipped_images(partly_blank, tmp_path, capsys):
    assert handeye_cli(partly_blank, tmp_path / "out", "--strict") == 1
    err = capsys.readouterr().err
    assert f"--strict: {BOARD_VIEWS} images of {partly_blank / 'images'} show the board, need at least 10" in err
    for i in range(BOARD_VIEWS, BOARD_VIEWS + BLANK_VIEWS):
        assert f"view_{i:03d}.png: no ArUco marker of DICT_5X5_100 found" in err
    assert not (tmp_path / "out").exists()


def test_without_strict_few_views_are_a_warning_and_the_report_lists_the_skipped_images(partly_blank, tmp_path):
    out = tmp_path / "out"
    assert handeye_cli(partly_blank, out) == 0
    text = (out / "handeye.report.txt").read_text()
    assert f"from {BOARD_VIEWS} views ({BLANK_VIEWS} skipped)" in text
    assert "skipped view_009.png: no ArUco marker of DICT_5X5_100 found" in text
    assert f"WARNING: only {BOARD_VIEWS} views (want >= 10)" in text
    report = json.loads((out / "handeye.report.json").read_text())
    assert [v["image"] for v in report["views_skipped"]] == ["view_009.png", "view_010.png", "view_011.png"]


def test_strict_with_a_lower_stated_min_views_passes_without_warnings(partly_blank, tmp_path):
    assert handeye_cli(partly_blank, tmp_path / "out", "--strict", "--min-views", str(BOARD_VIEWS)) == 0
    report = json.loads((tmp_path / "out" / "handeye.report.json").read_text())
    assert report["warnings"] == [] and len(report["views_used"]) == BOARD_VIEWS


def test_strict_writes_the_files_but_exits_1_when_the_report_has_warnings(partly_blank, tmp_path):
    """Enough views, but robot poses too noisy for the methods to agree: written, and the exit code says no."""
    rng = np.random.default_rng(45)
    noisy = [with_bad_robot_noise(pose.T_base_gripper, rng) for pose in read_robot_poses(partly_blank / "poses.yaml")]
    names = [f"view_{i:03d}.png" for i in range(BOARD_VIEWS + BLANK_VIEWS)]
    _write_poses(tmp_path / "noisy.yaml", noisy, names, "yaml")
    out = tmp_path / "out"
    poses = ("--poses", str(tmp_path / "noisy.yaml"))
    assert handeye_cli(partly_blank, out, "--strict", "--min-views", str(BOARD_VIEWS), *poses) == 1
    report = json.loads((out / "handeye.report.json").read_text())
    assert any(w.startswith("methods disagree") for w in report["warnings"]), report["warnings"]
    assert (out / "handeye.yaml").exists()
