"""`pi0edge run` with `policy: {remote: ws://...}`: the loop driven by a real `pi0edge serve` server on a free
loopback port (in a thread of this process, as tests/serve starts it), a server killed and restarted mid-run,
a wrong API key, error frames, and the YAML's policy section."""

from __future__ import annotations

import asyncio
import re
import threading

import numpy as np
import pytest
import yaml
from robot_io_helpers import after, base_config_dict, make_config, merge

from pi0edge.cli import main
from pi0edge.errors import ConfigError
from pi0edge.robot_io.config import robot_config_from_dict
from pi0edge.robot_io.errors import PolicyRefusedError, PolicyUnavailableError, RemotePolicyError
from pi0edge.robot_io.loop import run_loop
from pi0edge.robot_io.recording import load_episode
from pi0edge.robot_io.remote_policy import RemotePolicy, control_deadline_ms
from pi0edge.runtime.types import Observation

pytest.importorskip("websockets")

LOWER, UPPER, MAX_VELOCITY_PER_S, RATE_HZ = -0.5, 0.5, 1.0, 20


class ServerThread:
    """A PolicyServer (serve's default map) on 127.0.0.1 in its own thread and event loop; stop() closes it as a
    server going away does, and a new one may start on the same port."""

    def __init__(self, policy, port: int = 0, api_key: str | None = None):
        from pi0edge.serve.map_file import resolve_obs_map
        from pi0edge.serve.server import PolicyServer, ServeConfig

        mapping = resolve_obs_map(None, policy.camera_names, policy.robot_state_dim,
                                  policy.robot_action_dim)
        self.server = PolicyServer(policy, mapping, ServeConfig(port=port, api_key=api_key, seed=0))
        self._ready, self._loop, self._stop, self._failure = threading.Event(), None, None, []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def serve():
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await self.server.serve(self._stop, on_ready=lambda port: self._ready.set())

        try:
            asyncio.run(serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._failure.append(exc)
            self._ready.set()

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(timeout=60)
        if self._failure:
            raise self._failure[0]
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def served_policy(tiny_bundle_factory):
    from pi0edge.runtime.policy import Policy

    bundle, _ = tiny_bundle_factory("pi0")
    policy = Policy(bundle, "ort-cpu")
    yield policy
    policy.close()


@pytest.fixture
def server(served_policy):
    server = ServerThread(served_policy).start()
    yield server
    server.stop()


def robot_dict(served, **override) -> dict:
    """The helpers' robot YAML fitted to the tiny bundle (6 joints), sync chunks, tight joint limits."""
    dof = served.robot_action_dim
    data = merge(base_config_dict(), {
        "rate_hz": RATE_HZ, "arm": {"dof": dof},
        "joints": {"names": [f"j{i}" for i in range(dof)], "action_index": list(range(dof)),
                   "state_index": list(range(dof))},
        "chunking": {"strategy": "sync", "n_execute": None},
        "safety": {"lower": [LOWER] * dof, "upper": [UPPER] * dof, "max_velocity_per_s": MAX_VELOCITY_PER_S,
                   "stale_frame_s": 1.0, "inference_timeout_s": 10.0},
    })
    return merge(data, override)


def assert_commands_within_limits(commands: np.ndarray) -> None:
    assert np.all(commands >= LOWER - 1e-9) and np.all(commands <= UPPER + 1e-9)
    steps = np.abs(np.diff(commands, axis=0))
    assert np.all(steps <= MAX_VELOCITY_PER_S / RATE_HZ + 1e-9), steps.max()


def observation_for(policy) -> Observation:
    rng = np.random.default_rng(0)
    return Observation(images={"base_0_rgb": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)},
                       state=np.zeros(policy.robot_state_dim, np.float32), prompt="pick")


