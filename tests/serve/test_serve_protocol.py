"""`pi0edge serve` against the real openpi client: metadata, actions equal to Policy.infer with the same noise,
healthz, the API key, error frames, and other clients served after one errs."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading

import msgpack
import numpy as np
import pytest
import websockets.sync.client
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pi0edge.errors import ConfigError
from pi0edge.runtime.policy import Policy
from pi0edge.runtime.types import Observation
from pi0edge.serve import msgpack_numpy
from pi0edge.serve.map_file import resolve_obs_map
from pi0edge.serve.server import PolicyServer, ServeConfig

SEED = 7


def connection_noise(policy, seed: int, connection: int, count: int) -> list[np.ndarray]:
    """The noise the server draws for its `connection`-th connection (0-based): its own spawned generator."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(connection + 1)[connection])
    m = policy.manifest
    return [rng.standard_normal((m.action_horizon, m.action_dim), dtype=np.float32) for _ in range(count)]


def bundle_observation(policy, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images = {name: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for name in policy.camera_names[:2]}
    return {"images": images, "state": rng.standard_normal(policy.robot_state_dim), "prompt": "pick the red cube"}


def expected_actions(reference, obs: dict, noise: np.ndarray) -> np.ndarray:
    observation = Observation(images=obs["images"], state=np.asarray(obs["state"]), prompt=obs["prompt"])
    return reference.infer(observation, noise=noise).actions


@pytest.fixture(scope="module")
def bundle(tiny_bundle_factory):
    return tiny_bundle_factory()[0]


def test_msgpack_encoding_is_byte_identical_to_openpi_client():
    obs = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.uint8(3), "c": "text", "d": [1, 2.5]}
    packed = msgpack_numpy.packb(obs)
    assert packed == openpi_msgpack.packb(obs)
    back = msgpack_numpy.unpackb(openpi_msgpack.packb(obs))
    np.testing.assert_array_equal(back["a"], obs["a"])
    assert back["a"].dtype == np.float32 and back["b"] == np.uint8(3) and type(back["b"]) is np.uint8


def test_openpi_client_gets_metadata_and_the_actions_policy_infer_gives_with_the_same_noise(bundle, serving):
    with serving(bundle, seed=SEED) as (server, reference):
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        meta = client.get_server_metadata()
        assert meta["action_horizon"] == reference.action_horizon
        assert meta["action_dim"] == reference.robot_action_dim
        assert meta["cameras"] == list(reference.camera_names)
        assert meta["bundle"] == bundle.name  # the folder's name, not the server's path
        noises = connection_noise(reference, SEED, 0, 2)
        for i, noise in enumerate(noises):
            obs = bundle_observation(reference, seed=i)
            out = client.infer(obs)
            assert out["actions"].shape == (reference.action_horizon, reference.robot_action_dim)
            np.testing.assert_array_equal(out["actions"], expected_actions(reference, obs, noise))
            assert out["server_timing"]["infer_ms"] > 0 and out["policy_timing"]["infer_ms"] > 0
            assert ("prev_total_ms" in out["server_timing"]) == (i > 0)  # openpi: the previous request's round trip


def test_openpi_action_chunk_broker_steps_through_a_chunk_then_requests_the_next(bundle, serving):
    with serving(bundle, seed=SEED) as (server, reference):
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        horizon = client.get_server_metadata()["action_horizon"]
        broker = ActionChunkBroker(client, action_horizon=horizon)
        obs = [bundle_observation(reference, seed=i) for i in range(2)]
        first, second = (expected_actions(reference, o, n) for o, n in
                         zip(obs, connection_noise(reference, SEED, 0, 2), strict=True))
        steps = [broker.infer(obs[0] if step < horizon else obs[1]) for step in range(horizon + 2)]
    # One action per step: the first chunk's rows in order, then row 0 and 1 of the chunk asked for at step H.
    for step, out in enumerate(steps):
        assert out["actions"].shape == (reference.robot_action_dim,)
        want = first[step] if step < horizon else second[step - horizon]
        np.testing.assert_array_equal(out["actions"], want)
    assert "prev_total_ms" not in steps[horizon - 1]["server_timing"]  # all of the first chunk: one request
    assert "prev_total_ms" in steps[horizon]["server_timing"]  # the second request


def test_chw_images_give_the_same_actions_as_hwc(bundle, serving):
    with serving(bundle, seed=SEED) as (server, reference):
        obs = bundle_observation(reference)
        chw = dict(obs, images={k: np.ascontiguousarray(v.transpose(2, 0, 1)) for k, v in obs["images"].items()})
        out = WebsocketClientPolicy("127.0.0.1", server.port).infer(chw)
        np.testing.assert_array_equal(out["actions"],
                                      expected_actions(reference, obs, connection_noise(reference, SEED, 0, 1)[0]))


def test_each_connection_has_its_own_noise_stream(bundle, serving):
    with serving(bundle, seed=SEED) as (server, reference):
        first, second = (WebsocketClientPolicy("127.0.0.1", server.port) for _ in range(2))
        obs = bundle_observation(reference)
        got_second = second.infer(obs)["actions"]
        got_first = first.infer(obs)["actions"]
        np.testing.assert_array_equal(got_first,
                                      expected_actions(reference, obs, connection_noise(reference, SEED, 0, 1)[0]))
        np.testing.assert_array_equal(got_second,
                                      expected_actions(reference, obs, connection_noise(reference, SEED, 1, 1)[0]))


