"""`pi0edge replay --through BUNDLE EPISODE`: a recorded episode's frames and states through the deployed
pipeline, the policy's actions against the recorded ones per action dim (docs/control_loop.md, "Replay
through a bundle").

Each sample is what the loop hands the policy (loop.py, `_observation`): the images keyed by the bundle's
camera names at their recorded size, the state vector in the policy's state dims, the prompt; the
policy's own preprocessing (resize-with-pad, tokenize, normalize) runs inside `infer`, as on the robot.
The first row of each chunk is compared with the recorded action for that sample:

- a pi0edge episode (`pi0edge run --record`, with frames): one sample per recorded inference; the
  recorded action is the first row of the chunk the robot's policy returned then. The same bundle with
  the same seed reproduces it; another bundle (quantized, another backend) shows its drift.
- a LeRobotDataset v3 episode (lerobot_v3.py): one sample per frame; the recorded action is the
  dataset's `action` at that frame (the demonstration the policy was trained to imitate).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pi0edge.errors import ConfigError
from pi0edge.runtime.types import Observation

from .errors import EpisodeError
from .recording import Episode

log = logging.getLogger(__name__)

FRAMES_PREFIX = "frames_"


@dataclass(frozen=True)
class ReplaySamples:
    """time_s [N]; images: bundle camera -> [N, h, w, 3] uint8; state [N, S]; recorded [N, A] (NaN: none)."""

    source: str
    prompt: str
    time_s: np.ndarray
    images: dict[str, np.ndarray]
    state: np.ndarray
    recorded: np.ndarray
    action_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.time_s.shape[0])


def samples_from_episode(episode: Episode, prompt: str | None = None) -> ReplaySamples:
    a, meta = episode.arrays, episode.meta
    images = {key[len(FRAMES_PREFIX):]: a[key] for key in a if key.startswith(FRAMES_PREFIX)}
    if not images:
        raise EpisodeError(f"{episode.path}: recorded without frames (recording.frames: false); replay through a "
                           "bundle needs the images each inference saw")
    actions = a["infer_actions"]
    if actions.ndim != 3 or actions.shape[0] == 0:
        raise EpisodeError(f"{episode.path}: no recorded chunks to compare with")
    names = [f"action[{i}]" for i in range(actions.shape[2])]
    for joint, index in zip(meta.get("joints", []), meta.get("action_index", []), strict=False):
        if index < len(names):
            names[index] = str(joint)
    count = min(actions.shape[0], *(v.shape[0] for v in images.values()))
    time_s = a["infer_obs_tick"][:count] / episode.rate_hz
    return ReplaySamples(str(episode.path), prompt or str(meta["prompt"]), time_s,
                         {k: v[:count] for k, v in images.items()}, a["infer_state"][:count].astype(np.float32),
                         actions[:count, 0].astype(np.float64), tuple(names))


def samples_from_lerobot(root: str, policy, episode_index: int = 0, cameras: dict[str, str] | None = None,
                         prompt: str | None = None) -> ReplaySamples:
    """cameras: dataset video key -> bundle camera; default: the video keys in order onto the bundle's cameras."""
    from .lerobot_v3 import read_lerobot_episode

    ep = read_lerobot_episode(root, episode_index)
    keys, bundle_cameras = list(ep["videos"]), list(policy.camera_names)
    if cameras is None:
        cameras = dict(zip(keys, bundle_cameras, strict=False))
        log.info("cameras by position (--camera KEY=NAME to choose): %s", cameras)
    unknown = {k: v for k, v in cameras.items() if k not in ep["videos"] or v not in bundle_cameras}
    if unknown:
        raise ConfigError(f"--camera {unknown}: dataset videos are {keys}, the bundle's cameras {bundle_cameras}")
    for key, dim in (("state", policy.robot_state_dim), ("action", policy.robot_action_dim)):
        if ep[key].shape[1] != dim:
            raise ConfigError(f"{root} episode {episode_index}: {key} has {ep[key].shape[1]} dims, the bundle's "
                              f"robot_{key}_dim is {dim}")
    prompt = prompt or ep["prompt"]
    if not prompt:
        raise ConfigError(f"{root} episode {episode_index}: no task recorded; give --prompt")
    names = ep["action_names"] or [f"action[{i}]" for i in range(ep["action"].shape[1])]
    return ReplaySamples(f"{root} episode {episode_index}", prompt, ep["time_s"],
                         {cameras[k]: v for k, v in ep["videos"].items() if k in cameras},
                         ep["state"].astype(np.float32), ep["action"], tuple(str(n) for n in names))


