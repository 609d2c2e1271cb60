"""Checkpoint loading: exact round trips through both layouts, and one clear message per kind of bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pi0edge.errors import CheckpointError
from pi0edge.export.checkpoint import SIZES_KEY, checkpoint_key, load_checkpoint
from pi0edge.export.config import GEMMA_DUMMY, SIGLIP_SO400M, full, tiny
from pi0edge.export.random_checkpoint import random_norm_stats, random_state_dict, write_random_checkpoint

RSS_LIMIT_RATIO = 1.3  # peak RSS of loading <= 1.3x the weights' bytes


def _assert_weights_equal(model, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert state[name].dtype == value.dtype, name
        assert torch.equal(state[name], value), name


# ---- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
@pytest.mark.parametrize("layout,with_model_prefix", [("lerobot", True), ("lerobot", False), ("openpi", False)])
def test_round_trip_gives_the_written_weights_config_and_stats(tmp_path, model_type, layout, with_model_prefix):
    cfg = tiny(model_type)
    write_random_checkpoint(tmp_path, cfg, layout=layout, seed=5, with_model_prefix=with_model_prefix,
                            robot_state_dim=6, robot_action_dim=7)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.layout == layout
    assert ckpt.config == cfg
    _assert_weights_equal(ckpt.model, random_state_dict(cfg, seed=5))
    assert (ckpt.robot_state_dim, ckpt.robot_action_dim) == (6, 7)
    assert ckpt.camera_names == cfg.cameras
    assert ckpt.tokenizer_path == tmp_path / "tokenizer.model"
    assert ckpt.source_sha256 == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    stats = ckpt.norm_stats
    kind = "mean_std" if model_type == "pi0" else "quantile"
    assert (stats.kind, stats.convention) == (kind, layout)
    first, second = ("mean", "std") if kind == "mean_std" else ("q01", "q99")
    state, action = random_norm_stats(6, 5, "state"), random_norm_stats(7, 5, "action")
    np.testing.assert_array_equal(stats.state.a, state[first])
    np.testing.assert_array_equal(stats.state.b, state[second])
    np.testing.assert_array_equal(stats.action.a, action[first])
    np.testing.assert_array_equal(stats.action.b, action[second])


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_tied_embedding_is_taken_from_lm_head(tmp_path, model_type):
    cfg = tiny(model_type)
    write_random_checkpoint(tmp_path, cfg, tie_embedding=True)
    ckpt = load_checkpoint(tmp_path)
    _assert_weights_equal(ckpt.model, random_state_dict(cfg))


def test_bfloat16_checkpoint_loads_as_stored_or_converted(tmp_path):
    cfg = tiny("pi05")
    write_random_checkpoint(tmp_path, cfg, dtype="bfloat16", layout="openpi")
    bf16 = random_state_dict(cfg, dtype="bfloat16")
    _assert_weights_equal(load_checkpoint(tmp_path, dtype=None).model, bf16)
    _assert_weights_equal(load_checkpoint(tmp_path, dtype=torch.bfloat16).model, bf16)
    _assert_weights_equal(load_checkpoint(tmp_path).model, {k: v.float() for k, v in bf16.items()})


def test_quantile_normalization_in_a_lerobot_pi0_follows_normalization_mapping(tmp_path):
    write_random_checkpoint(tmp_path, tiny("pi0"), norm_kind="quantile", robot_state_dim=4, robot_action_dim=4)
    stats = load_checkpoint(tmp_path).norm_stats
    assert (stats.kind, stats.convention, stats.eps) == ("quantile", "lerobot", 1e-8)
    np.testing.assert_array_equal(stats.action.b, random_norm_stats(4, 0, "action")["q99"])


def test_sharded_checkpoint_loads_and_hashes_all_shards(tmp_path):
    cfg = tiny()
    write_random_checkpoint(tmp_path, cfg, max_shard_bytes=300_000)
    ckpt = load_checkpoint(tmp_path)
    _assert_weights_equal(ckpt.model, random_state_dict(cfg))
    assert len(ckpt.weights_files) > 1
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in ckpt.weights_files)).hexdigest()
    assert ckpt.source_sha256 == digest


def test_shard_index_naming_the_wrong_shard_is_an_error(tmp_path):
    write_random_checkpoint(tmp_path, tiny(), max_shard_bytes=300_000, tokenizer=False)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    key = checkpoint_key("action_out_proj.bias", model_prefix=True)
    shards = sorted(set(index["weight_map"].values()))
    index["weight_map"][key] = next(s for s in shards if s != index["weight_map"][key])
    index_path.write_text(json.dumps(index))
    _fails(tmp_path, str(index_path), key)


def test_older_transformers_key_layout_loads(tmp_path):
    cfg = tiny()
    write_random_checkpoint(tmp_path, cfg)
    path = tmp_path / "model.safetensors"
    old = {}
    for key, value in load_file(str(path)).items():
        key = key.replace("paligemma.model.language_model.", "paligemma.language_model.model.")
        old[key.replace("paligemma.model.", "paligemma.")] = value
    assert any(".paligemma.language_model.model.layers." in k for k in old)
    save_file(old, str(path))
    _assert_weights_equal(load_checkpoint(tmp_path).model, random_state_dict(cfg))


def test_known_unused_tensors_are_ignored(tmp_path):
    cfg = tiny()
    write_random_checkpoint(tmp_path, cfg)
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    extra = {"model.paligemma_with_expert.gemma_expert.lm_head.weight": torch.zeros(3, 2),
             "model.paligemma_with_expert.gemma_expert.model.embed_tokens.weight": torch.zeros(3, 2),
             "model.paligemma_with_expert.paligemma.model.vision_tower.vision_model.head.probe": torch.zeros(1),
             "model.paligemma_with_expert.paligemma.lm_head.weight": torch.zeros(2)}  # embed_tokens is present
    save_file({**tensors, **extra}, str(path))
    _assert_weights_equal(load_checkpoint(tmp_path).model, random_state_dict(cfg))


def test_lerobot_before_0_4_keeps_stats_as_buffers_in_the_weights(tmp_path):
    cfg = tiny()
    write_random_checkpoint(tmp_path, cfg, tokenizer=False, robot_state_dim=5, robot_action_dim=5)
    state, action = random_norm_stats(5, 0, "state"), random_norm_stats(5, 0, "action")
    buffers = {f"normalize_inputs.buffer_observation_state.{k}": torch.from_numpy(state[k]) for k in ("mean", "std")}
    buffers |= {f"{p}.buffer_action.{k}": torch.from_numpy(action[k].copy()) for k in ("mean", "std")
                for p in ("normalize_targets", "unnormalize_outputs")}
    _rewrite(tmp_path, lambda t: t.update(buffers))
    for p in tmp_path.glob("policy_*"):
        p.unlink()
    ckpt = load_checkpoint(tmp_path)
    _assert_weights_equal(ckpt.model, random_state_dict(cfg))
    np.testing.assert_array_equal(ckpt.norm_stats.state.b, state["std"])
    np.testing.assert_array_equal(ckpt.norm_stats.action.a, action["mean"])
    assert (ckpt.norm_stats.convention, ckpt.robot_action_dim) == ("lerobot", 5)
    # LeRobot filled unset buffers with inf: that is "no statistics", said clearly.
    _rewrite(tmp_path, lambda t: t.update({"normalize_inputs.buffer_observation_state.std": torch.full((5,), np.inf)}))
    _fails(tmp_path, "normalizer buffers in the weights are unusable", "NaN or Inf")


def test_published_variant_sizes_need_no_pi0edge_block(tmp_path):
    # SigLIP So400m's width (heads known) and openpi's "dummy" Gemma: the published fields describe it all.
    cfg = tiny(vision=replace(SIGLIP_SO400M, depth=1, mlp_dim=32), vlm=GEMMA_DUMMY, expert=GEMMA_DUMMY)
    write_random_checkpoint(tmp_path, cfg, tokenizer=False)
    assert SIZES_KEY not in json.loads((tmp_path / "config.json").read_text())
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.config == cfg
    assert ckpt.tokenizer_path is None


def test_loaded_model_runs_and_gives_finite_actions(tmp_path):
    from pi0edge.export.model import Pi0Model  # noqa: F401  (the class the loader builds)

    cfg = tiny("pi0")
    write_random_checkpoint(tmp_path, cfg)
    model = load_checkpoint(tmp_path).model
    b, n = 1, cfg.num_cameras
    obs = {"images": torch.randint(0, 256, (b, n, 224, 224, 3), dtype=torch.uint8),
           "image_masks": torch.ones(b, n, dtype=torch.bool),
           "tokens": torch.randint(0, cfg.vocab_size, (b, cfg.max_token_len)),
           "token_masks": torch.ones(b, cfg.max_token_len, dtype=torch.bool),
           "state": torch.zeros(b, cfg.state_dim)}
    actions = model.sample_actions(obs, torch.randn(b, cfg.action_horizon, cfg.action_dim))
    assert torch.isfinite(actions).all()


def test_lazy_load_keeps_file_views_and_eager_load_copies(tmp_path):
    write_random_checkpoint(tmp_path, tiny(), tokenizer=False)
    lazy = load_checkpoint(tmp_path, hash_weights=False).model.state_dict()
    eager = load_checkpoint(tmp_path, lazy=False, hash_weights=False).model.state_dict()
    name = "vlm.embed_tokens.weight"
    assert torch.equal(lazy[name], eager[name])
    assert lazy[name].untyped_storage().data_ptr() != eager[name].untyped_storage().data_ptr()


def test_pointing_at_the_weights_file_loads_its_directory(tmp_path):
    write_random_checkpoint(tmp_path, tiny(), tokenizer=False)
    assert load_checkpoint(tmp_path / "model.safetensors", hash_weights=False).layout == "lerobot"


# ---- bad input: one message naming the file and the key ---------------------------------------------


@pytest.fixture
def lerobot_ckpt(tmp_path) -> Path:
    write_random_checkpoint(tmp_path / "ck", tiny(), tokenizer=False)
    return tmp_path / "ck"


def _rewrite(ckpt: Path, edit) -> Path:
    path = ckpt / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))
    return path


def _fails(ckpt: Path, *fragments: str, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message
    return message


def test_missing_tensors_are_listed_with_a_count(lerobot_ckpt):
    gone = [checkpoint_key(f"expert.layers.{i}.mlp.up_proj.weight", model_prefix=True) for i in range(3)]
    path = _rewrite(lerobot_ckpt, lambda t: [t.pop(k) for k in gone])
    _fails(lerobot_ckpt, str(path), "3 tensors", "missing", gone[0])


def test_missing_tensor_needed_for_sizes_is_named(lerobot_ckpt):
    key = checkpoint_key("action_in_proj.weight", model_prefix=True)
    path = _rewrite(lerobot_ckpt, lambda t: t.pop(key))
    _fails(lerobot_ckpt, str(path), "action_in_proj.weight", "missing")


def test_unexpected_tensors_are_named(lerobot_ckpt):
    path = _rewrite(lerobot_ckpt, lambda t: t.update({"model.some_adapter.lora_A": torch.zeros(2)}))
    _fails(lerobot_ckpt, str(path), "1 unexpected", "model.some_adapter.lora_A")


def test_a_parameter_of_another_model_type_is_unexpected(lerobot_ckpt):
    path = _rewrite(lerobot_ckpt, lambda t: t.update({"model.paligemma_with_expert.gemma_expert.model.norm.dense.bias":
                                                      torch.zeros(96)}))
    _fails(lerobot_ckpt, str(path), "unexpected", "gemma_expert.model.norm.dense.bias")


def test_wrong_shape_names_key_expected_and_got(lerobot_ckpt):
    key = checkpoint_key("vlm.layers.2.self_attn.o_proj.weight", model_prefix=True)
    path = _rewrite(lerobot_ckpt, lambda t: t.update({key: torch.zeros(64, 64)}))
    _fails(lerobot_ckpt, str(path), key, "[64, 64]", "[64, 128]")


def test_truncated_file_is_reported(lerobot_ckpt):
    path = lerobot_ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    _fails(lerobot_ckpt, str(path), "truncated")
    path.write_bytes(data[:5])
    _fails(lerobot_ckpt, str(path), "truncated")


def test_non_safetensors_file_is_reported(lerobot_ckpt):
    path = lerobot_ckpt / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"this is not json" + b"\0" * 64)
    _fails(lerobot_ckpt, str(path), "not a safetensors file")


def test_pickled_weights_are_refused_without_unpickling(lerobot_ckpt):
    (lerobot_ckpt / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, lerobot_ckpt / "pytorch_model.bin")
    _fails(lerobot_ckpt, "pytorch_model.bin", "only safetensors are supported")
    torch.save({"w": torch.zeros(2)}, lerobot_ckpt / "model.safetensors")  # a pickle under the safetensors name
    _fails(lerobot_ckpt, str(lerobot_ckpt / "model.safetensors"), "pickled PyTorch file")


# The 8-byte header length is little-endian, so its low byte comes first: a length ending in 0x80 starts the
# file like a pickle (a full-size float32 Pi0.5 LeRobot header is 140,672 = 0x22580 bytes), one ending in
# 0x4B50 like a zip ("PK", what torch.save writes). Both are valid safetensors and must load.
PICKLE_LIKE_HEADER_ENDINGS = {"pickle 0x80": (0x80, 0x100, b"\x80"), "zip 0x4B50": (0x4B50, 0x10000, b"PK")}


def _pad_header_to(path: Path, ending: int, modulus: int) -> int:
    """Pad the JSON header with spaces (as safetensors itself does) to the next length ≡ ending (mod modulus)."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    padded_len = header_len + (ending - header_len) % modulus
    header = data[8:8 + header_len] + b" " * (padded_len - header_len)
    path.write_bytes(struct.pack("<Q", padded_len) + header + data[8 + header_len:])
    return padded_len


