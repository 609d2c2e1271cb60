"""The torch-free FAST detokenizer: round trips within the quantization bound, flags and repairs malformed id
sequences as LeRobot's relaxed decoding shapes them, maps action tokens to PaliGemma ids and back, names the
file and field of a bad tokenizer folder, and its numpy DCT is scipy's.

Tokenizer: `fast_tokenizer_dir` (tests/conftest.py), fitted by pi0edge.export.fast_tokenizer_fit on smooth
synthetic chunks of 10 steps x 7 dims, scale 10.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tokenizers import Tokenizer

from pi0edge.errors import BundleError
from pi0edge.export.fast_tokenizer_fit import fit_fast_tokenizer, synthetic_action_chunks
from pi0edge.runtime.dct import dct_basis, dct_ortho, idct_ortho
from pi0edge.runtime.fast_tokens import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    action_token_to_paligemma,
    load_fast_tokenizer,
    paligemma_to_action_token,
)

PALIGEMMA_VOCAB_SIZE = 257152  # PaliGemma's tokenizer (openpi `FASTTokenizer`, LeRobot `PI0FastConfig`)
FAST_SKIP_TOKENS = 128  # its last 128 ids are special tokens that FAST skips
DCT_ATOL = 1e-12
# float32 output of a float64 inverse DCT of values within [-1.5, 1.5]
FLOAT32_ATOL = 1e-6


@pytest.fixture(scope="module")
def tokenizer(fast_tokenizer_dir):
    return load_fast_tokenizer(fast_tokenizer_dir)


@pytest.fixture(scope="module")
def held_out_chunks(tokenizer):
    config = tokenizer.config
    return synthetic_action_chunks(20, config.action_horizon, config.action_dim, seed=123)


def _shape(tokenizer):
    return tokenizer.config.action_horizon, tokenizer.config.action_dim


def test_round_trip_recovers_the_quantized_coefficients_and_the_actions_within_the_rounding_bound(
        tokenizer, held_out_chunks):
    """Rounding moves each coefficient by at most 0.5 / scale; the orthonormal inverse DCT turns that into an
    action error of at most (0.5 / scale) * max_n sum_k |C[k, n]| (<= (0.5 / scale) * sqrt(H))."""
    horizon, action_dim = _shape(tokenizer)
    scale = tokenizer.config.scale
    bound = 0.5 / scale * np.abs(dct_basis(horizon)).sum(axis=0).max() + FLOAT32_ATOL
    for chunk in held_out_chunks:
        decoded = tokenizer.decode(tokenizer.encode(chunk), horizon, action_dim)
        assert decoded.well_formed and decoded.reason == ""
        assert decoded.actions.shape == (horizon, action_dim) and decoded.actions.dtype == np.float32
        np.testing.assert_allclose(dct_ortho(decoded.actions) * scale, np.around(dct_ortho(chunk) * scale),
                                   atol=1e-3)
        assert np.abs(decoded.actions - chunk).max() <= bound


def test_bpe_ids_spell_the_coefficient_codes_frequency_major(tokenizer, fast_tokenizer_dir):
    """FAST's flatten order: code index k * A + a holds frequency k of action dim a."""
    horizon, action_dim = _shape(tokenizer)
    coefficients = np.zeros((horizon, action_dim))
    coefficients[1, 2] = 0.5  # -> rounded code 5 above zero
    codes = [ord(c) for c in Tokenizer.from_file(str(fast_tokenizer_dir / TOKENIZER_FILE)).decode(
        tokenizer.encode(idct_ortho(coefficients)))]
    zero = -tokenizer.config.min_token
    expected = [zero] * (horizon * action_dim)
    expected[1 * action_dim + 2] = zero + 5
    assert codes == expected


