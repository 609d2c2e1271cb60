"""Fitting a FAST action tokenizer: the files the runtime loader reads, the fitted code range, compression of
smooth chunks, every coefficient encodable after the fit, refusals that name the value, and the synthetic chunks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pi0edge.errors import ConfigError
from pi0edge.export.fast_tokenizer_fit import fit_fast_tokenizer, quantized_coefficients, synthetic_action_chunks
from pi0edge.runtime.dct import dct_ortho, idct_ortho
from pi0edge.runtime.fast_tokens import CONFIG_FILE, TOKENIZER_FILE, load_fast_tokenizer

HORIZON, ACTION_DIM = 10, 7
SCALE = 10.0


@pytest.fixture(scope="module")
def chunks():
    return synthetic_action_chunks(1000, HORIZON, ACTION_DIM, seed=0)


@pytest.fixture(scope="module")
def fitted(chunks, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("fit") / "fast_tokenizer"
    config = fit_fast_tokenizer(chunks, out_dir, vocab_size=400, scale=SCALE)
    return out_dir, config


def test_fit_writes_exactly_the_files_the_loader_reads(fitted):
    out_dir, config = fitted
    assert sorted(p.name for p in out_dir.parent.iterdir()) == ["fast_tokenizer"]  # no staging left behind
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([CONFIG_FILE, TOKENIZER_FILE])
    tokenizer = load_fast_tokenizer(out_dir)
    assert tokenizer.config == config
    assert (config.action_horizon, config.action_dim, config.scale) == (HORIZON, ACTION_DIM, SCALE)
    assert json.loads((out_dir / CONFIG_FILE).read_text())["time_horizon"] == HORIZON  # FAST's field name
    assert tokenizer.bpe_vocab_size <= config.vocab_size


def test_min_token_is_the_smallest_rounded_scaled_coefficient(fitted, chunks):
    _, config = fitted
    expected = min(int(np.around(dct_ortho(chunk) * SCALE).min()) for chunk in chunks)
    assert config.min_token == expected
    assert quantized_coefficients(chunks, SCALE).min() == expected


def test_bpe_compresses_smooth_chunks_below_one_token_per_coefficient(fitted, chunks):
    tokenizer = load_fast_tokenizer(fitted[0])
    tokens_per_chunk = np.mean([len(tokenizer.encode(chunk)) for chunk in chunks[:200]])
    assert tokens_per_chunk < 0.5 * HORIZON * ACTION_DIM


def _chunks_with_codes(codes: np.ndarray) -> np.ndarray:
    """Chunks [N, H, A] whose rounded scaled DCT coefficients are exactly `codes` (padded with 0 to whole chunks)."""
    per_chunk = HORIZON * ACTION_DIM
    padded = np.zeros(-(-codes.size // per_chunk) * per_chunk)
    padded[:codes.size] = codes
    return np.stack([idct_ortho(c.reshape(HORIZON, ACTION_DIM) / SCALE) for c in padded.reshape(-1, per_chunk)])


def test_every_code_of_the_fitted_range_encodes_and_decodes_exactly(fitted, chunks):
    tokenizer = load_fast_tokenizer(fitted[0])
    min_token, max_token = tokenizer.config.min_token, int(quantized_coefficients(chunks, SCALE).max())
    for chunk in _chunks_with_codes(np.arange(min_token, max_token + 1)):
        decoded = tokenizer.decode(tokenizer.encode(chunk), HORIZON, ACTION_DIM)
        assert decoded.well_formed, decoded.reason
        np.testing.assert_allclose(dct_ortho(decoded.actions), dct_ortho(chunk), atol=1e-4)


def test_the_bpe_vocabulary_never_exceeds_vocab_size(chunks, tmp_path):
    """The model has room for vocab_size action tokens below its skipped ids; the BPE must not spill over."""
    for vocab_size in (40, 100):
        fit_fast_tokenizer(chunks, tmp_path / "fast", vocab_size=vocab_size)
        assert load_fast_tokenizer(tmp_path / "fast").bpe_vocab_size == vocab_size


def test_fit_refuses_a_vocab_below_the_symbols_that_spell_the_range(tmp_path):
    """Codes 0..139: 128 one-byte symbols plus two-byte ones (lead 0xC2, 12 continuation bytes) = 141 symbols,
    more than vocab_size 139, which FAST's own range check (139 <= 139) lets through."""
    with pytest.raises(ConfigError, match="vocab_size 139 is below the 141 byte-level symbols"):
        fit_fast_tokenizer(_chunks_with_codes(np.arange(140)), tmp_path / "fast", vocab_size=139, scale=SCALE)


def test_fit_refuses_a_vocab_too_small_for_the_coefficient_range(chunks, tmp_path):
    with pytest.raises(ConfigError, match="vocab_size 8 cannot hold"):
        fit_fast_tokenizer(chunks, tmp_path / "fast", vocab_size=8)
    assert not (tmp_path / "fast").exists()


@pytest.mark.parametrize("bad", [np.zeros((10, 7)), np.zeros((0, 10, 7)), np.full((2, 10, 7), np.nan)])
def test_fit_refuses_chunks_that_are_not_a_finite_n_h_a_array(bad, tmp_path):
    with pytest.raises(ConfigError, match=r"\[N, H, A\]"):
        fit_fast_tokenizer(bad, tmp_path / "fast")


def test_synthetic_chunks_are_reproducible_bounded_and_smooth():
    chunks = synthetic_action_chunks(200, 50, 4, seed=3)
    assert chunks.shape == (200, 50, 4) and chunks.dtype == np.float32
    np.testing.assert_array_equal(chunks, synthetic_action_chunks(200, 50, 4, seed=3))
    assert np.abs(chunks).max() <= 0.2 + 3 * 0.25
    energy = (np.stack([dct_ortho(chunk) for chunk in chunks]) ** 2).sum(axis=(0, 2))  # per frequency
    assert energy[:5].sum() > 0.99 * energy.sum()  # smooth: almost all of it in the lowest frequencies
