"""RealSense factory calibration from a recording this test makes with pyrealsense2's software device and
recorder (2.59 records .db3): the intrinsics, distortion and extrinsics written must be the ones recorded."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import yaml

from pi0edge.calibration.formats import read_camera_file
from pi0edge.calibration.transforms import read_transform_file
from pi0edge.cli import main

try:
    import pyrealsense2 as rs
except ImportError as exc:  # no wheel for the platform, or libusb missing
    pytest.skip(f"pyrealsense2 cannot be imported: {exc}", allow_module_level=True)

SERIAL = "123456789012"
COLOR = dict(
    width=640,
    height=480,
    fx=612.5,
    fy=611.75,
    ppx=321.25,
    ppy=239.5,
    model="brown_conrady",
    coeffs=[0.12, -0.25, 0.001, -0.002, 0.09],
)
DEPTH = dict(width=848, height=480, fx=421.0, fy=421.0, ppx=424.5, ppy=238.0, model="brown_conrady", coeffs=[0.0] * 5)
# depth -> colour: 15 mm along x and a small rotation about y (not symmetric, so a transposed matrix shows)
ANGLE = np.deg2rad(2.0)
R_DEPTH_TO_COLOR = np.array([[np.cos(ANGLE), 0, np.sin(ANGLE)], [0, 1, 0], [-np.sin(ANGLE), 0, np.cos(ANGLE)]])
T_DEPTH_TO_COLOR = [0.015, 0.0002, -0.0004]


def _intrinsics(spec):
    intr = rs.intrinsics()
    intr.width, intr.height = spec["width"], spec["height"]
    intr.fx, intr.fy, intr.ppx, intr.ppy = spec["fx"], spec["fy"], spec["ppx"], spec["ppy"]
    intr.model = getattr(rs.distortion, spec["model"])
    intr.coeffs = spec["coeffs"]
    return intr


def _stream(kind, uid, spec, fmt, bpp):
    stream = rs.video_stream()
    stream.type, stream.index, stream.uid = kind, 0, uid
    stream.width, stream.height, stream.fps, stream.bpp, stream.fmt = spec["width"], spec["height"], 30, bpp, fmt
    stream.intrinsics = _intrinsics(spec)
    return stream


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("rs") / "d435.db3"
    device = rs.software_device()
    device.register_info(rs.camera_info.serial_number, SERIAL)
    device.register_info(rs.camera_info.name, "Intel RealSense D435 (software)")
    depth_sensor, color_sensor = device.add_sensor("Stereo Module"), device.add_sensor("RGB Camera")
    depth = depth_sensor.add_video_stream(_stream(rs.stream.depth, 1, DEPTH, rs.format.z16, 2))
    color = color_sensor.add_video_stream(_stream(rs.stream.color, 2, COLOR, rs.format.rgb8, 3))
    ext = rs.extrinsics()
    ext.rotation = R_DEPTH_TO_COLOR.T.reshape(-1).tolist()  # librealsense stores it column-major
    ext.translation = T_DEPTH_TO_COLOR
    depth.register_extrinsics_to(color, ext)
    depth_sensor.add_read_only_option(rs.option.depth_units, 0.001)
    recorder = rs.recorder(str(path), device)
    for sensor, profile, spec, bpp in ((depth_sensor, depth, DEPTH, 2), (color_sensor, color, COLOR, 3)):
        sensor.open(profile)
        sensor.start(rs.frame_queue(4))
        frame = rs.software_video_frame()
        frame.pixels = np.zeros((spec["height"], spec["width"] * bpp), np.uint8)
        frame.bpp, frame.stride = bpp, spec["width"] * bpp
        frame.timestamp, frame.domain, frame.frame_number = 0.0, rs.timestamp_domain.hardware_clock, 0
        frame.profile = profile.as_video_stream_profile()
        sensor.on_video_frame(frame)
        time.sleep(0.05)  # the recorder writes from its own thread
        sensor.stop()
        sensor.close()
    del recorder  # closes the file
    assert path.stat().st_size > 0
    return path


@pytest.fixture(scope="module")
def written(recording, tmp_path_factory):
    out = tmp_path_factory.mktemp("rs_out")
    assert main(["calibrate", "realsense", "--recording", str(recording), "--out", str(out)]) == 0
    return out


def test_recorded_colour_and_depth_intrinsics_come_back_in_ros_and_opencv_files(written):
    prefix = f"realsense_{SERIAL}"
    for key, spec in (("color", COLOR), ("depth", DEPTH)):
        for suffix in ("camera_info.yaml", "opencv.yaml"):
            camera = read_camera_file(written / f"{prefix}_{key}.{suffix}")
            assert (camera.width, camera.height) == (spec["width"], spec["height"])
            np.testing.assert_allclose(
                [camera.fx, camera.fy, camera.cx, camera.cy],
                [spec["fx"], spec["fy"], spec["ppx"], spec["ppy"]],
                rtol=1e-6,
            )
            np.testing.assert_allclose(camera.distortion, spec["coeffs"], rtol=1e-6, atol=1e-9)
            assert camera.distortion_model == "plumb_bob"
    ros = yaml.safe_load((written / f"{prefix}_color.camera_info.yaml").read_text())
    assert ros["projection_matrix"]["data"][0] == pytest.approx(COLOR["fx"])  # P = [K | 0]


def test_recorded_depth_to_colour_extrinsics_come_back_with_the_right_rotation(written):
    prefix = f"realsense_{SERIAL}"
    transform = read_transform_file(written / f"{prefix}_depth_to_color.yaml")
    assert transform.parent_frame == f"{prefix}_color_optical_frame"
    assert transform.child_frame == f"{prefix}_depth_optical_frame"
    np.testing.assert_allclose(transform.matrix[:3, :3], R_DEPTH_TO_COLOR, atol=1e-6)
    np.testing.assert_allclose(transform.matrix[:3, 3], T_DEPTH_TO_COLOR, atol=1e-7)
    inverse = read_transform_file(written / f"{prefix}_color_to_depth.yaml")
    np.testing.assert_allclose(inverse.matrix @ transform.matrix, np.eye(4), atol=1e-6)
    summary = json.loads((written / f"{prefix}.json").read_text())
    assert summary["serial"] == SERIAL and summary["depth_scale_m"] == pytest.approx(0.001)


def test_inverse_brown_conrady_with_coefficients_is_written_with_a_note():
    from pi0edge.calibration.realsense import camera_from_intrinsics

    notes: list[str] = []
    camera = camera_from_intrinsics(_intrinsics({**COLOR, "model": "inverse_brown_conrady"}), "cam", notes)
    assert camera.distortion_model == "plumb_bob" and "approximation" in notes[0]
    fisheye = camera_from_intrinsics(_intrinsics({**COLOR, "model": "kannala_brandt4"}), "fish", notes)
    assert fisheye.distortion_model == "equidistant" and fisheye.distortion.size == 4


def test_missing_recording_is_an_error_and_writes_nothing(tmp_path, capsys):
    code = main(["calibrate", "realsense", "--recording", str(tmp_path / "nope.db3"), "--out", str(tmp_path / "o")])
    assert code == 1 and "nope.db3 does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
