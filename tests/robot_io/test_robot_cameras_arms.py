"""Cameras (synthetic, image folder, video, OpenCV, RealSense recordings) and the simulated arm."""

from __future__ import annotations

import importlib
import time

import numpy as np
import pytest

from pi0edge.errors import ConfigError
from pi0edge.robot_io.arms import ArmLimits, SimArm, open_arm
from pi0edge.robot_io.cameras import SyntheticCamera, open_camera
from pi0edge.robot_io.errors import ArmError, CameraError


def _realsense_or_skip():
    try:
        return importlib.import_module("pyrealsense2")
    except ImportError as exc:
        pytest.skip(f"pyrealsense2 cannot import ({exc}); on Linux: apt-get install -y libusb-1.0-0")


def test_synthetic_camera_delivers_new_frames_with_capture_time():
    with open_camera({"kind": "synthetic", "width": 40, "height": 30, "fps": 100}) as camera:
        first = camera.read()
        time.sleep(0.03)
        second = camera.read()
    assert first.image.shape == (30, 40, 3) and first.image.dtype == np.uint8
    assert second.index > first.index and second.timestamp_s > first.timestamp_s
    assert not np.array_equal(first.image, second.image)
    assert abs(second.timestamp_s - time.monotonic()) < 1.0  # on the monotonic clock


def test_frozen_camera_keeps_its_old_timestamp():
    camera = SyntheticCamera(fps=200).open()
    camera.read()
    camera.freeze()
    frozen = camera.read()
    time.sleep(0.05)
    again = camera.read()
    assert again.index == frozen.index and again.timestamp_s == frozen.timestamp_s
    assert again.age_s() >= 0.05
    camera.close()


def test_image_folder_and_video_cameras(tmp_path):
    cv2 = pytest.importorskip("cv2")
    folder = tmp_path / "images"
    folder.mkdir()
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, rgb in enumerate(colors):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((20, 24, 3), rgb[::-1], np.uint8))  # cv2 writes BGR
    with open_camera({"kind": "synthetic", "folder": str(folder), "fps": 1000}) as camera:
        seen = []
        for _ in range(3):
            seen.append(tuple(int(v) for v in camera.read().image[0, 0]))
            time.sleep(0.005)
    assert seen == colors  # RGB order, folder order

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (32, 24))
    for i in range(5):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    with open_camera({"kind": "synthetic", "video": str(video)}) as camera:
        assert camera.read().image.shape == (24, 32, 3)
    with open_camera({"kind": "opencv", "device": str(video), "fps": 100}) as camera:  # OpenCV path
        frame = camera.wait_first_frame(2.0)
        assert frame.image.shape == (24, 32, 3)
        time.sleep(0.2)  # the 5-frame file ends: the camera then reports its last frame, aging
        last = camera.read()
        time.sleep(0.05)
        assert camera.read().timestamp_s == last.timestamp_s and camera.error


def test_camera_errors_name_the_source(tmp_path):
    with pytest.raises(CameraError, match="does not exist"):
        open_camera({"kind": "synthetic", "folder": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="camera.kind"):
        open_camera({"kind": "thermal"})
    with pytest.raises(ConfigError, match="exactly one of serial"):
        open_camera({"kind": "realsense"})


def test_realsense_recording_plays_back(tmp_path):
    _realsense_or_skip()
    from pi0edge.robot_io.realsense import record_synthetic

    images = [np.dstack([np.full((24, 32), 20 * i, np.uint8), np.full((24, 32), 7, np.uint8),
                         np.full((24, 32), 200, np.uint8)]) for i in range(8)]
    path = record_synthetic(tmp_path / "color.db3", images, fps=30)
    with open_camera({"kind": "realsense", "file": str(path)}) as camera:
        frame = camera.wait_first_frame(5.0)
        seen = {int(frame.image[0, 0, 0]): frame}
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and len(seen) < len(images):
            frame = camera.read()
            seen[int(frame.image[0, 0, 0])] = frame
            time.sleep(0.005)
        assert frame.image.shape == (24, 32, 3)
        assert tuple(frame.image[0, 0, 1:]) == (7, 200)  # RGB channel order kept
        assert len(seen) >= len(images) - 2  # real-time playback; allow a dropped frame on a busy machine
        assert max(seen) == 20 * 7
        time.sleep(0.3)  # the recording has ended: the last frame keeps its old timestamp
        assert camera.read().age_s() > 0.25
    with pytest.raises(CameraError, match=".db3"):
        record_synthetic(tmp_path / "color.bag", images)


def test_sim_arm_first_order_latency_and_limits():
    limits = ArmLimits([-1, -1], [1, 1], [100, 100])
    arm = SimArm(dof=2, time_constant_s=0.05, latency_s=0.25, limits=limits)
    arm.command([0.5, 3.0])
    time.sleep(0.05)
    np.testing.assert_allclose(arm.true_state(), [0, 0], atol=1e-12)  # the command has not landed yet
    time.sleep(0.6)
    np.testing.assert_allclose(arm.true_state(), [0.5, 1.0], atol=0.01)  # at the target / at the limit
    with pytest.raises(ArmError, match="3 positions"):
        arm.command([0, 0, 0])


def test_sim_arm_respects_its_velocity_limit_and_noise():
    arm = open_arm({"kind": "sim", "dof": 1, "time_constant_s": 0.001, "max_velocity_per_s": 1.0,
                    "noise_std": 0.01})
    arm.command([1.0])
    time.sleep(0.2)
    assert 0.1 < arm.true_state()[0] < 0.35  # ~1 rad/s, not the 1 ms time constant
    readings = np.array([arm.read_state()[0] - arm.true_state()[0] for _ in range(200)])
    assert 0.003 < readings.std() < 0.03
