"""The quality report of an intrinsics calibration: RMS and per-view errors, rejected views with the
reason, how much of the image the board covered (and a PNG that shows it), and warnings when the data is
too thin to trust. A calibration can converge to a low RMS and still be wrong when all views sit in the
image centre or face the camera squarely; the warnings say which."""

from __future__ import annotations

import colorsys
import json
from typing import Any

import numpy as np

from pi0edge.calibration.boards import BoardSpec
from pi0edge.calibration.intrinsics import IntrinsicsResult

COVERAGE_GRID = (8, 6)  # cells across, down
MIN_TRUSTED_VIEWS = 12
MIN_TRUSTED_COVERAGE = 0.6  # fraction of grid cells with at least one corner of a used view
MAX_TRUSTED_RMS_PX = 1.0
# Fronto-parallel views leave focal length and distance interchangeable: some views must be tilted.
MIN_TRUSTED_TILT_DEG = 20.0


def coverage_cells(result: IntrinsicsResult, grid: tuple[int, int] = COVERAGE_GRID) -> np.ndarray:
    """(rows, cols) bool: which grid cells the used views' corners fell in."""
    cols, rows = grid
    hit = np.zeros((rows, cols), bool)
    w, h = result.camera.image_size
    for view in result.used:
        pts = view.detection.image_points_px
        cx = np.clip((pts[:, 0] / w * cols).astype(int), 0, cols - 1)
        cy = np.clip((pts[:, 1] / h * rows).astype(int), 0, rows - 1)
        hit[cy, cx] = True
    return hit


def quality_warnings(result: IntrinsicsResult) -> list[str]:
    warnings = []
    used = result.used
    if len(used) < MIN_TRUSTED_VIEWS:
        warnings.append(f"only {len(used)} views used (want >= {MIN_TRUSTED_VIEWS}): take more, at varied poses")
    coverage = float(coverage_cells(result).mean())
    if coverage < MIN_TRUSTED_COVERAGE:
        warnings.append(
            f"the board covered {coverage:.0%} of the image (want >= {MIN_TRUSTED_COVERAGE:.0%}): distortion near the "
            "uncovered edges and corners is extrapolated; move the board into them (see the coverage image)"
        )
    if result.rms_px > MAX_TRUSTED_RMS_PX:
        warnings.append(
            f"RMS reprojection error {result.rms_px:.2f} px > {MAX_TRUSTED_RMS_PX} px: blur, a bent board, a wrong "
            "board size or the wrong camera model"
        )
    max_tilt = max((v.tilt_deg or 0.0) for v in used)
    if max_tilt < MIN_TRUSTED_TILT_DEG:
        warnings.append(
            f"the board was never tilted more than {max_tilt:.0f} deg (want >= {MIN_TRUSTED_TILT_DEG:.0f}): focal "
            "length is poorly constrained by fronto-parallel views"
        )
    return warnings


def build_report(result: IntrinsicsResult, board: BoardSpec, source: str) -> dict[str, Any]:
    cam = result.camera
    cells = coverage_cells(result)
    warnings = quality_warnings(result)
    return {
        "format": "pi0edge-intrinsics-report",
        "version": 1,
        "camera_name": cam.name,
        "source": source,
        "board": board.to_dict(),
        "model": result.options.model,
        "image_width": cam.width,
        "image_height": cam.height,
        "rms_px": result.rms_px,
        "fx": cam.fx,
        "fy": cam.fy,
        "cx": cam.cx,
        "cy": cam.cy,
        "camera_matrix": cam.camera_matrix.tolist(),
        "distortion_model": cam.distortion_model,
        "distortion_coefficients": cam.distortion.tolist(),
        "views_total": len(result.views),
        "views_used": len(result.used),
        "views_rejected": len(result.rejected),
        "coverage": {"grid_cols": cells.shape[1], "grid_rows": cells.shape[0], "fraction": float(cells.mean())},
        "max_tilt_deg": max((v.tilt_deg or 0.0) for v in result.used),
        "trusted": not warnings,
        "warnings": warnings,
        "views": [
            {
                "name": v.name,
                "used": v.used,
                "corners": None if v.detection is None else v.detection.count,
                "rms_px": v.rms_px,
                "tilt_deg": v.tilt_deg,
                "reason": v.reason or None,
            }
            for v in result.views
        ],
    }


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"


def report_text(report: dict[str, Any]) -> str:
    lines = [
        f"camera {report['camera_name']}: {report['model']} model, {report['image_width']}x{report['image_height']}, "
        f"board {report['board']['type']}",
        f"RMS reprojection error: {report['rms_px']:.3f} px over {report['views_used']} views "
        f"({report['views_rejected']} of {report['views_total']} rejected)",
        f"fx {report['fx']:.2f}  fy {report['fy']:.2f}  cx {report['cx']:.2f}  cy {report['cy']:.2f}",
        f"distortion ({report['distortion_model']}): "
        + " ".join(f"{d:.5f}" for d in report["distortion_coefficients"]),
        f"coverage: {report['coverage']['fraction']:.0%} of a {report['coverage']['grid_cols']}x"
        f"{report['coverage']['grid_rows']} grid; max board tilt {report['max_tilt_deg']:.0f} deg",
        "",
        "views:",
    ]
    for v in report["views"]:
        if v["used"]:
            lines.append(
                f"  {v['name']}: {v['corners']} corners, RMS {v['rms_px']:.3f} px, tilt {v['tilt_deg']:.0f} deg"
            )
        else:
            lines.append(f"  {v['name']}: REJECTED, {v['reason']}")
    lines.append("")
    if report["warnings"]:
        lines += ["WARNINGS (do not trust this calibration yet):"] + [f"  - {w}" for w in report["warnings"]]
    else:
        lines.append("quality: no warnings")
    return "\n".join(lines) + "\n"


def coverage_png(result: IntrinsicsResult) -> bytes:
    """The image area, grid cells hit shaded, each used view's corners in its own colour, rejected views'
    corners as red crosses."""
    from pi0edge.errors import require

    cv2 = require("cv2", "calib", "camera calibration")
    w, h = result.camera.image_size
    canvas = np.full((h, w, 3), 40, np.uint8)
    cells = coverage_cells(result)
    rows, cols = cells.shape
    for r in range(rows):
        for c in range(cols):
            x0, x1 = c * w // cols, (c + 1) * w // cols
            y0, y1 = r * h // rows, (r + 1) * h // rows
            if cells[r, c]:
                canvas[y0:y1, x0:x1] = (40, 85, 40)  # BGR: dim green
            cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), (90, 90, 90), 1)
    used = result.used
    for i, view in enumerate(used):
        rgb = colorsys.hsv_to_rgb(i / max(len(used), 1), 0.8, 1.0)
        colour = tuple(int(255 * v) for v in rgb[::-1])
        for x, y in view.detection.image_points_px:
            cv2.circle(canvas, (int(round(x)), int(round(y))), 2, colour, -1, cv2.LINE_AA)
    for view in result.rejected:
        if view.detection is None:
            continue
        for x, y in view.detection.image_points_px:
            cv2.drawMarker(canvas, (int(round(x)), int(round(y))), (0, 0, 255), cv2.MARKER_TILTED_CROSS, 6, 1)
    caption = (
        f"coverage {cells.mean():.0%}  views {len(used)} used / {len(result.rejected)} rejected  "
        f"RMS {result.rms_px:.2f}px"
    )
    cv2.putText(canvas, caption, (8, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", canvas)
    return png.tobytes()
