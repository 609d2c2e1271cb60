"""Reading an episode: the streamed file that recording.py writes (version 2), or a version 1 `.npz`.

A streamed file whose run did not end cleanly (crash, power loss, disk full) is truncated: its last
record is cut short or its end record is missing. `load_episode` keeps every complete record, sets
`Episode.truncated` to a message naming the file and how much is intact, and logs it; the intact
part summarises and replays like a whole episode.
"""

from __future__ import annotations

import io
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pi0edge.text import shorten

from .errors import EpisodeError

log = logging.getLogger(__name__)

EPISODE_FORMAT = "pi0edge-episode"
EPISODE_VERSION = 2
EPISODE_MAGIC = b"PI0EDGE-EPISODE\n"
RECORD_LENGTH = "<Q"  # each record: its byte length, then an .npz
NPZ_VERSION = 1  # the whole-run .npz that earlier versions wrote at the end
REQUIRED = ("tick_command", "tick_status", "tick_late_ms", "infer_latency_ms", "infer_accepted")


@dataclass(frozen=True)
class Episode:
    path: Path
    meta: dict
    arrays: dict
    truncated: str | None = None  # why only part of the run is here, and how much; None: complete

    @property
    def rate_hz(self) -> float:
        return float(self.meta["rate_hz"])

    @property
    def commands(self) -> np.ndarray:
        return self.arrays["tick_command"]

    @property
    def ticks(self) -> int:
        return int(self.arrays["tick_command"].shape[0])

    def summary(self) -> str:
        a, m = self.arrays, self.meta
        lines = [f"episode {self.path}"]
        if self.truncated:
            lines.append(f"  TRUNCATED: {self.truncated}")
        prompt = shorten(m["prompt"]) if isinstance(m.get("prompt"), str) else repr(m.get("prompt"))
        lines.append(f"  prompt {prompt}, {self.ticks} ticks at {self.rate_hz:g} Hz "
                     f"({self.ticks / self.rate_hz:.1f} s), strategy {m.get('strategy')}, joints {m.get('joints')}")
        lat = a["infer_latency_ms"]
        if lat.size:
            lines.append(f"  inferences {lat.size} ({int(a['infer_accepted'].sum())} accepted), latency ms "
                         f"p50 {np.percentile(lat, 50):.1f} p99 {np.percentile(lat, 99):.1f}")
        statuses, counts = np.unique(a["tick_status"], return_counts=True)
        lines.append("  ticks by status: " + ", ".join(f"{s} {c}" for s, c in zip(statuses, counts, strict=True)))
        late = a["tick_late_ms"]
        if late.size:
            lines.append(f"  late ticks {int((late > 0).sum())}, worst {late.max():.2f} ms")
        cmd = a["tick_command"]
        if cmd.size:
            lines.append(f"  command range min {np.round(cmd.min(0), 3).tolist()} "
                         f"max {np.round(cmd.max(0), 3).tolist()}")
        for key in (k for k in a if k.startswith("frames_")):
            lines.append(f"  {key[len('frames_'):]}: {a[key].shape[0]} frames {a[key].shape[1:]}")
        for event in m.get("events", []):
            lines.append(f"  event tick {event['tick']}: {event['kind']}: {event['reason']}")
        return "\n".join(lines)