def test_a_truncated_sequence_is_padded_with_zero_coefficients_and_flagged(tokenizer, held_out_chunks):
    horizon, action_dim = _shape(tokenizer)
    ids = tokenizer.encode(held_out_chunks[0])
    decoded = tokenizer.decode(ids[: len(ids) // 2], horizon, action_dim)
    assert not decoded.well_formed and "padded with zeros" in decoded.reason
    assert decoded.actions.shape == (horizon, action_dim)


def test_a_too_long_sequence_is_cut_to_the_expected_length_and_flagged(tokenizer, held_out_chunks):
    horizon, action_dim = _shape(tokenizer)
    ids = tokenizer.encode(held_out_chunks[0])
    decoded = tokenizer.decode(ids + ids, horizon, action_dim)
    assert not decoded.well_formed and "cut" in decoded.reason
    # the first H * A coefficients are the chunk's own: cutting on the right gives the chunk back
    np.testing.assert_array_equal(decoded.actions, tokenizer.decode(ids, horizon, action_dim).actions)


def test_an_empty_sequence_decodes_to_zero_actions_and_is_flagged(tokenizer):
    horizon, action_dim = _shape(tokenizer)
    decoded = tokenizer.decode([], horizon, action_dim)
    assert not decoded.well_formed and decoded.reason == "no action tokens"
    np.testing.assert_array_equal(decoded.actions, np.zeros((horizon, action_dim), np.float32))


def test_ids_outside_the_fast_vocabulary_are_dropped_and_flagged(tokenizer, held_out_chunks):
    horizon, action_dim = _shape(tokenizer)
    ids = tokenizer.encode(held_out_chunks[0])
    decoded = tokenizer.decode([-1, *ids, tokenizer.bpe_vocab_size], horizon, action_dim)
    assert not decoded.well_formed and "2 of" in decoded.reason and "dropped" in decoded.reason
    np.testing.assert_array_equal(decoded.actions, tokenizer.decode(ids, horizon, action_dim).actions)


def test_a_broken_byte_sequence_becomes_zero_coefficients_and_is_flagged(tmp_path):
    """A lone UTF-8 lead byte decodes to U+FFFD, far outside the code range: zeroed, not executed. Needs a
    tokenizer whose codes reach two-byte characters (>= 128), as FAST's published one does: scale 100."""
    horizon, action_dim = 10, 7
    fit_fast_tokenizer(synthetic_action_chunks(300, horizon, action_dim), tmp_path / "fast", vocab_size=1024,
                       scale=100.0)
    tokenizer = load_fast_tokenizer(tmp_path / "fast")
    lead_byte_id = Tokenizer.from_file(str(tmp_path / "fast" / TOKENIZER_FILE)).token_to_id("\u00c2")  # byte 0xC2
    decoded = tokenizer.decode([lead_byte_id] * (horizon * action_dim), horizon, action_dim)
    assert not decoded.well_formed and decoded.reason == "70 characters outside the fitted range zeroed"
    np.testing.assert_array_equal(decoded.actions, np.zeros((horizon, action_dim), np.float32))


def test_action_tokens_map_to_the_top_of_the_paligemma_vocabulary_and_back():
    action_tokens = np.arange(0, 2048)
    ids = action_token_to_paligemma(action_tokens, PALIGEMMA_VOCAB_SIZE, FAST_SKIP_TOKENS)
    assert ids[0] == PALIGEMMA_VOCAB_SIZE - 1 - FAST_SKIP_TOKENS and ids[-1] == ids[0] - 2047
    assert ids.max() < PALIGEMMA_VOCAB_SIZE - FAST_SKIP_TOKENS  # never a skipped special token
    np.testing.assert_array_equal(paligemma_to_action_token(ids, PALIGEMMA_VOCAB_SIZE, FAST_SKIP_TOKENS),
                                  action_tokens)
    assert paligemma_to_action_token(257023, PALIGEMMA_VOCAB_SIZE, FAST_SKIP_TOKENS) == 0


def _copy(fast_tokenizer_dir, tmp_path):
    folder = tmp_path / "fast_tokenizer"
    shutil.copytree(fast_tokenizer_dir, folder)
    return folder


@pytest.mark.parametrize("missing", [TOKENIZER_FILE, CONFIG_FILE])
def test_a_missing_file_is_named(fast_tokenizer_dir, tmp_path, missing):
    folder = _copy(fast_tokenizer_dir, tmp_path)
    (folder / missing).unlink()
    with pytest.raises(BundleError, match=f"{missing}: missing"):
        load_fast_tokenizer(folder)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("scale", "ten", "field 'scale' must be int or float"),
    ("scale", 0, "scale must be a finite number > 0"),
    ("min_token", None, "field 'min_token' must be int"),
    ("vocab_size", 1.5, "field 'vocab_size' must be int"),
    ("time_horizon", 0, "field 'time_horizon' must be >= 1"),
    ("vocab_size", 0, "field 'vocab_size' must be >= 1"),
    ("action_dim", True, "field 'action_dim' must be int or null"),
])
def test_a_bad_config_field_is_named_with_its_file(fast_tokenizer_dir, tmp_path, field, value, message):
    folder = _copy(fast_tokenizer_dir, tmp_path)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config[field] = value
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(BundleError, match=message) as error:
        load_fast_tokenizer(folder)
    assert CONFIG_FILE in str(error.value)


