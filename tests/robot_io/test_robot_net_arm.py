"""The network arm over loopback: round trip, dropped and late replies, versions, stale commands."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("zmq", reason="pyzmq is not installed: pip install 'pi0edge[net]'")
pytest.importorskip("msgpack", reason="msgpack is not installed: pip install 'pi0edge[net]'")

from robot_io_helpers import base_config_dict, make_policy  # noqa: E402

from pi0edge.robot_io.config import robot_config_from_dict  # noqa: E402
from pi0edge.robot_io.errors import ArmTimeoutError, NetProtocolError  # noqa: E402
from pi0edge.robot_io.loop import open_cameras, run_loop  # noqa: E402
from pi0edge.robot_io.net_arm import NetArm  # noqa: E402
from pi0edge.robot_io.net_protocol import decode, encode  # noqa: E402


def test_round_trip_state_and_command(served):
    arm, server = served
    assert server.bound_address.startswith("tcp://127.0.0.1:")  # localhost unless configured otherwise
    client = NetArm(server.bound_address, timeout_s=0.2)
    try:
        assert client.dof == 3 and client.limits.upper.tolist() == [1.0, 1.0, 1.0]
        client.command([0.1, -0.2, 0.3])
        time.sleep(0.1)
        np.testing.assert_allclose(client.read_state(), [0.1, -0.2, 0.3], atol=1e-3)
        assert client.round_trip_ms.count == client.requests == 3  # hello, command, state
    finally:
        client.close()


def test_dropped_reply_times_out_then_retries(served):
    _, server = served
    client = NetArm(server.bound_address, timeout_s=0.05, retries=0)
    server.drop_replies = 1
    with pytest.raises(ArmTimeoutError, match="no reply to state"):
        client.read_state()
    assert client.timeouts == 1
    client.read_state()  # the link recovers: DEALER/ROUTER does not wedge like REQ/REP
    retrying = NetArm(server.bound_address, timeout_s=0.05, retries=1)
    server.drop_replies = 1
    retrying.command([0.2, 0.2, 0.2])  # first try dropped, the resend answered
    assert retrying.timeouts == 1
    client.close()
    retrying.close()


def test_late_reply_is_recognised_and_dropped(served):
    arm, server = served
    client = NetArm(server.bound_address, timeout_s=0.05, retries=0)
    server.delay_next_reply_s = 0.15
    with pytest.raises(ArmTimeoutError):
        client.command([0.5, 0.5, 0.5])
    time.sleep(0.2)  # the late reply is now waiting in the socket
    state = client.read_state()  # must not be mistaken for the answer to this request
    assert client.late_replies == 1
    assert state.shape == (3,)
    client.close()


def test_server_refuses_stale_commands_and_other_versions(served):
    import zmq

    arm, server = served
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(server.bound_address)
    sock.send(encode({"seq": 5, "op": "command", "positions": [0.3, 0.3, 0.3]}))
    assert decode(sock.recv(), "reply")["ok"]
    sock.send(encode({"seq": 4, "op": "command", "positions": [-0.3, -0.3, -0.3]}))  # arrived after seq 5
    reply = decode(sock.recv(), "reply")
    assert not reply["ok"] and "stale" in reply["error"] and server.stale_commands == 1
    np.testing.assert_allclose(arm.last_command, [0.3, 0.3, 0.3])
    import msgpack

    sock.send(msgpack.packb({"v": 99, "seq": 6, "op": "state"}))
    reply = msgpack.unpackb(sock.recv())
    assert not reply["ok"] and "protocol version 99" in reply["error"]
    sock.send(encode({"seq": 7, "op": "command", "positions": [float("nan"), 0, 0]}))
    assert "finite" in decode(sock.recv(), "reply")["error"]
    sock.close(linger=0)
    with pytest.raises(NetProtocolError, match="protocol version"):
        decode(msgpack.packb({"v": 2, "seq": 1}), "reply")


def test_loop_drives_a_network_arm_and_survives_a_lost_reply(served):
    arm, server = served
    data = base_config_dict()
    data["arm"] = {"kind": "net", "address": server.bound_address, "timeout_s": 0.03, "retries": 0}
    config = robot_config_from_dict(data)
    client = NetArm(server.bound_address, timeout_s=0.03, retries=0)
    cameras = open_cameras(config)
    server.drop_replies = 0

    def drop_later():
        time.sleep(0.4)
        server.drop_replies = 1

    import threading

    threading.Thread(target=drop_later, daemon=True).start()
    try:
        stats = run_loop(config, make_policy(goal=[0.4, 0.1, -0.2]), "x", 1.2, arm=client, cameras=cameras)
    finally:
        for camera in cameras.values():
            camera.close()
        client.close()
    assert [e.kind for e in stats.events] == ["arm_error", "recovered"], stats.summary()
    assert "no reply" in stats.events[0].reason
    np.testing.assert_allclose(arm.true_state(), [0.4, 0.1, -0.2], atol=0.02)


class _AnsweringSocket:
    """Stands in for the client's socket and poller: answers every request at once, no network."""

    def __init__(self, dof: int):
        self.dof, self.seq = dof, 0

    def send(self, payload: bytes) -> None:
        self.seq = decode(payload, "request")["seq"]

    def poll(self, timeout_ms: int) -> bool:
        return True

    def recv(self) -> bytes:
        return encode({"seq": self.seq, "ok": True, "state": [0.0] * self.dof, "t_state_s": 0.0})


def test_round_trip_statistics_stay_fixed_size_over_100k_round_trips(served):
    _, server = served
    client = NetArm(server.bound_address, timeout_s=0.2)
    real_sock = client._sock
    size_before = client.round_trip_ms.nbytes
    client._sock = client._poller = _AnsweringSocket(client.dof)
    try:
        for _ in range(100_000):
            client.read_state()
    finally:
        client._sock = real_sock
        client.close()
    assert client.round_trip_ms.count == 100_001  # the hello, then every read
    assert client.round_trip_ms.nbytes == size_before
