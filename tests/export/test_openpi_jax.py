"""openpi JAX (orbax) checkpoints: read with tensorstore, mapped onto the model, exported like any other.

The fixtures are written by the real orbax-checkpoint (export/random_orbax.py, openpi's tree from openpi's
conventions) from the same random weights as a LeRobot checkpoint of the same seed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("tensorstore", reason="reading orbax checkpoints needs the [openpi] extra (tensorstore)")
ocp = pytest.importorskip("orbax.checkpoint", reason="writing the orbax fixtures needs orbax-checkpoint + jax (dev)")

from pi0edge.cli import main  # noqa: E402
from pi0edge.errors import CheckpointError  # noqa: E402
from pi0edge.export.checkpoint import load_checkpoint  # noqa: E402
from pi0edge.export.checkpoint.orbax_io import find_params_dir, list_arrays, read_array  # noqa: E402
from pi0edge.export.config import tiny  # noqa: E402
from pi0edge.export.random_checkpoint import write_random_checkpoint  # noqa: E402
from pi0edge.export.random_orbax import write_orbax_checkpoint  # noqa: E402
from pi0edge.manifest import load_manifest  # noqa: E402
from pi0edge.runtime import Observation, Policy  # noqa: E402
from pi0edge.runtime.profile import synthetic_observation  # noqa: E402

ROBOT_DIMS = {"robot_state_dim": 6, "robot_action_dim": 6}


def _settings(cfg) -> dict:
    return {"action_horizon": cfg.action_horizon, "max_token_len": cfg.max_token_len}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """model type -> (openpi JAX dir, LeRobot dir, openpi-PyTorch dir) holding the same weights and statistics."""
    out = {}
    for model_type in ("pi0", "pi05"):
        root = tmp_path_factory.mktemp(f"openpi-jax-{model_type}")
        cfg = tiny(model_type)
        jax_dir = write_orbax_checkpoint(root / "jax", cfg, seed=3, **ROBOT_DIMS)
        lerobot_dir = write_random_checkpoint(root / "lerobot", cfg, seed=3, tokenizer=False, **ROBOT_DIMS)
        torch_dir = write_random_checkpoint(root / "openpi-torch", cfg, seed=3, tokenizer=False, layout="openpi",
                                            **ROBOT_DIMS)
        out[model_type] = (jax_dir, lerobot_dir, torch_dir)
    return out


def _save_tree(path, tree: dict) -> None:
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(path.resolve(), {"params": tree})


def _restored_tree(jax_dir) -> dict:
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore((jax_dir / "params").resolve())["params"]


def _edited_copy(jax_dir, out_dir, edit) -> object:
    """A copy of the checkpoint whose tree `edit` changed in place (nested dicts of numpy arrays)."""
    import shutil

    tree = _restored_tree(jax_dir)
    edit(tree)
    _save_tree(out_dir / "params", tree)
    shutil.copytree(jax_dir / "assets", out_dir / "assets")
    return out_dir


# ---- loading ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_openpi_jax_tree_loads_to_the_same_parameters_and_config_as_lerobot(checkpoints, model_type):
    jax_dir, lerobot_dir, _ = checkpoints[model_type]
    cfg = tiny(model_type)
    ours = load_checkpoint(jax_dir, settings=_settings(cfg))
    reference = load_checkpoint(lerobot_dir)
    assert ours.layout == "openpi-jax" and ours.config == reference.config == cfg
    got, want = ours.model.state_dict(), reference.model.state_dict()
    assert got.keys() == want.keys()
    assert [name for name in want if not torch.equal(got[name], want[name])] == []
    assert (ours.robot_state_dim, ours.robot_action_dim) == (6, 6)
    assert np.array_equal(ours.norm_stats.action.a, reference.norm_stats.action.a)


def test_value_suffixed_tree_of_openpi_training_loads_like_a_plain_one(checkpoints, tmp_path):
    jax_dir, *_ = checkpoints["pi05"]
    cfg = tiny("pi05")
    suffixed = write_orbax_checkpoint(tmp_path / "suffixed", cfg, seed=3, value_suffix=True, **ROBOT_DIMS)
    assert all(a.key.endswith(".value") for a in list_arrays(suffixed / "params").values())
    got = load_checkpoint(suffixed, settings=_settings(cfg)).model.state_dict()
    want = load_checkpoint(jax_dir, settings=_settings(cfg)).model.state_dict()
    assert all(torch.equal(got[name], want[name]) for name in want)


@pytest.mark.parametrize("storage", [{"use_ocdbt": False}, {"use_zarr3": True}], ids=["per-array-folders", "zarr3"])
def test_orbax_storage_options_load_the_same_parameters(checkpoints, tmp_path, storage):
    jax_dir, *_ = checkpoints["pi0"]
    cfg = tiny("pi0")
    other = write_orbax_checkpoint(tmp_path / "other", cfg, seed=3, **ROBOT_DIMS, **storage)
    assert (other / "params" / "manifest.ocdbt").is_file() == storage.get("use_ocdbt", True)
    got = load_checkpoint(other, settings=_settings(cfg), hash_weights=False).model.state_dict()
    want = load_checkpoint(jax_dir, settings=_settings(cfg), hash_weights=False).model.state_dict()
    assert all(torch.equal(got[name], want[name]) for name in want)


def test_the_params_folder_itself_loads_with_the_assets_beside_it(checkpoints):
    jax_dir, *_ = checkpoints["pi0"]
    ckpt = load_checkpoint(jax_dir / "params", settings=_settings(tiny("pi0")), hash_weights=False)
    assert ckpt.norm_stats is not None and find_params_dir(jax_dir) == jax_dir / "params"


def _einsum(eqn: str, *arrays) -> torch.Tensor:
    return torch.from_numpy(np.einsum(eqn, *arrays).astype(np.float32))


def test_loaded_projections_compute_openpis_einsums_on_the_stored_arrays(checkpoints):
    """Each mapped layer against the einsum openpi's module applies to the stored array (gemma.py, siglip.py's
    flax MultiHeadDotProductAttention, nn.Conv): the mapping is checked against openpi's math, not the writer."""
    import jax

    jax_dir, *_ = checkpoints["pi05"]
    model = load_checkpoint(jax_dir, settings=_settings(tiny("pi05")), hash_weights=False).model
    params = jax_dir / "params"
    arrays = list_arrays(params)

    def stored(path: str) -> np.ndarray:
        return np.asarray(read_array(params, arrays[path]), np.float32)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 5, model.cfg.expert.width)).astype(np.float32)
    layer, i, tx = model.expert.layers[2], 2, torch.from_numpy(x)
    q = _einsum("BTD,NDH->BTNH", x, stored("PaliGemma/llm/layers/attn/q_einsum_1/w")[i])
    # openpi's "BSD,2KDH->2BSKH", the 2 spelled C (numpy wants letters)
    k, v = _einsum("BSD,CKDH->CBSKH", x, stored("PaliGemma/llm/layers/attn/kv_einsum_1/w")[i])
    got_q, got_k, got_v = layer.self_attn.qkv(tx)
    for want, got in ((q, got_q), (k, got_k), (v, got_v)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    heads = rng.standard_normal(q.shape).astype(np.float32)
    torch.testing.assert_close(layer.self_attn.o_proj(torch.from_numpy(heads).flatten(2)), _einsum(
        "BTNH,NHD->BTD", heads, stored("PaliGemma/llm/layers/attn/attn_vec_einsum_1/w")[i]), rtol=1e-5, atol=1e-5)
    gating = stored("PaliGemma/llm/layers/mlp_1/gating_einsum")[i]
    torch.testing.assert_close(layer.mlp.gate_proj(tx), _einsum("BTD,DF->BTF", x, gating[0]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.mlp.up_proj(tx), _einsum("BTD,DF->BTF", x, gating[1]), rtol=1e-5, atol=1e-5)

    attn, w = "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0", model.cfg.vision.width
    xv = rng.standard_normal((1, 7, w)).astype(np.float32)
    siglip = model.vision.encoder.layers[1].self_attn
    want = _einsum("BTD,DHK->BTHK", xv, stored(f"{attn}/query/kernel")[1]) + torch.from_numpy(
        stored(f"{attn}/query/bias")[1])
    torch.testing.assert_close(siglip.q_proj(torch.from_numpy(xv)), want.flatten(2), rtol=1e-5, atol=1e-5)
    image = rng.standard_normal((1, 28, 28, 3)).astype(np.float32)
    conv = jax.lax.conv_general_dilated(image, stored("PaliGemma/img/embedding/kernel"), (14, 14), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = model.vision.embeddings.patch_embedding(torch.from_numpy(image).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(got, torch.from_numpy(np.asarray(conv)) + torch.from_numpy(
        stored("PaliGemma/img/embedding/bias")), rtol=1e-5, atol=1e-5)


# ---- the export command -------------------------------------------------------------------------------


def _actions(bundle, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    with Policy(bundle) as policy:
        rng = np.random.default_rng(seed)
        obs = Observation({"base_0_rgb": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)},
                          rng.standard_normal(6).astype(np.float32), "pick up the cube")
        noise = rng.standard_normal((policy.manifest.action_horizon, policy.manifest.action_dim)).astype(np.float32)
        chunk, internals = policy.infer_internals(obs, noise=noise)
    return chunk.actions, internals.normalized_actions


def _export(checkpoint, bundle, tokenizer_path, *flags) -> None:
    assert main(["export", str(checkpoint), "-o", str(bundle), "--tokenizer", str(tokenizer_path), *flags]) == 0


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_exported_openpi_jax_bundle_is_the_bundle_of_the_same_weights_in_safetensors(
        checkpoints, tmp_path, tokenizer_path, model_type):
    """Graphs byte for byte those of the LeRobot checkpoint's bundle; actions exactly the openpi-PyTorch
    bundle's (the same statistics convention: LeRobot's mean/std division differs in the last bits)."""
    jax_dir, lerobot_dir, torch_dir = checkpoints[model_type]
    cfg = tiny(model_type)
    bundles = {name: tmp_path / name for name in ("jax", "lerobot", "torch")}
    _export(jax_dir, bundles["jax"], tokenizer_path, "--action-horizon", str(cfg.action_horizon),
            "--max-token-len", str(cfg.max_token_len))
    _export(lerobot_dir, bundles["lerobot"], tokenizer_path)
    _export(torch_dir, bundles["torch"], tokenizer_path)
    assert load_manifest(bundles["jax"]).raw["source"]["layout"] == "openpi-jax"
    graphs = sorted(p.name for p in bundles["jax"].iterdir() if ".onnx" in p.name)
    assert graphs and graphs == sorted(p.name for p in bundles["lerobot"].iterdir() if ".onnx" in p.name)
    assert [g for g in graphs if (bundles["jax"] / g).read_bytes() != (bundles["lerobot"] / g).read_bytes()] == []
    (jax_actions, jax_normalized), (torch_actions, torch_normalized) = _actions(bundles["jax"]), _actions(
        bundles["torch"])
    assert np.array_equal(jax_normalized, torch_normalized)
    assert np.array_equal(jax_actions, torch_actions)


def test_export_without_the_action_horizon_names_the_flag(checkpoints, tmp_path, tokenizer_path, capsys):
    jax_dir, *_ = checkpoints["pi0"]
    assert main(["export", str(jax_dir), "-o", str(tmp_path / "b"), "--tokenizer", str(tokenizer_path)]) == 1
    assert "--action-horizon" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_openpi_settings_on_a_safetensors_checkpoint_are_refused(checkpoints):
    _, lerobot_dir, _ = checkpoints["pi0"]
    with pytest.raises(CheckpointError, match="--action-horizon are for openpi JAX checkpoints"):
        load_checkpoint(lerobot_dir, settings={"action_horizon": 10})


# ---- bad checkpoints ----------------------------------------------------------------------------------


def _pop(path: str):
    def edit(tree):
        *parents, leaf = path.split("/")
        for part in parents:
            tree = tree[part]
        del tree[leaf]
    return edit


def _set(path: str, value):
    def edit(tree):
        *parents, leaf = path.split("/")
        for part in parents:
            tree = tree.setdefault(part, {})
        tree[leaf] = value(tree.get(leaf)) if callable(value) else value
    return edit


@pytest.mark.parametrize("edit,message", [
    (_pop("PaliGemma/llm/layers/mlp_1/linear"), r"missing: 'PaliGemma/llm/layers/mlp_1/linear'"),
    (_set("PaliGemma/extra_head/kernel", np.zeros((2, 2), np.float32)),
     r"does not have: 'PaliGemma/extra_head/kernel'"),
    (_set("PaliGemma/llm/layers/attn/q_einsum/lora_a", np.zeros((4, 8, 64, 2), np.float32)), "LoRA adapter weights"),
    (_set("action_out_proj/kernel", np.zeros((32, 7), np.float32)), r"'action_out_proj/kernel' has shape \[32, 7\], "
                                                                     r"expected \[32, 8\]"),
    (_set("PaliGemma/llm/layers/attn/kv_einsum_1/w", lambda w: w[:, 0]), r"'PaliGemma/llm/layers/attn/kv_einsum_1/w' "
                                                                           "has shape"),
    (_set("state_proj/bias", lambda b: np.full_like(b, np.nan)), r"'state_proj/bias' contains NaN"),
], ids=["missing", "extra", "lora", "wrong-shape", "wrong-rank", "nan"])
def test_bad_openpi_trees_are_refused_naming_the_parameter_path(checkpoints, tmp_path, edit, message):
    jax_dir, *_ = checkpoints["pi0"]
    bad = _edited_copy(jax_dir, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad, settings=_settings(tiny("pi0")), hash_weights=False)


def test_an_orbax_checkpoint_that_is_not_an_openpi_model_is_refused(tmp_path):
    _save_tree(tmp_path / "ckpt" / "params", {"encoder": {"kernel": np.ones((3, 3), np.float32)}})
    with pytest.raises(CheckpointError, match="not an openpi model's parameters"):
        load_checkpoint(tmp_path / "ckpt", settings={"action_horizon": 10})


def test_a_params_folder_that_is_not_orbax_is_refused(tmp_path):
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "weights.npz").write_bytes(b"not orbax")
    with pytest.raises(CheckpointError, match="params folder that is not an orbax checkpoint"):
        load_checkpoint(tmp_path)


def test_pi0_fast_tree_loads_and_exports_as_the_openpi_pytorch_checkpoint_of_the_same_weights(tmp_path):
    """pi0_fast.py's tree (the PaliGemma alone): the same parameters and config as the openpi-PyTorch layout, graphs
    byte for byte, the same decoded chunk (random weights decode malformed chunks: NaN in both)."""
    pytest.importorskip("pi0edge.export.fast_tokenizer_fit", reason="a random Pi0-FAST checkpoint's FAST tokenizer "
                        "is fitted by pi0edge.export.fast_tokenizer_fit (on main, not on the Pi0-FAST branch)")
    # openpi's settings where its tree says nothing: no BOS after the prompt, 32-wide state, FAST's 128 skipped ids,
    # the first action token one position on (its JAX sampler)
    cfg = replace(tiny("pi0fast"), bos_after_prompt=False, state_dim=32, max_action_tokens=256, fast_skip_tokens=128,
                  first_position_offset=1)
    jax_dir = write_orbax_checkpoint(tmp_path / "jax", cfg, seed=5, **ROBOT_DIMS)
    torch_dir = write_random_checkpoint(tmp_path / "torch", cfg, seed=5, layout="openpi", **ROBOT_DIMS)
    settings = {**_settings(cfg), "action_dim": cfg.action_dim}
    ours, reference = load_checkpoint(jax_dir, settings=settings), load_checkpoint(torch_dir)
    assert ours.config == reference.config == cfg
    got, want = ours.model.state_dict(), reference.model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[name], want[name]) for name in want)
    # the random checkpoint's own tokenizers: FAST's answer needs PaliGemma's "|" piece
    tokenizer_path, fast = torch_dir / "tokenizer.model", ["--fast-tokenizer", str(torch_dir / "fast_tokenizer")]
    _export(jax_dir, tmp_path / "jax-bundle", tokenizer_path, *fast, "--action-horizon", str(cfg.action_horizon),
            "--max-token-len", str(cfg.max_token_len), "--action-dim", str(cfg.action_dim))
    _export(torch_dir, tmp_path / "torch-bundle", tokenizer_path, *fast)
    graphs = sorted(p.name for p in (tmp_path / "jax-bundle").iterdir() if ".onnx" in p.name)
    assert graphs and all((tmp_path / "jax-bundle" / g).read_bytes() == (tmp_path / "torch-bundle" / g).read_bytes()
                          for g in graphs)
    chunks = []
    for bundle in ("jax-bundle", "torch-bundle"):
        with Policy(tmp_path / bundle, seed=0) as policy:
            chunks.append(policy.infer(synthetic_observation(policy)))
    assert np.array_equal(chunks[0].actions, chunks[1].actions, equal_nan=True)
    assert chunks[0].malformed == chunks[1].malformed


def test_statistics_under_a_nested_repo_id_asset_folder_are_found(tmp_path):
    """openpi names the asset folder by the dataset's repo_id when the config gives no asset_id."""
    cfg = tiny("pi0")
    ckpt = write_orbax_checkpoint(tmp_path / "libero", cfg, asset_id="physical-intelligence/libero", **ROBOT_DIMS)
    assert load_checkpoint(ckpt, settings=_settings(cfg), hash_weights=False).norm_stats is not None


def test_a_setting_that_contradicts_the_tree_is_refused_naming_both(checkpoints):
    jax_dir, *_ = checkpoints["pi0"]
    with pytest.raises(CheckpointError, match=r"action_dim = 7.*'action_in_proj/kernel\[?.*8"):
        load_checkpoint(jax_dir, settings={**_settings(tiny("pi0")), "action_dim": 7}, hash_weights=False)
