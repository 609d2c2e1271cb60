"""Calibration boards as data: a chessboard or a ChArUco board, described on the command line
(`charuco:squares_x=7,squares_y=5,square_mm=30,marker_mm=22,dict=DICT_5X5_100`) or in a YAML file.

Board points are in metres in the board frame: origin at the board's top-left outer corner as printed,
x to the right, y down, z into the board (OpenCV's convention, so poses from solvePnP need no flips)."""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pi0edge.calibration.errors import BoardSpecError
from pi0edge.calibration.yaml_io import read_yaml_file

# Marker count per predefined dictionary; a board needs one marker per white square.
ARUCO_DICTIONARY_SIZES = {
    **{f"DICT_{bits}X{bits}_{n}": n for bits in (4, 5, 6, 7) for n in (50, 100, 250, 1000)},
    "DICT_ARUCO_ORIGINAL": 1024,
    "DICT_APRILTAG_16h5": 30,
    "DICT_APRILTAG_25h9": 35,
    "DICT_APRILTAG_36h10": 2320,
    "DICT_APRILTAG_36h11": 587,
    "DICT_ARUCO_MIP_36h12": 250,
}


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise BoardSpecError(f"board field '{name}' must be a positive number, got {value!r}")


def _count(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BoardSpecError(f"board field '{name}' must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class ChessboardSpec:
    """A plain chessboard. cols/rows count INNER corners (OpenCV's pattern size, ROS's `--size 8x6`)."""

    cols: int
    rows: int
    square_mm: float
    kind: ClassVar[str] = "chessboard"

    def __post_init__(self) -> None:
        _count("cols", self.cols, 2)
        _count("rows", self.rows, 2)
        _positive("square_mm", self.square_mm)

    @property
    def square_m(self) -> float:
        return self.square_mm / 1000.0

    @property
    def corner_count(self) -> int:
        return self.cols * self.rows

    @property
    def squares(self) -> tuple[int, int]:
        return self.cols + 1, self.rows + 1

    def object_points_m(self) -> np.ndarray:
        """(cols*rows, 3) corners in the order findChessboardCorners returns them: row by row."""
        # inner corner (c, r) sits one square in from the outer edge
        c, r = np.meshgrid(np.arange(self.cols), np.arange(self.rows))
        pts = np.stack([(c.ravel() + 1) * self.square_m, (r.ravel() + 1) * self.square_m, np.zeros(c.size)], 1)
        return pts.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, **asdict(self)}

    def describe(self) -> str:
        return f"chessboard:cols={self.cols},rows={self.rows},square_mm={self.square_mm:g}"


@dataclass(frozen=True)
class CharucoSpec:
    """A ChArUco board: squares_x by squares_y squares, ArUco markers in the white ones."""

    squares_x: int
    squares_y: int
    square_mm: float
    marker_mm: float
    dictionary: str = "DICT_5X5_100"
    # Boards made by OpenCV < 4.6 with an even number of rows start with a different square colour.
    legacy: bool = False
    kind: ClassVar[str] = "charuco"

    def __post_init__(self) -> None:
        _count("squares_x", self.squares_x, 3)
        _count("squares_y", self.squares_y, 3)
        _positive("square_mm", self.square_mm)
        _positive("marker_mm", self.marker_mm)
        if self.marker_mm >= self.square_mm:
            raise BoardSpecError(
                f"board field 'marker_mm' ({self.marker_mm:g}) must be smaller than 'square_mm' ({self.square_mm:g})"
            )
        if self.dictionary not in ARUCO_DICTIONARY_SIZES:
            raise BoardSpecError(
                f"board field 'dictionary' is {self.dictionary!r}; known: {', '.join(sorted(ARUCO_DICTIONARY_SIZES))}"
            )
        markers = self.squares_x * self.squares_y // 2
        if markers > ARUCO_DICTIONARY_SIZES[self.dictionary]:
            raise BoardSpecError(
                f"a {self.squares_x}x{self.squares_y} ChArUco board needs {markers} markers but "
                f"dictionary {self.dictionary} has only {ARUCO_DICTIONARY_SIZES[self.dictionary]}"
            )
        if not isinstance(self.legacy, bool):
            raise BoardSpecError(f"board field 'legacy' must be true or false, got {self.legacy!r}")

    @property
    def square_m(self) -> float:
        return self.square_mm / 1000.0

    @property
    def marker_m(self) -> float:
        return self.marker_mm / 1000.0

    @property
    def corner_count(self) -> int:
        return (self.squares_x - 1) * (self.squares_y - 1)

    @property
    def squares(self) -> tuple[int, int]:
        return self.squares_x, self.squares_y

    def object_points_m(self) -> np.ndarray:
        """(corner_count, 3) inner corners indexed by ChArUco corner id (as CharucoBoard.getChessboardCorners)."""
        n_x = self.squares_x - 1
        ids = np.arange(self.corner_count)
        pts = np.stack([(ids % n_x + 1) * self.square_m, (ids // n_x + 1) * self.square_m, np.zeros(ids.size)], 1)
        return pts.astype(np.float32)

    def cv2_board(self):
        """The OpenCV CharucoBoard (imports cv2)."""
        cv2 = _cv2()
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        board = cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_m, self.marker_m, dictionary)
        board.setLegacyPattern(self.legacy)
        return board

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, **asdict(self)}

    def describe(self) -> str:
        return (
            f"charuco:squares_x={self.squares_x},squares_y={self.squares_y},square_mm={self.square_mm:g},"
            f"marker_mm={self.marker_mm:g},dict={self.dictionary}" + (",legacy=true" if self.legacy else "")
        )


BoardSpec = ChessboardSpec | CharucoSpec
_KINDS: dict[str, type] = {"chessboard": ChessboardSpec, "charuco": CharucoSpec}
_ALIASES = {"dict": "dictionary", "aruco_dict": "dictionary", "square_size_mm": "square_mm"}


def _cv2():
    from pi0edge.errors import require

    return require("cv2", "calib", "camera calibration")


def _convert(kind: str, key: str, raw: Any, source: str) -> Any:
    """Command-line values arrive as strings; YAML ones may already be typed."""
    annotation = {f.name: f.type for f in fields(_KINDS[kind])}[key]
    try:
        if annotation == "int":
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
            return raw if isinstance(raw, int) else int(str(raw).strip())
        if annotation == "float":
            return float(raw)
        if annotation == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("true", "1", "yes"):
                return True
            if text in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        return str(raw).strip()
    except (TypeError, ValueError):
        raise BoardSpecError(f"{source}: board field '{key}' has value {raw!r}, expected {annotation}") from None


def board_from_dict(data: dict[str, Any], source: str = "board") -> BoardSpec:
    """Build a board from a mapping with a 'type' key (the YAML file form, and what reports store)."""
    if not isinstance(data, dict):
        raise BoardSpecError(f"{source}: a board must be a mapping with a 'type' field, got {type(data).__name__}")
    kind = str(data.get("type", "")).strip().lower()
    if kind not in _KINDS:
        raise BoardSpecError(f"{source}: board field 'type' is {data.get('type')!r}; use one of {', '.join(_KINDS)}")
    names = {f.name for f in fields(_KINDS[kind])}
    values: dict[str, Any] = {}
    for raw_key, raw in data.items():
        key = _ALIASES.get(str(raw_key).strip(), str(raw_key).strip())
        if key == "type":
            continue
        if key not in names:
            raise BoardSpecError(f"{source}: unknown {kind} board field {raw_key!r}; known: {', '.join(sorted(names))}")
        values[key] = _convert(kind, key, raw, source)
    missing = [f.name for f in fields(_KINDS[kind]) if f.default is MISSING and f.name not in values]
    if missing:
        raise BoardSpecError(f"{source}: {kind} board is missing field(s) {', '.join(missing)}")
    try:
        return _KINDS[kind](**values)
    except BoardSpecError as exc:
        raise BoardSpecError(f"{source}: {exc}") from None


def parse_board(text: str) -> BoardSpec:
    """`charuco:k=v,...`, `chessboard:k=v,...`, or the path of a YAML/JSON file holding the same fields."""
    text = text.strip()
    looks_like_file = text.lower().endswith((".yaml", ".yml", ".json")) or os.path.sep in text
    if looks_like_file or Path(text).is_file():
        return load_board_file(Path(text))
    kind, _, rest = text.partition(":")
    data: dict[str, Any] = {"type": kind}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise BoardSpecError(f"board spec {text!r}: expected key=value, got {item!r}")
        data[key.strip()] = value.strip()
    return board_from_dict(data, source=f"board spec {text!r}")


def load_board_file(path: Path) -> BoardSpec:
    data = read_yaml_file(path, "board", BoardSpecError)
    if isinstance(data, dict) and isinstance(data.get("board"), dict):
        data = data["board"]  # a report or reference file holds the board under 'board'
    return board_from_dict(data, source=f"board file {path}")


def render_board(spec: BoardSpec, px_per_mm: float = 4.0, margin_mm: float | None = None) -> np.ndarray:
    """A printable grayscale image of the board with a white quiet zone (one square by default) around it.
    Board coordinate (x_mm, y_mm) lands at pixel (margin + x) * px_per_mm - 0.5 (pixel centres)."""
    cv2 = _cv2()
    margin_mm = spec.square_mm if margin_mm is None else margin_mm
    sq_x, sq_y = spec.squares
    width_px = round(sq_x * spec.square_mm * px_per_mm)
    height_px = round(sq_y * spec.square_mm * px_per_mm)
    if isinstance(spec, CharucoSpec):
        board_img = spec.cv2_board().generateImage((width_px, height_px), marginSize=0, borderBits=1)
    else:
        # top-left square black, as OpenCV's chessboard pattern generator draws it
        ys, xs = np.mgrid[0:height_px, 0:width_px]
        square_px = spec.square_mm * px_per_mm
        black = ((xs + 0.5) // square_px + (ys + 0.5) // square_px) % 2 == 0
        board_img = np.where(black, 0, 255).astype(np.uint8)
    margin_px = round(margin_mm * px_per_mm)
    return cv2.copyMakeBorder(board_img, margin_px, margin_px, margin_px, margin_px, cv2.BORDER_CONSTANT, value=255)
