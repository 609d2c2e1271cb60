"""`pi0edge calibrate intrinsics | realsense | handeye | check`. Parsing only at import time: OpenCV and
pyrealsense2 are imported when a subcommand runs, so `pi0edge --help` works without them."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from pi0edge.cli_args import positive_float, positive_int

log = logging.getLogger("pi0edge.calibration")

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
HANDEYE_MIN_CORNERS = 6  # fewer make a board pose too noisy to pair with a robot pose


BOARD_HELP = (
    "board: charuco:squares_x=7,squares_y=5,square_mm=30,marker_mm=22,dict=DICT_5X5_100 | "
    "chessboard:cols=9,rows=6,square_mm=25 (inner corners) | a YAML file with the same fields + type"
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="camera intrinsics, RealSense factory data, hand-eye, drift check",
        description="Camera calibration. See docs/calibration.md.",
    )
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    sub = parser.add_subparsers(dest="calibrate_command", metavar="STEP")
    _add_intrinsics(sub)
    _add_realsense(sub)
    _add_handeye(sub)
    _add_check(sub)


def _add_intrinsics(sub) -> None:
    p = sub.add_parser("intrinsics", help="intrinsics from board views (image folder or live camera)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of images of the board")
    src.add_argument("--camera", help="robot_io camera spec: opencv:0, realsense:SERIAL, or a YAML mapping")
    p.add_argument("--board", required=True, help=BOARD_HELP)
    p.add_argument(
        "--model",
        choices=("pinhole", "rational", "fisheye"),
        default="pinhole",
        help="pinhole = plumb_bob (default), rational = rational_polynomial, fisheye = equidistant",
    )
    p.add_argument("--k-coefficients", type=int, choices=(2, 3), default=3, help="pinhole radial terms (2 fixes k3)")
    p.add_argument("--name", default="camera", help="camera name (file names and camera_name)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--min-views", type=positive_int, default=5, help="fewer usable views is an error (default 5)")
    p.add_argument("--reject-factor", type=positive_float, default=3.0, help="reject views with RMS > this x median")
    p.add_argument("--reject-min-px", type=float, default=1.0, help="... and above this many px")
    p.add_argument("--views", type=positive_int, default=25, help="live camera: views to capture")
    p.add_argument("--timeout-s", type=positive_float, default=180.0, help="live camera: give up capturing after this")
    p.add_argument("--save-images", type=Path, help="live camera: keep the captured views here")
    p.add_argument("--strict", action="store_true", help="exit 1 when the report has quality warnings")
    p.set_defaults(func=cmd_intrinsics)


def _add_realsense(sub) -> None:
    p = sub.add_parser("realsense", help="factory intrinsics/extrinsics of a RealSense device or recording")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--serial", help="device serial number (default: the only connected device)")
    src.add_argument("--recording", type=Path, help="a .bag / .db3 recording")
    p.add_argument("--resolution", help="WIDTHxHEIGHT of the profiles to read (default: each stream's default)")
    p.add_argument("--name", help="file/frame prefix (default realsense_SERIAL)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(func=cmd_realsense)


def _add_handeye(sub) -> None:
    p = sub.add_parser("handeye", help="hand-eye calibration from robot poses and board views")
    p.add_argument("--images", type=Path, required=True, help="folder of board images, one per robot pose")
    p.add_argument("--poses", type=Path, required=True, help="gripper-to-base poses: YAML/JSON list or CSV")
    p.add_argument("--intrinsics", type=Path, required=True, help="camera file (ROS camera_info or OpenCV YAML)")
    p.add_argument("--board", required=True, help=BOARD_HELP)
    p.add_argument("--setup", choices=("eye-in-hand", "eye-to-hand"), required=True)
    p.add_argument(
        "--method", default="consensus", choices=("consensus", "tsai", "park", "horaud", "andreff", "daniilidis")
    )
    p.add_argument("--base-frame", default="base_link")
    p.add_argument("--gripper-frame", default="tool0")
    p.add_argument("--camera-frame", default="camera_optical_frame")
    p.add_argument("--target-frame", default="calibration_board")
    p.add_argument("--name", default="handeye", help="output file prefix")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--min-views", type=positive_int, default=10,
        help="fewer views with the board: a warning, with --strict an error"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse fewer than --min-views good views (nothing written); exit 1 when the report has warnings",
    )
    p.set_defaults(func=cmd_handeye)


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="has the camera moved? (exit 0 pass, 1 moved, 2 error)")
    p.add_argument("--reference", type=Path, required=True, help="reference file (made with --save-reference)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, help="a fresh view of the board")
    src.add_argument("--camera", help="robot_io camera spec to grab the view from")
    p.add_argument("--save-reference", action="store_true", help="write the reference from this view instead")
    p.add_argument("--intrinsics", type=Path, help="with --save-reference: the camera file")
    p.add_argument("--board", help=f"with --save-reference: {BOARD_HELP}")
    p.add_argument("--max-mm", type=positive_float, help="translation limit (default: the reference's, else 2 mm)")
    p.add_argument("--max-deg", type=positive_float, help="rotation limit (default: the reference's, else 0.5 deg)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_check)


def _robot_io_camera_opener():
    """robot_io's open_camera, for --camera. Wired here, in the application layer: robot_io imports calibration
    (the start-up drift check), so calibration's library modules must not import robot_io."""
    from pi0edge.calibration.errors import CalibrationError

    try:
        from pi0edge.robot_io.cameras import open_camera
    except ImportError as exc:
        raise CalibrationError(
            f"live cameras need pi0edge.robot_io.cameras, which cannot be imported here ({exc}); "
            "save images to a folder and pass --images instead"
        ) from None
    return open_camera


