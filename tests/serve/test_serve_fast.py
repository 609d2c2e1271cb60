"""`pi0edge serve` with a Pi0-FAST bundle, against the real openpi client: the chunk Policy.infer gives, of the
same shape; a malformed decode reaches the client as NaN actions, which the robot side refuses."""

from __future__ import annotations

import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from pi0edge.runtime.types import Observation


def test_openpi_client_gets_the_pi0fast_chunk_policy_infer_gives(tiny_bundle_factory, serving):
    bundle, _ = tiny_bundle_factory("pi0fast")
    with serving(bundle, seed=7) as (server, reference):
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        assert client.get_server_metadata()["action_horizon"] == reference.action_horizon
        rng = np.random.default_rng(0)
        obs = {"images": {name: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for name in reference.camera_names},
               "state": rng.standard_normal(reference.robot_state_dim), "prompt": "pick the red cube"}
        out = client.infer(obs)
        expected = reference.infer(Observation(images=obs["images"], state=np.asarray(obs["state"]),
                                               prompt=obs["prompt"]))
    assert out["actions"].shape == (reference.action_horizon, reference.robot_action_dim)
    np.testing.assert_array_equal(out["actions"], expected.actions)  # greedy: the server's noise plays no part
    assert expected.malformed and np.isnan(out["actions"]).all()  # random weights: refused on the robot side
