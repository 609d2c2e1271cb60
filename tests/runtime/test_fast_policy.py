"""`Policy` on a Pi0-FAST bundle: sampling is reproducible from the seed; the flow-matching step count is refused."""

from __future__ import annotations

import numpy as np
import pytest

from pi0edge.errors import ObservationError
from pi0edge.runtime import Policy
from pi0edge.runtime.profile import synthetic_observation


@pytest.fixture(scope="module")
def bundle(tiny_bundle_factory):
    return tiny_bundle_factory("pi0fast")[0]


def _tokens(bundle, **options) -> np.ndarray:
    with Policy(bundle, **options) as policy:
        feeds = policy.preprocess([synthetic_observation(policy)])
        return policy.fast.decoder.decode(feeds, policy.fast.reader.end_ids, policy.fast.temperature,
                                          policy.rng).token_ids


def test_sampled_decoding_is_reproducible_from_the_seed_and_differs_from_greedy(bundle):
    first = _tokens(bundle, temperature=1.0, seed=3)
    assert np.array_equal(first, _tokens(bundle, temperature=1.0, seed=3))
    assert not np.array_equal(first, _tokens(bundle, temperature=1.0, seed=4))
    greedy = _tokens(bundle, seed=3)
    assert np.array_equal(greedy, _tokens(bundle, seed=4))  # temperature 0: the seed plays no part
    assert not np.array_equal(first, greedy)


def test_num_steps_and_a_negative_temperature_are_refused_and_noise_plays_no_part(bundle):
    with Policy(bundle) as policy:
        obs = synthetic_observation(policy)
        with pytest.raises(ObservationError, match="temperature=T, seed=N"):
            policy.infer(obs, num_steps=5)
        # pi0edge serve hands every policy a noise: a greedy Pi0-FAST chunk is the same with or without it
        with_noise = policy.infer(obs, noise=np.ones((10, 8), np.float32))
        np.testing.assert_array_equal(with_noise.actions, policy.infer(obs).actions)
        assert with_noise.malformed == policy.infer(obs).malformed
    with pytest.raises(ObservationError, match="temperature must be >= 0"):
        Policy(bundle, temperature=-1.0)


def test_a_flow_matching_bundle_refuses_a_temperature(tiny_bundle_factory):
    with pytest.raises(ObservationError, match="Pi0-FAST option"):
        Policy(tiny_bundle_factory("pi0")[0], temperature=0.5)


def test_a_model_that_writes_a_well_formed_answer_gives_its_chunk_in_robot_units(answering_fast_bundle):
    bundle, normalized = answering_fast_bundle
    with Policy(bundle) as policy:
        chunk = policy.infer(synthetic_observation(policy))
        expected = policy.finish_actions(normalized[None])[0]  # the chunk in robot units
        std = policy.manifest.norm_stats.action.b
    assert chunk.malformed is None and np.isfinite(chunk.actions).all()
    assert chunk.timings_ms["tokens"] < policy.manifest.fast.max_action_tokens  # it stopped at "|"
    # FAST's quantization: at most 0.5 / scale per DCT coefficient, sqrt(H) of them per action (docs/model.md)
    bound = 0.5 / 10.0 * np.sqrt(normalized.shape[0]) * std
    assert (np.abs(chunk.actions - expected) <= bound).all()


def test_infer_internals_gives_the_decode_cache_and_the_normalized_chunk(answering_fast_bundle):
    bundle, normalized = answering_fast_bundle
    with Policy(bundle) as policy:
        chunk, internals = policy.infer_internals(synthetic_observation(policy))
        slots = policy.manifest.fast.cache_len
    assert internals.past_keys.shape[2] == slots and internals.prefix_mask.shape == (1, slots)
    # the valid slots: the prefix's, then one per decoded token but the last (its K/V are never needed)
    prefix_valid = int(internals.prefix_mask[0, :slots - policy.manifest.fast.max_action_tokens].sum())
    assert internals.prefix_mask[0].sum() == prefix_valid + chunk.timings_ms["tokens"] - 1
    assert np.abs(internals.normalized_actions[0] - normalized).max() <= 0.5 / 10.0 * np.sqrt(normalized.shape[0])