def _views_from_folder(folder: Path, detector):
    from pi0edge.calibration.sources import iter_folder

    views, size = [], None
    for name, image in iter_folder(folder):
        size = (image.shape[1], image.shape[0])
        views.append((name, detector.find(image, str(folder / name))))
    return views, size


def _views_from_camera(args, detector):
    import numpy as np

    from pi0edge.calibration.sources import capture_views, parse_camera_spec

    accepted: list[np.ndarray] = []

    def accept(image) -> bool:
        # a new view must move the board: mean corner shift > 5 % of the image diagonal from every kept one
        det = detector.detect(image)
        if det is None or det.count < 6:
            return False
        centre = det.image_points_px.mean(axis=0)
        spread = det.image_points_px.std(axis=0)
        signature = np.concatenate([centre, spread])
        diagonal = float(np.hypot(*image.shape[:2]))
        if any(np.linalg.norm(signature - s) < 0.05 * diagonal for s in accepted):
            return False
        accepted.append(signature)
        return True

    spec = parse_camera_spec(args.camera)
    captured = capture_views(spec, _robot_io_camera_opener(), accept, args.views, args.timeout_s, args.save_images)
    if not captured:
        from pi0edge.calibration.errors import BoardNotFoundError

        raise BoardNotFoundError(f"camera {args.camera}: no view of the board within {args.timeout_s:g} s")
    size = (captured[0][1].shape[1], captured[0][1].shape[0])
    return [(name, detector.find(image, name)) for name, image in captured], size


def cmd_intrinsics(args) -> int:
    from pi0edge.calibration.boards import parse_board
    from pi0edge.calibration.detect import BoardDetector
    from pi0edge.calibration.formats import opencv_yaml_text, ros_camera_info_text
    from pi0edge.calibration.intrinsics import IntrinsicsOptions, calibrate_intrinsics
    from pi0edge.calibration.outputs import write_files_atomically
    from pi0edge.calibration.report import build_report, coverage_png, report_json, report_text

    board = parse_board(args.board)
    options = IntrinsicsOptions(
        model=args.model,
        k_coefficients=args.k_coefficients,
        min_views=args.min_views,
        reject_factor=args.reject_factor,
        reject_min_px=args.reject_min_px,
    )
    detector = BoardDetector(board)
    if args.images is not None:
        views, size = _views_from_folder(args.images, detector)
        source = str(args.images)
    else:
        views, size = _views_from_camera(args, detector)
        source = f"camera {args.camera}"
    result = calibrate_intrinsics(views, size, options, args.name)
    report = build_report(result, board, source)
    out = args.out
    files = {
        out / f"{args.name}.camera_info.yaml": ros_camera_info_text(result.camera),
        out / f"{args.name}.opencv.yaml": opencv_yaml_text(result.camera, {"rms_px": result.rms_px}),
        out / f"{args.name}.report.json": report_json(report),
        out / f"{args.name}.report.txt": report_text(report),
        out / f"{args.name}.coverage.png": coverage_png(result),
    }
    write_files_atomically(files)
    print(report_text(report), end="")
    print("wrote " + ", ".join(str(p) for p in files))
    return 1 if args.strict and report["warnings"] else 0


