"""Bad observations and bad bundles get one clear error that names the camera, field, value or file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from pi0edge.errors import BundleError, ObservationError
from pi0edge.runtime import Observation, Policy
from pi0edge.runtime.preprocess import PromptTruncatedWarning


@pytest.fixture(scope="module")
def policy(tiny_bundle_factory):
    bundle_dir, _ = tiny_bundle_factory("pi0")
    return Policy(bundle_dir)


def obs(policy, **changes) -> Observation:
    base = {"images": {"base_0_rgb": np.zeros((120, 160, 3), np.uint8)},
            "state": policy.manifest.norm_stats.state.a.copy(), "prompt": "stack the cups"}
    base.update(changes)
    return Observation(**base)


@pytest.mark.parametrize("images,fragment", [
    ({"base_0_rgb": np.zeros((120, 160, 3), np.float32)}, "dtype uint8"),
    ({"base_0_rgb": np.zeros((120, 160, 4), np.uint8)}, "HxWx3"),
    ({"base_0_rgb": np.zeros((120, 160), np.uint8)}, "HxWx3"),
    ({"top_camera": np.zeros((120, 160, 3), np.uint8)}, "unknown camera"),
    ({}, "no camera image"),
])
def test_bad_images_name_the_camera_and_problem(policy, images, fragment):
    with pytest.raises(ObservationError, match=fragment):
        policy.infer(obs(policy, images=images))


def test_wrong_state_length_names_expected_and_got(policy):
    with pytest.raises(ObservationError, match=r"length 5, expected length 6"):
        policy.infer(obs(policy, state=np.zeros(5, np.float32)))


def test_nan_in_state_names_the_index(policy):
    state = policy.manifest.norm_stats.state.a.copy()
    state[2] = np.nan
    with pytest.raises(ObservationError, match=r"state\[2\]"):
        policy.infer(obs(policy, state=state))


def test_empty_prompt_is_refused(policy):
    with pytest.raises(ObservationError, match="prompt is empty"):
        policy.infer(obs(policy, prompt="  _ \n "))


def test_overlong_prompt_is_truncated_with_a_warning(policy):
    with pytest.warns(PromptTruncatedWarning, match="truncated"):
        chunk = policy.infer(obs(policy, prompt="pick up the red cube " * 40))
    assert np.isfinite(chunk.actions).all()


def test_overlong_prompt_warning_shows_at_most_80_characters_of_it(policy):
    prompt = "pick up the red cube " * 40
    with pytest.warns(PromptTruncatedWarning) as caught:
        policy.infer(obs(policy, prompt=prompt))
    message = str(caught[0].message)
    assert repr(prompt[:80]) + f"... ({len(prompt)} chars)" in message and prompt[:81] not in message


def test_wrong_noise_shape_is_refused(policy):
    with pytest.raises(ObservationError, match="noise has shape"):
        policy.infer(obs(policy), noise=np.zeros((3, 3), np.float32))


@pytest.fixture()
def bundle_copy(tiny_bundle_factory, tmp_path):
    bundle_dir, _ = tiny_bundle_factory("pi0")
    return shutil.copytree(bundle_dir, tmp_path / "bundle")


@pytest.mark.parametrize("victim", ["tokenizer.model", "denoise_step.onnx", "prefix.onnx"])
def test_tampered_bundle_file_is_refused_naming_the_file(bundle_copy, victim):
    path = bundle_copy / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{victim}: sha256 differs"):
        Policy(bundle_copy)


def test_missing_bundle_file_is_refused_naming_the_file(bundle_copy):
    (bundle_copy / "prefix.onnx").unlink()
    with pytest.raises(BundleError, match=r"prefix.onnx: listed in bundle.yaml but missing"):
        Policy(bundle_copy)


def test_unknown_bundle_format_version_is_refused_with_the_fix(bundle_copy):
    manifest = yaml.safe_load((bundle_copy / "bundle.yaml").read_text())
    manifest["format_version"] = 99
    (bundle_copy / "bundle.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(BundleError, match=r"format version 99 is not supported.*re-export"):
        Policy(bundle_copy)


def test_not_a_bundle_directory_says_so(tmp_path):
    with pytest.raises(BundleError, match="no bundle.yaml"):
        Policy(tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        Policy(tmp_path / "nope")


def test_unknown_backend_is_refused_with_the_choices(tiny_bundle_factory):
    from pi0edge.errors import BackendUnavailableError

    bundle_dir, _ = tiny_bundle_factory("pi0")
    with pytest.raises(BackendUnavailableError, match="ort-cpu"):
        Policy(bundle_dir, backend="onnx-magic")
