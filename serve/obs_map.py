"""Observation maps: a client's observation dict -> `pi0edge.runtime.Observation`, checked key by key.

A map names where each camera image and each piece of the state sits in the dict the client sends, and
which of the bundle's cameras each image feeds. The presets follow openpi's input transforms:
- `aloha`: src/openpi/policies/aloha_policy.py (`AlohaInputs`, `make_aloha_example`): an `images` dict of
  CHW uint8 frames; `cam_high` required (base_0_rgb), `cam_left_wrist` / `cam_right_wrist` optional (a missing
  one is fed masked), `cam_low` accepted and unused; `state` [14]; openpi's default `adapt_to_pi` conversion
  of the state in and the actions out (serve/aloha_space.py; a map file turns it off).
- `droid`: src/openpi/policies/droid_policy.py (`DroidInputs`, pi0 / pi0.5 branch): `observation/
  exterior_image_1_left` (base_0_rgb), `observation/wrist_image_left` (left_wrist_0_rgb), the right wrist fed
  masked; state = `observation/joint_position` [7] then `observation/gripper_position` [1].
- `libero`: src/openpi/policies/libero_policy.py (`LiberoInputs`): `observation/image` (base_0_rgb),
  `observation/wrist_image` (left_wrist_0_rgb), the right wrist fed masked; `observation/state` [8].
Images are HWC, or CHW when the first axis is 3 (openpi's `_parse_image`), except ALOHA's, always CHW.
Every map takes `prompt`. Keys the map does not name are refused: a typo must not silently blind the policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from pi0edge.errors import ConfigError, ObservationError
from pi0edge.runtime.types import Observation

from . import aloha_space

LAYOUTS = ("auto", "chw")  # auto: openpi's _parse_image rule; chw: always channels first (ALOHA)
BUNDLE_STATE_DIM = 0  # a StatePart of this length takes the bundle's robot state dim (the default map)


@dataclass(frozen=True)
class CameraKey:
    key: str  # the observation key (inside `images_in` when the map sets it)
    camera: str | None  # the bundle camera it feeds; None: accepted and unused
    required: bool = True


@dataclass(frozen=True)
class StatePart:
    key: str
    dim: int  # its length; the parts are concatenated in order into the robot state


@dataclass(frozen=True)
class ObsMap:
    name: str
    cameras: tuple[CameraKey, ...]
    state: tuple[StatePart, ...]
    images_in: str | None = None  # the images sit in this nested dict (ALOHA, the default map: "images")
    layout: str = "auto"
    prompt_key: str = "prompt"
    adapt_to_pi: bool = False  # openpi's ALOHA joint-space conversion of the state in and the actions out

    @property
    def top_keys(self) -> tuple[str, ...]:
        images = (self.images_in,) if self.images_in else tuple(c.key for c in self.cameras)
        return (*images, *(p.key for p in self.state), self.prompt_key)

    def bind(self, camera_names: tuple[str, ...], robot_state_dim: int, robot_action_dim: int) -> ObsMap:
        """This map checked against a bundle (ConfigError naming the mismatch); BUNDLE_STATE_DIM resolved."""
        unknown = [c.camera for c in self.cameras if c.camera is not None and c.camera not in camera_names]
        if unknown:
            raise ConfigError(f"observation map {self.name!r} feeds camera(s) {unknown}, which this bundle does not "
                              f"have (its cameras: {list(camera_names)}); write a map file (docs/serving.md)")
        state = tuple(replace(p, dim=robot_state_dim) if p.dim == BUNDLE_STATE_DIM else p for p in self.state)
        total = sum(p.dim for p in state)
        if total != robot_state_dim:
            raise ConfigError(f"observation map {self.name!r} gives a {total}-D state "
                              f"({', '.join(f'{p.key} [{p.dim}]' for p in state)}), this bundle's robot state dim "
                              f"is {robot_state_dim}")
        dims = (robot_state_dim, robot_action_dim)
        if self.adapt_to_pi and dims != (aloha_space.ALOHA_DIM,) * 2:
            raise ConfigError(f"observation map {self.name!r} converts ALOHA's joint space (adapt_to_pi), which "
                              f"needs a 14-D state and actions; this bundle's robot state / action dims are {dims} "
                              "(a map file with `adapt_to_pi: false`)")
        return replace(self, state=state)

    def observation(self, message: object) -> Observation:
        """The client's dict -> Observation; ObservationError naming the key at fault."""
        if not isinstance(message, Mapping):
            raise ObservationError(f"the observation must be a dict, got {type(message).__name__}")
        _refuse_unknown(message, self.top_keys, "observation")
        prompt = message.get(self.prompt_key)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ObservationError(f"observation key {self.prompt_key!r}: expected a non-empty string, got "
                                   f"{type(prompt).__name__ if prompt is not None else 'nothing'}")
        state = np.concatenate([_state_part(message, p) for p in self.state])
        if self.adapt_to_pi:
            state = aloha_space.state_to_pi(state)
        return Observation(images=self._images(message), state=state, prompt=prompt)

    def actions(self, actions: np.ndarray) -> np.ndarray:
        """The policy's [H, robot_action_dim] actions -> what the client gets back."""
        return aloha_space.actions_from_pi(actions) if self.adapt_to_pi else actions

    def _images(self, message: Mapping) -> dict[str, np.ndarray]:
        source, where = message, ""
        if self.images_in:
            source, where = message.get(self.images_in), f"{self.images_in}/"
            if not isinstance(source, Mapping):
                raise ObservationError(f"observation key {self.images_in!r}: expected a dict of camera images, got "
                                       f"{type(source).__name__ if source is not None else 'nothing'}")
            _refuse_unknown(source, tuple(c.key for c in self.cameras), f"observation key {self.images_in!r}")
        images = {}
        for cam in self.cameras:
            if cam.key not in source:
                if cam.required:
                    raise ObservationError(f"observation key {where + cam.key!r} is missing")
                continue
            image = _hwc_image(where + cam.key, source[cam.key], self.layout)
            if cam.camera is not None:
                images[cam.camera] = image
        return images


