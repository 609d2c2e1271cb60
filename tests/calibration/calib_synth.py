"""Synthetic camera images for the calibration tests: a board rendered into a camera with known
intrinsics and distortion, at a known pose, with pixel noise.

How a view is made (exact, no homography approximation): every output pixel centre is turned into its
undistorted ray with the camera's own (iterated to convergence) inverse model, the ray is intersected
with the board plane, and the board texture is sampled there (cv2.remap). Rendering happens at 2x and is
area-downsampled, which anti-aliases edges like a real sensor's pixel integration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from pi0edge.calibration.boards import BoardSpec, render_board
from pi0edge.calibration.camera import CameraModel

CHARUCO = "charuco:squares_x=7,squares_y=5,square_mm=30,marker_mm=22,dict=DICT_5X5_100"
CHESSBOARD = "chessboard:cols=9,rows=6,square_mm=25"
NOISE_GREY = 1.5  # sigma of the pixel noise, grey levels


def write_views(folder: Path, renderer: Renderer, poses, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, pose in enumerate(poses):
        path = folder / f"view_{i:03d}.png"
        cv2.imwrite(str(path), renderer.render(pose, rng, NOISE_GREY))
        paths.append(path)
    return paths


SUPERSAMPLE = 2
TEXTURE_PX_PER_MM = 6.0
BACKGROUND = 110  # grey around the board's white quiet zone


def pinhole_camera(width: int = 640, height: int = 480) -> CameraModel:
    k = np.array([[610.0, 0.0, 322.5], [0.0, 606.0, 236.8], [0.0, 0.0, 1.0]])
    dist = np.array([-0.26, 0.085, 0.0009, -0.0006, -0.012])
    return CameraModel(width, height, k, dist, "plumb_bob", name="synthetic")


def fisheye_camera(width: int = 640, height: int = 480) -> CameraModel:
    k = np.array([[285.0, 0.0, 318.2], [0.0, 284.0, 242.7], [0.0, 0.0, 1.0]])
    dist = np.array([0.04, -0.012, 0.004, -0.0008])
    return CameraModel(width, height, k, dist, "equidistant", name="synthetic_fisheye")


def rotation(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    rx, ry, rz = (math.radians(a) for a in (rx_deg, ry_deg, rz_deg))
    x = np.array([[1, 0, 0], [0, math.cos(rx), -math.sin(rx)], [0, math.sin(rx), math.cos(rx)]])
    y = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
    z = np.array([[math.cos(rz), -math.sin(rz), 0], [math.sin(rz), math.cos(rz), 0], [0, 0, 1]])
    return z @ y @ x


def transform(r: np.ndarray, t) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = np.asarray(t, float).reshape(3)
    return out


@dataclass
class Renderer:
    camera: CameraModel
    board: BoardSpec

    @cached_property
    def rays(self) -> np.ndarray:
        """(H*s, W*s, 3) undistorted rays (x, y, 1) through the centres of the supersampled pixels."""
        s = SUPERSAMPLE
        js, is_ = np.meshgrid(np.arange(self.camera.width * s), np.arange(self.camera.height * s))
        # hi-res pixel j covers original coordinates [(j - 0.5)/s - 0.5 + ...]: its centre is (j + 0.5)/s - 0.5
        px = np.stack([(js + 0.5) / s - 0.5, (is_ + 0.5) / s - 0.5], -1).reshape(-1, 2)
        norm = self.camera.normalize(px)
        return np.concatenate([norm, np.ones((len(norm), 1))], 1).reshape(js.shape + (3,))

    @cached_property
    def texture(self) -> np.ndarray:
        return render_board(self.board, TEXTURE_PX_PER_MM)

    def render(self, t_cam_board: np.ndarray, rng: np.random.Generator, noise_px: float = 1.5) -> np.ndarray:
        """Grayscale uint8 image of the board posed at T_camera_board (metres), noise sigma in grey levels."""
        r, t = t_cam_board[:3, :3], t_cam_board[:3, 3]
        a = self.rays @ r  # R^T d for every ray
        b = r.T @ t
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = b[2] / a[..., 2]
        board_m = scale[..., None] * a - b  # ray/plane intersection in board coordinates
        behind = ~(scale > 0)
        margin_mm = self.board.square_mm
        map_x = ((board_m[..., 0] * 1000.0 + margin_mm) * TEXTURE_PX_PER_MM - 0.5).astype(np.float32)
        map_y = ((board_m[..., 1] * 1000.0 + margin_mm) * TEXTURE_PX_PER_MM - 0.5).astype(np.float32)
        map_x[behind] = -1e6
        hi = cv2.remap(
            self.texture,
            map_x,
            map_y,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=BACKGROUND,
        )
        img = cv2.resize(hi, self.camera.image_size, interpolation=cv2.INTER_AREA).astype(np.float64)
        img += rng.normal(0.0, noise_px, img.shape)
        return np.clip(np.round(img), 0, 255).astype(np.uint8)

    def corners_px(self, t_cam_board: np.ndarray) -> np.ndarray:
        rvec = cv2.Rodrigues(t_cam_board[:3, :3])[0]
        return self.camera.project(self.board.object_points_m(), rvec, t_cam_board[:3, 3])

    def board_center_m(self) -> np.ndarray:
        sq_x, sq_y = self.board.squares
        return np.array([sq_x * self.board.square_m / 2, sq_y * self.board.square_m / 2, 0.0])

    def random_pose(
        self,
        rng: np.random.Generator,
        distance_m=(0.35, 0.7),
        max_tilt_deg: float = 40.0,
        min_visible: float = 1.0,
        margin_px: float = 8.0,
    ) -> np.ndarray:
        """A board pose whose corners (at least min_visible of them) fall inside the image."""
        cam = self.camera
        for _ in range(1000):
            target_px = rng.uniform([0.1 * cam.width, 0.1 * cam.height], [0.9 * cam.width, 0.9 * cam.height])
            ray = np.append(cam.normalize(target_px[None])[0], 1.0)
            centre = ray * rng.uniform(*distance_m)
            r = rotation(*rng.uniform(-max_tilt_deg, max_tilt_deg, 2), rng.uniform(-25, 25))
            pose = transform(r, centre - r @ self.board_center_m())
            px = self.corners_px(pose)
            cam_z = (pose[:3, :3] @ self.board.object_points_m().T.astype(float)).T[:, 2] + pose[2, 3]
            inside = (
                (px[:, 0] > margin_px)
                & (px[:, 0] < cam.width - margin_px)
                & (px[:, 1] > margin_px)
                & (px[:, 1] < cam.height - margin_px)
                & (cam_z > 0)
            )
            if inside.mean() >= min_visible:
                return pose
        raise RuntimeError("no pose found with the board in view")
