"""One episode of a LeRobotDataset v3 (parquet + mp4), read as replay samples (replay_through.py).

The layout, as LeRobot writes it (`lerobot/datasets/utils.py`, `dataset_writer.py`):

    meta/info.json                               fps, features (dtype "video" for camera streams), data_path,
                                                 video_path (templates with chunk_index / file_index / video_key)
    meta/episodes/chunk-000/file-000.parquet     a row per episode: episode_index, tasks, length,
                                                 data/chunk_index, data/file_index, videos/<key>/chunk_index,
                                                 videos/<key>/file_index, videos/<key>/from_timestamp
    data/chunk-000/file-000.parquet              a row per frame: observation.state, action, timestamp,
                                                 frame_index, episode_index, task_index, index
    videos/<key>/chunk-000/file-000.mp4          several episodes one after another; an episode's frame at
                                                 `timestamp` is the file's frame at from_timestamp + timestamp

Needs pyarrow and OpenCV (`pip install 'pi0edge[lerobot]'`), imported when a dataset is read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pi0edge.errors import require

from .errors import EpisodeError

log = logging.getLogger(__name__)

INFO_PATH = "meta/info.json"
EPISODES_GLOB = "meta/episodes/*/*.parquet"
STATE_KEY, ACTION_KEY = "observation.state", "action"
_PURPOSE = "reading LeRobotDataset v3 episodes"


def is_lerobot_v3(path: str | Path) -> bool:
    return (Path(path) / INFO_PATH).is_file()


def _info(root: Path) -> dict:
    try:
        info = json.loads((root / INFO_PATH).read_text())
    except (OSError, ValueError) as exc:
        raise EpisodeError(f"{root / INFO_PATH}: cannot read the dataset's info: {exc}") from exc
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise EpisodeError(f"{root / INFO_PATH}: codebase_version {version!r}; pi0edge reads LeRobotDataset v3 "
                           "(convert older datasets with LeRobot's convert_dataset_v21_to_v30)")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise EpisodeError(f"{root / INFO_PATH}: no {key!r} field")
    return info


def _episode_row(root: Path, episode_index: int) -> dict:
    pq = require("pyarrow.parquet", "lerobot", _PURPOSE)
    files = sorted(root.glob(EPISODES_GLOB))
    if not files:
        raise EpisodeError(f"{root}: no episode metadata ({EPISODES_GLOB})")
    for path in files:
        rows = pq.read_table(path).to_pylist()
        for row in rows:
            if int(row["episode_index"]) == episode_index:
                return row
    raise EpisodeError(f"{root}: no episode {episode_index} in {EPISODES_GLOB}")


def _column(table, key: str, where: str) -> np.ndarray:
    if key not in table.column_names:
        raise EpisodeError(f"{where}: no {key!r} column (columns: {table.column_names})")
    return np.asarray(table.column(key).to_pylist(), dtype=np.float64)


def _frames(root: Path, info: dict, episode: dict, key: str, timestamps: np.ndarray) -> np.ndarray:
    """The episode's frames of video stream `key` at `timestamps` (s from the episode's start), RGB uint8."""
    cv2 = require("cv2", "lerobot", _PURPOSE)
    path = root / info["video_path"].format(video_key=key, chunk_index=int(episode[f"videos/{key}/chunk_index"]),
                                            file_index=int(episode[f"videos/{key}/file_index"]))
    fps = float(info["fps"])
    wanted = np.rint((float(episode[f"videos/{key}/from_timestamp"]) + timestamps) * fps).astype(int)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise EpisodeError(f"{path}: OpenCV cannot open this video (missing, or a codec this OpenCV lacks)")
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(wanted.min()))
        decoded: dict[int, np.ndarray] = {}
        for index in range(int(wanted.min()), int(wanted.max()) + 1):
            ok, bgr = capture.read()
            if not ok:
                raise EpisodeError(f"{path}: ends at frame {index}; the episode needs frame {int(wanted.max())}")
            decoded[index] = bgr[:, :, ::-1]
    finally:
        capture.release()
    return np.stack([decoded[i] for i in wanted]).astype(np.uint8)


def read_lerobot_episode(root: str | Path, episode_index: int = 0) -> dict:
    """-> {prompt, fps, state [T, S], action [T, A], time_s [T], videos {key: [T, h, w, 3]}, action_names}.
    A field the layout needs and the files lack is an EpisodeError naming it."""
    try:
        return _read(Path(root), episode_index)
    except KeyError as exc:
        raise EpisodeError(f"{root}: not the LeRobotDataset v3 layout: no field {exc} where episode "
                           f"{episode_index} needs it") from exc


def _read(root: Path, episode_index: int) -> dict:
    info = _info(root)
    pq = require("pyarrow.parquet", "lerobot", _PURPOSE)
    episode = _episode_row(root, episode_index)
    data_path = root / info["data_path"].format(chunk_index=int(episode["data/chunk_index"]),
                                                file_index=int(episode["data/file_index"]))
    try:
        table = pq.read_table(data_path)
    except OSError as exc:
        raise EpisodeError(f"{data_path}: cannot read the episode's frames: {exc}") from exc
    mask = _column(table, "episode_index", str(data_path)) == episode_index
    table = table.filter(mask)
    if table.num_rows == 0:
        raise EpisodeError(f"{data_path}: no rows of episode {episode_index}")
    time_s = _column(table, "timestamp", str(data_path))
    video_keys = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
    if not video_keys:
        raise EpisodeError(f"{root / INFO_PATH}: no video features; replay needs the camera images")
    tasks = episode.get("tasks") or []
    names = info["features"].get(ACTION_KEY, {}).get("names")
    return {"prompt": str(tasks[0]) if tasks else None, "fps": float(info["fps"]), "time_s": time_s,
            "state": _column(table, STATE_KEY, str(data_path)), "action": _column(table, ACTION_KEY, str(data_path)),
            "videos": {k: _frames(root, info, episode, k, time_s) for k in video_keys},
            "action_names": list(names) if isinstance(names, list) else None}