@pytest.mark.parametrize("ending,modulus,magic", PICKLE_LIKE_HEADER_ENDINGS.values(), ids=PICKLE_LIKE_HEADER_ENDINGS)
def test_safetensors_whose_header_length_starts_like_a_pickle_or_zip_loads(lerobot_ckpt, ending, modulus, magic):
    path = lerobot_ckpt / "model.safetensors"
    written = {key: value.clone() for key, value in load_file(str(path)).items()}  # copies: the file is rewritten
    assert _pad_header_to(path, ending, modulus) % modulus == ending
    assert path.read_bytes().startswith(magic)
    reread = load_file(str(path))  # safetensors' own reader: the padded file is valid
    assert all(torch.equal(reread[k], v) for k, v in written.items())
    _assert_weights_equal(load_checkpoint(lerobot_ckpt).model, random_state_dict(tiny()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_names_the_tensor_and_can_be_skipped(lerobot_ckpt, bad):
    key = checkpoint_key("expert.layers.1.mlp.down_proj.weight", model_prefix=True)

    def poison(t):
        t[key][3, 5] = bad

    path = _rewrite(lerobot_ckpt, poison)
    _fails(lerobot_ckpt, str(path), key, "NaN or Inf", "--no-finite-check")  # the CLI flag that skips the scan
    assert not load_checkpoint(lerobot_ckpt, check_finite=False).model.state_dict()[
        "expert.layers.1.mlp.down_proj.weight"].isfinite().all()


def test_unknown_layout_lists_files_and_what_was_expected(tmp_path):
    write_random_checkpoint(tmp_path / "ck", tiny(), tokenizer=False)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tmp_path / "ck" / "model.safetensors", bare)
    (bare / "config.json").write_text("{}")  # neither LeRobot's nor openpi's fields
    msg = _fails(bare, str(bare), "unknown checkpoint layout", "model.safetensors", "Expected LeRobot", "openpi")
    assert "norm_stats.json" in msg
    _fails(tmp_path / "empty_dir_that_is_absent", "does not exist")
    (tmp_path / "nothing").mkdir()
    _fails(tmp_path / "nothing", "unknown checkpoint layout", "no files")


def test_missing_stats_say_what_was_looked_for(tmp_path):
    write_random_checkpoint(tmp_path / "le", tiny(), tokenizer=False)
    for p in (tmp_path / "le").glob("policy_*"):
        p.unlink()
    _fails(tmp_path / "le", "no normalization statistics", "policy_preprocessor_step_*_normalizer_processor",
           "add the dataset's statistics")
    assert load_checkpoint(tmp_path / "le", require_stats=False).norm_stats is None

    write_random_checkpoint(tmp_path / "op", tiny(), layout="openpi", tokenizer=False)
    shutil.rmtree(tmp_path / "op" / "assets")
    _fails(tmp_path / "op", "no normalization statistics", "assets/<asset_id>/norm_stats.json")


def test_stats_lacking_a_key_name_file_and_key(tmp_path):
    write_random_checkpoint(tmp_path / "op", tiny("pi05"), layout="openpi", tokenizer=False)
    path = tmp_path / "op" / "assets" / "robot" / "norm_stats.json"
    stats = json.loads(path.read_text())
    del stats["norm_stats"]["actions"]["q01"]
    path.write_text(json.dumps(stats))
    _fails(tmp_path / "op", str(path), "'q01'")

    write_random_checkpoint(tmp_path / "le", tiny("pi0"), tokenizer=False)
    pre = next((tmp_path / "le").glob("policy_preprocessor_step_*"))
    values = load_file(str(pre))
    del values["observation.state.std"]
    save_file(values, str(pre))
    _fails(tmp_path / "le", pre.name, "observation.state.std")


def test_several_openpi_assets_need_a_choice(tmp_path):
    write_random_checkpoint(tmp_path, tiny(), layout="openpi", tokenizer=False)
    shutil.copytree(tmp_path / "assets" / "robot", tmp_path / "assets" / "other")
    _fails(tmp_path, "several statistics files", "--asset-id")
    assert load_checkpoint(tmp_path, asset_id="other").norm_stats is not None


def test_config_contradicting_the_weights_names_both(lerobot_ckpt):
    path = lerobot_ckpt / "config.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "max_action_dim": 32}))
    _fails(lerobot_ckpt, str(path), "max_action_dim", "32", "model.action_in_proj.weight", "[32, 8]")
    path.write_text(json.dumps({**raw, "type": "pi05"}))
    _fails(lerobot_ckpt, "type is 'pi05'", "model.action_time_mlp_in.weight")
    path.write_text(json.dumps({**raw, SIZES_KEY: {**raw[SIZES_KEY], "vlm": {**raw[SIZES_KEY]["vlm"], "depth": 6}}}))
    _fails(lerobot_ckpt, "vlm depth = 6", "hold 4 layers", "paligemma.model.language_model.layers.3.")
    path.write_text(json.dumps({**raw, "type": "act"}))
    _fails(lerobot_ckpt, str(path), "'act' is not supported")
    path.write_text(json.dumps({**raw, "normalization_mapping": {"STATE": "MIN_MAX", "ACTION": "MIN_MAX"}}))
    _fails(lerobot_ckpt, str(path), "MIN_MAX")
    path.write_text("{not json")
    _fails(lerobot_ckpt, str(path), "not valid JSON")


@pytest.mark.parametrize("field,our_field", [("chunk_size", "action_horizon"), ("action_horizon", "action_horizon"),
                                             ("tokenizer_max_length", "max_token_len"),
                                             ("num_inference_steps", "num_steps")])
def test_config_fields_giving_one_setting_differently_are_refused_naming_both(lerobot_ckpt, field, our_field):
    path = lerobot_ckpt / "config.json"
    raw = json.loads(path.read_text())
    recorded = raw[SIZES_KEY][our_field]
    path.write_text(json.dumps({**raw, field: recorded + 1}))
    _fails(lerobot_ckpt, str(path), f"{field} = {recorded + 1}", f"{SIZES_KEY}.{our_field} = {recorded}")


def test_lerobot_chunk_size_and_openpi_action_horizon_disagreeing_are_refused(tmp_path):
    cfg = tiny(vision=replace(SIGLIP_SO400M, depth=1, mlp_dim=32), vlm=GEMMA_DUMMY, expert=GEMMA_DUMMY)
    write_random_checkpoint(tmp_path, cfg, layout="openpi", tokenizer=False)
    path = tmp_path / "config.json"
    raw = json.loads(path.read_text())
    assert SIZES_KEY not in raw  # only the published openpi fields
    horizon = raw["action_horizon"]
    path.write_text(json.dumps({**raw, "chunk_size": horizon + 2}))
    _fails(tmp_path, str(path), f"chunk_size = {horizon + 2}", f"action_horizon = {horizon}")


@pytest.mark.parametrize("layout", ["lerobot", "openpi"])
def test_missing_config_json_is_named_instead_of_guessing_sizes(tmp_path, layout):
    write_random_checkpoint(tmp_path, tiny(), layout=layout, tokenizer=False)
    (tmp_path / "config.json").unlink()
    _fails(tmp_path, str(tmp_path / "config.json"), "is missing", "action horizon")


def test_published_variant_name_contradicting_the_weights_is_an_error(tmp_path):
    cfg = tiny(vision=replace(SIGLIP_SO400M, depth=1, mlp_dim=32), vlm=GEMMA_DUMMY, expert=GEMMA_DUMMY)
    write_random_checkpoint(tmp_path, cfg, tokenizer=False)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "paligemma_variant": "gemma_2b"}))
    _fails(tmp_path, "paligemma_variant='gemma_2b'", "vlm width = 2048", "q_proj.weight", "64")


