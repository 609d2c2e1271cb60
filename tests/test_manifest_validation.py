"""bundle.yaml is checked at load against the graphs' I/O and its other fields: an edited manifest is refused
with a BundleError naming the field, never a traceback at inference. (The sha256 check covers the graph files,
not bundle.yaml itself, so these edits pass the checksums.)"""

from __future__ import annotations

import shutil

import pytest
import yaml

from pi0edge.errors import BundleError
from pi0edge.manifest import MANIFEST_NAME, load_manifest


def _copy(bundle, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    return out


def _edit(bundle_dir, change) -> None:
    path = bundle_dir / MANIFEST_NAME
    raw = yaml.safe_load(path.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _io(raw: dict, graph: str, kind: str, name: str) -> dict:
    return next(io for io in raw["graphs"][graph][kind] if io["name"] == name)


def _set(dotted: str, value):
    def change(raw):
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value(node[last]) if callable(value) else value
    return change


PI0_EDITS = {
    "precision": _set("precision", "float64"),
    "model.type": _set("model.type", "pi1"),
    "model.image_size": _set("model.image_size", lambda v: v + 2),
    "model.max_token_len": _set("model.max_token_len", lambda v: v - 1),
    "model.action_horizon": _set("model.action_horizon", lambda v: v + 1),
    "model.action_dim": _set("model.action_dim", lambda v: v + 1),
    "model.state_dim": _set("model.state_dim", lambda v: v + 1),
    "model.num_steps": _set("model.num_steps", 0),
    "model.cameras": _set("model.cameras", lambda v: [v[0], v[0], *v[2:]]),
    "robot.action_dim": _set("robot.action_dim", 99),
    "normalization.state.std": _set("normalization.state.std", lambda v: [-0.5, *v[1:]]),
    "normalization.action.std": _set("normalization.action.std", lambda v: [-1.0, *v[1:]]),
    "graphs.prefix": lambda raw: _io(raw, "prefix", "outputs", "past_keys").update(dtype="float16"),
    "graphs.denoise_step": lambda raw: _io(raw, "denoise_step", "inputs", "x_t").update(dtype="complex64"),
    "graphs.denoise_step.inputs": lambda raw: raw["graphs"]["denoise_step"]["inputs"].pop(),
}


@pytest.mark.parametrize("field", sorted(PI0_EDITS))
def test_an_edited_manifest_field_is_refused_at_load_naming_it(field, tiny_bundle_factory, tmp_path):
    bundle = _copy(tiny_bundle_factory("pi0")[0], tmp_path)
    load_manifest(bundle)  # as exported: accepted
    _edit(bundle, PI0_EDITS[field])
    with pytest.raises(BundleError, match=rf"field '{field}'"):
        load_manifest(bundle)


def test_an_unknown_camera_count_is_refused_naming_the_cameras_field(tiny_bundle_factory, tmp_path):
    bundle = _copy(tiny_bundle_factory("pi0")[0], tmp_path)
    _edit(bundle, _set("model.cameras", lambda v: v[:-1]))
    with pytest.raises(BundleError, match=r"field 'model.cameras' gives \d+, but graphs.prefix images"):
        load_manifest(bundle)


def test_pi05_quantiles_out_of_order_are_refused_naming_the_field(tiny_bundle_factory, tmp_path):
    bundle = _copy(tiny_bundle_factory("pi05")[0], tmp_path)
    load_manifest(bundle)
    _edit(bundle, lambda raw: raw["normalization"]["action"].update(q99=[-1e9] * len(raw["normalization"]["action"]
                                                                                      ["q99"])))
    with pytest.raises(BundleError, match=r"field 'normalization.action.q99'"):
        load_manifest(bundle)


def test_a_manifest_edited_consistently_is_refused_by_the_graphs_themselves(tiny_bundle_factory, tmp_path):
    """image_size and the recorded images shape both edited: bundle.yaml agrees with itself but not with
    prefix.onnx, which the backend compares at load."""
    from pi0edge.runtime.policy import Policy

    bundle = _copy(tiny_bundle_factory("pi0")[0], tmp_path)

    def change(raw):
        raw["model"]["image_size"] += 2
        shape = _io(raw, "prefix", "inputs", "images")["shape"]
        shape[2] += 2
        shape[3] += 2

    _edit(bundle, change)
    load_manifest(bundle)
    with pytest.raises(BundleError, match=r"field 'graphs.prefix.inputs' gives images shape"):
        Policy(bundle, "ort-cpu")


def test_typed_manifest_fields_carry_what_readers_used_to_index(tiny_bundle_factory):
    m = load_manifest(tiny_bundle_factory("pi0")[0])
    assert set(m.files) >= {entry.file for entry in m.graphs.values()}
    assert m.vocab_size == m.raw["model"]["vocab_size"]
    assert m.fixed_num_steps == m.num_steps and m.quantization is None and m.emulates is None
    document = m.to_document()
    document["files"].clear()
    assert m.files and m.raw["files"]  # a writer's copy never changes the loaded manifest


def test_a_zero_std_joint_is_accepted_since_eps_keeps_normalization_finite(tiny_bundle_factory, tmp_path):
    # A joint that never moved in the training data has std 0; refusing it would refuse valid checkpoints.
    bundle = _copy(tiny_bundle_factory("pi0")[0], tmp_path)
    _edit(bundle, _set("normalization.state.std", lambda v: [0.0, *v[1:]]))
    assert load_manifest(bundle).norm_stats.state.b[0] == 0.0


FAST_EDITS = {
    "model.max_token_len": _set("model.max_token_len", lambda v: v - 1),
    "model.vocab_size": _set("model.vocab_size", lambda v: v + 1),
    "model.cameras": _set("model.cameras", lambda v: v[:-1]),
    "fast.cache_len": _set("fast.cache_len", lambda v: v + 1),
    "fast.max_action_tokens": _set("fast.max_action_tokens", lambda v: v + 1),
    "fast.bos_after_prompt": _set("fast.bos_after_prompt", "yes"),
    "fast.tokenizer_dir": _set("fast.tokenizer_dir", "missing_folder"),
    "fast.action_dim": _set("fast.action_dim", 99),
    "graphs.decode_step": lambda raw: _io(raw, "decode_step", "outputs", "new_keys").update(dtype="float16"),
    "graphs.decode_step.inputs": lambda raw: raw["graphs"]["decode_step"]["inputs"].pop(),
}


@pytest.mark.parametrize("field", sorted(FAST_EDITS))
def test_an_edited_pi0fast_manifest_field_is_refused_at_load_naming_it(field, tiny_bundle_factory, tmp_path):
    bundle = _copy(tiny_bundle_factory("pi0fast")[0], tmp_path)
    assert load_manifest(bundle).fast is not None  # as exported: accepted
    _edit(bundle, FAST_EDITS[field])
    with pytest.raises(BundleError, match=rf"field '{field}'"):
        load_manifest(bundle)


def test_a_pi0fast_manifest_edited_consistently_is_refused_by_the_graphs_themselves(tiny_bundle_factory, tmp_path):
    """The decode budget and the cache's slots both edited: bundle.yaml agrees with itself, decode_step.onnx
    does not, and the decoder compares them at load."""
    from pi0edge.runtime.policy import Policy

    bundle = _copy(tiny_bundle_factory("pi0fast")[0], tmp_path)

    def change(raw):
        raw["fast"]["max_action_tokens"] += 1
        raw["fast"]["cache_len"] += 1
        for name in ("past_keys", "past_values"):
            _io(raw, "decode_step", "inputs", name)["shape"][2] += 1
        _io(raw, "decode_step", "inputs", "cache_mask")["shape"][1] += 1

    _edit(bundle, change)
    load_manifest(bundle)
    with pytest.raises(BundleError, match=r"field 'graphs.decode_step.inputs' gives \w+ shape"):
        Policy(bundle, "ort-cpu")
