"""openpi's ALOHA `adapt_to_pi` conversion: the gripper formulas against points computed from the linkage and
the calibration ends, the joint flips, the preset applying it both ways over the real server, and a map file
switching it off."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from pi0edge.errors import ConfigError
from pi0edge.serve.aloha_space import actions_from_pi, gripper_from_pi, gripper_to_pi, state_to_pi
from pi0edge.serve.map_file import load_obs_map, resolve_obs_map
from pi0edge.serve.obs_map import PRESETS

SEED = 5
CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
FLIPPED = [1, 2, 8, 9]  # the joints whose sign differs between ALOHA and pi (shoulder and elbow of each arm)
ARM_M, HORN_M = 0.036, 0.022  # the gripper linkage


@pytest.mark.parametrize("angle_rad", [0.6, 1.0, 1.5])
def test_gripper_to_pi_inverts_the_linkage_and_normalizes_to_pis_encoder_range(angle_rad):
    # Forward linkage: the fingers' position for a servo angle (arm^2 = horn^2 + x^2 - 2 horn x sin(angle)).
    linear_m = HORN_M * np.sin(angle_rad) + np.sqrt(ARM_M**2 - (HORN_M * np.cos(angle_rad)) ** 2)
    aloha_value = (linear_m - 0.01844) / (0.05800 - 0.01844)
    expected = (angle_rad - 0.5476) / (1.6296 - 0.5476)
    np.testing.assert_allclose(gripper_to_pi(np.array([aloha_value])), [expected], rtol=1e-12)


def test_gripper_from_pi_maps_the_joint_range_ends_to_0_and_1():
    pi_angles = np.array([-0.6213 - 0.5476, 1.4910 - 0.5476, (1.4910 - 0.6213) / 2 - 0.5476])
    np.testing.assert_allclose(gripper_from_pi(pi_angles), [0.0, 1.0, 0.5], atol=1e-12)


def test_state_to_pi_flips_shoulders_and_elbows_and_converts_both_grippers_only():
    state = np.linspace(0.1, 0.9, 14)
    out = state_to_pi(state)
    plain = [i for i in range(14) if i not in FLIPPED + [6, 13]]
    np.testing.assert_array_equal(out[FLIPPED], -state[FLIPPED])
    np.testing.assert_array_equal(out[plain], state[plain])
    np.testing.assert_array_equal(out[[6, 13]], gripper_to_pi(state[[6, 13]]))


def test_actions_from_pi_flips_and_converts_every_row_and_keeps_float32():
    actions = np.random.default_rng(0).standard_normal((4, 14)).astype(np.float32)
    out = actions_from_pi(actions)
    assert out.dtype == np.float32 and out.shape == (4, 14)
    np.testing.assert_array_equal(out[:, FLIPPED], -actions[:, FLIPPED])
    np.testing.assert_allclose(out[:, [6, 13]], (actions[:, [6, 13]] + 0.5476 + 0.6213) / (1.4910 + 0.6213),
                               rtol=1e-6)


def aloha_message(rng) -> dict:
    cams = {name: rng.integers(0, 256, (3, 32, 40), dtype=np.uint8) for name in ("cam_high", "cam_left_wrist")}
    return {"images": cams, "state": rng.uniform(0.2, 0.8, 14), "prompt": "fold the towel"}


@pytest.mark.parametrize("switch", ["preset", "file off"])
def test_the_aloha_map_converts_state_in_and_actions_out_unless_a_map_file_turns_it_off(
        switch, robot_bundle_factory, serving, tmp_path):
    off = tmp_path / "aloha-raw.yaml"
    off.write_text("preset: aloha\nadapt_to_pi: false\n")
    bundle = robot_bundle_factory(14, 14)
    with serving(bundle, obs_map="aloha" if switch == "preset" else str(off), seed=SEED) as (server, reference):
        sent = aloha_message(np.random.default_rng(1))
        out = WebsocketClientPolicy("127.0.0.1", server.port).infer(sent)
        noise = np.random.default_rng(np.random.SeedSequence(SEED).spawn(1)[0]).standard_normal(
            (reference.manifest.action_horizon, reference.manifest.action_dim), dtype=np.float32)
        observation = PRESETS["aloha"].bind(CAMERAS, 14, 14).observation(sent)
        if switch == "preset":
            np.testing.assert_array_equal(observation.state, state_to_pi(sent["state"]))
            expected = actions_from_pi(reference.infer(observation, noise=noise).actions)
        else:
            observation = dataclasses.replace(observation, state=sent["state"])
            expected = reference.infer(observation, noise=noise).actions
    np.testing.assert_array_equal(out["actions"], expected)


def test_the_conversion_on_a_bundle_that_is_not_14_d_is_refused_at_start(tmp_path):
    path = tmp_path / "arm.yaml"
    path.write_text("cameras: {top: base_0_rgb}\nstate: [{q: 7}]\nadapt_to_pi: true\n")
    with pytest.raises(ConfigError, match=r"adapt_to_pi.*dims are \(7, 7\).*adapt_to_pi: false"):
        resolve_obs_map(str(path), CAMERAS, 7, 7)


@pytest.mark.parametrize("text, message", [
    ("preset: aloha\nadapt_to_pi: yes please\n", "adapt_to_pi must be true or false"),
    ("preset: aloha\nlayout: auto\n", r"with `preset`, only \['preset', 'adapt_to_pi'\].*\['layout'\]"),
    ("preset: bridge\n", "preset must be one of"),
])
def test_a_bad_preset_file_is_refused_naming_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "aloha.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_obs_map(path)
    assert str(path) in str(err.value)