def test_variant_depth_contradicting_the_weights_gives_the_layer_count_and_the_override(tmp_path):
    shallow = replace(GEMMA_DUMMY, depth=2)  # the "dummy" variant's sizes but 2 layers instead of 4
    cfg = tiny(vision=replace(SIGLIP_SO400M, depth=1, mlp_dim=32), vlm=shallow, expert=shallow)
    write_random_checkpoint(tmp_path, cfg, tokenizer=False)
    path = tmp_path / "config.json"
    raw = json.loads(path.read_text())
    assert SIZES_KEY not in raw
    path.write_text(json.dumps({**raw, "paligemma_variant": "dummy"}))
    _fails(tmp_path, "paligemma_variant='dummy'", "vlm depth = 4", "hold 2 layers", "language_model.layers.1.",
           f'"{SIZES_KEY}": {{"vlm": {{', "docs/export.md")
    # The documented override: the pi0edge block's sizes take precedence over the wrong variant name.
    path.write_text(json.dumps({**raw, "paligemma_variant": "dummy", SIZES_KEY: {"vlm": asdict(shallow)}}))
    assert load_checkpoint(tmp_path).config == cfg


def test_robot_dims_contradicting_the_stats_are_an_error(lerobot_ckpt):
    path = lerobot_ckpt / "config.json"
    raw = json.loads(path.read_text())
    raw["output_features"]["action"]["shape"] = [3]
    path.write_text(json.dumps(raw))
    _fails(lerobot_ckpt, "action shape [3]", "statistics' length 8")


