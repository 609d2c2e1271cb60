"""The arm server's walls: malformed input, a failing driver, commands out of bounds, where it binds."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("zmq", reason="pyzmq is not installed: pip install 'pi0edge[net]'")
pytest.importorskip("msgpack", reason="msgpack is not installed: pip install 'pi0edge[net]'")

import msgpack  # noqa: E402
import zmq  # noqa: E402

from pi0edge.errors import ConfigError  # noqa: E402
from pi0edge.robot_io.arms import ArmLimits, SimArm  # noqa: E402
from pi0edge.robot_io.errors import NetProtocolError  # noqa: E402
from pi0edge.robot_io.net_arm import NetArm  # noqa: E402
from pi0edge.robot_io.net_protocol import DEFAULT_ADDRESS, decode, encode  # noqa: E402
from pi0edge.robot_io.net_server import ArmServer, is_local_address, main  # noqa: E402

REPLY_WAIT_MS = 2000


@pytest.fixture
def dealer(served):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(served[1].bound_address)
    yield sock
    sock.close(linger=0)


def _reply(sock) -> dict:
    assert sock.poll(REPLY_WAIT_MS), "the server did not answer"
    return decode(sock.recv(), "reply")


def test_a_two_frame_message_is_refused_and_the_next_request_answered(served, dealer):
    _, server = served
    dealer.send_multipart([encode({"seq": 1, "op": "state"}), encode({"seq": 2, "op": "state"})])
    reply = _reply(dealer)
    assert not reply["ok"] and "expected 1 payload frame, got 2" in reply["error"]
    dealer.send(encode({"seq": 3, "op": "hello"}))
    reply = _reply(dealer)
    assert reply["ok"] and reply["seq"] == 3 and reply["dof"] == 3
    assert server.rejected_requests == 1


def _fuzz_message(rng: np.random.Generator) -> list[bytes]:
    """One malformed message: random bytes, empty or extra frames, wrong types, huge, NaN, wrong length."""
    good = encode({"seq": 1, "op": "state"})
    choice = int(rng.integers(9))
    if choice == 0:
        return [rng.bytes(int(rng.integers(1, 200)))]
    if choice == 1:
        return [b""]
    if choice == 2:
        return [good] + [rng.bytes(int(rng.integers(0, 50))) for _ in range(int(rng.integers(1, 4)))]
    if choice == 3:
        return [msgpack.packb(rng.choice(np.array([[1, 2], "hello", 3.5, None, True], dtype=object)))]
    seq = int(rng.integers(1, 2**62))
    bad_positions = [[1e308, 0.0, 0.0], [float("nan"), 0.0, 0.0], [0.0, float("inf"), 0.0], [0.1, 0.1],
                     [0.1] * 4, "0.1,0.1,0.1", [True, 0.0, 0.0], [2**63, 0, 0]][int(rng.integers(8))]
    fields = [{"v": 1, "seq": seq, "op": "command", "positions": bad_positions},
              {"v": 1, "seq": -seq, "op": "state"}, {"v": 1, "seq": float(seq), "op": "state"},
              {"v": "1", "seq": seq, "op": "state"}, {"v": 1, "seq": seq, "op": ["state"]}][choice - 4]
    return [msgpack.packb(fields)]


def test_fuzzed_frames_get_error_replies_and_never_stop_the_server_nor_move_the_arm(served, dealer):
    arm, server = served
    start = arm.true_state()
    rng = np.random.default_rng(0)
    messages = [_fuzz_message(rng) for _ in range(300)]
    for frames in messages:
        dealer.send_multipart(frames)
    replies = [_reply(dealer) for _ in messages]
    assert all(not r["ok"] and isinstance(r["error"], str) and r["error"] for r in replies)
    assert server.rejected_requests == len(messages) and server.requests == len(messages)
    dealer.send(encode({"seq": 1, "op": "hello"}))
    assert _reply(dealer)["ok"]
    assert arm.commands_received == 0
    np.testing.assert_array_equal(arm.true_state(), start)


class _BrokenArm(SimArm):
    def command(self, positions) -> None:
        raise RuntimeError("servo bus: no answer from joint 2")


def test_an_exception_in_the_driver_is_an_error_reply_not_a_dead_server():
    arm = _BrokenArm(dof=3, limits=ArmLimits.uniform(3, 1.0, 5.0))
    server = ArmServer(arm, "tcp://127.0.0.1:*").start()
    client = NetArm(server.bound_address, timeout_s=1.0, retries=0)
    try:
        with pytest.raises(NetProtocolError, match="arm driver failed in command: RuntimeError: servo bus"):
            client.command([0.0, 0.0, 0.0])
        assert client.read_state().shape == (3,)  # still serving
        assert server.rejected_requests == 1
    finally:
        client.close()
        server.close()


def test_a_command_outside_the_joint_limits_is_refused_naming_joint_and_value(served):
    arm, server = served
    client = NetArm(server.bound_address, timeout_s=1.0, retries=0)
    try:
        with pytest.raises(NetProtocolError, match=r"joint 1 = 1\.5 is outside the arm's limits \[-1\.0, 1\.0\]"):
            client.command([0.0, 1.5, 0.0])
        assert arm.commands_received == 0 and server.rejected_requests == 1
    finally:
        client.close()


def test_a_command_too_far_from_the_last_one_for_the_velocity_limit_is_refused(served):
    arm, server = served  # max_velocity_per_s 5: 0.5 in the 0.1 s step_slack_s
    client = NetArm(server.bound_address, timeout_s=1.0, retries=0)
    try:
        with pytest.raises(NetProtocolError, match=r"joint 2 = 0\.9 is 0\.9 from the state 0, more than"):
            client.command([0.0, 0.0, 0.9])
        client.command([0.0, 0.0, 0.3])
        with pytest.raises(NetProtocolError, match=r"joint 0 = -0\.95 is 0\.95 from the last command 0"):
            client.command([-0.95, 0.0, 0.3])
        assert arm.commands_received == 1
        np.testing.assert_array_equal(arm.last_command, [0.0, 0.0, 0.3])
    finally:
        client.close()


@pytest.mark.parametrize("address, local", [
    (DEFAULT_ADDRESS, True), ("tcp://127.0.0.1:*", True), ("tcp://localhost:5555", True), ("tcp://[::1]:5555", True),
    ("ipc:///tmp/arm", True), ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://eth0:5555", False),
    ("tcp://192.168.1.10:5555", False)])
def test_only_loopback_ipc_and_inproc_addresses_count_as_local(address, local):
    assert is_local_address(address) is local


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:*", "tcp://*:*"])
def test_a_non_loopback_bind_without_keys_is_refused_unless_allowed(address):
    arm = SimArm(dof=2)
    with pytest.raises(ConfigError, match="without authentication.*--allow-unauthenticated"):
        ArmServer(arm, address)
    server = ArmServer(arm, address, allow_unauthenticated=True)
    assert server.bound_address.startswith("tcp://0.0.0.0:")  # bound, on every interface
    server.close()


def test_the_cli_refuses_a_public_bind_without_keys_with_a_message(capsys):
    assert main(["--bind", "tcp://0.0.0.0:5555", "--dof", "2"]) == 1
    err = capsys.readouterr().err
    assert "refusing to serve the arm on tcp://0.0.0.0:5555 without authentication" in err
    assert "Traceback" not in err