def _refuse_unknown(message: Mapping, known: tuple[str, ...], what: str) -> None:
    unknown = sorted(str(k) for k in message if k not in known)
    if unknown:
        raise ObservationError(f"{what}: unknown key(s) {unknown}; expected {list(known)}")


def _hwc_image(key: str, image: object, layout: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ObservationError(f"observation key {key!r}: expected a uint8 image array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ObservationError(f"observation key {key!r}: expected dtype uint8, got {image.dtype} (convert with "
                               "openpi_client.image_tools.convert_to_uint8)")
    channels_first = image.ndim == 3 and (image.shape[0] == 3 if layout == "auto" else True)
    if image.ndim != 3 or (image.shape[0] if channels_first else image.shape[-1]) != 3:
        expected = "CxHxW" if layout == "chw" else "HxWx3 or 3xHxW"
        raise ObservationError(f"observation key {key!r}: expected shape {expected} (RGB), got {image.shape}")
    return np.ascontiguousarray(image.transpose(1, 2, 0)) if channels_first else image


def _state_part(message: Mapping, part: StatePart) -> np.ndarray:
    if part.key not in message:
        raise ObservationError(f"observation key {part.key!r} is missing")
    try:
        value = np.asarray(message[part.key])
    except (TypeError, ValueError) as exc:
        raise ObservationError(f"observation key {part.key!r}: not a numeric vector ({exc})") from exc
    if value.dtype.kind not in "fiu":
        raise ObservationError(f"observation key {part.key!r}: expected a numeric vector, got dtype {value.dtype}")
    if value.shape != (part.dim,):
        raise ObservationError(f"observation key {part.key!r}: expected shape ({part.dim},), got {value.shape}")
    value = value.astype(np.float64)
    if not np.isfinite(value).all():
        index = int(np.flatnonzero(~np.isfinite(value))[0])
        raise ObservationError(f"observation key {part.key!r}: element {index} is {value[index]}; must be finite")
    return value


BASE, LEFT_WRIST, RIGHT_WRIST = "base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"  # openpi's model cameras

PRESETS = {
    "aloha": ObsMap("aloha", cameras=(CameraKey("cam_high", BASE), CameraKey("cam_low", None, required=False),
                                      CameraKey("cam_left_wrist", LEFT_WRIST, required=False),
                                      CameraKey("cam_right_wrist", RIGHT_WRIST, required=False)),
                    state=(StatePart("state", aloha_space.ALOHA_DIM),), images_in="images", layout="chw",
                    adapt_to_pi=True),
    "droid": ObsMap("droid", cameras=(CameraKey("observation/exterior_image_1_left", BASE),
                                      CameraKey("observation/wrist_image_left", LEFT_WRIST)),
                    state=(StatePart("observation/joint_position", 7), StatePart("observation/gripper_position", 1))),
    "libero": ObsMap("libero", cameras=(CameraKey("observation/image", BASE),
                                        CameraKey("observation/wrist_image", LEFT_WRIST)),
                     state=(StatePart("observation/state", 8),)),
}


def bundle_map(camera_names: tuple[str, ...]) -> ObsMap:
    """Without --obs-map: an `images` dict keyed by the bundle's camera names (any subset), `state`, `prompt`."""
    return ObsMap("bundle", cameras=tuple(CameraKey(name, name, required=False) for name in camera_names),
                  state=(StatePart("state", BUNDLE_STATE_DIM),), images_in="images")