# ---- full size: memory-mapped, no second copy ------------------------------------------------------

_LOAD_AND_MEASURE = """
import json, sys, time
import torch
from pi0edge.export.checkpoint import load_checkpoint

def peak_rss_bytes():
    return 1024 * next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))

dtype = getattr(torch, sys.argv[2])
start = time.perf_counter()
ckpt = load_checkpoint(sys.argv[1], dtype=dtype)
load_s, load_peak = time.perf_counter() - start, peak_rss_bytes()
start = time.perf_counter()
checksum = sum(float(p.float().sum()) if p.numel() < 1 << 24 else float(p.sum()) for p in ckpt.model.parameters())
print(json.dumps({"load_s": load_s, "load_peak_rss_bytes": load_peak, "touch_s": time.perf_counter() - start,
                  "touched_peak_rss_bytes": peak_rss_bytes(), "weights_bytes": ckpt.weights_bytes,
                  "model_bytes": sum(p.numel() * p.element_size() for p in ckpt.model.parameters()),
                  "params": sum(p.numel() for p in ckpt.model.parameters()), "finite": checksum == checksum}))
"""


def _load_in_subprocess(ckpt: Path, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _LOAD_AND_MEASURE, str(ckpt), dtype], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_full_size_pi0_loads_memory_mapped_within_1_3x_the_weights(tmp_path, record_property):
    """Loading (hash + NaN/Inf scan included) and then touching every parameter stays within 1.3x the
    weights' bytes: the parameters are views of the file's memory map, never a second copy. Loading the
    float32 file as float16 (what a float16 export does) costs the float16 bytes, not both."""
    ckpt = tmp_path / "pi0_full"
    try:
        start = time.perf_counter()
        write_random_checkpoint(ckpt, full("pi0"), layout="lerobot", robot_state_dim=14, robot_action_dim=14)
        record_property("write_s", time.perf_counter() - start)
        for dtype in ("float32", "float16"):
            result = _load_in_subprocess(ckpt, dtype)
            for key, value in result.items():
                record_property(f"{dtype}_{key}", value)
            print(f"full pi0 as {dtype}: load {result['load_s']:.0f} s (peak RSS "
                  f"{result['load_peak_rss_bytes'] / 2**30:.2f} GiB), every parameter touched: peak RSS "
                  f"{result['touched_peak_rss_bytes'] / 2**30:.2f} GiB; weights file "
                  f"{result['weights_bytes'] / 2**30:.2f} GiB, model {result['model_bytes'] / 2**30:.2f} GiB")
            assert 3.2e9 < result["params"] < 3.3e9 and result["finite"]
            # The limit is relative to the weights actually held: the file's bytes, or the converted copy's.
            held = min(result["weights_bytes"], result["model_bytes"])
            assert result["load_peak_rss_bytes"] <= RSS_LIMIT_RATIO * held
            assert result["touched_peak_rss_bytes"] <= RSS_LIMIT_RATIO * held
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)  # 13 GB: never left behind in pytest's kept temp dirs