@dataclass(frozen=True)
class ReplayThroughResult:
    samples: ReplaySamples
    predicted: np.ndarray  # [N, A] the first row of each chunk, robot units

    def per_dim(self) -> list[dict]:
        """Per action dim over the samples with a recorded action: mae, max (|error|), correlation (NaN when
        either side is constant)."""
        rows = []
        for j, name in enumerate(self.samples.action_names):
            rec, pred = self.samples.recorded[:, j], self.predicted[:, j]
            ok = np.isfinite(rec) & np.isfinite(pred)
            err = np.abs(pred[ok] - rec[ok])
            spread = ok.sum() > 1 and np.std(rec[ok]) > 0 and np.std(pred[ok]) > 0
            corr = float(np.corrcoef(rec[ok], pred[ok])[0, 1]) if spread else float("nan")
            rows.append({"dim": name, "samples": int(ok.sum()), "mae": float(err.mean()) if err.size else float("nan"),
                         "max": float(err.max()) if err.size else float("nan"), "correlation": corr})
        return rows

    def table(self) -> str:
        lines = [f"replay through the bundle: {self.samples.source}, {len(self.samples)} samples, "
                 f"prompt {self.samples.prompt!r}",
                 f"{'action dim':<18}{'samples':>8}{'MAE':>12}{'max':>12}{'corr':>8}"]
        for r in self.per_dim():
            lines.append(f"{r['dim']:<18}{r['samples']:>8d}{r['mae']:>12.5f}{r['max']:>12.5f}{r['correlation']:>8.3f}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        def clean(x):
            return x if not isinstance(x, float) or np.isfinite(x) else None

        return {"source": self.samples.source, "prompt": self.samples.prompt, "samples": len(self.samples),
                "per_dim": [{k: clean(v) for k, v in r.items()} for r in self.per_dim()]}

    def plot(self, path: str | Path) -> None:
        """One panel per action dim: recorded and policy over time (matplotlib: `pip install 'pi0edge[plot]'`)."""
        from pi0edge.errors import require

        require("matplotlib", "plot", "the replay plot (--plot)").use("Agg")  # files only, no display
        import matplotlib.pyplot as plt

        from pi0edge.atomic import write_bytes_atomic

        names = self.samples.action_names
        fig, axes = plt.subplots(len(names), 1, figsize=(8, 1.6 * len(names) + 0.6), sharex=True, squeeze=False)
        for j, ax in enumerate(axes[:, 0]):
            ax.plot(self.samples.time_s, self.samples.recorded[:, j], label="recorded", lw=1.2)
            ax.plot(self.samples.time_s, self.predicted[:, j], label="policy", lw=1.0, ls="--")
            ax.set_ylabel(names[j], fontsize=8)
        axes[0, 0].legend(loc="upper right", fontsize=8)
        axes[-1, 0].set_xlabel("time (s)")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        write_bytes_atomic(Path(path), buffer.getvalue())


def replay_through(policy, samples: ReplaySamples, stride: int = 1) -> ReplayThroughResult:
    """Run `policy.infer` on every `stride`-th sample, in order (a seeded policy draws its noise in that order)."""
    if stride < 1:
        raise ConfigError(f"--stride: must be >= 1, got {stride}")
    picked = np.arange(0, len(samples), stride)
    kept = ReplaySamples(samples.source, samples.prompt, samples.time_s[picked],
                         {k: v[picked] for k, v in samples.images.items()}, samples.state[picked],
                         samples.recorded[picked], samples.action_names)
    predicted = np.full(kept.recorded.shape, np.nan)
    for i in range(len(kept)):
        observation = Observation(images={k: v[i] for k, v in kept.images.items()}, state=kept.state[i],
                                  prompt=kept.prompt)
        row = np.asarray(policy.infer(observation).actions, np.float64)[0]
        predicted[i, :row.shape[0]] = row[:predicted.shape[1]]
    return ReplayThroughResult(kept, predicted)
