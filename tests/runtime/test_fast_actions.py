"""Pi0-FAST's decoded tokens read back into actions: "Action: " + FAST tokens + "|" is a chunk; anything else is
flagged (and the policy makes it NaN), never silently executed."""

from __future__ import annotations

import numpy as np
import pytest

from pi0edge.runtime.fast_actions import ActionTokenReader
from pi0edge.runtime.fast_tokens import action_token_to_paligemma


@pytest.fixture(scope="module")
def reader(tiny_bundle_factory) -> ActionTokenReader:
    from pi0edge.manifest import load_manifest

    bundle, _ = tiny_bundle_factory("pi0fast")
    m = load_manifest(bundle)
    return ActionTokenReader(m.path(m.tokenizer_file), m.path(m.fast.tokenizer_dir), vocab_size=m.vocab_size,
                             fast_skip_tokens=m.fast.fast_skip_tokens, action_horizon=m.action_horizon,
                             action_dim=m.fast.action_dim)


def _smooth_chunk(reader: ActionTokenReader) -> np.ndarray:
    t = np.linspace(0.0, 1.0, reader.action_horizon)[:, None]
    return (0.3 * np.sin(2 * np.pi * 0.7 * t + np.arange(reader.action_dim)[None]) + 0.1).astype(np.float32)


def _model_ids(reader: ActionTokenReader, actions: np.ndarray) -> list[int]:
    """What a model that learned the chunk would write: "Action: ", the FAST tokens as PaliGemma ids, "|"."""
    fast_ids = reader.fast.encode(actions)
    return [*reader.prefix_ids, *action_token_to_paligemma(fast_ids, reader.vocab_size, reader.fast_skip_tokens),
            int(reader.end_ids[0])]


def test_a_well_formed_decode_reads_back_the_chunk_within_the_quantization_step(reader):
    actions = _smooth_chunk(reader)
    decoded = reader(np.array(_model_ids(reader, actions) + [7, 7, 7]))  # what follows the marker is ignored
    assert decoded.well_formed, decoded.reason
    step = 1.0 / reader.fast.config.scale  # one quantization step per DCT coefficient (orthonormal inverse)
    assert np.abs(decoded.actions - actions).max() <= step * np.sqrt(actions.size) / 2


@pytest.mark.parametrize(("cut", "expected"), [
    (lambda ids, n: ids[:-1], "no end-of-action marker"),
    (lambda ids, n: ids[n:], "does not start with 'Action: '"),
    (lambda ids, n: ids[:n] + ids[n + 2:], "coefficients, expected"),
])
def test_a_malformed_decode_still_has_the_chunk_shape_but_is_flagged_with_its_reason(reader, cut, expected):
    ids = _model_ids(reader, _smooth_chunk(reader))
    decoded = reader(np.array(cut(ids, len(reader.prefix_ids))))
    assert not decoded.well_formed and expected in decoded.reason
    assert decoded.actions.shape == (reader.action_horizon, reader.action_dim)
