"""The bundle's `deployment` record: what export reads from each checkpoint layout, the statistics hash, and
the manifest's checks of the record."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from pi0edge.deployment import PROMPT_FORMATS, DeploymentRecord, stats_sha256
from pi0edge.errors import BundleError
from pi0edge.export.checkpoint.features import TrainedFeatures, trained_features
from pi0edge.export.config import tiny
from pi0edge.export.random_checkpoint import lerobot_config, openpi_config
from pi0edge.manifest import TOKENIZER_NAME, load_manifest
from pi0edge.normalization import NormStats


def test_a_lerobot_config_gives_each_cameras_training_size_and_names_where_its_features_have_them():
    raw = lerobot_config(tiny("pi0"), robot_state_dim=3, robot_action_dim=3, dtype="float32", norm_kind="mean_std")
    raw["input_features"]["observation.images.base_0_rgb"]["shape"] = [3, 480, 640]
    raw["input_features"]["observation.state"]["names"] = ["a", "b", "c"]
    raw["output_features"]["action"]["names"] = {"motors": ["x", "y", "z"]}
    features = trained_features(raw)
    assert features.camera_hw["base_0_rgb"] == (480, 640)
    assert features.camera_hw["left_wrist_0_rgb"] == (224, 224)  # the tiny preset's square training images
    assert (features.state_names, features.action_names) == (("a", "b", "c"), ("x", "y", "z"))


def test_an_openpi_config_gives_no_training_sizes_or_names():
    assert trained_features(openpi_config(tiny("pi0"), dtype="float32")) == TrainedFeatures()


def test_an_exported_bundle_records_what_the_policy_was_trained_with(tiny_bundle_factory):
    bundle, _ = tiny_bundle_factory("pi0")
    m = load_manifest(bundle)
    record = m.deployment
    assert tuple(c.name for c in record.cameras) == m.cameras
    assert all(c.trained_hw == (m.image_size, m.image_size) for c in record.cameras)
    assert (record.state.dim, record.action.dim) == (m.robot_state_dim, m.robot_action_dim)
    assert record.state.names is None and record.state.units is None  # save_pretrained's config has none
    assert record.stats_sha256 == stats_sha256(m.norm_stats)
    assert record.tokenizer_sha256 == m.files[TOKENIZER_NAME]
    assert record.prompt_format == PROMPT_FORMATS["pi0"]


def test_the_statistics_hash_follows_the_numbers_not_their_spelling():
    state = {"mean": np.array([0.1, -0.2], np.float32), "std": np.array([1.0, 2.0], np.float32)}
    action = {"mean": np.zeros(2, np.float32), "std": np.ones(2, np.float32)}
    stats = NormStats.from_arrays("mean_std", "lerobot", state, action)
    assert stats_sha256(NormStats.from_dict(yaml.safe_load(yaml.safe_dump(stats.to_dict())))) == stats_sha256(stats)
    moved = NormStats.from_arrays("mean_std", "lerobot", {**state, "mean": state["mean"] + np.float32(1e-3)}, action)
    assert stats_sha256(moved) != stats_sha256(stats)


def test_a_deployment_record_that_contradicts_the_model_cameras_is_refused(tiny_bundle_factory, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_factory("pi0")[0], bundle)
    doc = yaml.safe_load((bundle / "bundle.yaml").read_text())
    cameras = doc["deployment"]["cameras"]
    cameras[0], cameras[1] = cameras[1], cameras[0]  # the order the images are fed in
    (bundle / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(BundleError, match="field 'deployment'"):
        load_manifest(bundle)


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d["state"].update(names=["a"]), "deployment.state.names"),
    (lambda d: d["cameras"][0].update(trained_hw=[480]), r"deployment.cameras\[0\]"),
    (lambda d: d.pop("stats_sha256"), "deployment.stats_sha256"),
])
def test_a_malformed_deployment_record_is_refused_naming_the_field(tiny_bundle_factory, edit, field):
    document = load_manifest(tiny_bundle_factory("pi0")[0]).deployment.to_document()
    edit(document)
    with pytest.raises(BundleError, match=f"bundle.yaml: field '{field}'"):
        DeploymentRecord.from_bundle(document, "bundle.yaml")
