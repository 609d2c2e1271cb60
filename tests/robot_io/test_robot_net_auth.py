"""CURVE authentication of the network arm: key files, who gets answers, the robot YAML's key fields."""

from __future__ import annotations

import stat

import pytest

zmq = pytest.importorskip("zmq", reason="pyzmq is not installed: pip install 'pi0edge[net]'")
pytest.importorskip("msgpack", reason="msgpack is not installed: pip install 'pi0edge[net]'")
if not zmq.has("curve"):
    pytest.skip("this libzmq has no CURVE support (zmq.has('curve') is false)", allow_module_level=True)

from robot_io_helpers import base_config_dict  # noqa: E402

from pi0edge.errors import ConfigError  # noqa: E402
from pi0edge.robot_io.arms import ArmLimits, SimArm, open_arm, validate_arm_spec  # noqa: E402
from pi0edge.robot_io.config import robot_config_from_dict  # noqa: E402
from pi0edge.robot_io.errors import ArmTimeoutError  # noqa: E402
from pi0edge.robot_io.net_arm import NetArm  # noqa: E402
from pi0edge.robot_io.net_keys import KEY_FILES, read_key, server_keys  # noqa: E402
from pi0edge.robot_io.net_server import ArmServer, main  # noqa: E402


@pytest.fixture
def keys(tmp_path):
    assert main(["--make-keys", str(tmp_path / "keys")]) == 0  # the CLI's own entry point
    return tmp_path / "keys"


@pytest.fixture
def served(keys):
    arm = SimArm(dof=3, limits=ArmLimits.uniform(3, 1.0, 5.0))
    server = ArmServer(arm, "tcp://127.0.0.1:*", curve_keys=server_keys(keys)).start()
    yield server
    server.close()


def test_make_keys_writes_two_pairs_with_private_secrets_and_never_overwrites(keys, capsys):
    assert sorted(p.name for p in keys.iterdir()) == sorted(KEY_FILES)
    for name in KEY_FILES:
        mode = stat.S_IMODE((keys / name).stat().st_mode)
        assert mode == 0o600 if name.endswith(".secret") else not mode & 0o022, (name, oct(mode))
        assert len(read_key(keys / name, name)) == 40
    before = (keys / "server.secret").read_text()
    assert main(["--make-keys", str(keys)]) == 1
    assert "exist already" in capsys.readouterr().err
    assert (keys / "server.secret").read_text() == before


def test_a_client_with_the_keys_gets_answers(served, keys):
    client = NetArm(served.bound_address, timeout_s=1.0, retries=0,
                    server_public_key=read_key(keys / "server.public", "k"),
                    client_secret_key=read_key(keys / "client.secret", "k"))
    try:
        client.command([0.1, 0.0, 0.0])
        assert client.read_state().shape == (3,)
    finally:
        client.close()


def test_a_client_without_keys_gets_no_reply(served):
    with pytest.raises(ArmTimeoutError, match="no reply to hello"):
        NetArm(served.bound_address, timeout_s=0.3, retries=0)
    assert served.requests == 0


def test_a_client_with_a_wrong_key_gets_no_reply(served, keys):
    stranger_public, stranger_secret = zmq.curve_keypair()
    with pytest.raises(ArmTimeoutError):  # right server key, a client key the server does not know
        NetArm(served.bound_address, timeout_s=0.3, retries=0,
               server_public_key=read_key(keys / "server.public", "k"), client_secret_key=stranger_secret)
    with pytest.raises(ArmTimeoutError):  # the client's key, but another server's public key
        NetArm(served.bound_address, timeout_s=0.3, retries=0, server_public_key=stranger_public,
               client_secret_key=read_key(keys / "client.secret", "k"))
    assert served.requests == 0


def test_the_robot_yaml_net_arm_takes_key_files_relative_to_the_yaml(served, keys):
    data = base_config_dict()
    data["arm"] = {"kind": "net", "address": served.bound_address, "timeout_s": 1.0,
                   "server_public_key": "keys/server.public", "client_secret_key": "keys/client.secret"}
    config = robot_config_from_dict(data, base_dir=keys.parent)
    arm = open_arm(config.arm)
    try:
        assert arm.dof == 3
    finally:
        arm.close()


@pytest.mark.parametrize("fields, message", [
    ({"server_public_key": "missing.public", "client_secret_key": "keys/client.secret"},
     "arm.server_public_key: key file .*missing.public does not exist"),
    ({"server_public_key": "keys/server.public"}, "arm.client_secret_key: needed with arm.server_public_key"),
    ({"server_public_key": 5, "client_secret_key": "keys/client.secret"},
     "arm.server_public_key: must be the path of a key file, got 5"),
    ({"server_public_key": "keys/server.public", "client_secret_key": "garbage.txt"},
     "arm.client_secret_key: .*garbage.txt does not hold a CURVE key"),
])
def test_net_arm_key_fields_are_checked_naming_the_field(keys, fields, message):
    (keys.parent / "garbage.txt").write_text("not a key\n")
    spec = {"kind": "net", "address": "tcp://127.0.0.1:5555",
            **{k: str(keys.parent / v) if isinstance(v, str) else v for k, v in fields.items()}}
    with pytest.raises(ConfigError, match=message):
        validate_arm_spec(spec)


def test_serving_with_a_keys_folder_that_lacks_the_server_secret_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--keys: key file .*server.secret does not exist"):
        server_keys(tmp_path)


def test_serving_with_a_server_secret_readable_by_others_is_refused(keys):
    (keys / "server.secret").chmod(0o644)
    with pytest.raises(ConfigError, match="server.secret is readable by other users; chmod 600"):
        server_keys(keys)
