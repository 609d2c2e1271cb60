"""FAST action tokens without torch: normalized action chunk <-> BPE ids <-> PaliGemma ids.

The math is docs/model.md, "FAST action tokens": an orthonormal DCT over time, coefficients scaled, rounded and
shifted by `min_token` into character codes, the characters BPE-compressed with the Hugging Face `tokenizers`
library. Decoding runs it backwards and, like LeRobot's relaxed decoding, pads or truncates a sequence of the
wrong length to the expected H * A coefficients; unlike LeRobot it says so (`DecodedActions.well_formed`), so the
control loop can hold the robot instead of executing garbage.

Files: a folder in FAST's own Hugging Face layout (`tokenizer.json` + `processor_config.json` with scale,
min_token, vocab_size, time_horizon, action_dim), so a FAST tokenizer saved by its processor loads as it is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pi0edge.errors import BundleError
from pi0edge.runtime.dct import dct_ortho, idct_ortho

TOKENIZER_FILE = "tokenizer.json"  # the BPE, `tokenizers` serialization
CONFIG_FILE = "processor_config.json"  # FAST's processor fields
# Largest character code below the UTF-16 surrogates, which UTF-8 cannot spell: a code (<= vocab_size) must fit.
MAX_VOCAB_SIZE = 0xD7FF


@dataclass(frozen=True)
class FastTokenizerConfig:
    """FAST's processor fields. scale: DCT coefficients are multiplied by it before rounding (quantization step
    1 / scale). min_token: the smallest rounded coefficient seen at fit, subtracted so codes start at 0.
    vocab_size: the BPE vocabulary size asked for at fit; also the largest character code a fitted range can
    produce. action_horizon / action_dim: the chunk shape it was fitted on, None for a universal tokenizer."""

    scale: float
    min_token: int
    vocab_size: int
    action_horizon: int | None = None
    action_dim: int | None = None

    def __post_init__(self):
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale}")
        if not 1 <= self.vocab_size <= MAX_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be in [1, {MAX_VOCAB_SIZE}], got {self.vocab_size}")
        for name in ("action_horizon", "action_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {value}")

    def to_json(self) -> dict:
        """The processor_config.json document (FAST's field names: its time_horizon is our action_horizon)."""
        return {"processor_class": "UniversalActionProcessor", "scale": self.scale, "min_token": self.min_token,
                "vocab_size": self.vocab_size, "time_horizon": self.action_horizon, "action_dim": self.action_dim}


@dataclass(frozen=True)
class FastTokenizerFiles:
    """The files of a FAST tokenizer folder (in a bundle: BUNDLE/fast_tokenizer/)."""

    directory: Path

    @property
    def tokenizer_json(self) -> Path:
        return Path(self.directory) / TOKENIZER_FILE

    @property
    def config_json(self) -> Path:
        return Path(self.directory) / CONFIG_FILE

    def check_present(self) -> None:
        """BundleError naming the missing folder or its first missing file."""
        if not Path(self.directory).is_dir():
            raise BundleError(f"{self.directory}: no such folder (a FAST tokenizer: {TOKENIZER_FILE} + {CONFIG_FILE})")
        for path in (self.tokenizer_json, self.config_json):
            if not path.is_file():
                raise BundleError(f"{path}: missing; a FAST tokenizer folder holds {TOKENIZER_FILE} and {CONFIG_FILE}")


@dataclass(frozen=True)
class DecodedActions:
    """A decoded chunk. actions: [H, A] float32, normalized. well_formed: the ids spelled exactly H * A
    coefficients, all in the fitted range; when False, `reason` says what was padded, cut or zeroed and the
    chunk should not be executed."""

    actions: np.ndarray
    well_formed: bool
    reason: str = ""


def read_fast_config(path: Path) -> FastTokenizerConfig:
    """processor_config.json -> FastTokenizerConfig; BundleError naming the file and field at fault."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object with scale, min_token, vocab_size, got {type(raw).__name__}")
    fields = {
        "scale": _field(raw, "scale", path, (int, float)),
        "min_token": _field(raw, "min_token", path, (int,)),
        "vocab_size": _field(raw, "vocab_size", path, (int,), minimum=1),
        "action_horizon": _field(raw, "time_horizon", path, (int,), optional=True, minimum=1),
        "action_dim": _field(raw, "action_dim", path, (int,), optional=True, minimum=1),
    }
    try:
        return FastTokenizerConfig(**fields)
    except ValueError as exc:
        raise BundleError(f"{path}: {exc}") from exc


def _field(raw: dict, name: str, path: Path, types: tuple[type, ...], optional: bool = False,
           minimum: int | None = None):
    value = raw.get(name)
    if value is None and optional:
        return None
    if value is None or isinstance(value, bool) or not isinstance(value, types):
        kind = " or ".join(t.__name__ for t in types) + (" or null" if optional else "")
        raise BundleError(f"{path}: field '{name}' must be {kind}, got {value!r}")
    if minimum is not None and value < minimum:
        raise BundleError(f"{path}: field '{name}' must be >= {minimum}, got {value}")
    return value


def load_fast_tokenizer(directory: str | Path) -> FastActionTokenizer:
    """A FAST tokenizer folder -> FastActionTokenizer; BundleError naming the file or field at fault."""
    from tokenizers import Tokenizer  # a base dependency; imported here so `import pi0edge.runtime` stays light

    files = FastTokenizerFiles(Path(directory))
    files.check_present()
    config = read_fast_config(files.config_json)
    try:
        bpe = Tokenizer.from_file(str(files.tokenizer_json))
    except Exception as exc:  # the Rust side raises plain Exception for any malformed file
        raise BundleError(f"{files.tokenizer_json}: not a `tokenizers` JSON file ({exc})") from exc
    if bpe.get_vocab_size() < 1:
        raise BundleError(f"{files.tokenizer_json}: the BPE vocabulary is empty")
    return FastActionTokenizer(bpe, config, files.directory)


class FastActionTokenizer:
    """Normalized action chunk [H, A] <-> FAST BPE ids (not yet PaliGemma ids: see `action_token_to_paligemma`).
    To decode a model's output: `decode(paligemma_to_action_token(ids, vocab_size, fast_skip_tokens), H, A)`;
    ids that are not action tokens map outside [0, bpe_vocab_size) and are dropped and flagged."""

    def __init__(self, bpe, config: FastTokenizerConfig, source: Path | None = None):
        self._bpe = bpe  # tokenizers.Tokenizer
        self.config = config
        self.source = source  # the folder it was loaded from, for messages

    def check_chunk_shape(self, action_horizon: int, action_dim: int) -> None:
        """BundleError when the tokenizer was fitted on another chunk shape than the model's (a universal
        tokenizer, shape null, fits any): every chunk it decoded would be padded or cut."""
        fitted = (self.config.action_horizon, self.config.action_dim)
        for name, have, want in zip(("time_horizon", "action_dim"), fitted, (action_horizon, action_dim), strict=True):
            if have is not None and have != want:
                raise BundleError(f"{Path(self.source or '.') / CONFIG_FILE}: field '{name}' is {have}, but the "
                                  f"model's chunk is {action_horizon} x {action_dim}; refit the FAST tokenizer")

    @property
    def bpe_vocab_size(self) -> int:
        """Number of BPE ids: every FAST action token k is in [0, bpe_vocab_size)."""
        return self._bpe.get_vocab_size()

    def encode(self, actions: npt.ArrayLike) -> list[int]:
        """[H, A] normalized actions -> BPE ids, as FAST's processor `__call__` (coefficients below min_token
        clamp to code 0, as there). ValueError, where FAST would silently drop coefficients, for a chunk with
        coefficients the tokenizer cannot spell."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.size == 0 or not np.isfinite(actions).all():
            raise ValueError(f"actions must be a finite, non-empty [H, A] array, got shape {actions.shape}")
        quantized = np.around(dct_ortho(actions) * self.config.scale)  # [H, A]: frequency k, action dim a
        codes = np.maximum(quantized.reshape(-1) - self.config.min_token, 0).astype(np.int64)  # k-major order
        if codes.max() > self.config.vocab_size:
            raise ValueError(f"a scaled DCT coefficient ({codes.max() + self.config.min_token}) is beyond the "
                             f"tokenizer's range (min_token {self.config.min_token} + vocab_size "
                             f"{self.config.vocab_size}); are the actions normalized?")
        text = "".join(map(chr, codes.tolist()))
        ids = self._bpe.encode(text).ids
        if self._bpe.decode(ids) != text:  # `tokenizers` drops a character whose bytes it has no symbol for
            raise ValueError("the chunk has DCT coefficients this tokenizer cannot spell (outside the range it was "
                             f"fitted on, min_token {self.config.min_token}); are the actions normalized?")
        return ids

    def decode(self, bpe_ids: npt.ArrayLike, action_horizon: int, action_dim: int) -> DecodedActions:
        """BPE ids -> DecodedActions [action_horizon, action_dim]. Never raises on the ids: unknown ids are
        dropped, codes outside [0, vocab_size] zeroed, the coefficient count padded with zeros or cut on the
        right (LeRobot's relaxed decoding), and each repair named in `reason` with well_formed False."""
        if action_horizon < 1 or action_dim < 1:
            raise ValueError(f"action_horizon and action_dim must be >= 1, got {action_horizon} x {action_dim}")
        ids = np.asarray(bpe_ids, dtype=np.int64).reshape(-1)
        problems = [] if ids.size else ["no action tokens"]
        known = (ids >= 0) & (ids < self.bpe_vocab_size)
        if not known.all():
            problems.append(f"{int((~known).sum())} of {ids.size} ids outside the FAST vocabulary "
                            f"[0, {self.bpe_vocab_size}) dropped")
        text = self._bpe.decode(ids[known].tolist())
        codes = np.fromiter(map(ord, text), dtype=np.int64, count=len(text))
        outside = codes > self.config.vocab_size  # includes U+FFFD, the spelling of a broken byte sequence
        if outside.any():
            problems.append(f"{int(outside.sum())} characters outside the fitted range zeroed")
            codes[outside] = -self.config.min_token  # coefficient 0
        coefficients = codes + self.config.min_token
        expected = action_horizon * action_dim
        if coefficients.size != expected and coefficients.size:
            change = "padded with zeros" if coefficients.size < expected else "cut"
            problems.append(f"{coefficients.size} coefficients, expected {expected} ({action_horizon} x "
                            f"{action_dim}): {change}")
        coefficients = np.pad(coefficients[:expected], (0, max(expected - coefficients.size, 0)))
        actions = idct_ortho(coefficients.reshape(action_horizon, action_dim) / self.config.scale)
        return DecodedActions(actions.astype(np.float32), not problems, "; ".join(problems))


def action_token_to_paligemma(action_tokens: npt.ArrayLike, vocab_size: int, fast_skip_tokens: int) -> np.ndarray:
    """FAST token k -> PaliGemma id vocab_size - 1 - fast_skip_tokens - k (docs/model.md, "FAST action tokens"):
    action tokens count down from the top of the vocabulary, below its last `fast_skip_tokens` special ids.
    Vectorized over numpy arrays (int64)."""
    return vocab_size - 1 - fast_skip_tokens - np.asarray(action_tokens, dtype=np.int64)


def paligemma_to_action_token(paligemma_ids: npt.ArrayLike, vocab_size: int, fast_skip_tokens: int) -> np.ndarray:
    """The inverse of `action_token_to_paligemma` (the map is its own inverse: k = vocab_size - 1 - skip - id)."""
    return vocab_size - 1 - fast_skip_tokens - np.asarray(paligemma_ids, dtype=np.int64)
