"""The random-checkpoint writer: valid safetensors in both layouts, exact regenerable values, realistic files."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pi0edge.export import random_checkpoint as rc
from pi0edge.export.checkpoint import (
    SIZES_KEY,
    TIED_EMBEDDING_KEYS,
    TensorInfo,
    checkpoint_key,
    detect_config,
)
from pi0edge.export.config import full, tiny
from pi0edge.export.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, train_test_tokenizer


def _written(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))  # safetensors' own reader: an independent check of the streamed format


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_lerobot_file_holds_every_parameter_under_its_lerobot_key_with_the_regenerable_values(tmp_path, model_type):
    cfg = tiny(model_type)
    rc.write_random_checkpoint(tmp_path, cfg)
    tensors = _written(tmp_path / "model.safetensors")
    expected = rc.random_state_dict(cfg)
    assert set(tensors) == {checkpoint_key(n, model_prefix=True) for n in expected}
    for name, value in expected.items():
        assert torch.equal(tensors[checkpoint_key(name, model_prefix=True)], value), name
    assert "model.paligemma_with_expert.paligemma.model.vision_tower.vision_model.post_layernorm.weight" in tensors
    assert ("model.time_mlp_in.weight" in tensors) == (model_type == "pi05")


def test_openpi_layout_has_no_model_prefix_and_its_own_config_and_stats(tmp_path):
    cfg = tiny("pi05")
    rc.write_random_checkpoint(tmp_path, cfg, layout="openpi", robot_state_dim=5, robot_action_dim=6)
    tensors = _written(tmp_path / "model.safetensors")
    assert all(k.startswith(("paligemma_with_expert.", "action_", "time_mlp_")) for k in tensors)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["action_dim"] == cfg.action_dim and raw["action_horizon"] == cfg.action_horizon
    stats = json.loads((tmp_path / "assets" / "robot" / "norm_stats.json").read_text())["norm_stats"]
    assert set(stats) == {"state", "actions"}
    assert {k: len(v) for k, v in stats["state"].items()} == {"mean": 5, "std": 5, "q01": 5, "q99": 5}
    assert len(stats["actions"]["q99"]) == 6
    assert not list(tmp_path.glob("policy_*"))


def test_tie_embedding_writes_the_text_embedding_only_as_lm_head(tmp_path):
    rc.write_random_checkpoint(tmp_path, tiny(), tie_embedding=True)
    tensors = _written(tmp_path / "model.safetensors")
    assert "model." + TIED_EMBEDDING_KEYS[0] in tensors
    assert not any("embed_tokens" in k for k in tensors)


def test_bfloat16_checkpoint_stores_bf16_values_of_the_same_draws(tmp_path):
    cfg = tiny()
    rc.write_random_checkpoint(tmp_path, cfg, dtype="bfloat16", with_model_prefix=False)
    tensors = _written(tmp_path / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    f32 = rc.random_state_dict(cfg)
    for name, value in rc.random_state_dict(cfg, dtype="bfloat16").items():
        assert torch.equal(tensors[checkpoint_key(name)], value)
        assert torch.equal(value, f32[name].to(torch.bfloat16))


def test_values_do_not_depend_on_chunking_so_full_size_streams_the_same_draws(monkeypatch):
    cfg = tiny()
    whole = rc.random_state_dict(cfg, seed=3)
    monkeypatch.setattr(rc, "CHUNK_ELEMS", 1000)  # forces many chunks per tensor
    for name, value in rc.random_state_dict(cfg, seed=3).items():
        assert torch.equal(whole[name], value), name


def test_same_seed_same_bytes_other_seed_other_values(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        rc.write_random_checkpoint(tmp_path / name, tiny(), seed=seed, tokenizer=False)
    data = {n: (tmp_path / n / "model.safetensors").read_bytes() for n in "abc"}
    assert data["a"] == data["b"] != data["c"]


def test_initialization_is_realistic_norms_near_identity_matrices_small():
    values = rc.random_state_dict(tiny("pi05"))
    assert abs(values["vision.post_layernorm.weight"].mean() - 1.0) < 0.05  # SigLIP LayerNorm: x * w
    assert values["vlm.norm.weight"].abs().max() < 0.2  # Gemma RMSNorm: x * (1 + w)
    assert 0.015 < values["vlm.layers.0.mlp.gate_proj.weight"].std() < 0.025
    assert len({v.sum().item() for v in values.values()}) == len(values)  # no two parameters alike


def test_header_is_8_byte_aligned_and_declares_offsets_back_to_back(tmp_path):
    rc.write_random_checkpoint(tmp_path, tiny(), tokenizer=False)
    raw = (tmp_path / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert n % 8 == 0 and header["__metadata__"]["format"] == "pt"
    spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert spans[-1][1] == len(raw) - 8 - n


def test_sharded_writing_gives_shards_and_an_index(tmp_path):
    rc.write_random_checkpoint(tmp_path, tiny(), max_shard_bytes=200_000, tokenizer=False)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    for shard in shards:
        with safe_open(str(tmp_path / shard), framework="pt") as f:
            assert all(index["weight_map"][k] == shard for k in f.keys())


def test_lerobot_config_and_processor_files_look_like_save_pretrained(tmp_path):
    cfg = tiny("pi0")
    rc.write_random_checkpoint(tmp_path, cfg, robot_state_dim=6, robot_action_dim=7, norm_kind="quantile")
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["type"] == "pi0" and raw["chunk_size"] == cfg.action_horizon
    assert raw["max_action_dim"] == cfg.action_dim and raw["tokenizer_max_length"] == cfg.max_token_len
    assert raw["output_features"]["action"]["shape"] == [7]
    assert raw["input_features"]["observation.state"]["shape"] == [6]
    assert [k for k in raw["input_features"] if k.startswith("observation.images.")] == [
        "observation.images.base_0_rgb", "observation.images.left_wrist_0_rgb", "observation.images.right_wrist_0_rgb"]
    assert raw["normalization_mapping"] == {"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"}
    pre = _written(tmp_path / "policy_preprocessor_step_5_normalizer_processor.safetensors")
    assert {k: tuple(v.shape) for k, v in pre.items() if k.startswith("observation.state.")} == {
        f"observation.state.{s}": (6,) for s in ("mean", "std", "q01", "q99", "min", "max")}
    post = _written(tmp_path / "policy_postprocessor_step_0_unnormalizer_processor.safetensors")
    assert set(post) == {f"action.{s}" for s in ("mean", "std", "q01", "q99", "min", "max")}
    steps = json.loads((tmp_path / "policy_preprocessor.json").read_text())["steps"]
    assert steps[5]["state_file"] == "policy_preprocessor_step_5_normalizer_processor.safetensors"


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
@pytest.mark.parametrize("layout", ["lerobot", "openpi"])
def test_full_size_config_needs_no_pi0edge_block_published_fields_suffice(model_type, layout):
    cfg = full(model_type)
    shapes = rc.parameter_shapes(cfg)  # meta device: no memory
    params = sum(torch.Size(s).numel() for s in shapes.values())
    assert 3.2e9 < params < 3.4e9
    raw = (rc.lerobot_config(cfg, robot_state_dim=14, robot_action_dim=14, dtype="float32", norm_kind="mean_std")
           if layout == "lerobot" else rc.openpi_config(cfg, dtype="float32"))
    assert rc._with_sizes_if_needed(raw, cfg, shapes) is raw
    infos = {n: TensorInfo(rc.Path("model.safetensors"), checkpoint_key(n), "F32", s) for n, s in shapes.items()}
    assert detect_config(raw, infos) == cfg


def test_sizes_without_a_variant_name_are_recorded_in_the_pi0edge_block(tmp_path):
    cfg = replace(tiny(), action_horizon=7, num_steps=4)
    rc.write_random_checkpoint(tmp_path, cfg, tokenizer=False)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw[SIZES_KEY]["vision"]["num_heads"] == cfg.vision.num_heads
    assert raw["paligemma_variant"] == "dummy" and raw["action_expert_variant"] == "custom"


def test_bad_writer_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        rc.write_random_checkpoint(tmp_path, tiny(), layout="jax")
    with pytest.raises(ValueError, match="robot dims"):
        rc.write_random_checkpoint(tmp_path, tiny(), robot_action_dim=99)
    with pytest.raises(ValueError, match="follows the model type"):
        rc.write_random_checkpoint(tmp_path, tiny("pi0"), layout="openpi", norm_kind="quantile")


def test_cli_writes_a_tiny_checkpoint(tmp_path, capsys):
    assert rc.main([str(tmp_path / "ck"), "--preset", "tiny", "--model", "pi05", "--layout", "openpi"]) == 0
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    assert "openpi layout" in capsys.readouterr().out


# ---- tokenizer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [300, 512, 257_152])
def test_test_tokenizer_has_paligemma_ids_and_stays_inside_the_vocab(tmp_path, vocab_size):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(train_test_tokenizer(tmp_path / "t.model", vocab_size)))
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (PAD_ID, EOS_ID, BOS_ID, UNK_ID)
    assert sp.vocab_size() <= min(vocab_size, 1000)
    ids = sp.encode("Task: pick up the red cube, State: 12 255 0;\nAction: ") + sp.encode("fold the towel\n")
    assert ids and max(ids) < vocab_size
    assert UNK_ID not in ids
    assert sp.encode("\n") == [sp.piece_to_id("\n")]  # one piece, as in PaliGemma's tokenizer


def test_test_tokenizer_is_deterministic(tmp_path):
    a = train_test_tokenizer(tmp_path / "a.model", 512).read_bytes()
    assert a == train_test_tokenizer(tmp_path / "b.model", 512).read_bytes()
