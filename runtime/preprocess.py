"""Observation -> graph inputs and graph output -> robot actions, in numpy only (never torch).

Each transform is a small frozen dataclass with `__call__` (small composable transforms, as openpi writes
them); the plain functions beside them are the same thing for one-off calls. Every numeric rule here is
mirrored in torch by `pi0edge.export.preprocess_reference` and tested against it
(tests/runtime/test_preprocess.py).

Rules (docs/model.md, "Prefix" and "Normalization"):
- Images: resize with pad to 224x224 as openpi `image_tools.resize_with_pad_torch` (bilinear,
  align_corners=False, no antialias, pad centered). The graph takes uint8 and maps x -> x / 255 * 2 - 1
  itself, so the pad is uint8 0, which becomes exactly -1.0: openpi's pad value in [-1, 1] space.
- Missing camera: an all-zero uint8 image (-1.0 after the in-graph normalization) with mask False.
- Prompt: openpi `PaligemmaTokenizer.tokenize`, pi0 and pi0.5 formats, truncation with a warning.
- State: checked, normalized with the bundle's statistics, zero-padded to the model width.
- Actions: cropped to the robot's dims, unnormalized.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import sentencepiece

from pi0edge.contract import DEFAULT_CAMERAS
from pi0edge.errors import ObservationError
from pi0edge.fast_settings import FAST_MODEL_TYPE
from pi0edge.normalization import NormStats, pad_to
from pi0edge.text import shorten

IMAGE_SIZE = 224
MODEL_TYPES = ("pi0", "pi05", FAST_MODEL_TYPE)
STATE_BINS = 256  # pi0.5 discrete state: openpi `PaligemmaTokenizer.tokenize`
# Left bin edges -1, -1 + 2/256, ..., 1 - 2/256: all dyadic, exact in float32 and float64.
STATE_BIN_EDGES = np.linspace(-1.0, 1.0, STATE_BINS + 1)[:-1]


class PromptTruncatedWarning(UserWarning):
    """The tokenized prompt is longer than the bundle's max_token_len and was cut (as openpi does)."""


# ---- images ---------------------------------------------------------------------------------------


def resized_hw(height: int, width: int, size: int) -> tuple[int, int]:
    """The size the image takes inside the size x size square, as openpi `resize_with_pad_torch`:
    ratio = max(w / size, h / size), each side int(side / ratio) (truncation, not rounding)."""
    ratio = max(width / size, height / size)
    return int(height / ratio), int(width / ratio)


@functools.lru_cache(maxsize=64)  # a camera's frame size never changes: the taps are computed once
def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear, align_corners=False, along one axis.

    As ATen `area_pixel_compute_scale` / `area_pixel_compute_source_index` (float32 for float input):
    scale = in / out, src = scale * (dst + 0.5) - 0.5 clamped below at 0 (half-pixel centers), i0 = floor(src),
    i1 = i0 + 1 except at the last pixel (edge clamping), weights (1 - frac, frac). The x86 build of torch
    fuses `scale * (dst + 0.5) - 0.5` into one FMA (a single rounding); the product is exact in float64, so
    computing it there and rounding once reproduces that (plain float32 steps differ by ~1e-4 of a level).
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)  # src >= 0, so the cast is floor
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = np.float32(1.0) - w1
    for taps in (i0, i1, w0, w1):
        taps.flags.writeable = False  # shared through the cache
    return i0, i1, w0, w1


def bilinear_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """[..., H, W, C] any real dtype -> float32 [..., out_h, out_w, C]; torch F.interpolate(mode="bilinear",
    align_corners=False, antialias=False). Same evaluation order as ATen's CPU kernel: along W first, then
    h0 * top + h1 * bottom, so float32 results agree to rounding.

    Speed (2.7x the plain fancy-indexing form, same bits): rows and columns are gathered with `np.take` in the
    input dtype (1 byte a pixel for uint8 frames) and converted to float32 only once they are output-sized;
    the products are formed in place."""
    in_h, in_w = image.shape[-3], image.shape[-2]
    hi0, hi1, hw0, hw1 = _linear_taps(in_h, out_h)
    wi0, wi1, ww0, ww1 = _linear_taps(in_w, out_w)

    def along_w(rows: np.ndarray) -> np.ndarray:  # rows: [..., out_h, W, C] -> [..., out_h, out_w, C]
        left = np.take(rows, wi0, axis=-2).astype(np.float32)
        right = np.take(rows, wi1, axis=-2).astype(np.float32)
        left *= ww0[:, None]  # broadcast over channels: [out_w, 1]
        right *= ww1[:, None]
        left += right
        return left

    top = along_w(np.take(image, hi0, axis=-3))  # gather the needed rows first: cheap for downscaling
    bottom = along_w(np.take(image, hi1, axis=-3))
    top *= hw0[:, None, None]
    bottom *= hw1[:, None, None]
    top += bottom
    return top