def cmd_realsense(args) -> int:
    from pi0edge.calibration.errors import CalibrationError
    from pi0edge.calibration.formats import opencv_yaml_text, ros_camera_info_text
    from pi0edge.calibration.outputs import write_files_atomically
    from pi0edge.calibration.realsense import read_device_calibration
    from pi0edge.calibration.transforms import transform_yaml_text

    resolution = None
    if args.resolution:
        try:
            w, h = (int(v) for v in args.resolution.lower().split("x"))
            resolution = (w, h)
        except ValueError:
            raise CalibrationError(f"--resolution {args.resolution!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    calib = read_device_calibration(args.serial, args.recording, resolution, args.name)
    prefix = args.name or f"realsense_{calib.serial}"
    files: dict[Path, str] = {}
    for key, camera in calib.streams.items():
        files[args.out / f"{prefix}_{key}.camera_info.yaml"] = ros_camera_info_text(camera)
        files[args.out / f"{prefix}_{key}.opencv.yaml"] = opencv_yaml_text(camera)
    for (a, b), transform in calib.extrinsics.items():
        files[args.out / f"{prefix}_{a}_to_{b}.yaml"] = transform_yaml_text(transform, {"source": "factory"})
    summary = {
        "serial": calib.serial,
        "name": calib.name,
        "firmware": calib.firmware,
        "depth_scale_m": calib.depth_scale_m,
        "streams": {
            k: {
                "width": c.width,
                "height": c.height,
                "fx": c.fx,
                "fy": c.fy,
                "cx": c.cx,
                "cy": c.cy,
                "distortion_model": c.distortion_model,
                "librealsense_model": calib.native_models[k],
                "distortion_coefficients": c.distortion.tolist(),
            }
            for k, c in calib.streams.items()
        },
        "extrinsics": {f"{a}_to_{b}": t.to_dict() for (a, b), t in calib.extrinsics.items()},
        "notes": calib.notes,
    }
    files[args.out / f"{prefix}.json"] = json.dumps(summary, indent=2) + "\n"
    write_files_atomically(files)
    for key, c in calib.streams.items():
        print(
            f"{key}: {c.width}x{c.height} fx {c.fx:.2f} fy {c.fy:.2f} cx {c.cx:.2f} cy {c.cy:.2f} "
            f"({calib.native_models[key]} -> {c.distortion_model})"
        )
    for note in calib.notes:
        print(f"note: {note}")
    print("wrote " + ", ".join(str(p) for p in files))
    return 0


def _handeye_views(args, camera, detector):
    """(T_base_gripper list, T_camera_board list, HandEyeViews) over the images that show the board."""
    from pi0edge.calibration.camera import board_pose
    from pi0edge.calibration.detect import NotFound
    from pi0edge.calibration.errors import ImageError
    from pi0edge.calibration.handeye import match_poses, read_robot_poses
    from pi0edge.calibration.handeye_report import HandEyeViews
    from pi0edge.calibration.sources import iter_folder, list_images

    poses = match_poses([p.name for p in list_images(args.images)], read_robot_poses(args.poses), str(args.poses))
    robot, targets, views = [], [], HandEyeViews()
    for name, image in iter_folder(args.images):
        if (image.shape[1], image.shape[0]) != camera.image_size:
            raise ImageError(
                f"image {args.images / name} is {image.shape[1]}x{image.shape[0]} but {args.intrinsics} "
                f"is for {camera.width}x{camera.height}"
            )
        det = detector.find(image, name)
        if isinstance(det, NotFound) or det.count < HANDEYE_MIN_CORNERS:
            reason = det.reason if isinstance(det, NotFound) else f"only {det.count} corners (< {HANDEYE_MIN_CORNERS})"
            views.skipped.append({"image": name, "reason": reason})
            continue
        pose, rms_px = board_pose(camera, det.image_points_px, det.object_points_m)
        robot.append(poses[name])
        targets.append(pose)
        views.used.append({"image": name, "corners": det.count, "board_rms_px": rms_px})
    return robot, targets, views


def cmd_handeye(args) -> int:
    from pi0edge.calibration.boards import parse_board
    from pi0edge.calibration.detect import BoardDetector
    from pi0edge.calibration.errors import CalibrationError
    from pi0edge.calibration.formats import read_camera_file
    from pi0edge.calibration.handeye import MIN_POSES, frames_for, solve_hand_eye
    from pi0edge.calibration.handeye_report import (
        handeye_report,
        handeye_report_json,
        handeye_report_text,
        handeye_yaml_text,
    )
    from pi0edge.calibration.outputs import write_files_atomically

    if args.min_views < MIN_POSES:
        raise CalibrationError(f"--min-views {args.min_views}: hand-eye needs at least {MIN_POSES} views")
    board = parse_board(args.board)
    camera = read_camera_file(args.intrinsics)
    robot, targets, views = _handeye_views(args, camera, BoardDetector(board))
    if not views.used:
        raise CalibrationError(f"the board was not found in any image of {args.images}: {views.skipped[0]['reason']}")
    if args.strict and len(views.used) < args.min_views:
        skipped = "; ".join(f"{v['image']}: {v['reason']}" for v in views.skipped) or "none"
        raise CalibrationError(
            f"--strict: {len(views.used)} images of {args.images} show the board, need at least {args.min_views} "
            f"(--min-views); skipped: {skipped}"
        )
    names = [u["image"] for u in views.used]
    result = solve_hand_eye(robot, targets, args.setup, args.method, names, min_trusted_views=args.min_views)
    frames = frames_for(args.setup, args.base_frame, args.gripper_frame, args.camera_frame, args.target_frame)
    report = handeye_report(result, frames, views)
    text = handeye_report_text(report)
    files = {
        args.out / f"{args.name}.yaml": handeye_yaml_text(result, frames, args.method == "consensus"),
        args.out / f"{args.name}.report.json": handeye_report_json(report),
        args.out / f"{args.name}.report.txt": text,
    }
    write_files_atomically(files)
    print(text, end="")
    print("wrote " + ", ".join(str(p) for p in files))
    return 1 if args.strict and result.warnings else 0


def _check_image(args):
    from pi0edge.calibration.sources import grab_frame, parse_camera_spec, read_image

    if args.image is not None:
        return read_image(args.image), str(args.image)
    return grab_frame(parse_camera_spec(args.camera), _robot_io_camera_opener()), f"camera {args.camera}"


def cmd_check(args) -> int:
    """Exit codes for scripts: 0 pass, 1 moved, 2 could not check (the main CLI would say 1 for errors)."""
    from pi0edge.errors import Pi0EdgeError

    try:
        if args.save_reference:
            return _save_reference(args)
        from pi0edge.calibration.drift import check_drift

        image, name = _check_image(args)
        result = check_drift(image, args.reference, args.max_mm, args.max_deg)
    except Pi0EdgeError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"passed": False, "error": str(exc)}))
        print(f"pi0edge calibrate check: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(result.to_dict()) if args.json else result.message)
    return EXIT_PASS if result.passed else EXIT_FAIL


def _save_reference(args) -> int:
    from pi0edge.calibration.boards import parse_board
    from pi0edge.calibration.drift import DriftThresholds, save_reference
    from pi0edge.calibration.errors import CalibrationFileError
    from pi0edge.calibration.formats import read_camera_file

    if args.intrinsics is None or args.board is None:
        raise CalibrationFileError("--save-reference needs --intrinsics and --board")
    board = parse_board(args.board)
    camera = read_camera_file(args.intrinsics)
    thresholds = DriftThresholds(args.max_mm or DriftThresholds.max_mm, args.max_deg or DriftThresholds.max_deg)
    image, name = _check_image(args)
    save_reference(camera, board, image, args.reference, name, str(args.intrinsics), thresholds)
    print(f"wrote reference {args.reference} (camera {camera.name}, board {board.describe()})")
    return EXIT_PASS