def test_pi0edge_run_with_a_remote_policy_needs_no_bundle_and_executes_commands_within_limits(
        tmp_path, served_policy, server, capsys):
    config_path, episode_path = tmp_path / "robot.yaml", tmp_path / "run.episode"
    config_path.write_text(yaml.safe_dump(robot_dict(served_policy, policy={"remote": server.url, "timeout_s": 10})))
    code = main(["run", "--config", str(config_path), "--prompt", "pick", "--duration-s", "1.5", "--no-status",
                 "--record", str(episode_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert int(re.search(r"inference: (\d+) chunks", out.out).group(1)) > 0, out.out
    assert int(re.search(r"executing (\d+)", out.out).group(1)) > 0 and "policy_error" not in out.out, out.out
    episode = load_episode(episode_path)
    assert (episode.arrays["tick_status"] == "run").any()
    assert_commands_within_limits(episode.commands)


def test_metadata_gives_the_loop_the_bundles_cameras_horizon_and_dims(served_policy, server):
    with RemotePolicy(server.url) as remote:
        assert remote.camera_names == tuple(served_policy.camera_names)
        assert remote.action_horizon == served_policy.action_horizon
        assert (remote.robot_state_dim, remote.robot_action_dim) == (served_policy.robot_state_dim,
                                                                      served_policy.robot_action_dim)
        chunk = remote.infer(observation_for(served_policy))
        assert chunk.actions.shape == (served_policy.action_horizon, served_policy.robot_action_dim)
        assert chunk.actions.dtype == np.float32 and chunk.timings_ms["total_ms"] > 0


def test_a_server_killed_mid_run_is_a_policy_error_hold_and_the_loop_reconnects_to_a_new_one(
        tmp_path, served_policy):
    first = ServerThread(served_policy).start()
    port = first.server.port
    restarted: list[ServerThread] = []
    remote = RemotePolicy(first.url, timeout_s=10)
    after(1.5, first.stop)
    after(3.0, lambda: restarted.append(ServerThread(served_policy, port=port).start()))
    episode_path = tmp_path / "run.episode"
    try:
        stats = run_loop(robot_config_from_dict(robot_dict(served_policy)), remote, "pick", 5.0,
                         record_path=str(episode_path))
    finally:
        remote.close()
        for server in restarted:
            server.stop()
    assert stats.stop_reason == "duration reached"  # the outage did not end the run
    errors = [e for e in stats.events if e.kind == "policy_error"]
    assert errors and all(f"127.0.0.1:{port}" in e.reason for e in errors), stats.summary()
    assert all("PolicyUnavailableError" in e.reason for e in errors), stats.summary()
    status = load_episode(episode_path).arrays["tick_status"]
    first_error, last_error = errors[0].tick, errors[-1].tick
    assert (status[:first_error] == "run").any()  # executing before the kill
    assert (status[first_error:last_error + 1] == "hold:policy_error").any()  # holding during the outage
    assert (status[last_error + 1:] == "run").any(), stats.summary()  # executing again from the new server
    assert_commands_within_limits(load_episode(episode_path).commands)


def test_a_wrong_api_key_is_refused_naming_the_key_and_the_variable_it_came_from(
        tmp_path, served_policy, monkeypatch, capsys):
    keyed = ServerThread(served_policy, api_key="the-right-key").start()
    try:
        config_path = tmp_path / "robot.yaml"
        config_path.write_text(yaml.safe_dump(robot_dict(
            served_policy, policy={"remote": keyed.url, "api_key_env": "PI0EDGE_TEST_KEY"})))
        monkeypatch.setenv("PI0EDGE_TEST_KEY", "a-wrong-key")
        assert main(["run", "--config", str(config_path), "--prompt", "pick", "--duration-s", "0.5"]) == 1
        err = capsys.readouterr().err
        assert "401" in err and "$PI0EDGE_TEST_KEY" in err and "was refused" in err and "Traceback" not in err
        with pytest.raises(RemotePolicyError, match="no API key was sent"):
            RemotePolicy(keyed.url)
        monkeypatch.setenv("PI0EDGE_TEST_KEY", "the-right-key")
        assert main(["run", "--config", str(config_path), "--prompt", "pick", "--duration-s", "0.5",
                     "--no-status"]) == 0
    finally:
        keyed.stop()


def test_an_api_key_variable_that_is_not_set_is_named(tmp_path, served_policy, monkeypatch, capsys):
    config_path = tmp_path / "robot.yaml"
    config_path.write_text(yaml.safe_dump(robot_dict(
        served_policy, policy={"remote": "ws://127.0.0.1:1", "api_key_env": "PI0EDGE_UNSET_KEY"})))
    monkeypatch.delenv("PI0EDGE_UNSET_KEY", raising=False)
    assert main(["run", "--config", str(config_path), "--prompt", "pick"]) == 1
    assert "policy.api_key_env: the environment variable PI0EDGE_UNSET_KEY is not set" in capsys.readouterr().err


def test_an_error_frame_raises_the_servers_message_and_the_next_request_reconnects(served_policy, server):
    with RemotePolicy(server.url) as remote:
        bad = Observation(images={"no_such_camera": np.zeros((8, 8, 3), np.uint8)},
                          state=np.zeros(remote.robot_state_dim, np.float32), prompt="pick")
        with pytest.raises(RemotePolicyError, match="ObservationError.*no_such_camera") as info:
            remote.infer(bad)
        assert not isinstance(info.value, PolicyUnavailableError)  # a bad request counts toward errors in a row
        assert remote.infer(observation_for(served_policy)).actions.shape[0] == remote.action_horizon


def test_a_server_that_is_not_there_is_unavailable_at_start_naming_its_address(served_policy):
    probe = ServerThread(served_policy).start()
    url = probe.url
    probe.stop()  # a port that was free a moment ago, and nobody listens on now
    with pytest.raises(PolicyUnavailableError, match=re.escape(url) + ": cannot connect"):
        RemotePolicy(url, timeout_s=2)


def test_a_dropped_connection_raises_unavailable_and_reconnect_attempts_are_spaced(served_policy, monkeypatch):
    from pi0edge.robot_io import remote_policy

    waits_s: list[float] = []
    monkeypatch.setattr(remote_policy, "_sleep", waits_s.append)
    first = ServerThread(served_policy).start()
    remote = RemotePolicy(first.url, timeout_s=5)
    first.stop()
    try:
        with pytest.raises(PolicyUnavailableError, match="connection lost.*the next request reconnects"):
            remote.infer(observation_for(served_policy))
        for _ in range(2):
            with pytest.raises(PolicyUnavailableError, match="cannot connect"):
                remote.infer(observation_for(served_policy))
        # The attempt right after a failed one waited (its share of) the interval first.
        assert waits_s and 0 < waits_s[-1] <= remote_policy.RECONNECT_INTERVAL_S
    finally:
        remote.close()


@pytest.mark.parametrize("section, words", [
    ({"api_key_env": "KEY"}, "policy.remote: missing"),
    ({"remote": "http://robot-gpu:8000"}, "policy.remote: must be a websocket address"),
    ({"remote": 8000}, "policy.remote: must be a websocket address"),
    ({"remote": "ws://h:1", "timeout_s": 0}, "policy.timeout_s: must be a number > 0"),
    ({"remote": "ws://h:1", "timeout_s": "5"}, "policy.timeout_s: must be a number > 0"),
    ({"remote": "ws://h:1", "api_key_env": ""}, "policy.api_key_env: must name an environment variable"),
    ({"remote": "ws://h:1", "api_key": "secret"}, "policy: unknown field(s) ['api_key']"),
    ("ws://h:1", "policy: expected a mapping"),
])
def test_a_bad_policy_section_is_refused_naming_the_field(section, words):
    with pytest.raises(ConfigError) as info:
        make_config(policy=section)
    assert words in str(info.value)


def test_run_refuses_both_bundle_and_remote_and_neither_naming_the_flags(tmp_path, capsys):
    with_remote, without = tmp_path / "remote.yaml", tmp_path / "plain.yaml"
    with_remote.write_text(yaml.safe_dump({**base_config_dict(), "policy": {"remote": "ws://127.0.0.1:1"}}))
    without.write_text(yaml.safe_dump(base_config_dict()))
    assert main(["run", "--config", str(with_remote), "--bundle", "b", "--prompt", "p"]) == 1
    err = capsys.readouterr().err
    assert "--bundle b and policy.remote ws://127.0.0.1:1" in err and "not both" in err
    assert main(["run", "--config", str(without), "--prompt", "p"]) == 1
    err = capsys.readouterr().err
    assert "no policy: give --bundle DIR, or `policy: {remote: ws://host:port}`" in err


def test_pi0edge_serve_killed_with_sigkill_mid_run_holds_the_arm_and_pi0edge_run_finishes(
        tmp_path, tiny_bundle_factory, served_policy, capsys):
    import signal
    import subprocess
    import sys

    bundle, _ = tiny_bundle_factory("pi0")
    proc = subprocess.Popen([sys.executable, "-m", "pi0edge.cli", "serve", str(bundle), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("pi0edge serve: ws://127.0.0.1:"), line
        config_path, episode_path = tmp_path / "robot.yaml", tmp_path / "run.episode"
        config_path.write_text(yaml.safe_dump(robot_dict(served_policy, policy={"remote": line.split()[-1]})))
        after(1.5, lambda: proc.send_signal(signal.SIGKILL))  # no close frame: the socket just goes
        code = main(["run", "--config", str(config_path), "--prompt", "pick", "--duration-s", "3", "--no-status",
                     "--record", str(episode_path)])
    finally:
        proc.kill()
        proc.wait(timeout=30)
    out = capsys.readouterr().out
    assert code == 0 and "stopped: duration reached" in out, out
    assert "policy_error" in out and "PolicyUnavailableError" in out, out
    status = load_episode(episode_path).arrays["tick_status"]
    first_hold = int(np.flatnonzero(status == "hold:policy_error")[0])
    assert (status[:first_hold] == "run").any() and (status[first_hold:] != "run").all()


class FakeServer:
    """A websocket server that sends `metadata[i]` to its i-th connection (the last one to later ones) and
    answers each frame with zero actions of the first metadata's shape: what `pi0edge serve` must not do."""

    def __init__(self, *metadata: dict):
        from websockets.sync.server import serve

        from pi0edge.serve.msgpack_numpy import packb

        self.connections = 0

        def handle(ws):
            meta = metadata[min(self.connections, len(metadata) - 1)]
            self.connections += 1
            ws.send(packb(meta))
            shape = (metadata[0]["action_horizon"], metadata[0]["action_dim"])
            for _ in ws:
                ws.send(packb({"actions": np.zeros(shape, np.float32)}))

        self._server = serve(handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


SHAPE = {"cameras": ["base_0_rgb"], "action_horizon": 4, "action_dim": 3, "state_dim": 3, "obs_map": "bundle"}


@pytest.mark.parametrize("metadata, words", [
    ({"server": "openpi"}, "metadata lacks ['cameras', 'action_horizon', 'action_dim', 'state_dim']"),
    ({**SHAPE, "action_horizon": "4"}, "is not a policy shape"),
    ({**SHAPE, "obs_map": "droid"}, "takes the 'droid' observation map"),
])
def test_a_server_whose_metadata_does_not_fit_is_refused_at_start_naming_why(metadata, words):
    server = FakeServer(metadata)
    try:
        with pytest.raises(RemotePolicyError, match=re.escape(words)):
            RemotePolicy(server.url)
    finally:
        server.close()


def test_a_server_that_comes_back_with_another_policy_shape_is_an_error_not_a_transient(monkeypatch):
    from pi0edge.robot_io import remote_policy

    monkeypatch.setattr(remote_policy, "_sleep", lambda s: None)
    server = FakeServer(SHAPE, {**SHAPE, "action_horizon": 8})
    try:
        remote = RemotePolicy(server.url)
        obs = Observation(images={}, state=np.zeros(3, np.float32), prompt="pick")
        assert remote.infer(obs).actions.shape == (4, 3)
        remote._drop()  # as a dropped connection leaves it
        with pytest.raises(RemotePolicyError, match="another policy shape") as info:
            remote.infer(obs)
        assert not isinstance(info.value, PolicyUnavailableError)
    finally:
        server.close()


@pytest.mark.parametrize("chunking, safety, timeout_s, expected_ms", [
    ({"strategy": "sync"}, {"inference_timeout_s": 2.0}, 5.0, 2000.0),  # the loop's own wait
    ({"strategy": "sync"}, {"inference_timeout_s": 2.0}, 0.5, 500.0),  # ... or the request's, the smaller
    ({"strategy": "async", "n_execute": 6}, {"inference_timeout_s": 2.0}, 5.0, (10 - 6) * 1000 / RATE_HZ),
    ({"strategy": "async", "n_execute": None}, {"inference_timeout_s": 2.0}, 5.0, (10 - 5) * 1000 / RATE_HZ),
    ({"strategy": "async", "n_execute": 10}, {"inference_timeout_s": 2.0}, 5.0, 1 * 1000 / RATE_HZ),  # >= 1 tick
    ({"strategy": "ensemble", "n_execute": None}, {"inference_timeout_s": 0.3}, 5.0, 300.0),  # 9 ticks, capped
])
def test_the_control_deadline_is_when_the_loop_runs_out_of_actions(served_policy, chunking, safety, timeout_s,
                                                                   expected_ms):
    assert served_policy.action_horizon == 10  # the cases above count ticks of the tiny preset's horizon
    config = robot_config_from_dict(robot_dict(served_policy, chunking=chunking, safety=safety,
                                               policy={"remote": "ws://h:1", "timeout_s": timeout_s}))
    assert control_deadline_ms(config, served_policy.action_horizon) == pytest.approx(expected_ms)


class SlowPolicy:
    """The real policy, each call delayed by `delay_s`: a server whose inference outlasts the robot's deadline."""

    def __init__(self, policy, delay_s: float):
        self._policy, self._delay_s = policy, delay_s

    def __getattr__(self, name):
        return getattr(self._policy, name)

    def infer(self, *args, **kwargs):
        import dataclasses
        import time

        start = time.perf_counter()
        time.sleep(self._delay_s)
        chunk = self._policy.infer(*args, **kwargs)
        # Its total, as Policy reports one: the server's inference time estimate is made of it.
        total_ms = (time.perf_counter() - start) * 1e3
        return dataclasses.replace(chunk, timings_ms={**chunk.timings_ms, "total_ms": total_ms})


def test_a_deadline_the_server_cannot_meet_is_refused_and_the_same_connection_goes_on(served_policy):
    server = ServerThread(SlowPolicy(served_policy, delay_s=0.2)).start()
    try:
        with RemotePolicy(server.url) as remote:
            remote.deadline_ms = 1.0
            remote.infer(observation_for(served_policy))  # nothing measured yet: admitted; seeds the estimate
            connection = remote._ws
            with pytest.raises(PolicyRefusedError, match=r"refused the request: DeadlineUnmeetable: deadline_ms 1 "):
                remote.infer(observation_for(served_policy))
            remote.deadline_ms = 60_000.0
            assert remote.infer(observation_for(served_policy)).actions.shape[0] == remote.action_horizon
            assert remote._ws is connection  # a refusal is an answer: no reconnect
    finally:
        server.stop()


def test_pi0edge_run_holds_on_refused_requests_names_them_and_does_not_stop(tmp_path, served_policy, capsys):
    # async, n_execute 5 at 20 Hz: a 250 ms deadline, which a server taking 400 ms per chunk refuses.
    server = ServerThread(SlowPolicy(served_policy, delay_s=0.4)).start()
    config_path = tmp_path / "robot.yaml"
    config_path.write_text(yaml.safe_dump(robot_dict(served_policy, policy={"remote": server.url},
                                                     chunking={"strategy": "async", "n_execute": 5})))
    try:
        code = main(["run", "--config", str(config_path), "--prompt", "pick", "--duration-s", "2", "--no-status"])
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert code == 0 and "stopped: duration reached" in out, out
    assert "policy_error: policy.infer raised PolicyRefusedError" in out and "deadline_ms 250 " in out, out