def http_get(port: int, path: str, headers: dict | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    status = conn.getresponse().status
    conn.close()
    return status


def test_healthz_answers_200_even_with_an_api_key(bundle, serving):
    with serving(bundle, api_key="s3cret") as (server, _):
        assert http_get(server.port, "/healthz") == 200


class GatedPolicy:
    """The real policy, whose infer waits until the test opens the gate (a long inference, made certain)."""

    def __init__(self, policy):
        self.policy, self.started, self.gate = policy, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def infer(self, *args, **kwargs):
        self.started.set()
        assert self.gate.wait(timeout=60)
        return self.policy.infer(*args, **kwargs)


def test_the_event_loop_answers_healthz_while_an_inference_runs(bundle, serving):
    gated = []
    with serving(bundle, wrap=lambda p: gated.append(GatedPolicy(p)) or gated[0]) as (server, reference):
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        result = []
        caller = threading.Thread(target=lambda: result.append(client.infer(bundle_observation(reference))))
        caller.start()
        assert gated[0].started.wait(timeout=60)
        assert http_get(server.port, "/healthz") == 200  # inference blocked on the loop would hang this
        gated[0].gate.set()
        caller.join(timeout=60)
        assert result[0]["actions"].shape == (reference.action_horizon, reference.robot_action_dim)


def test_api_key_refused_with_401_when_missing_or_wrong_and_accepted_when_right(bundle, serving):
    with serving(bundle, api_key="s3cret", seed=SEED) as (server, reference):
        for key in (None, "wrong"):
            with pytest.raises(InvalidStatus) as err:
                WebsocketClientPolicy("127.0.0.1", server.port, api_key=key)
            assert err.value.response.status_code == 401
        client = WebsocketClientPolicy("127.0.0.1", server.port, api_key="s3cret")
        obs = bundle_observation(reference)
        assert client.infer(obs)["actions"].shape == (reference.action_horizon, reference.robot_action_dim)


def raw_exchange(port: int, frame) -> tuple[str, int]:
    """Send one frame on a fresh connection -> (the server's answer, the close code that follows)."""
    with websockets.sync.client.connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
        ws.recv()  # metadata
        ws.send(frame)
        answer = ws.recv()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
        return answer, closed.value.rcvd.code


BAD_INPUTS = [
    ("missing state", lambda o: {k: v for k, v in o.items() if k != "state"}, "'state' is missing"),
    ("unknown key", lambda o: dict(o, stat=o["state"]), "unknown key(s) ['stat']"),
    ("short state", lambda o: dict(o, state=o["state"][:-1]), "'state': expected shape"),
    ("NaN state", lambda o: dict(o, state=np.where(np.arange(len(o["state"])) == 2, np.nan, o["state"])),
     "'state': element 2 is nan"),
    ("float image", lambda o: dict(o, images={"base_0_rgb": o["images"]["base_0_rgb"] / 255.0}),
     "'images/base_0_rgb': expected dtype uint8"),
    ("gray image", lambda o: dict(o, images={"base_0_rgb": o["images"]["base_0_rgb"][..., 0]}),
     "'images/base_0_rgb': expected shape"),
    ("unknown camera", lambda o: dict(o, images={"cam_top": o["images"]["base_0_rgb"]}),
     "unknown key(s) ['cam_top']"),
    ("prompt not text", lambda o: dict(o, prompt=3), "'prompt': expected a non-empty string"),
]


@pytest.mark.parametrize("mutate,message", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_an_error_frame_naming_it_then_1011_and_the_next_client_is_served(bundle, serving, mutate,
                                                                                         message):
    with serving(bundle) as (server, reference):
        obs = bundle_observation(reference)
        answer, code = raw_exchange(server.port, openpi_msgpack.packb(mutate(obs)))
        assert isinstance(answer, str) and message in answer and "Traceback" not in answer
        assert code == 1011
        with pytest.raises(RuntimeError, match="ObservationError"):  # what the openpi client raises
            WebsocketClientPolicy("127.0.0.1", server.port).infer(mutate(obs))
        out = WebsocketClientPolicy("127.0.0.1", server.port).infer(obs)
        assert out["actions"].shape == (reference.action_horizon, reference.robot_action_dim)


def array_frame(data: bytes, dtype: str, shape: list) -> bytes:
    return msgpack.packb({"state": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}})


@pytest.mark.parametrize("frame", [b"\xc1 not msgpack", array_frame(b"\0" * 3, "<f4", [4]),
                                   array_frame(b"\0" * 8, "|O", [1])],
                         ids=["not msgpack", "array data shorter than its shape", "object dtype"])
def test_a_frame_that_is_not_msgpack_numpy_gets_an_error_frame(bundle, serving, frame):
    with serving(bundle) as (server, _):
        answer, code = raw_exchange(server.port, frame)
        assert "not openpi msgpack-numpy" in answer and "Traceback" not in answer and code == 1011


def test_a_frame_over_the_size_limit_closes_only_that_connection(bundle, serving):
    with serving(bundle, max_message_bytes=4096) as (server, reference):
        obs = bundle_observation(reference)
        big = dict(obs, images={"base_0_rgb": np.zeros((100, 100, 3), np.uint8)})
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        with pytest.raises(ConnectionClosed) as closed:
            client.infer(big)
        assert closed.value.rcvd.code == 1009  # message too big
        small = dict(obs, images={"base_0_rgb": np.zeros((8, 8, 3), np.uint8)})
        out = WebsocketClientPolicy("127.0.0.1", server.port).infer(small)
        assert out["actions"].shape[0] == reference.action_horizon


def test_a_port_already_taken_is_a_config_error_naming_it(bundle):
    with socket.socket() as taken, Policy(bundle, "ort-cpu") as policy:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = PolicyServer(policy, resolve_obs_map(None, policy.camera_names, policy.robot_state_dim,
                                                      policy.robot_action_dim),
                              ServeConfig(port=port))
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            asyncio.run(server.serve())