@dataclass(frozen=True)
class ResizeWithPad:
    """uint8 [..., H, W, 3] of any size -> uint8 [..., size, size, 3], aspect kept, padded centered with 0.

    openpi `resize_with_pad_torch` on the float image, rounded back to uint8 (half to even, as
    `torch.round`); bilinear is a convex combination, so openpi's clamp to [-1, 1] never binds and the
    result is within half a uint8 level of the reference. Pad: uint8 0 -> -1.0 in the graph = openpi's
    float pad value. Padding split as openpi: divmod(size - resized, 2), the extra pixel at bottom/right.
    An image already at size x size is returned as is (openpi skips the resize too).
    """

    size: int = IMAGE_SIZE

    def __post_init__(self):
        if self.size <= 0:
            raise ValueError(f"ResizeWithPad.size must be positive, got {self.size}")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.dtype != np.uint8 or image.ndim < 3:
            raise ObservationError(f"expected a uint8 [..., H, W, C] image, got {image.dtype} {image.shape}")
        height, width = image.shape[-3], image.shape[-2]
        if (height, width) == (self.size, self.size):
            return image
        out_h, out_w = resized_hw(height, width, self.size)
        if out_h == 0 or out_w == 0:
            raise ObservationError(
                f"image of {height}x{width} is too thin to resize into {self.size}x{self.size} (a side would be 0)")
        resized = bilinear_resize(image, out_h, out_w)
        resized = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
        top, left = (self.size - out_h) // 2, (self.size - out_w) // 2
        out = np.zeros((*image.shape[:-3], self.size, self.size, image.shape[-1]), np.uint8)
        out[..., top:top + out_h, left:left + out_w, :] = resized
        return out