def load_episode(path: str | Path) -> Episode:
    """Read an episode file; errors name the file. A truncated streamed episode loads its intact part."""
    path = Path(path)
    if not path.is_file():
        raise EpisodeError(f"{path}: episode file does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EpisodeError(f"{path}: cannot read the episode: {exc}") from exc
    if data.startswith(EPISODE_MAGIC):
        meta, arrays, truncated = _read_stream(path, data)
    else:
        (meta, arrays), truncated = _read_npz(path, data), None
    if meta.get("format") != EPISODE_FORMAT:
        raise EpisodeError(f"{path}: format {meta.get('format')!r}, expected {EPISODE_FORMAT!r}")
    for key in REQUIRED:
        if key not in arrays:
            raise EpisodeError(f"{path}: missing array {key!r}")
    if truncated:
        log.warning("%s", truncated)
    return Episode(path, meta, arrays, truncated)


def _read_npz(path: Path, data: bytes) -> tuple[dict, dict]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise EpisodeError(f"{path}: not a pi0edge episode (neither a streamed episode nor a readable .npz): "
                           f"{exc}") from exc
    if "meta" not in arrays:
        raise EpisodeError(f"{path}: no meta entry; not a pi0edge episode")
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("version") != NPZ_VERSION:
        raise EpisodeError(f"{path}: episode version {meta.get('version')!r}, this pi0edge reads {NPZ_VERSION} "
                           f"(.npz) and {EPISODE_VERSION} (streamed)")
    return meta, arrays


def _records(data: bytes):
    """Yield (offset, record arrays) for each complete record; then (offset, None) at a cut one."""
    offset, header = len(EPISODE_MAGIC), struct.calcsize(RECORD_LENGTH)
    while offset < len(data):
        if offset + header > len(data):
            yield offset, None
            return
        (length,) = struct.unpack_from(RECORD_LENGTH, data, offset)
        body = data[offset + header:offset + header + length]
        try:
            if len(body) < length:
                raise ValueError("cut short")
            with np.load(io.BytesIO(body), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError):
            yield offset, None
            return
        yield offset, arrays
        offset += header + length


def _read_stream(path: Path, data: bytes) -> tuple[dict, dict, str | None]:
    meta, parts, end, cut_at = None, [], None, None
    for offset, record in _records(data):
        if record is None:
            cut_at = offset
            break
        kind = str(record.pop("record", ""))
        if kind == "start" and meta is None:
            meta = json.loads(str(record["meta"]))
        elif kind == "data" and meta is not None:
            parts.append(record)
        elif kind == "end" and meta is not None:
            end = json.loads(str(record["meta"]))
    if meta is None:
        raise EpisodeError(f"{path}: the episode's start record is missing or cut short; nothing to read "
                           f"({len(data)} bytes)")
    if meta.get("version") != EPISODE_VERSION:
        raise EpisodeError(f"{path}: episode version {meta.get('version')!r}, this pi0edge reads "
                           f"{EPISODE_VERSION} (streamed) and {NPZ_VERSION} (.npz)")
    arrays = _concatenate(parts or [{k: np.zeros(0) for k in REQUIRED}])
    truncated = None
    if end is None:
        ticks = arrays["tick_command"].shape[0]
        how = f"a record at byte {cut_at} of {len(data)} is cut short" if cut_at is not None else "no end record"
        truncated = (f"{path} is truncated ({how}: the run did not end cleanly); the intact part is "
                     f"{ticks} ticks ({ticks / float(meta['rate_hz']):.1f} s) in {len(parts)} data record"
                     f"{'' if len(parts) == 1 else 's'}, "
                     "without the run's events")
    else:
        meta = {**meta, **end}
    return meta, arrays, truncated


def _concatenate(parts: list[dict]) -> dict[str, np.ndarray]:
    """Join the data records' arrays along their first axis (ticks or inferences)."""
    arrays: dict[str, np.ndarray] = {}
    for key in sorted({k for part in parts for k in part}):
        pieces = [part[key] for part in parts if key in part]
        filled = [p for p in pieces if p.size] or pieces[:1]  # an empty second has shapes without dims
        if key == "infer_actions":
            filled = _pad_to_one_shape(filled)
        arrays[key] = np.concatenate(filled)
    return arrays


def _pad_to_one_shape(chunks: list[np.ndarray]) -> list[np.ndarray]:
    shape = max(c.shape[1:] for c in chunks)
    return [c if c.shape[1:] == shape else np.full((c.shape[0], *shape), np.nan, np.float32) for c in chunks]
