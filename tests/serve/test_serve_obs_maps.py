"""The observation maps: openpi's ALOHA, DROID and LIBERO examples served to bundles of those robots' sizes give
the actions Policy.infer gives on the mapped observation; map files; maps checked against the bundle."""

from __future__ import annotations

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from pi0edge.errors import ConfigError, ObservationError
from pi0edge.runtime.types import Observation
from pi0edge.serve.aloha_space import actions_from_pi, state_to_pi
from pi0edge.serve.map_file import load_obs_map, resolve_obs_map
from pi0edge.serve.obs_map import PRESETS

SEED = 3
CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


def first_noise(policy) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence(SEED).spawn(1)[0])
    return rng.standard_normal((policy.manifest.action_horizon, policy.manifest.action_dim), dtype=np.float32)


def image(rng, chw: bool = False) -> np.ndarray:
    frame = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    return np.ascontiguousarray(frame.transpose(2, 0, 1)) if chw else frame


def aloha_example(rng) -> tuple[dict, Observation]:
    """openpi's make_aloha_example shape: CHW cameras under `images` (cam_low included), state [14]; the policy
    sees the state in pi's joint space (adapt_to_pi)."""
    cams = {name: image(rng, chw=True) for name in ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")}
    state = rng.standard_normal(14)
    sent = {"images": cams, "state": state, "prompt": "fold the towel"}
    hwc = {name: cams[key].transpose(1, 2, 0) for name, key in
           zip(CAMERAS, ("cam_high", "cam_left_wrist", "cam_right_wrist"), strict=True)}
    return sent, Observation(hwc, state_to_pi(state), "fold the towel")


def droid_example(rng) -> tuple[dict, Observation]:
    base, wrist = image(rng), image(rng)
    joints, gripper = rng.standard_normal(7), rng.random(1)
    sent = {"observation/exterior_image_1_left": base, "observation/wrist_image_left": wrist,
            "observation/joint_position": joints, "observation/gripper_position": gripper, "prompt": "open the drawer"}
    return sent, Observation({CAMERAS[0]: base, CAMERAS[1]: wrist}, np.concatenate([joints, gripper]),
                             "open the drawer")


def libero_example(rng) -> tuple[dict, Observation]:
    base, wrist, state = image(rng), image(rng), rng.standard_normal(8)
    sent = {"observation/image": base, "observation/wrist_image": wrist, "observation/state": state,
            "prompt": "put the bowl on the plate"}
    return sent, Observation({CAMERAS[0]: base, CAMERAS[1]: wrist}, state, "put the bowl on the plate")


ROBOTS = {"aloha": (14, 14, aloha_example), "droid": (8, 8, droid_example), "libero": (8, 7, libero_example)}


@pytest.mark.parametrize("preset", sorted(ROBOTS))
def test_preset_serves_openpis_example_as_policy_infer_on_the_mapped_observation(preset, robot_bundle_factory,
                                                                                 serving):
    state_dim, action_dim, example = ROBOTS[preset]
    bundle = robot_bundle_factory(state_dim, action_dim)
    with serving(bundle, obs_map=preset, seed=SEED) as (server, reference):
        sent, observation = example(np.random.default_rng(0))
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        assert client.get_server_metadata()["obs_map"] == preset
        out = client.infer(sent)
        assert out["actions"].shape == (reference.action_horizon, action_dim)
        expected = reference.infer(observation, noise=first_noise(reference)).actions
        if preset == "aloha":  # and its actions come back in ALOHA's joint space
            expected = actions_from_pi(expected)
        np.testing.assert_array_equal(out["actions"], expected)


def test_aloha_without_the_wrist_cameras_feeds_them_masked_and_requires_cam_high():
    aloha = PRESETS["aloha"].bind(CAMERAS, 14, 14)
    sent, _ = aloha_example(np.random.default_rng(0))
    only_high = dict(sent, images={"cam_high": sent["images"]["cam_high"]})
    assert list(aloha.observation(only_high).images) == ["base_0_rgb"]
    with pytest.raises(ObservationError, match="'images/cam_high' is missing"):
        aloha.observation(dict(sent, images={"cam_low": sent["images"]["cam_low"]}))


def test_aloha_refuses_channels_last_images():
    aloha = PRESETS["aloha"].bind(CAMERAS, 14, 14)
    sent, _ = aloha_example(np.random.default_rng(0))
    hwc = dict(sent, images={"cam_high": np.zeros((40, 56, 3), np.uint8)})
    with pytest.raises(ObservationError, match=r"'images/cam_high': expected shape CxHxW"):
        aloha.observation(hwc)


def test_droid_refuses_a_missing_gripper_naming_its_key():
    droid = PRESETS["droid"].bind(CAMERAS, 8, 8)
    sent, _ = droid_example(np.random.default_rng(0))
    del sent["observation/gripper_position"]
    with pytest.raises(ObservationError, match="'observation/gripper_position' is missing"):
        droid.observation(sent)


def test_a_preset_whose_state_length_differs_from_the_bundles_is_refused_at_start():
    with pytest.raises(ConfigError, match=r"'aloha' gives a 14-D state .* robot state dim is 6"):
        resolve_obs_map("aloha", CAMERAS, 6, 14)


def test_a_preset_feeding_a_camera_the_bundle_lacks_is_refused_at_start():
    with pytest.raises(ConfigError, match=r"feeds camera\(s\) \['left_wrist_0_rgb'\]"):
        resolve_obs_map("libero", ("base_0_rgb", "wrist"), 8, 7)


def test_an_unknown_obs_map_name_is_refused():
    with pytest.raises(ConfigError, match="expected one of"):
        resolve_obs_map("bridge", CAMERAS, 8, 8)


MAP_FILE = """\
cameras:
  top: base_0_rgb
  wrist: left_wrist_0_rgb
  spare: null
optional: [wrist, spare]
state:
  - joints: 6
  - gripper: 1
prompt_key: task
"""


def test_a_map_file_maps_keys_concatenates_state_and_follows_its_optional_list(tmp_path):
    path = tmp_path / "arm.yaml"
    path.write_text(MAP_FILE)
    arm = resolve_obs_map(str(path), CAMERAS, 7, 7)
    rng = np.random.default_rng(0)
    top, joints = image(rng, chw=True), rng.standard_normal(6)
    obs = arm.observation({"top": top, "joints": joints, "gripper": [0.5], "task": "wipe"})
    np.testing.assert_array_equal(obs.images["base_0_rgb"], top.transpose(1, 2, 0))
    np.testing.assert_array_equal(obs.state, np.concatenate([joints, [0.5]]))
    assert obs.prompt == "wipe" and list(obs.images) == ["base_0_rgb"]
    with pytest.raises(ObservationError, match="'top' is missing"):
        arm.observation({"joints": joints, "gripper": [0.5], "task": "wipe"})


@pytest.mark.parametrize("text,message", [
    (MAP_FILE + "state: []\n", "duplicate key 'state'"),
    (MAP_FILE + "camras: {}\n", r"unknown key\(s\) \['camras'\]"),
    (MAP_FILE.replace("joints: 6", "joints: six"), r"state\[0\] \('joints'\): the length must be an integer"),
    (MAP_FILE.replace("[wrist, spare]", "[elbow]"), "optional must be a list of keys of cameras"),
    (MAP_FILE + "layout: hwc\n", "layout must be one of"),
], ids=["duplicate key", "unknown key", "bad length", "bad optional", "bad layout"])
def test_a_bad_map_file_is_refused_naming_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "arm.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_obs_map(path)
    assert str(path) in str(err.value)
