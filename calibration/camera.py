"""A calibrated camera (image size, K, distortion, model) and what needs one: projecting board points
and the board's pose in the camera frame (solvePnP)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pi0edge.calibration.errors import CalibrationError, CalibrationFileError

# ROS camera_info distortion model names, with the coefficient counts they take.
DISTORTION_MODELS = {"plumb_bob": (4, 5), "rational_polynomial": (8,), "equidistant": (4,)}


def _cv2():
    from pi0edge.errors import require

    return require("cv2", "calib", "camera calibration")


@dataclass(frozen=True, eq=False)
class CameraModel:
    width: int
    height: int
    camera_matrix: np.ndarray  # 3x3 K, pixels
    distortion: np.ndarray  # OpenCV order: k1 k2 p1 p2 [k3 [k4 k5 k6]] for plumb_bob/rational; k1..k4 equidistant
    distortion_model: str = "plumb_bob"
    name: str = "camera"
    # ROS P (3x4): the rectified-image projection. None = derived from K and the distortion (see projection_matrix).
    projection: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        for key in ("width", "height"):
            value = getattr(self, key)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise CalibrationFileError(f"camera '{self.name}': {key} must be a positive integer, got {value!r}")
        k = np.asarray(self.camera_matrix, dtype=np.float64)
        if k.shape != (3, 3) or not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
            raise CalibrationFileError(f"camera '{self.name}': camera_matrix must be a finite 3x3 with fx, fy > 0")
        d = np.asarray(self.distortion, dtype=np.float64).reshape(-1)
        if self.distortion_model not in DISTORTION_MODELS:
            raise CalibrationFileError(
                f"camera '{self.name}': distortion_model {self.distortion_model!r} is not one of "
                f"{', '.join(DISTORTION_MODELS)}"
            )
        if d.size not in DISTORTION_MODELS[self.distortion_model] or not np.isfinite(d).all():
            raise CalibrationFileError(
                f"camera '{self.name}': {self.distortion_model} takes {DISTORTION_MODELS[self.distortion_model]} "
                f"finite distortion coefficients, got {d.size}"
            )
        object.__setattr__(self, "camera_matrix", k)
        object.__setattr__(self, "distortion", d)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        if self.projection is not None:
            p = np.asarray(self.projection, dtype=np.float64)
            if p.shape != (3, 4):
                raise CalibrationFileError(f"camera '{self.name}': projection_matrix must be 3x4, got {p.shape}")
            object.__setattr__(self, "projection", p)

    @property
    def fisheye(self) -> bool:
        return self.distortion_model == "equidistant"

    @property
    def image_size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def fx(self) -> float:
        return float(self.camera_matrix[0, 0])

    @property
    def fy(self) -> float:
        return float(self.camera_matrix[1, 1])

    @property
    def cx(self) -> float:
        return float(self.camera_matrix[0, 2])

    @property
    def cy(self) -> float:
        return float(self.camera_matrix[1, 2])

    def projection_matrix(self) -> np.ndarray:
        """ROS P. As ROS camera_calibration does for a monocular camera: the optimal new camera matrix at
        alpha=0 (only valid pixels after rectification); K itself when there is no distortion."""
        if self.projection is not None:
            return self.projection
        p = np.zeros((3, 4))
        if not np.any(self.distortion):
            p[:, :3] = self.camera_matrix
            return p
        cv2 = _cv2()
        if self.fisheye:
            new_k = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(
                self.camera_matrix, self.distortion, self.image_size, np.eye(3), balance=0.0
            )
        else:
            new_k, _ = cv2.getOptimalNewCameraMatrix(self.camera_matrix, self.distortion, self.image_size, 0.0)
        p[:, :3] = new_k
        return p

    def project(self, object_points: np.ndarray, rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
        """(N, 3) points in a frame posed by (rvec, tvec) in the camera -> (N, 2) pixels."""
        cv2 = _cv2()
        pts = np.asarray(object_points, np.float64).reshape(-1, 1, 3)
        if self.fisheye:
            px, _ = cv2.fisheye.projectPoints(
                pts, np.asarray(rvec, float), np.asarray(tvec, float), self.camera_matrix, self.distortion
            )
        else:
            px, _ = cv2.projectPoints(
                pts, np.asarray(rvec, float), np.asarray(tvec, float), self.camera_matrix, self.distortion
            )
        return px.reshape(-1, 2)

    def normalize(self, image_points: np.ndarray) -> np.ndarray:
        """Pixels -> undistorted normalized coordinates (x/z, y/z), iterated to convergence."""
        cv2 = _cv2()
        pts = np.asarray(image_points, np.float64).reshape(-1, 1, 2)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)
        if self.fisheye:
            out = cv2.fisheye.undistortPoints(pts, self.camera_matrix, self.distortion, criteria=criteria)
        else:
            out = cv2.undistortPointsIter(pts, self.camera_matrix, self.distortion, None, None, criteria)
        return out.reshape(-1, 2)

    def to_dict(self) -> dict:
        """Inline form (used by reference files)."""
        return {
            "camera_name": self.name,
            "image_width": self.width,
            "image_height": self.height,
            "camera_matrix": self.camera_matrix.tolist(),
            "distortion_model": self.distortion_model,
            "distortion_coefficients": self.distortion.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "camera") -> CameraModel:
        try:
            return cls(
                width=data["image_width"],
                height=data["image_height"],
                camera_matrix=np.asarray(data["camera_matrix"], dtype=np.float64),
                distortion=np.asarray(data["distortion_coefficients"], dtype=np.float64),
                distortion_model=data.get("distortion_model", "plumb_bob"),
                name=str(data.get("camera_name", "camera")),
            )
        except KeyError as exc:
            raise CalibrationFileError(f"{source}: camera is missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise CalibrationFileError(f"{source}: camera has an invalid value: {exc}") from None


def board_pose(camera: CameraModel, image_points_px: np.ndarray, object_points_m: np.ndarray):
    """The board's pose in the camera frame (T_camera_board, 4x4, metres) and the reprojection RMS in px.

    Points are undistorted first and solved with an ideal camera, so the pinhole and fisheye models share
    one path: IPPE (exact for planar targets, no initial guess) then Levenberg-Marquardt refinement."""
    cv2 = _cv2()
    obj = np.asarray(object_points_m, np.float64).reshape(-1, 3)
    if len(obj) < 4:
        raise CalibrationError(f"board pose needs at least 4 corners, got {len(obj)}")
    norm = camera.normalize(image_points_px).reshape(-1, 1, 2)
    eye, no_dist = np.eye(3), np.zeros(5)
    ok, rvec, tvec = cv2.solvePnP(obj, norm, eye, no_dist, flags=cv2.SOLVEPNP_IPPE)
    if not ok:
        raise CalibrationError("solvePnP found no board pose")
    rvec, tvec = cv2.solvePnPRefineLM(obj, norm, eye, no_dist, rvec, tvec)
    # refine again against the distorted pixels: the error that matters is in the image, not normalized space
    if not camera.fisheye:
        rvec, tvec = cv2.solvePnPRefineLM(
            obj,
            np.asarray(image_points_px, np.float64).reshape(-1, 1, 2),
            camera.camera_matrix,
            camera.distortion,
            rvec,
            tvec,
        )
    residual = camera.project(obj, rvec, tvec) - np.asarray(image_points_px, np.float64).reshape(-1, 2)
    rms_px = float(np.sqrt(np.mean(np.sum(residual**2, axis=1))))
    transform = np.eye(4)
    transform[:3, :3] = cv2.Rodrigues(rvec)[0]
    transform[:3, 3] = tvec.reshape(3)
    return transform, rms_px
