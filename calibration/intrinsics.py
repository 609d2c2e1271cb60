"""Camera intrinsics from board views: pinhole with distortion (calibrateCamera: plumb_bob, or the
rational model) or fisheye (cv2.fisheye.calibrate, equidistant). Views that do not fit are rejected and
the calibration is repeated, so one blurred or misdetected frame cannot pull the result."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pi0edge.calibration.camera import CameraModel
from pi0edge.calibration.detect import Detection, NotFound
from pi0edge.calibration.errors import BoardNotFoundError, BoardSpecError, CalibrationError

MODELS = ("pinhole", "rational", "fisheye")


@dataclass(frozen=True)
class IntrinsicsOptions:
    model: str = "pinhole"
    # pinhole only: 2 fixes k3 = 0 (ROS camera_calibration's default), 3 estimates it (OpenCV's default)
    k_coefficients: int = 3
    min_views: int = 5  # fewer usable views than this is an error, not a warning
    min_corners: int = 6  # per view; fewer constrain nothing but the view's own pose
    # A view is rejected when its RMS is above reject_factor x the median view RMS AND above reject_min_px:
    # the factor catches misfits, the floor keeps a set of uniformly good views from being thinned by noise.
    reject_factor: float = 3.0
    reject_min_px: float = 1.0
    max_rounds: int = 5

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise BoardSpecError(f"model {self.model!r} is not one of {', '.join(MODELS)}")
        if self.k_coefficients not in (2, 3):
            raise BoardSpecError(f"k_coefficients must be 2 or 3, got {self.k_coefficients!r}")
        if self.min_views < 3:
            raise BoardSpecError(f"min_views must be at least 3, got {self.min_views}")
        if self.min_corners < 4:
            raise BoardSpecError(f"min_corners must be at least 4, got {self.min_corners}")
        if self.reject_factor <= 1.0 or self.reject_min_px < 0:
            raise BoardSpecError("reject_factor must be > 1 and reject_min_px >= 0")


@dataclass(frozen=True, eq=False)
class ViewResult:
    name: str
    detection: Detection | None
    used: bool
    rms_px: float | None = None  # reprojection RMS of this view under the final (or rejecting) calibration
    tilt_deg: float | None = None  # angle between the board normal and the optical axis
    reason: str = ""  # why it was rejected


@dataclass(frozen=True, eq=False)
class IntrinsicsResult:
    camera: CameraModel
    rms_px: float  # over all corners of the used views
    views: tuple[ViewResult, ...]
    options: IntrinsicsOptions

    @property
    def used(self) -> list[ViewResult]:
        return [v for v in self.views if v.used]

    @property
    def rejected(self) -> list[ViewResult]:
        return [v for v in self.views if not v.used]


def _cv2():
    from pi0edge.errors import require

    return require("cv2", "calib", "camera calibration")


def _solve(model: str, k_coefficients: int, detections: list[Detection], size: tuple[int, int]):
    """One calibration over the given views -> (K, D, rvecs, tvecs)."""
    cv2 = _cv2()
    obj = [d.object_points_m.reshape(-1, 1, 3).astype(np.float32) for d in detections]
    img = [d.image_points_px.reshape(-1, 1, 2).astype(np.float32) for d in detections]
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-12)
    try:
        if model == "fisheye":
            flags = cv2.fisheye.CALIB_RECOMPUTE_EXTRINSIC | cv2.fisheye.CALIB_FIX_SKEW
            _, k, d, rvecs, tvecs = cv2.fisheye.calibrate(obj, img, size, None, None, flags=flags, criteria=criteria)
        else:
            flags = cv2.CALIB_RATIONAL_MODEL if model == "rational" else 0
            if model == "pinhole" and k_coefficients == 2:
                flags |= cv2.CALIB_FIX_K3
            _, k, d, rvecs, tvecs = cv2.calibrateCamera(obj, img, size, None, None, flags=flags, criteria=criteria)
    except cv2.error as exc:
        raise CalibrationError(f"OpenCV could not calibrate from {len(detections)} views: {exc.err}") from None
    return k, d.reshape(-1), rvecs, tvecs


def _distortion_model(model: str, d: np.ndarray) -> tuple[str, np.ndarray]:
    if model == "fisheye":
        return "equidistant", d[:4]
    if model == "rational":
        return "rational_polynomial", d[:8]
    return "plumb_bob", d[:5]


def _view_errors(camera: CameraModel, detections: list[Detection], rvecs, tvecs):
    """Per view: (sum of squared errors, RMS px, tilt deg)."""
    cv2 = _cv2()
    out = []
    for det, rvec, tvec in zip(detections, rvecs, tvecs, strict=True):
        residual = camera.project(det.object_points_m, rvec, tvec) - det.image_points_px
        sq = float(np.sum(residual.astype(np.float64) ** 2))
        normal_z = cv2.Rodrigues(np.asarray(rvec, float))[0][2, 2]
        tilt = math.degrees(math.acos(min(1.0, abs(normal_z))))
        out.append((sq, math.sqrt(sq / det.count), tilt))
    return out


def _not_found_message(views: Sequence[tuple[str, Detection | NotFound | None]]) -> str:
    """No board anywhere: say what was looked for, from the image that came closest (most markers seen)."""
    text = f"the board was not found in any of the {len(views)} images"
    misses = [(name, det) for name, det in views if isinstance(det, NotFound)]
    if not misses:
        return text
    name, closest = max(misses, key=lambda miss: len(miss[1].marker_ids))
    return f"{text}; {name}: {closest.reason}"


def calibrate_intrinsics(
    views: Sequence[tuple[str, Detection | NotFound | None]],
    image_size: tuple[int, int],
    options: IntrinsicsOptions = IntrinsicsOptions(),
    camera_name: str = "camera",
) -> IntrinsicsResult:
    """Calibrate from (name, detection or NotFound/None) views of one camera; image_size is (width, height)."""
    results: dict[str, ViewResult] = {}
    candidates: list[tuple[str, Detection]] = []
    for name, det in views:
        if not isinstance(det, Detection):
            results[name] = ViewResult(name, None, False, reason="board not detected" if det is None else det.reason)
        elif det.count < options.min_corners:
            results[name] = ViewResult(name, det, False, reason=f"only {det.count} corners (< {options.min_corners})")
        elif det.spread() < 2.0:
            results[name] = ViewResult(name, det, False, reason="corners lie on one line")
        else:
            candidates.append((name, det))
    if not candidates and not any(r.detection is not None for r in results.values()):
        raise BoardNotFoundError(_not_found_message(views))
    if len(candidates) < options.min_views:
        raise CalibrationError(
            f"too few usable views: {len(candidates)} of {len(views)} images (need at least {options.min_views}); "
            "rejected: " + ", ".join(f"{r.name} ({r.reason})" for r in results.values())
        )

    active = list(candidates)
    for _ in range(options.max_rounds):
        dets = [d for _, d in active]
        k, d, rvecs, tvecs = _solve(options.model, options.k_coefficients, dets, image_size)
        model_name, coeffs = _distortion_model(options.model, d)
        camera = CameraModel(image_size[0], image_size[1], k, coeffs, model_name, camera_name)
        errors = _view_errors(camera, dets, rvecs, tvecs)
        median = float(np.median([e[1] for e in errors]))
        limit = max(options.reject_factor * median, options.reject_min_px)
        bad = [i for i, e in enumerate(errors) if e[1] > limit]
        if not bad or len(active) - len(bad) < options.min_views:
            break
        for i in bad:
            name, det = active[i]
            results[name] = ViewResult(
                name,
                det,
                False,
                errors[i][1],
                errors[i][2],
                reason=f"reprojection RMS {errors[i][1]:.2f} px > {limit:.2f} px "
                f"({options.reject_factor:g} x median {median:.2f} px)",
            )
        active = [view for i, view in enumerate(active) if i not in set(bad)]

    for (name, det), (_, rms, tilt) in zip(active, errors, strict=True):
        results[name] = ViewResult(name, det, True, rms, tilt)
    total_sq = sum(e[0] for e in errors)
    total_n = sum(det.count for _, det in active)
    ordered = tuple(results[name] for name, _ in views)
    return IntrinsicsResult(camera, math.sqrt(total_sq / total_n), ordered, options)
