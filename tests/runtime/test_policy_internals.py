"""The public debugging view of a chunk (`Policy.infer_internals`) and the Backend protocol's completeness."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
from test_policy import raw_observation  # tests/runtime/test_policy.py

from pi0edge import contract as c
from pi0edge.runtime import ChunkInternals, Policy
from pi0edge.runtime.backends.base import Backend
from pi0edge.runtime.backends.ort import OrtBackend
from pi0edge.runtime.backends.tensorrt import TensorRTBackend


@pytest.mark.parametrize("whole_loop", [True, False])
def test_infer_internals_returns_the_chunk_its_normalized_actions_and_the_kv_cache(tiny_bundle_factory,
                                                                                    whole_loop):
    from pi0edge.export.optimize import DEFAULT_OPTIMIZE

    bundle_dir, _ = tiny_bundle_factory("pi0", optimize=DEFAULT_OPTIMIZE)  # has the loop graph
    with Policy(bundle_dir, whole_loop=whole_loop) as policy:
        m = policy.manifest
        obs = raw_observation(policy, 0)
        noise = np.random.default_rng(1).standard_normal((m.action_horizon, m.action_dim), dtype=np.float32)
        chunk, internals = policy.infer_internals(obs, noise=noise)
        assert isinstance(internals, ChunkInternals)
        np.testing.assert_array_equal(chunk.actions, policy.infer(obs, noise=noise).actions)  # same chunk as infer
        assert internals.normalized_actions.shape == (1, m.action_horizon, m.action_dim)
        # the actions are the normalized ones cropped and unnormalized, nothing else in between
        np.testing.assert_array_equal(policy.finish_actions(internals.normalized_actions)[0], chunk.actions)
        for name, array in ((c.PAST_KEYS, internals.past_keys), (c.PAST_VALUES, internals.past_values),
                            (c.PREFIX_MASK, internals.prefix_mask)):
            spec = m.graphs[c.PREFIX_GRAPH].io(name)
            assert list(array.shape) == [1 if d == "B" else d for d in spec["shape"]]
            assert array.dtype == np.dtype(c.NUMPY_DTYPES[spec["dtype"]])
        assert internals.prefix_mask.any() and np.isfinite(internals.past_keys).all()


def _policy_backend_members() -> set[str]:
    """Every `self.backend.<member>` that runtime/policy.py reads."""
    import pi0edge.runtime.policy as policy_module

    tree = ast.parse(Path(policy_module.__file__).read_text())
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "backend" and getattr(node.value.value, "id", None) == "self"}


def _protocol_members() -> set[str]:
    members = {name for name, _ in inspect.getmembers(Backend, inspect.isfunction)}
    return members | set(Backend.__annotations__)


def test_backend_protocol_names_every_member_the_policy_uses():
    assert _policy_backend_members() - _protocol_members() == set()


def test_both_backends_have_every_member_of_the_protocol(tiny_bundle_factory):
    with Policy(tiny_bundle_factory("pi0")[0]) as policy:
        assert isinstance(policy.backend, OrtBackend)
        assert {m for m in _protocol_members() if not hasattr(policy.backend, m)} == set()
    # TensorRT cannot start here: its class must define the methods, and set the attributes in __init__.
    init = inspect.getsource(TensorRTBackend)
    missing = {m for m in _protocol_members() if not hasattr(TensorRTBackend, m) and f"self.{m} =" not in init}
    assert missing == set()
