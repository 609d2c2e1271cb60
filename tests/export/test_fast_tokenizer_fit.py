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


def test_coefficients_beyond_the_fitted_range_still_encode_and_round_trip(fitted, chunks):
    """The byte-level alphabet joins FAST's: a chunk whose codes lie beyond any seen at fit (so beyond FAST's own
    initial alphabet, chr(0 .. max - min)) loses no coefficient."""
    tokenizer = load_fast_tokenizer(fitted[0])
    max_token = int(quantized_coefficients(chunks, SCALE).max())
    coefficients = np.zeros((HORIZON, ACTION_DIM))
    coefficients[0] = (max_token + 40 + np.arange(ACTION_DIM)) / SCALE  # DC terms well past the fitted maximum
    decoded = tokenizer.decode(tokenizer.encode(idct_ortho(coefficients)), HORIZON, ACTION_DIM)
    assert decoded.well_formed, decoded.reason
    np.testing.assert_allclose(dct_ortho(decoded.actions), coefficients, atol=1e-4)


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
