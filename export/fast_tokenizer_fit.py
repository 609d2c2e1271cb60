"""Fitting a FAST action tokenizer, the way FAST's own `UniversalActionProcessor.fit` does, and smooth synthetic
action chunks to fit it on (no dataset hub is reachable).

Fit (docs/model.md, "FAST action tokens"): the orthonormal DCT of every chunk over time, coefficients times
`scale`, rounded; min_token = the smallest rounded coefficient; each chunk's codes (coefficient - min_token,
frequency-major) spelled as characters; a byte-level BPE trained over those strings with FAST's trainer
settings (no special tokens, min_frequency 2, an initial alphabet covering the whole code range). One change:
FAST's initial alphabet is the characters chr(0 .. max - min) themselves, but its byte-level pre-tokenizer
turns characters into byte symbols first, so most of those entries are never used and bytes the fit did not
see stay out of the vocabulary (`tokenizers` then silently drops them when encoding). Here the alphabet is the
byte symbols that spell chr(0 .. max - min), so every code of the fitted range encodes, and the vocabulary
never exceeds vocab_size.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pi0edge.atomic import staged_dir, write_text_atomic
from pi0edge.errors import ConfigError
from pi0edge.runtime.dct import dct_ortho
from pi0edge.runtime.fast_tokens import CONFIG_FILE, TOKENIZER_FILE, FastTokenizerConfig

log = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 1024  # FAST's default
DEFAULT_SCALE = 10.0  # FAST's default: quantization step 0.1 per DCT coefficient
# FAST warns when the code range leaves fewer than this many vocabulary entries for merges.
_FEW_MERGES = 100


def quantized_coefficients(action_chunks: np.ndarray, scale: float) -> np.ndarray:
    """[N, H, A] chunks -> [N, H * A] rounded, scaled DCT coefficients, frequency-major (FAST's flatten order)."""
    return np.stack([np.around(dct_ortho(chunk) * scale).reshape(-1) for chunk in action_chunks]).astype(np.int64)


def fit_fast_tokenizer(action_chunks: np.ndarray, out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE,
                       scale: float = DEFAULT_SCALE) -> FastTokenizerConfig:
    """Fit on normalized action chunks [N, H, A] and write out_dir/{tokenizer.json, processor_config.json}
    (the folder replaced atomically). -> the written config. Its BPE vocabulary has at most vocab_size entries;
    ConfigError when vocab_size cannot hold the code range or the symbols that spell it."""
    chunks = np.asarray(action_chunks, dtype=np.float64)
    if chunks.ndim != 3 or 0 in chunks.shape or not np.isfinite(chunks).all():
        raise ConfigError(f"action_chunks must be a finite, non-empty [N, H, A] array, got shape {chunks.shape}")
    codes = quantized_coefficients(chunks, scale)
    min_token, max_code = int(codes.min()), int(codes.max() - codes.min())
    if max_code > vocab_size:  # FAST's own check: decoding treats a code above vocab_size as garbage
        raise ConfigError(f"vocab_size {vocab_size} cannot hold the {max_code + 1} quantized coefficient values "
                          f"(scale {scale}); raise vocab_size or lower scale")
    tokenizer = _byte_level_bpe()
    alphabet = _code_alphabet(tokenizer, max_code)
    if len(alphabet) > vocab_size:
        raise ConfigError(f"vocab_size {vocab_size} is below the {len(alphabet)} byte-level symbols that spell the "
                          f"codes 0..{max_code} (scale {scale}); raise vocab_size or lower scale")
    if len(alphabet) + _FEW_MERGES > vocab_size:
        log.warning("FAST fit: the %d symbols of the code range leave fewer than %d of vocab_size %d for merges",
                    len(alphabet), _FEW_MERGES, vocab_size)
    _train(tokenizer, ["".join(map(chr, row)) for row in (codes - min_token).tolist()], alphabet, vocab_size)
    config = FastTokenizerConfig(scale=float(scale), min_token=min_token, vocab_size=vocab_size,
                                 action_horizon=chunks.shape[1], action_dim=chunks.shape[2])
    with staged_dir(Path(out_dir)) as staging:
        write_text_atomic(staging / TOKENIZER_FILE, tokenizer.to_str())
        write_text_atomic(staging / CONFIG_FILE, json.dumps(config.to_json(), indent=2) + "\n")
    return config


def _byte_level_bpe():
    """FAST's BPE: the inner `tokenizers.Tokenizer` of a fresh ByteLevelBPETokenizer (byte-level pre-tokenizer
    and decoder, no normalizer)."""
    from tokenizers import ByteLevelBPETokenizer

    return ByteLevelBPETokenizer()._tokenizer


def _code_alphabet(tokenizer, max_code: int) -> list[str]:
    """The byte-level symbols that spell the characters chr(0) .. chr(max_code): what the byte-level
    pre-tokenizer turns them into (a code >= 128 is two UTF-8 bytes, each its own symbol)."""
    pieces = tokenizer.pre_tokenizer.pre_tokenize_str("".join(map(chr, range(max_code + 1))))
    return sorted(set("".join(piece for piece, _ in pieces)))


def _train(tokenizer, texts: list[str], alphabet: list[str], vocab_size: int) -> None:
    """FAST's trainer settings; trained from an iterator, as FAST does, to pass a custom alphabet."""
    from tokenizers.trainers import BpeTrainer

    trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
                         initial_alphabet=alphabet, max_token_length=10000)
    tokenizer.train_from_iterator(texts, trainer=trainer)


def synthetic_action_chunks(count: int, action_horizon: int, action_dim: int, seed: int = 0) -> np.ndarray:
    """[count, H, A] float32 smooth normalized chunks: per dimension an offset plus three low-frequency
    sinusoids (at most 1.5 periods over the chunk), amplitudes chosen so values stay within about [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, action_horizon)[None, :, None, None]  # [1, H, 1, 1]
    shape = (count, 1, action_dim, 3)  # n, (time), a, sinusoid
    frequency = rng.uniform(0.1, 1.5, shape)
    phase = rng.uniform(0.0, 2 * np.pi, shape)
    amplitude = rng.uniform(0.0, 0.25, shape)
    offset = rng.uniform(-0.2, 0.2, (count, 1, action_dim))
    waves = (amplitude * np.sin(2 * np.pi * frequency * t + phase)).sum(axis=-1)  # [N, H, A]
    return (offset + waves).astype(np.float32)
