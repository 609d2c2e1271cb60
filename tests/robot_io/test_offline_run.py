"""Nothing is fetched over the network at run time: `pi0edge export` -> `check` -> `run` (sim arm, synthetic
camera, a few ticks) with every connection to a host other than this machine refused. The policy runs on a
thread (`inference: thread`) so the blocked sockets cover inference too: a spawned inference process would
start without the test's patches."""

from __future__ import annotations

import re
import socket

import pytest
import yaml

from pi0edge.net import is_loopback_host


class NetworkBlocked(OSError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Name lookups of other hosts and connections to them raise; loopback and Unix sockets still work."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def outside(sock, address) -> bool:
        return sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback_host(str(address[0]))

    def connect(sock, address):
        if outside(sock, address):
            raise NetworkBlocked(f"network access blocked by the test: connect to {address}")
        return real_connect(sock, address)

    def connect_ex(sock, address):
        if outside(sock, address):
            raise NetworkBlocked(f"network access blocked by the test: connect_ex to {address}")
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not is_loopback_host(str(host)):
            raise NetworkBlocked(f"network access blocked by the test: name lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_the_block_refuses_a_remote_host_and_lets_loopback_through(no_network):
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(NetworkBlocked), socket.socket() as sock:
        sock.connect(("8.8.8.8", 53))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=1).close()


def test_export_check_and_run_need_no_network(no_network, tmp_path, tokenizer_path, capsys):
    from pi0edge.cli import main
    from pi0edge.export.config import tiny
    from pi0edge.export.random_checkpoint import write_random_checkpoint

    checkpoint = write_random_checkpoint(tmp_path / "checkpoint", tiny("pi0"), tokenizer=False, robot_state_dim=6,
                                         robot_action_dim=6)
    bundle = tmp_path / "bundle"
    assert main(["export", str(checkpoint), "-o", str(bundle), "--tokenizer", str(tokenizer_path)]) == 0
    robot = {
        "rate_hz": 20, "inference": "thread",
        "cameras": {"front": {"model_camera": "base_0_rgb", "kind": "synthetic", "width": 224, "height": 224}},
        "binding": {"masked_cameras": ["left_wrist_0_rgb", "right_wrist_0_rgb"]},
        "arm": {"kind": "sim", "dof": 6},
        "joints": {"names": [f"j{i}" for i in range(6)]},
        "chunking": {"strategy": "sync"},
        "safety": {"stale_frame_s": 1.0, "inference_timeout_s": 30.0},
        "estop": {"signal": False},
    }
    config = tmp_path / "robot.yaml"
    config.write_text(yaml.safe_dump(robot))
    capsys.readouterr()
    assert main(["check", str(config), str(bundle)]) == 0, capsys.readouterr().out
    code = main(["run", "--config", str(config), "--bundle", str(bundle), "--prompt", "pick up the cube",
                 "--duration-s", "2", "--no-status"])
    out = capsys.readouterr()
    assert code == 0, out.err
    chunks = int(re.search(r"inference: (\d+) chunks", out.out).group(1))
    assert chunks > 0 and "policy_error" not in out.out, out.out
