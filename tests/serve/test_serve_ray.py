"""`pi0edge serve --ray`: the serve protocol as a Ray Serve application on a local Ray instance (2 CPUs), one
application per openpi preset with 2 replicas each, driven by the real openpi client: actions of the right
shape, connections pinned to replicas and spread over both, the API key, /healthz and error frames."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import websockets.sync.client
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from test_serve_obs_maps import ROBOTS

from pi0edge.manifest import load_manifest
from pi0edge.serve.map_file import resolve_obs_map
from pi0edge.serve.ray_app import PolicySource, RayConfig, build_app
from pi0edge.serve.session import ServeConfig

pytest.importorskip("ray.serve", reason="the `ray` extra (pip install 'pi0edge[ray]') is not installed")

API_KEY = "libero-key"  # the libero application wants it; the others take none
REPLICAS = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_pi0edge_serve_ray_starts_replicas_that_openpi_clients_reach_and_stops_on_ctrl_c(tiny_bundle_factory):
    # First in the file: its own local Ray instance, before the fixture below starts one in this process.
    bundle, port = tiny_bundle_factory()[0], free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pi0edge.cli", "serve", str(bundle), "--ray", "--replicas", "2",
                             "--cpus-per-replica", "0.3", "--port", str(port), "--backend", "ort-cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line == f"pi0edge serve: ws://127.0.0.1:{port}\n", proc.stderr.read() if not line else line
        clients = [WebsocketClientPolicy("127.0.0.1", port) for _ in range(4)]
        assert len({client.get_server_metadata()["replica"] for client in clients}) == 2
        rng = np.random.default_rng(0)
        obs = {"images": {"base_0_rgb": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)},
               "state": rng.standard_normal(clients[0].get_server_metadata()["state_dim"]), "prompt": "stack"}
        meta = clients[0].get_server_metadata()
        assert clients[0].infer(obs)["actions"].shape == (meta["action_horizon"], meta["action_dim"])
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130  # interrupted: Serve and the local Ray instance shut down


def test_pi0edge_serve_ray_refuses_port_0_before_starting_ray(tiny_bundle_factory):
    result = subprocess.run([sys.executable, "-m", "pi0edge.cli", "serve", str(tiny_bundle_factory()[0]), "--ray",
                             "--port", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "--port 0 with --ray" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def ray_serve(robot_bundle_factory):
    """-> the proxy's base ws:// url; one application per preset at /<preset>/ (Starlette matches the websocket
    route `/` below a route prefix only with the slash)."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        apps = []
        for preset, (state_dim, action_dim, _) in ROBOTS.items():
            bundle = robot_bundle_factory(state_dim, action_dim)
            cameras = tuple(load_manifest(bundle, verify_checksums=False).cameras)
            obs_map = resolve_obs_map(preset, cameras, state_dim, action_dim)
            config = ServeConfig(port=port, seed=0, api_key=API_KEY if preset == "libero" else None)
            ray_config = RayConfig(replicas=REPLICAS, cpus_per_replica=0.3, route_prefix=f"/{preset}")
            app = build_app(PolicySource(str(bundle), obs_map, "ort-cpu"), config, ray_config, app_name=preset)
            apps.append(serve.RunTarget(app, name=preset, route_prefix=ray_config.route_prefix))
        serve.run_many(apps)  # the replicas of the three start together
        yield f"ws://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.parametrize("preset", sorted(ROBOTS))
def test_openpi_client_gets_actions_of_the_right_shape_for_each_preset_over_ray_serve(ray_serve, preset):
    state_dim, action_dim, example = ROBOTS[preset]
    client = WebsocketClientPolicy(f"{ray_serve}/{preset}/", api_key=API_KEY if preset == "libero" else None)
    meta = client.get_server_metadata()
    assert meta["obs_map"] == preset and meta["replica"]
    sent, _ = example(np.random.default_rng(0))
    out = client.infer(sent)
    assert out["actions"].shape == (meta["action_horizon"], action_dim) and out["actions"].dtype == np.float32
    assert np.isfinite(out["actions"]).all() and out["server_timing"]["batch_size"] == 1


def test_connections_are_pinned_to_a_replica_and_spread_over_both(ray_serve):
    _, _, example = ROBOTS["droid"]
    clients = [WebsocketClientPolicy(f"{ray_serve}/droid/") for _ in range(2 * REPLICAS)]
    replicas = [client.get_server_metadata()["replica"] for client in clients]
    assert len(set(replicas)) == REPLICAS, replicas
    sent, _ = example(np.random.default_rng(1))
    for client in clients:  # each connection's answers keep coming from the replica it was pinned to
        first = client.infer(sent)
        assert "prev_total_ms" in client.infer(sent)["server_timing"] and "prev_total_ms" not in first["server_timing"]


def test_a_missing_api_key_is_refused_at_the_handshake(ray_serve):
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        WebsocketClientPolicy(f"{ray_serve}/libero/")
    assert refused.value.response.status_code == 403
    with pytest.raises(websockets.exceptions.InvalidStatus):
        WebsocketClientPolicy(f"{ray_serve}/libero/", api_key="wrong")


def test_healthz_answers_ok(ray_serve):
    url = ray_serve.replace("ws://", "http://") + "/aloha/healthz"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200 and response.read() == b"OK\n"


def test_a_bad_observation_gets_an_error_frame_naming_the_key_then_close_1011(ray_serve):
    with websockets.sync.client.connect(f"{ray_serve}/droid/", compression=None) as ws:
        ws.recv()  # the metadata
        ws.send(openpi_msgpack.packb({"observation/state": np.zeros(8), "prompt": "x"}))
        message = ws.recv()
        assert isinstance(message, str) and message.startswith("ObservationError") and "observation/state" in message
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            ws.recv()
        assert closed.value.rcvd.code == 1011
