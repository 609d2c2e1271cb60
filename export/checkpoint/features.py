"""What a checkpoint says about the data it was trained on, beyond sizes: each camera's image size, and the
names of the state and action dims, for the bundle's `deployment` record (core/deployment.py).

What each layout provides (docs/export.md, "What the bundle records for deployment"):
- LeRobot config.json `input_features` / `output_features`: each camera (`observation.images.<name>`) with
  its training shape [C, H, W], and the state and action lengths. A feature's `names` (a list, or a mapping
  to one list as in a LeRobot dataset's meta/info.json) is read when present; `save_pretrained` leaves it out.
- openpi: `assets/<asset_id>/norm_stats.json` gives the lengths only (keys `state` / `actions`).
Neither records units: they stay unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGE_FEATURE_PREFIX = "observation.images."


@dataclass(frozen=True)
class TrainedFeatures:
    camera_hw: dict[str, tuple[int, int]] = field(default_factory=dict)  # camera -> (height, width)
    state_names: tuple[str, ...] | None = None
    action_names: tuple[str, ...] | None = None


def _names(feature) -> tuple[str, ...] | None:
    names = feature.get("names") if isinstance(feature, dict) else None
    if isinstance(names, dict) and len(names) == 1:  # LeRobot datasets: {"motors": [...]}
        names = next(iter(names.values()))
    if isinstance(names, list) and names and all(isinstance(n, str) and n for n in names):
        return tuple(names)
    return None


def trained_features(raw: dict) -> TrainedFeatures:
    """The features config.json records (LeRobot); empty for a config without them (openpi)."""
    inputs = raw.get("input_features") if isinstance(raw.get("input_features"), dict) else {}
    outputs = raw.get("output_features") if isinstance(raw.get("output_features"), dict) else {}
    camera_hw = {}
    for key, feature in inputs.items():
        shape = feature.get("shape") if isinstance(feature, dict) else None
        if key.startswith(IMAGE_FEATURE_PREFIX) and isinstance(shape, list) and len(shape) == 3 and all(
                isinstance(v, int) and v > 0 for v in shape):
            camera_hw[key.removeprefix(IMAGE_FEATURE_PREFIX)] = (shape[1], shape[2])  # [C, H, W]
    return TrainedFeatures(camera_hw, _names(inputs.get("observation.state")), _names(outputs.get("action")))