@pytest.mark.parametrize("name", [TOKENIZER_FILE, CONFIG_FILE])
def test_an_unreadable_file_is_named(fast_tokenizer_dir, tmp_path, name):
    folder = _copy(fast_tokenizer_dir, tmp_path)
    (folder / name).write_text("{not json")
    with pytest.raises(BundleError, match=name):
        load_fast_tokenizer(folder)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(BundleError, match="fast_tokenizer: no such folder"):
        load_fast_tokenizer(tmp_path / "fast_tokenizer")


def test_a_universal_tokenizer_without_a_chunk_shape_loads(fast_tokenizer_dir, tmp_path):
    """FAST's published processor_config.json has time_horizon and action_dim null: decode gets them."""
    folder = _copy(fast_tokenizer_dir, tmp_path)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config.update(time_horizon=None, action_dim=None, auto_map={"AutoProcessor": "processing_action_tokenizer"})
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    tokenizer = load_fast_tokenizer(folder)
    assert tokenizer.config.action_horizon is None and tokenizer.config.action_dim is None


def test_a_tokenizer_fitted_on_another_chunk_shape_is_refused_naming_the_field(tokenizer):
    horizon, action_dim = _shape(tokenizer)
    tokenizer.check_chunk_shape(horizon, action_dim)
    with pytest.raises(BundleError, match=f"{CONFIG_FILE}: field 'time_horizon' is {horizon}"):
        tokenizer.check_chunk_shape(horizon + 40, action_dim)


def test_encode_refuses_a_chunk_whose_coefficients_lie_beyond_the_tokenizer_range(tokenizer):
    horizon, action_dim = _shape(tokenizer)
    with pytest.raises(ValueError, match="are the actions normalized"):
        tokenizer.encode(np.full((horizon, action_dim), 100.0))


def test_encode_refuses_coefficients_it_cannot_spell_instead_of_dropping_them(tokenizer):
    """A code above the fitted range but below vocab_size has no byte symbol in this small tokenizer."""
    horizon, action_dim = _shape(tokenizer)
    coefficients = np.zeros((horizon, action_dim))
    coefficients[0, 0] = (tokenizer.config.vocab_size // 2 + tokenizer.config.min_token) / tokenizer.config.scale
    with pytest.raises(ValueError, match="cannot spell"):
        tokenizer.encode(idct_ortho(coefficients))


def test_the_dct_basis_is_orthonormal_and_idct_inverts_dct():
    rng = np.random.default_rng(0)
    for length in (1, 2, 10, 50):
        basis = dct_basis(length)
        np.testing.assert_allclose(basis @ basis.T, np.eye(length), atol=DCT_ATOL)
        x = rng.normal(size=(length, 3))
        np.testing.assert_allclose(idct_ortho(dct_ortho(x)), x, atol=DCT_ATOL)


def test_the_dct_of_a_constant_is_its_scaled_dc_term_alone():
    coefficients = dct_ortho(np.full((8, 1), 2.0))
    np.testing.assert_allclose(coefficients[:, 0], [2.0 * np.sqrt(8)] + [0.0] * 7, atol=DCT_ATOL)


def test_the_numpy_dct_equals_scipy():
    fft = pytest.importorskip("scipy.fft")
    x = np.random.default_rng(1).normal(size=(50, 7))
    np.testing.assert_allclose(dct_ortho(x), fft.dct(x, axis=0, norm="ortho"), atol=DCT_ATOL)
    np.testing.assert_allclose(idct_ortho(x), fft.idct(x, axis=0, norm="ortho"), atol=DCT_ATOL)
