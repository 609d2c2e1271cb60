"""A key written twice in a YAML mapping is an error naming the key and both lines, in every YAML the
product reads (robot YAML, bundle.yaml, calibration files, camera specs): plain yaml.safe_load keeps the
last value silently."""

from __future__ import annotations

import shutil

import pytest
import yaml

from pi0edge.errors import BundleError, ConfigError
from pi0edge.manifest import MANIFEST_NAME, load_manifest
from pi0edge.yaml_io import DuplicateKeyError, load_yaml


def test_duplicate_key_names_the_key_and_both_lines():
    with pytest.raises(DuplicateKeyError) as err:
        load_yaml("rate_hz: 50\narm: {kind: sim}\nrate_hz: 500\n")
    assert (err.value.key, err.value.first_line, err.value.second_line) == ("rate_hz", 1, 3)
    assert "'rate_hz'" in str(err.value) and "line 1" in str(err.value) and "line 3" in str(err.value)
    assert isinstance(err.value, yaml.YAMLError)  # callers' `except yaml.YAMLError` adds the file name


def test_duplicate_key_in_a_nested_mapping_is_refused():
    with pytest.raises(DuplicateKeyError, match="'n_execute' at line 3 and line 4"):
        load_yaml("rate_hz: 50\nchunking:\n  n_execute: 5\n  n_execute: 25\n")


def test_a_merge_key_may_be_overridden_and_distinct_keys_load_as_safe_load():
    text = "base: &b {k: 1, j: 2}\nd:\n  <<: *b\n  k: 3\nlist: [1, 2]\n"
    assert load_yaml(text) == yaml.safe_load(text)


def test_robot_yaml_duplicate_key_is_a_config_error_naming_file_key_and_lines(tmp_path):
    from pi0edge.robot_io.config import example_config_path, load_robot_config

    path = tmp_path / "robot.yaml"
    text = example_config_path("sim_arm.yaml").read_text()
    path.write_text(text + "rate_hz: 500\n")
    with pytest.raises(ConfigError) as err:
        load_robot_config(path)
    message = str(err.value)
    assert str(path) in message and "'rate_hz'" in message
    assert "line 3" in message and f"line {text.count(chr(10)) + 1}" in message


def test_bundle_yaml_duplicate_key_is_a_bundle_error(tiny_bundle_factory, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_factory("pi0")[0], bundle)
    manifest = bundle / MANIFEST_NAME
    manifest.write_text(manifest.read_text() + "precision: float16\n")
    with pytest.raises(BundleError, match="duplicate key 'precision'"):
        load_manifest(bundle)


def test_calibration_files_refuse_duplicate_keys(tmp_path):
    from pi0edge.calibration.boards import load_board_file
    from pi0edge.calibration.errors import BoardSpecError, CalibrationFileError
    from pi0edge.calibration.formats import read_camera_file
    from pi0edge.calibration.handeye import read_robot_poses
    from pi0edge.calibration.sources import parse_camera_spec

    camera = tmp_path / "cam.yaml"
    camera.write_text("image_width: 640\nimage_width: 320\nimage_height: 480\n")
    with pytest.raises(CalibrationFileError, match="'image_width' at line 1 and line 2"):
        read_camera_file(camera)
    poses = tmp_path / "poses.yaml"
    poses.write_text("poses: []\nposes: []\n")
    with pytest.raises(CalibrationFileError, match="duplicate key 'poses'"):
        read_robot_poses(poses)
    board = tmp_path / "board.yaml"
    board.write_text("type: charuco\nsquares_x: 5\nsquares_x: 7\n")
    with pytest.raises(BoardSpecError, match="duplicate key 'squares_x'"):
        load_board_file(board)
    with pytest.raises(CalibrationFileError, match="duplicate key 'kind'"):
        parse_camera_spec("{kind: opencv, kind: realsense}")
