"""The YAML form of an observation map, for robots other than the presets (docs/serving.md, "Map files"):

    images_in: images        # optional: the images sit in this nested dict; absent: top-level keys
    layout: auto             # optional: auto (HWC, or CHW when the first axis is 3) or chw
    prompt_key: prompt       # optional
    cameras:                 # observation key -> the bundle camera it feeds (null: accepted and unused)
      top: base_0_rgb
      wrist: left_wrist_0_rgb
    optional: [wrist]        # optional: camera keys that may be absent (fed masked); the others are required
    state:                   # observation keys concatenated in this order into the robot state, with lengths
      - joints: 6
      - gripper: 1
    adapt_to_pi: false       # optional: openpi's ALOHA joint-space conversion (a 14-D ALOHA state and actions)

or a preset with its conversion switched:

    preset: aloha
    adapt_to_pi: false
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from pi0edge.errors import ConfigError
from pi0edge.yaml_io import load_yaml

from .obs_map import LAYOUTS, PRESETS, CameraKey, ObsMap, StatePart, bundle_map

MAP_KEYS = ("images_in", "layout", "prompt_key", "cameras", "optional", "state", "adapt_to_pi")
PRESET_KEYS = ("preset", "adapt_to_pi")  # a file naming a preset switches its conversion, nothing else


def load_obs_map(path: Path) -> ObsMap:
    """Read and check a map file; ConfigError naming the file and the field at fault."""
    try:
        doc = load_yaml(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the observation map: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {list(MAP_KEYS)}")
    adapt_to_pi = doc.get("adapt_to_pi", False)
    if not isinstance(adapt_to_pi, bool):
        raise ConfigError(f"{path}: adapt_to_pi must be true or false, got {adapt_to_pi!r}")
    if "preset" in doc:
        return _preset(doc, path)
    unknown = sorted(str(k) for k in doc if k not in MAP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {list(MAP_KEYS)}, or {list(PRESET_KEYS)}")
    cameras = _mapping(doc, "cameras", path)
    optional = doc.get("optional", [])
    if not isinstance(optional, list) or any(k not in cameras for k in optional):
        raise ConfigError(f"{path}: optional must be a list of keys of cameras ({list(cameras)}), got {optional!r}")
    for key, camera in cameras.items():
        if not isinstance(key, str) or not (camera is None or isinstance(camera, str)):
            raise ConfigError(f"{path}: cameras.{key}: expected a bundle camera name or null, got {camera!r}")
    layout = doc.get("layout", "auto")
    if layout not in LAYOUTS:
        raise ConfigError(f"{path}: layout must be one of {list(LAYOUTS)}, got {layout!r}")
    images_in = doc.get("images_in")
    prompt_key = doc.get("prompt_key", "prompt")
    for field, value in (("images_in", images_in), ("prompt_key", prompt_key)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{path}: {field} must be a non-empty string, got {value!r}")
    return ObsMap(path.name, cameras=tuple(CameraKey(k, c, required=k not in optional) for k, c in cameras.items()),
                  state=_state(doc, path), images_in=images_in, layout=layout, prompt_key=prompt_key,
                  adapt_to_pi=adapt_to_pi)


def _preset(doc: dict, path: Path) -> ObsMap:
    unknown = sorted(str(k) for k in doc if k not in PRESET_KEYS)
    if unknown:
        raise ConfigError(f"{path}: with `preset`, only {list(PRESET_KEYS)} are allowed, got also {unknown}; write the "
                          "whole map (cameras, state, ...) to change more")
    name = doc["preset"]
    if name not in PRESETS:
        raise ConfigError(f"{path}: preset must be one of {sorted(PRESETS)}, got {name!r}")
    return replace(PRESETS[name], name=f"{path.name} ({name})",
                   adapt_to_pi=doc.get("adapt_to_pi", PRESETS[name].adapt_to_pi))


def _mapping(doc: dict, field: str, path: Path) -> dict:
    value = doc.get(field)
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{path}: {field} must be a non-empty mapping, got {value!r}")
    return value


def _state(doc: dict, path: Path) -> tuple[StatePart, ...]:
    parts = doc.get("state")
    if not isinstance(parts, list) or not parts:
        raise ConfigError(f"{path}: state must be a non-empty list of `- key: length`, got {parts!r}")
    out = []
    for i, part in enumerate(parts):
        if not (isinstance(part, dict) and len(part) == 1):
            raise ConfigError(f"{path}: state[{i}] must be one `key: length` pair, got {part!r}")
        (key, dim), = part.items()
        if not isinstance(key, str) or isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"{path}: state[{i}] ({key!r}): the length must be an integer >= 1, got {dim!r}")
        out.append(StatePart(key, dim))
    return tuple(out)


def resolve_obs_map(spec: str | None, camera_names: tuple[str, ...], robot_state_dim: int,
                    robot_action_dim: int) -> ObsMap:
    """--obs-map's value (a preset name, a .yaml map file, or None: the bundle's own names) -> a map checked
    against the bundle."""
    if spec is None:
        obs_map = bundle_map(tuple(camera_names))
    elif spec in PRESETS:
        obs_map = PRESETS[spec]
    elif spec.endswith((".yaml", ".yml")):
        obs_map = load_obs_map(Path(spec))
    else:
        raise ConfigError(f"--obs-map {spec!r}: expected one of {sorted(PRESETS)} or a .yaml map file")
    return obs_map.bind(tuple(camera_names), robot_state_dim, robot_action_dim)
