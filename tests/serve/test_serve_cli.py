"""`pi0edge serve` as a user runs it: a subprocess with the CLI's defaults, an openpi client talking to it."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed

from pi0edge.runtime.policy import Policy
from pi0edge.runtime.types import Observation


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pi0edge.cli", "serve", *args]


def test_pi0edge_serve_answers_an_openpi_client_with_the_policys_actions_and_applies_its_size_limit(
        tiny_bundle_factory):
    bundle = tiny_bundle_factory()[0]
    proc = subprocess.Popen(serve_command(str(bundle), "--port", "0", "--seed", "5", "--max-message-mib", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("pi0edge serve: ws://127.0.0.1:"), proc.stderr.read() if not line else line
        port = int(line.rsplit(":", 1)[1])
        rng = np.random.default_rng(0)
        with Policy(bundle, "ort-cpu") as reference:
            obs = {"images": {"base_0_rgb": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)},
                   "state": rng.standard_normal(reference.robot_state_dim), "prompt": "stack the cups"}
            out = WebsocketClientPolicy("127.0.0.1", port).infer(obs)
            m = reference.manifest
            noise = np.random.default_rng(np.random.SeedSequence(5).spawn(1)[0]).standard_normal(
                (m.action_horizon, m.action_dim), dtype=np.float32)
            expected = reference.infer(Observation(obs["images"], obs["state"], obs["prompt"]), noise=noise).actions
        np.testing.assert_array_equal(out["actions"], expected)
        big = dict(obs, images={"base_0_rgb": np.zeros((700, 700, 3), np.uint8)})  # 1.4 MiB
        with pytest.raises(ConnectionClosed) as closed:
            WebsocketClientPolicy("127.0.0.1", port).infer(big)
        assert closed.value.rcvd.code == 1009
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130  # interrupted, not crashed


def test_pi0edge_serve_with_a_map_that_does_not_fit_the_bundle_exits_1_naming_it(tiny_bundle_factory):
    bundle = tiny_bundle_factory()[0]
    result = subprocess.run(serve_command(str(bundle), "--obs-map", "aloha", "--backend", "ort-cpu"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "'aloha' gives a 14-D state" in result.stderr and "Traceback" not in result.stderr


def test_the_api_key_can_come_from_the_environment_and_the_flag_wins(monkeypatch):
    from pi0edge.cli import build_parser

    monkeypatch.setenv("PI0EDGE_API_KEY", "from-env")
    assert build_parser().parse_args(["serve", "b"]).api_key == "from-env"
    assert build_parser().parse_args(["serve", "b", "--api-key", "flag"]).api_key == "flag"
