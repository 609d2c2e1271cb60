"""Several clients on one loaded policy: requests within the window run as one batch, each with its own noise,
and each gets exactly what it would get alone (CPU, float32); one client's bad input fails only that client."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import websockets.sync.client
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from pi0edge.runtime.types import Observation

SEED = 11
LONG_WINDOW_MS = 5000.0  # the batch fills up long before: both requests surely join it


def connection_noise(policy, connection: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence(SEED).spawn(connection + 1)[connection])
    return rng.standard_normal((policy.manifest.action_horizon, policy.manifest.action_dim), dtype=np.float32)


def observation(policy, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"images": {"base_0_rgb": rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)},
            "state": rng.standard_normal(policy.robot_state_dim), "prompt": f"task number {seed}"}


def alone(reference, obs: dict, noise: np.ndarray) -> np.ndarray:
    return reference.infer(Observation(obs["images"], obs["state"], obs["prompt"]), noise=noise).actions


def infer_concurrently(clients, observations) -> list:
    results: list = [None] * len(clients)

    def call(i):
        try:
            results[i] = clients[i].infer(observations[i])
        except Exception as exc:  # noqa: BLE001 - the test reads it
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


@pytest.fixture(scope="module")
def bundle(tiny_bundle_factory):
    return tiny_bundle_factory()[0]


def batched_server(serving, bundle):
    from pi0edge.serve.batching import BatchConfig

    return serving(bundle, seed=SEED, batch=BatchConfig(max_batch=2, window_ms=LONG_WINDOW_MS))


def test_two_clients_run_as_one_batch_and_each_gets_exactly_its_unbatched_actions(bundle, serving):
    with batched_server(serving, bundle) as (server, reference):
        clients = [WebsocketClientPolicy("127.0.0.1", server.port) for _ in range(2)]
        observations = [observation(reference, seed) for seed in (1, 2)]
        results = infer_concurrently(clients, observations)
        for i, out in enumerate(results):
            assert out["server_timing"]["batch_size"] == 2
            expected = alone(reference, observations[i], connection_noise(reference, i))
            np.testing.assert_array_equal(out["actions"], expected)


def test_a_bad_observation_in_a_batch_fails_only_its_own_client(bundle, serving):
    with batched_server(serving, bundle) as (server, reference):
        clients = [WebsocketClientPolicy("127.0.0.1", server.port) for _ in range(2)]
        good = observation(reference, 1)
        strip = dict(good, images={"base_0_rgb": np.zeros((1, 1000, 3), np.uint8)})  # passes the map, not resize
        results = infer_concurrently(clients, [good, strip])
        np.testing.assert_array_equal(results[0]["actions"], alone(reference, good, connection_noise(reference, 0)))
        assert isinstance(results[1], RuntimeError) and "camera 'base_0_rgb'" in str(results[1])


def test_a_client_that_never_reads_its_answer_does_not_stall_another(bundle, serving):
    with serving(bundle, seed=SEED) as (server, reference):
        with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", compression=None) as silent:
            silent.recv()  # metadata
            silent.send(openpi_msgpack.packb(observation(reference, 1)))  # its answer is never read
            obs = observation(reference, 2)
            out = WebsocketClientPolicy("127.0.0.1", server.port).infer(obs)
            np.testing.assert_array_equal(out["actions"], alone(reference, obs, connection_noise(reference, 1)))
