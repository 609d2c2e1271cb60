"""What a policy was trained with, as the bundle records it (bundle.yaml `deployment`), and its hashes.

Export writes it from the checkpoint (docs/export.md, "What the bundle records for deployment"); `pi0edge
check` compares a robot YAML and the live devices with it (docs/control_loop.md, "Binding the robot to the
policy"). A field the checkpoint does not hold is None: unknown, never guessed. A bundle written before this
section existed has no record at all (`Manifest.deployment` is None) and loads as before.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pi0edge.errors import BundleError
from pi0edge.normalization import NormStats

# The text the tokenizer encodes (runtime/preprocess.py), by model type: what the policy was trained to read.
PROMPT_FORMATS = {"pi0": "<bos>{prompt}\\n", "pi05": "<bos>Task: {prompt}, State: {state_bins};\\nAction: "}


def stats_sha256(stats: NormStats) -> str:
    """sha256 of the statistics as numbers (canonical JSON of `NormStats.to_dict()`): the same for the same
    statistics whatever file or YAML spelling they came from, different for any other dataset's."""
    text = json.dumps(stats.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _names(value, field: str, dim: int) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != dim or not all(isinstance(v, str) and v for v in value):
        raise BundleError(f"field '{field}' must be a list of {dim} non-empty strings or null, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class VectorRecord:
    """A robot vector (state or action): its length, and per dim its name and unit where the checkpoint has them."""

    dim: int
    names: tuple[str, ...] | None = None
    units: tuple[str, ...] | None = None

    @classmethod
    def from_document(cls, d, field: str) -> VectorRecord:
        if not isinstance(d, dict) or not isinstance(d.get("dim"), int) or d["dim"] < 1:
            raise BundleError(f"field '{field}' must be a mapping with an integer dim >= 1, got {d!r}")
        return cls(d["dim"], _names(d.get("names"), f"{field}.names", d["dim"]),
                   _names(d.get("units"), f"{field}.units", d["dim"]))

    def to_document(self) -> dict:
        return {"dim": self.dim, "names": None if self.names is None else list(self.names),
                "units": None if self.units is None else list(self.units)}


@dataclass(frozen=True)
class CameraRecord:
    """A policy camera in input order; trained_hw: the (height, width) of its training images, where known."""

    name: str
    trained_hw: tuple[int, int] | None = None

    def to_document(self) -> dict:
        return {"name": self.name, "trained_hw": None if self.trained_hw is None else list(self.trained_hw)}


@dataclass(frozen=True)
class DeploymentRecord:
    cameras: tuple[CameraRecord, ...]
    state: VectorRecord
    action: VectorRecord
    stats_sha256: str
    tokenizer_sha256: str
    prompt_format: str

    def to_document(self) -> dict:
        return {"cameras": [c.to_document() for c in self.cameras], "state": self.state.to_document(),
                "action": self.action.to_document(), "stats_sha256": self.stats_sha256,
                "tokenizer_sha256": self.tokenizer_sha256, "prompt_format": self.prompt_format}

    @classmethod
    def from_bundle(cls, d, path) -> DeploymentRecord | None:
        """bundle.yaml's `deployment` section; None for a bundle written before it existed (`pi0edge check`
        reports its fields as unknown). Errors name the file."""
        if d is None:
            return None
        try:
            return cls.from_document(d)
        except BundleError as exc:
            raise BundleError(f"{path}: {exc}") from exc

    @classmethod
    def from_document(cls, d) -> DeploymentRecord:
        if not isinstance(d, dict):
            raise BundleError(f"field 'deployment' must be a mapping, got {d!r}")
        cameras = []
        for i, cam in enumerate(d.get("cameras") or []):
            hw = cam.get("trained_hw") if isinstance(cam, dict) else None
            if not isinstance(cam, dict) or not isinstance(cam.get("name"), str) or (hw is not None and not (
                    isinstance(hw, list) and len(hw) == 2 and all(isinstance(v, int) and v > 0 for v in hw))):
                raise BundleError(f"field 'deployment.cameras[{i}]' must be {{name, trained_hw: [h, w] or null}}, "
                                  f"got {cam!r}")
            cameras.append(CameraRecord(cam["name"], None if hw is None else (hw[0], hw[1])))
        for key in ("stats_sha256", "tokenizer_sha256", "prompt_format"):
            if not isinstance(d.get(key), str):
                raise BundleError(f"field 'deployment.{key}' must be a string, got {d.get(key)!r}")
        return cls(tuple(cameras), VectorRecord.from_document(d.get("state"), "deployment.state"),
                   VectorRecord.from_document(d.get("action"), "deployment.action"), d["stats_sha256"],
                   d["tokenizer_sha256"], d["prompt_format"])
