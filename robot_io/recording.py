"""Episode recording (what the loop saw and did) and replay.

An episode is one `.npz` (numpy only, no pickle), written once at the end of a run to a temp file in
the same folder and then os.replace()d, so a crash never leaves a half-written episode behind.

Per tick:       tick_time_s, tick_state, tick_target (NaN when none), tick_command, tick_status, tick_late_ms
Per inference:  infer_obs_tick, infer_ready_tick, infer_latency_ms, infer_accepted, infer_state,
                infer_actions [N, H, action_dim] (as the policy returned them, rejected ones included),
                frames_<model camera> [N, h, w, 3] uint8 (the images that inference saw; optional)
meta (JSON):    format, version, rate_hz, prompt, joints, cameras, strategy, config source, events
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EpisodeError

EPISODE_FORMAT = "pi0edge-episode"
EPISODE_VERSION = 1


class EpisodeRecorder:
    def __init__(self, path: str | Path, meta: dict, frames: bool = True):
        self.path = Path(path)
        if self.path.suffix != ".npz":
            raise EpisodeError(f"{self.path}: episodes are .npz files")
        if not self.path.parent.is_dir():
            raise EpisodeError(f"{self.path}: folder {self.path.parent} does not exist")
        self.meta, self.frames = dict(meta), frames
        self._ticks: dict[str, list] = {k: [] for k in ("time_s", "state", "target", "command", "status", "late_ms")}
        self._infer: dict[str, list] = {k: [] for k in ("obs_tick", "ready_tick", "latency_ms", "accepted", "state",
                                                        "actions")}
        self._frames: dict[str, list[np.ndarray]] = {}

    def add_tick(self, time_s: float, state, target, command, status: str, late_ms: float) -> None:
        dof = len(command)
        self._ticks["time_s"].append(time_s)
        self._ticks["state"].append(np.full(dof, np.nan) if state is None else np.asarray(state, np.float64))
        self._ticks["target"].append(np.full(dof, np.nan) if target is None else np.asarray(target, np.float64))
        self._ticks["command"].append(np.asarray(command, np.float64))
        self._ticks["status"].append(status)
        self._ticks["late_ms"].append(late_ms)

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

    def save(self, events: list | None = None) -> Path:
        arrays: dict[str, np.ndarray] = {}
        n_ticks = len(self._ticks["time_s"])
        for key, values in self._ticks.items():
            if key == "status":
                arrays["tick_status"] = np.array(values, dtype="U32")
            elif values and isinstance(values[0], np.ndarray):
                arrays[f"tick_{key}"] = np.stack(values)
            else:
                arrays[f"tick_{key}"] = np.asarray(values, dtype=np.float64)
        shapes = {a.shape for a in self._infer["actions"] if a is not None}
        shape = max(shapes) if shapes else (0, 0)
        actions = [a if a is not None and a.shape == shape else np.full(shape, np.nan, np.float32)
                   for a in self._infer["actions"]]
        arrays["infer_actions"] = np.stack(actions) if actions else np.zeros((0, *shape), np.float32)
        arrays["infer_state"] = np.stack(self._infer["state"]) if self._infer["state"] else np.zeros((0, 0), np.float32)
        for key in ("obs_tick", "ready_tick"):
            arrays[f"infer_{key}"] = np.asarray(self._infer[key], dtype=np.int64)
        arrays["infer_latency_ms"] = np.asarray(self._infer["latency_ms"], dtype=np.float64)
        arrays["infer_accepted"] = np.asarray(self._infer["accepted"], dtype=bool)
        for name, images in self._frames.items():
            arrays[f"frames_{name}"] = np.stack(images).astype(np.uint8)
        meta = {**self.meta, "format": EPISODE_FORMAT, "version": EPISODE_VERSION, "ticks": n_ticks,
                "saved_unix_s": time.time(), "events": [
                    {"tick": e.tick, "kind": e.kind, "reason": e.reason} for e in (events or [])]}
        arrays["meta"] = np.array(json.dumps(meta))
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # atomic: readers see the old file or the complete new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.path


@dataclass(frozen=True)
class Episode:
    path: Path
    meta: dict
    arrays: dict

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
        lines = [f"episode {self.path}",
                 f"  prompt {m.get('prompt')!r}, {self.ticks} ticks at {self.rate_hz:g} Hz "
                 f"({self.ticks / self.rate_hz:.1f} s), strategy {m.get('strategy')}, joints {m.get('joints')}"]
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
        frames = [k for k in a if k.startswith("frames_")]
        for key in frames:
            lines.append(f"  {key[len('frames_'):]}: {a[key].shape[0]} frames {a[key].shape[1:]}")
        for event in m.get("events", []):
            lines.append(f"  event tick {event['tick']}: {event['kind']}: {event['reason']}")
        return "\n".join(lines)


def load_episode(path: str | Path) -> Episode:
    path = Path(path)
    if not path.is_file():
        raise EpisodeError(f"{path}: episode file does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise EpisodeError(f"{path}: not a readable .npz episode: {exc}") from exc
    if "meta" not in arrays:
        raise EpisodeError(f"{path}: no meta entry; not a pi0edge episode")
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != EPISODE_FORMAT:
        raise EpisodeError(f"{path}: format {meta.get('format')!r}, expected {EPISODE_FORMAT!r}")
    if meta.get("version") != EPISODE_VERSION:
        raise EpisodeError(f"{path}: episode version {meta.get('version')!r}, this pi0edge reads {EPISODE_VERSION}")
    for key in ("tick_command", "tick_status", "tick_late_ms", "infer_latency_ms", "infer_accepted"):
        if key not in arrays:
            raise EpisodeError(f"{path}: missing array {key!r}")
    return Episode(path, meta, arrays)
