"""Finding the board in an image: ChArUco corners by id (OpenCV's CharucoDetector) or all chessboard
corners (findChessboardCornersSB, falling back to the classic detector + cornerSubPix)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pi0edge.calibration.boards import BoardSpec, CharucoSpec
from pi0edge.calibration.errors import ImageError


@dataclass(frozen=True, eq=False)
class Detection:
    """Board corners found in one image, paired with their board coordinates."""

    image_points_px: np.ndarray  # (N, 2) float32
    object_points_m: np.ndarray  # (N, 3) float32, board frame
    ids: np.ndarray | None = None  # (N,) ChArUco corner ids; None for a chessboard (all corners, row-major)

    @property
    def count(self) -> int:
        return len(self.image_points_px)

    def spread(self) -> float:
        """Second singular value of the centred corners, in px: ~0 when the corners lie on one line, which
        gives no homography (and calibrateCamera fails on such a view)."""
        centred = self.image_points_px - self.image_points_px.mean(axis=0)
        return float(np.linalg.svd(centred, compute_uv=False)[-1] / np.sqrt(max(self.count, 1)))


@dataclass(frozen=True)
class NotFound:
    """Why the board was not found in one image: what was looked for and what was seen instead."""

    board: BoardSpec
    marker_ids: tuple[int, ...] = ()  # ArUco markers of the board's dictionary that were seen (ChArUco)
    corners: int = 0  # ChArUco corners that fit the board (too few to use)

    @property
    def reason(self) -> str:
        board = self.board
        if not isinstance(board, CharucoSpec):
            return (
                f"no chessboard with {board.cols}x{board.rows} inner corners found ({board.describe()}); "
                "cols/rows count inner corners, one fewer than the squares"
            )
        if not self.marker_ids:
            return (
                f"no ArUco marker of {board.dictionary} found while looking for {board.describe()}: is the board "
                f"in view, sharp and lit, and printed with {board.dictionary}?"
            )
        board_markers = board.squares_x * board.squares_y // 2
        seen = f"{len(self.marker_ids)} markers of {board.dictionary} found (ids {min(self.marker_ids)}-"
        seen += f"{max(self.marker_ids)})"
        if max(self.marker_ids) >= board_markers:
            return (
                f"{seen} but {board.describe()} has ids 0-{board_markers - 1}: the layout does not match "
                "(another board, or squares_x / squares_y too small)"
            )
        # OpenCV >= 4.6 starts boards with an even number of rows on another square colour than older ones did
        legacy = ", or legacy=true for a board made by OpenCV < 4.6" if board.squares_y % 2 == 0 else ""
        return (
            f"{seen} but only {self.corners} ChArUco corners fit {board.describe()}: the layout does not match "
            f"(squares_x / squares_y swapped or wrong{legacy})"
        )


def to_gray(image: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 HxW, or HxWx3 / HxWx4 in RGB(A) order: robot_io's frames, and files through sources.read_image.
    A BGR image (cv2.imread) must be converted first: red and blue weigh differently in grey."""
    from pi0edge.errors import require

    cv2 = require("cv2", "calib", "camera calibration")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY)
    raise ImageError(f"{name}: expected an HxW or HxWx3 image, got shape {image.shape}")


class BoardDetector:
    """Built once per board (the ChArUco detector holds the dictionary), then called per image."""

    def __init__(self, board: BoardSpec):
        from pi0edge.errors import require

        self._cv2 = require("cv2", "calib", "camera calibration")
        self.board = board
        self._object_points = board.object_points_m()
        if isinstance(board, CharucoSpec):
            cv2 = self._cv2
            params = cv2.aruco.DetectorParameters()
            # subpixel marker corners make the interpolated ChArUco corners start closer to the truth
            params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
            charuco_params = cv2.aruco.CharucoParameters()
            charuco_params.minMarkers = 2
            self._charuco = cv2.aruco.CharucoDetector(board.cv2_board(), charuco_params, params)

    def detect(self, image: np.ndarray, name: str = "image") -> Detection | None:
        found = self.find(image, name)
        return found if isinstance(found, Detection) else None

    def find(self, image: np.ndarray, name: str = "image") -> Detection | NotFound:
        """The corners, or why there are none (names the board and dictionary, and what was seen instead)."""
        gray = to_gray(image, name)
        if isinstance(self.board, CharucoSpec):
            return self._detect_charuco(gray)
        return self._detect_chessboard(gray) or NotFound(self.board)

    def _detect_charuco(self, gray: np.ndarray) -> Detection | NotFound:
        corners, ids, _, marker_ids = self._charuco.detectBoard(gray)
        if ids is None or len(ids) < 4:
            seen = () if marker_ids is None else tuple(sorted(int(i) for i in marker_ids.reshape(-1)))
            return NotFound(self.board, seen, 0 if ids is None else len(ids))
        ids = ids.reshape(-1).astype(np.int32)
        return Detection(corners.reshape(-1, 2).astype(np.float32), self._object_points[ids], ids)

    def _detect_chessboard(self, gray: np.ndarray) -> Detection | None:
        cv2 = self._cv2
        pattern = (self.board.cols, self.board.rows)
        flags = cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_EXHAUSTIVE | cv2.CALIB_CB_ACCURACY
        found, corners = cv2.findChessboardCornersSB(gray, pattern, flags=flags)
        if not found:
            # the classic detector copes better with strong blur / low resolution boards
            found, corners = cv2.findChessboardCorners(
                gray, pattern, flags=cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
            )
            if not found:
                return None
            criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3)
            corners = cv2.cornerSubPix(gray, corners, (5, 5), (-1, -1), criteria)
        corners = corners.reshape(-1, 2).astype(np.float32)
        if self._reversed(gray, corners):
            corners = corners[::-1].copy()
        return Detection(corners, self._object_points.copy(), None)

    def _reversed(self, gray: np.ndarray, corners: np.ndarray) -> bool:
        """The detectors may start from either end of the board; the pose (hand-eye, drift) needs the printed
        origin. The square diagonally outside corner 0 is black as printed (render_board, OpenCV's pattern);
        when it samples brighter than its white neighbour the order runs from the far end. Only a board whose
        two square counts differ in parity (e.g. 9x6 inner corners) tells the ends apart."""
        cv2 = self._cv2
        square = self.board.square_m
        homography, _ = cv2.findHomography(self._object_points[:, :2].astype(np.float64), corners.astype(np.float64))
        if homography is None:
            return False
        probes = np.array([[0.5, 0.5], [1.5, 0.5], [0.5, 1.5]]) * square  # black, white, white
        px = cv2.perspectiveTransform(probes.reshape(-1, 1, 2), homography).reshape(-1, 2)
        h, w = gray.shape
        values = []
        for x, y in px:
            xi, yi = int(round(x)), int(round(y))
            if not (1 <= xi < w - 1 and 1 <= yi < h - 1):
                return False
            values.append(float(gray[yi - 1 : yi + 2, xi - 1 : xi + 2].mean()))
        return values[0] > 0.5 * (values[1] + values[2])
