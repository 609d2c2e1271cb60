"""Episode recording (what the loop saw and did), written as the run goes.

An episode file (version 2, any name; `.episode` by convention) is a magic line followed by records,
each an 8-byte little-endian length and an `.npz` (numpy only, no pickle):

    start   meta (JSON): format, version, rate_hz, prompt, joints, cameras, strategy, config source
    data    about one second of the run (FLUSH_EVERY_S): the arrays below, for those ticks/inferences
    end     meta (JSON): ticks, saved_unix_s, events

Per tick:       tick_time_s, tick_state, tick_target (NaN when none), tick_command, tick_status, tick_late_ms
Per inference:  infer_obs_tick, infer_ready_tick, infer_latency_ms, infer_accepted, infer_state,
                infer_actions [N, H, action_dim] (as the policy returned them, rejected ones included),
                frames_<model camera> [N, h, w, 3] uint8 (the images that inference saw; optional)

Records are appended and fsynced by a writer thread (the loop thread only hands over its lists), so a
crash loses at most the last second. The file cannot be written atomically as a whole (it grows during
the run); instead a reader (episode_file.py) keeps every complete record and says what was cut.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import struct
import threading
import time
from pathlib import Path

import numpy as np

from .episode_file import (
    EPISODE_FORMAT,
    EPISODE_MAGIC,
    EPISODE_VERSION,
    RECORD_LENGTH,
    Episode,
    load_episode,
)
from .errors import EpisodeError

__all__ = ["EPISODE_FORMAT", "EPISODE_VERSION", "Episode", "EpisodeRecorder", "load_episode"]

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 1.0  # a crash loses at most this much of the run (plus the record being written)
TICK_KEYS = ("time_s", "state", "target", "command", "status", "late_ms")
INFER_KEYS = ("obs_tick", "ready_tick", "latency_ms", "accepted", "state", "actions")


class EpisodeRecorder:
    """Opens `path` for writing at once (so a path that cannot be written fails before the run starts),
    then appends a data record about every FLUSH_EVERY_S of ticks; save() writes the end record."""

    def __init__(self, path: str | Path, meta: dict, frames: bool = True, flush_every_s: float = FLUSH_EVERY_S):
        self.path = Path(path)
        self.meta, self.frames, self.flush_every_s = dict(meta), frames, flush_every_s
        try:
            self._file = open(self.path, "wb")  # noqa: SIM115 - kept open for the run, closed by save()
        except OSError as exc:
            raise EpisodeError(f"{self.path}: cannot write the episode here ({exc.strerror}); choose a path in "
                               "an existing, writable folder") from exc
        self._file.write(EPISODE_MAGIC)
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_records, name="episode-writer", daemon=True)
        self._writer.start()
        self._put("start", {"meta": _meta_array({**self.meta, "format": EPISODE_FORMAT,
                                                  "version": EPISODE_VERSION})})
        self._ticks_written = 0
        self._new_buffers()

    def _new_buffers(self) -> None:
        self._ticks: dict[str, list] = {k: [] for k in TICK_KEYS}
        self._infer: dict[str, list] = {k: [] for k in INFER_KEYS}
        self._frames: dict[str, list[np.ndarray]] = {}
        self._flush_at_s: float | None = None

    def add_tick(self, time_s: float, state, target, command, status: str, late_ms: float) -> None:
        dof = len(command)
        self._ticks["time_s"].append(time_s)
        self._ticks["state"].append(np.full(dof, np.nan) if state is None else np.asarray(state, np.float64))
        self._ticks["target"].append(np.full(dof, np.nan) if target is None else np.asarray(target, np.float64))
        self._ticks["command"].append(np.asarray(command, np.float64))
        self._ticks["status"].append(status)
        self._ticks["late_ms"].append(late_ms)
        if self._flush_at_s is None:
            self._flush_at_s = time_s + self.flush_every_s
        elif time_s >= self._flush_at_s:
            self.flush()

    def add_inference(self, obs_tick: int, ready_tick: int, latency_ms: float, accepted: bool, observation,
                      actions) -> None:
        self._infer["obs_tick"].append(obs_tick)
        self._infer["ready_tick"].append(ready_tick)
        self._infer["latency_ms"].append(latency_ms)
        self._infer["accepted"].append(accepted)
        self._infer["state"].append(np.asarray(observation.state, np.float32))
        acts = np.asarray(actions, np.float32) if actions is not None else None
        if acts is not None and acts.ndim == 3:
            acts = acts[0]
        self._infer["actions"].append(acts)
        if self.frames:
            for name, image in observation.images.items():
                self._frames.setdefault(name, []).append(image)

    def flush(self) -> None:
        """Hand what was added since the last flush to the writer thread (the arrays are built there)."""
        if self._ticks["time_s"] or self._infer["obs_tick"]:
            self._ticks_written += len(self._ticks["time_s"])
            self._queue.put(("data", (self._ticks, self._infer, self._frames)))
        self._new_buffers()

    def sync(self) -> None:
        """Flush and wait until everything added so far is on disk (fsynced)."""
        self.flush()
        self._queue.join()

    def save(self, events: list | None = None) -> Path:
        """Flush, write the end record and close. Raises EpisodeError if a write failed during the run."""
        self.flush()
        meta = {**self.meta, "format": EPISODE_FORMAT, "version": EPISODE_VERSION, "ticks": self._ticks_written,
                "saved_unix_s": time.time(),
                "events": [{"tick": e.tick, "kind": e.kind, "reason": e.reason} for e in (events or [])]}
        self._put("end", {"meta": _meta_array(meta)})
        self._queue.put(None)
        self._writer.join()
        self._file.close()
        if self._error is not None:
            raise EpisodeError(f"{self.path}: writing the episode failed ({self._error}); the records before "
                               "the failure are intact") from self._error
        return self.path

    def _put(self, kind: str, arrays: dict) -> None:
        self._queue.put((kind, arrays))

    def _write_records(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if self._error is None:  # after a failed write, later records would follow a cut one: drop them
                    kind, payload = item
                    self._append(kind, _data_arrays(*payload) if kind == "data" else payload)
            except Exception as exc:  # noqa: BLE001 - disk full, I/O error: reported by save()
                self._error = exc
                log.error("episode %s: write failed: %s", self.path, exc)
            finally:
                self._queue.task_done()

    def _append(self, kind: str, arrays: dict) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, record=np.array(kind), **arrays)
        data = buffer.getvalue()
        self._file.write(struct.pack(RECORD_LENGTH, len(data)) + data)
        self._file.flush()
        os.fsync(self._file.fileno())


def _meta_array(meta: dict) -> np.ndarray:
    return np.array(json.dumps(meta))


def _data_arrays(ticks: dict, infer: dict, frames: dict) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for key, values in ticks.items():
        if key == "status":
            arrays["tick_status"] = np.array(values, dtype="U32")
        elif values and isinstance(values[0], np.ndarray):
            arrays[f"tick_{key}"] = np.stack(values)
        else:
            arrays[f"tick_{key}"] = np.asarray(values, dtype=np.float64)
    shapes = {a.shape for a in infer["actions"] if a is not None}
    shape = max(shapes) if shapes else (0, 0)
    actions = [a if a is not None and a.shape == shape else np.full(shape, np.nan, np.float32)
               for a in infer["actions"]]
    arrays["infer_actions"] = np.stack(actions) if actions else np.zeros((0, *shape), np.float32)
    arrays["infer_state"] = np.stack(infer["state"]) if infer["state"] else np.zeros((0, 0), np.float32)
    for key in ("obs_tick", "ready_tick"):
        arrays[f"infer_{key}"] = np.asarray(infer[key], dtype=np.int64)
    arrays["infer_latency_ms"] = np.asarray(infer["latency_ms"], dtype=np.float64)
    arrays["infer_accepted"] = np.asarray(infer["accepted"], dtype=bool)
    for name, images in frames.items():
        arrays[f"frames_{name}"] = np.stack(images).astype(np.uint8)
    return arrays