@dataclass(frozen=True)
class AssembleImages:
    """{camera name: uint8 HxWx3} -> (uint8 [N_cam, size, size, 3], bool [N_cam]) in the bundle's camera order.

    docs/model.md, "Prefix": a camera the bundle knows but the dict lacks is fed as zeros (-1.0 after the
    in-graph normalization) with its mask False. Names the bundle does not know are refused rather than
    dropped: a typo would otherwise silently blind the policy.
    """

    camera_names: tuple[str, ...] = DEFAULT_CAMERAS
    size: int = IMAGE_SIZE

    def __post_init__(self):
        object.__setattr__(self, "camera_names", tuple(self.camera_names))
        if not self.camera_names:
            raise ValueError("AssembleImages needs at least one camera name")

    def __call__(self, images: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        unknown = sorted(set(images) - set(self.camera_names))
        if unknown:
            raise ObservationError(f"unknown camera(s) {unknown}; this bundle's cameras are {list(self.camera_names)}")
        if not any(name in images for name in self.camera_names):
            raise ObservationError(f"no camera image given; expected at least one of {list(self.camera_names)}")
        # Check every frame before resizing any: a bad one fails fast, with nothing half-done.
        checked = {name: _checked_image(name, images[name]) for name in self.camera_names if name in images}
        resize = ResizeWithPad(self.size)
        out = np.zeros((len(self.camera_names), self.size, self.size, 3), np.uint8)
        masks = np.zeros(len(self.camera_names), bool)
        for i, name in enumerate(self.camera_names):
            if name in checked:
                try:
                    out[i] = resize(checked[name])
                except ObservationError as exc:  # e.g. a 1x1000 strip: name the camera
                    raise ObservationError(f"camera {name!r}: {exc}") from exc
                masks[i] = True
        return out, masks


def _checked_image(name: str, image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ObservationError(f"camera {name!r}: expected a numpy uint8 HxWx3 array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ObservationError(f"camera {name!r}: expected dtype uint8 (0..255 RGB), got {image.dtype}")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ObservationError(f"camera {name!r}: expected shape HxWx3 (RGB, channels last), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ObservationError(f"camera {name!r}: empty image of shape {image.shape}")
    return image


def assemble_images(images: Mapping[str, np.ndarray], camera_names: Sequence[str] = DEFAULT_CAMERAS,
                    size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """See `AssembleImages`."""
    return AssembleImages(tuple(camera_names), size)(images)


# ---- prompt ---------------------------------------------------------------------------------------


def clean_prompt(text: str) -> str:
    """openpi `PaligemmaTokenizer.tokenize`: strip, then "_" -> " " and "\\n" -> " ".

    The order matters: stripping happens first, so a trailing "_" or an inner "\\n" stays as a space.
    """
    return text.strip().replace("_", " ").replace("\n", " ")


def discretize_state(normalized_state: np.ndarray) -> np.ndarray:
    """Normalized state -> int64 bins, openpi: digitize(state, linspace(-1, 1, 257)[:-1]) - 1.

    Not clipped (docs/model.md, "Prefix"): below -1 gives bin -1, at or above 1 - 2/256 gives 255; a value on an
    edge goes to the bin that edge opens (digitize is right-open), e.g. 0.0 -> 128, -1.0 -> 0.
    """
    return (np.digitize(np.asarray(normalized_state), STATE_BIN_EDGES) - 1).astype(np.int64)


@dataclass(frozen=True)
class PromptTokenizer:
    """Prompt (+ normalized state for pi0.5) -> (tokens int64 [L], token_mask bool [L]), L = max_token_len.

    openpi `PaligemmaTokenizer.tokenize`:
    - pi0:   encode(clean(text), add_bos=True) + encode("\\n"): the newline, the "start of answer" token,
             is encoded on its own, not appended to the text before encoding.
    - pi0.5: encode(f"Task: {clean(text)}, State: {bins};\\nAction: ", add_bos=True), bins from the
             normalized, unpadded, unclipped state (`discretize_state`), space-separated.
    - Pi0-FAST: the same without "Action: ", which the model writes itself before its action tokens.
    Padded with id 0 / mask False; longer than L: cut to the first L tokens (so the "\\n" or "Action: "
    is lost), mask all True, and a `PromptTruncatedWarning` (openpi logs a warning instead).
    """

    model_path: str | os.PathLike
    max_token_len: int
    model_type: str = "pi0"
    _sp: sentencepiece.SentencePieceProcessor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.max_token_len <= 0:
            raise ValueError(f"max_token_len must be positive, got {self.max_token_len}")
        sp = sentencepiece.SentencePieceProcessor()
        sp.Load(os.fspath(self.model_path))
        object.__setattr__(self, "_sp", sp)

    def format_prompt(self, prompt: str, state: np.ndarray | None = None) -> str:
        """The text encoded with BOS. pi0: the cleaned prompt ("\\n" is encoded separately after it);
        pi0.5: the full "Task: ..., State: ...;\\nAction: " string. `state`: normalized, pi0.5 only."""
        if not isinstance(prompt, str):
            raise ObservationError(f"prompt must be a str, got {type(prompt).__name__}")
        text = clean_prompt(prompt)
        if not text.strip():
            raise ObservationError(f"prompt is empty after cleaning (got {prompt!r})")
        if self.model_type == "pi0":
            return text  # pi0 feeds the state to the step graph; openpi `TokenizePrompt` ignores it here
        if state is None:
            raise ObservationError(f"{self.model_type} needs the normalized state for its prompt, got state=None")
        state = np.asarray(state)
        if state.ndim != 1 or not np.isfinite(state).all():
            raise ObservationError(f"{self.model_type} prompt state must be a finite 1-D vector, got {state!r}")
        bins = " ".join(str(int(b)) for b in discretize_state(state))
        answer = "" if self.model_type == FAST_MODEL_TYPE else "Action: "
        return f"Task: {text}, State: {bins};\n{answer}"

    def token_ids(self, prompt: str, state: np.ndarray | None = None) -> list[int]:
        """All token ids before padding or truncation."""
        ids = self._sp.encode(self.format_prompt(prompt, state), add_bos=True)
        if self.model_type == "pi0":
            ids = ids + self._sp.encode("\n")
        return ids

    def __call__(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids = self.token_ids(prompt, state)
        length = self.max_token_len
        if len(ids) > length:
            warnings.warn(f"prompt is {len(ids)} tokens, longer than the bundle's max_token_len {length}: "
                          f"truncated to the first {length} (as openpi); prompt was {shorten(prompt)}",
                          PromptTruncatedWarning, stacklevel=2)
            ids = ids[:length]
        tokens = np.zeros(length, np.int64)
        tokens[:len(ids)] = ids
        return tokens, np.arange(length) < len(ids)

    def batch(self, prompts: Sequence[str], states: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """B prompts (and a [B, state_dim] normalized state for pi0.5) -> ([B, L] int64, [B, L] bool)."""
        rows = [self(p, None if states is None else states[i]) for i, p in enumerate(prompts)]
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


# ---- state and actions ----------------------------------------------------------------------------


def _checked_state(state: object, robot_state_dim: int) -> np.ndarray:
    """Any array-like [..., robot_state_dim] -> float32, or ObservationError naming the field and value."""
    try:
        raw = np.asarray(state, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ObservationError(f"state must be a numeric vector, got {type(state).__name__}: {exc}") from exc
    if raw.ndim == 0 or raw.shape[-1] != robot_state_dim:
        got = "a scalar" if raw.ndim == 0 else f"length {raw.shape[-1]}"
        raise ObservationError(f"state has {got}, expected length {robot_state_dim} (the bundle's robot state dim)")
    with np.errstate(over="ignore"):  # an overflow is reported below, as a non-finite value
        as_f32 = raw.astype(np.float32)
    bad = ~np.isfinite(as_f32)  # also catches a finite float64 that overflows float32
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = idx[0] if len(idx) == 1 else idx
        raise ObservationError(f"state[{where}] is {raw[idx]!r}: the state must be finite (float32)")
    return as_f32


def normalize_state(state: np.ndarray, norm_stats: NormStats) -> np.ndarray:
    """Checked and normalized, unpadded: [..., robot_state_dim] float32. pi0.5 discretizes this one."""
    return norm_stats.normalize_state(_checked_state(state, norm_stats.state.dim))


@dataclass(frozen=True)
class PrepareState:
    """Robot state [..., robot_state_dim] in robot units -> float32 [..., state_dim], normalized then zero-padded
    (openpi: Normalize, then `PadStatesAndActions`)."""

    norm_stats: NormStats
    state_dim: int

    def __post_init__(self):
        if self.norm_stats.state.dim > self.state_dim:
            raise ValueError(f"robot state dim {self.norm_stats.state.dim} exceeds the model's {self.state_dim}")

    def __call__(self, state: np.ndarray) -> np.ndarray:
        return pad_to(normalize_state(state, self.norm_stats), self.state_dim).astype(np.float32)


def prepare_state(state: np.ndarray, norm_stats: NormStats, state_dim: int) -> np.ndarray:
    """See `PrepareState`."""
    return PrepareState(norm_stats, state_dim)(state)


@dataclass(frozen=True)
class FinishActions:
    """Model actions [..., H, A] (normalized, model width) -> float32 [..., H, robot_action_dim] in robot units:
    crop to the robot's dims, then unnormalize (docs/model.md, "Normalization": inverse on real dims only)."""

    norm_stats: NormStats
    robot_action_dim: int | None = None  # None: the action statistics' length

    def __post_init__(self):
        stats_dim = self.norm_stats.action.dim
        if self.robot_action_dim is None:
            object.__setattr__(self, "robot_action_dim", stats_dim)
        elif self.robot_action_dim != stats_dim:
            raise ValueError(
                f"robot_action_dim {self.robot_action_dim} differs from the action statistics' {stats_dim}")

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        if actions.ndim < 2 or actions.shape[-1] < self.robot_action_dim:
            raise ValueError(f"actions of shape {actions.shape} cannot be cropped to {self.robot_action_dim} dims")
        return self.norm_stats.unnormalize_actions(actions[..., :self.robot_action_dim])


def finish_actions(actions: np.ndarray, norm_stats: NormStats, robot_action_dim: int | None = None) -> np.ndarray:
    """See `FinishActions`."""
    return FinishActions(norm_stats, robot_action_dim)(actions)
