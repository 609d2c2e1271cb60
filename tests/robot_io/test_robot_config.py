"""The robot YAML: examples load, and every mistake is reported with its field and value."""

from __future__ import annotations

import pytest
import yaml
from robot_io_helpers import base_config_dict, merge

from pi0edge.errors import ConfigError
from pi0edge.robot_io.config import example_config_path, load_robot_config


@pytest.mark.parametrize("name", ["sim_arm.yaml", "aloha.yaml"])
def test_shipped_examples_load(name):
    config = load_robot_config(example_config_path(name))
    assert config.rate_hz > 0 and config.joints.dof == len(config.joints.action_index)


def _write(tmp_path, data) -> str:
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize(
    "override, field, value",
    [
        ({"rate_hz": -5}, "rate_hz", "-5"),
        ({"rate_hz": "fast"}, "rate_hz", "'fast'"),
        ({"chunking": {"strategy": "greedy"}}, "chunking.strategy", "'greedy'"),
        ({"chunking": {"n_execute": 0}}, "chunking.n_execute", "0"),
        ({"safety": {"stale_frame_s": 0}}, "safety.stale_frame_s", "0"),
        ({"safety": {"lower": [0.0, 0.0]}}, "safety.lower", "[0.0, 0.0]"),
        ({"safety": {"lower": [1.0, 1.0, 1.0]}}, "safety.lower[0]", "1.0"),
        ({"safety": {"max_velocity_per_s": -1}}, "safety.max_velocity_per_s", "-1.0"),
        ({"joints": {"action_index": [0, 0, 1]}}, "joints.action_index", "[0, 0, 1]"),
        ({"cameras": {"front": {"kind": "webcam"}}}, "cameras.front.kind", "'webcam'"),
        ({"cameras": {"front": {"width": -3}}}, "cameras.front.width", "-3"),
        ({"cameras": {"front": {"pattern": "plaid"}}}, "cameras.front.pattern", "'plaid'"),
        ({"arm": {"kind": "robotiq"}}, "arm.kind", "'robotiq'"),
        ({"arm": {"dof": 4}}, "arm.dof", "4"),
        ({"arm": {"time_constant_s": 0}}, "arm.time_constant_s", "0"),
        ({"estop": {"key": "space"}}, "estop.key", "'space'"),
        ({"realtime_priority": 500}, "realtime_priority", "500"),
        ({"startup_check": {"camera": "wrist", "reference": "ref.yaml"}}, "startup_check.camera", "'wrist'"),
        ({"safety": {"stale_frames": 1}}, "safety", "stale_frames"),
    ],
)
def test_yaml_errors_name_the_field_and_value(tmp_path, override, field, value):
    path = _write(tmp_path, merge(base_config_dict(), override))
    with pytest.raises(ConfigError) as info:
        load_robot_config(path)
    message = str(info.value)
    assert path in message and field in message and value in message, message


@pytest.mark.parametrize("rate", ["5000", "1000.5", ".nan", ".inf", "0", "-50"])
def test_rate_the_timer_cannot_hold_is_refused_naming_rate_hz(tmp_path, rate):
    text = yaml.safe_dump({k: v for k, v in base_config_dict().items() if k != "rate_hz"})
    path = _write(tmp_path, f"rate_hz: {rate}\n{text}")
    with pytest.raises(ConfigError, match="rate_hz: must be"):
        load_robot_config(path)


def test_rate_of_1000_hz_is_accepted(tmp_path):
    assert load_robot_config(_write(tmp_path, merge(base_config_dict(), {"rate_hz": 1000}))).rate_hz == 1000


@pytest.mark.parametrize("empty", [{}, []])
def test_empty_cameras_is_refused_naming_the_field(tmp_path, empty):
    data = base_config_dict()
    data["cameras"] = empty
    with pytest.raises(ConfigError, match=r"cameras: empty"):
        load_robot_config(_write(tmp_path, data))


def test_missing_required_field_is_named(tmp_path):
    data = base_config_dict()
    del data["joints"]
    with pytest.raises(ConfigError, match="joints: missing"):
        load_robot_config(_write(tmp_path, data))


def test_yaml_is_loaded_safely(tmp_path):
    path = _write(tmp_path, "rate_hz: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_robot_config(path)


def test_relative_paths_are_resolved_next_to_the_yaml(tmp_path):
    data = merge(base_config_dict(), {"estop": {"file": "stop.flag"}, "recording": {"path": "ep.npz"}})
    config = load_robot_config(_write(tmp_path, data))
    assert config.estop.file == str(tmp_path / "stop.flag")
    assert config.recording.path == str(tmp_path / "ep.npz")


def test_config_is_frozen(tmp_path):
    config = load_robot_config(_write(tmp_path, base_config_dict()))
    with pytest.raises(AttributeError):
        config.rate_hz = 10
    with pytest.raises(TypeError):
        config.arm["dof"] = 9


@pytest.mark.parametrize("fields, message", [
    ({"retries": "twice"}, "arm.retries: must be an integer >= 0, got 'twice'"),
    ({"retries": -1}, "arm.retries: must be an integer >= 0, got -1"),
    ({"server_public_key": "keys/server.public", "client_secret_key": "keys/client.secret"},
     "arm.server_public_key: key file {tmp}/keys/server.public does not exist"),
])
def test_net_arm_fields_are_checked_naming_the_field(tmp_path, fields, message):
    data = base_config_dict()
    data["arm"] = {"kind": "net", "address": "tcp://127.0.0.1:5555", **fields}
    with pytest.raises(ConfigError) as info:
        load_robot_config(_write(tmp_path, data))
    assert message.format(tmp=tmp_path) in str(info.value)
