"""Pi0-FAST's side of a checkpoint folder (docs/export.md, "Pi0-FAST"): config.json as LeRobot's
PI0FastConfig and openpi's Pi0FASTConfig write it, and a FAST tokenizer folder for random checkpoints.

No hub is reachable, so a random checkpoint carries its own FAST tokenizer, fitted the way FAST's `fit` does on
synthetic smooth trajectories (pi0edge.export.fast_tokenizer_fit); LeRobot loads its tokenizer from the hub by
name (`action_tokenizer_name`), so a real checkpoint's folder is given at export (`--fast-tokenizer`).
"""

from __future__ import annotations

from pathlib import Path

from pi0edge.export.config import Pi0FastConfig

FAST_TOKENIZER_DIRS = ("fast_tokenizer", "assets/fast_tokenizer")  # where export looks in a checkpoint
FAST_FIT_CHUNKS = 256  # synthetic chunks a random checkpoint's FAST tokenizer is fitted on
FAST_FIT_VOCAB = 1024  # FAST's default BPE vocabulary, capped by the room the model's vocabulary leaves


def lerobot_fast_config(cfg: Pi0FastConfig, images: dict, variant: str, *, robot_state_dim: int,
                        robot_action_dim: int, dtype: str, norm_mode: str) -> dict:
    """config.json as LeRobot's PI0FastConfig `save_pretrained` writes it (the fields pi0edge reads, and the
    sampler's)."""
    return {
        "type": "pi0_fast", "n_obs_steps": 1,
        "input_features": {**images, "observation.state": {"type": "STATE", "shape": [robot_state_dim]}},
        "output_features": {"action": {"type": "ACTION", "shape": [robot_action_dim]}},
        "device": "cpu", "paligemma_variant": variant, "action_expert_variant": "gemma_300m", "dtype": dtype,
        "chunk_size": cfg.action_horizon, "n_action_steps": cfg.action_horizon, "max_state_dim": cfg.state_dim,
        "max_action_dim": cfg.action_dim, "max_action_tokens": cfg.max_action_tokens,
        "image_resolution": [cfg.vision.image_size] * 2, "empty_cameras": 0,
        "tokenizer_max_length": cfg.max_token_len, "text_tokenizer_name": "google/paligemma-3b-pt-224",
        "action_tokenizer_name": "lerobot/fast-action-tokenizer", "temperature": 0.0,
        "max_decoding_steps": cfg.max_action_tokens, "fast_skip_tokens": cfg.fast_skip_tokens,
        "validate_action_token_prefix": True, "use_kv_cache": True,
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": norm_mode, "ACTION": norm_mode},
    }


def openpi_fast_config(cfg: Pi0FastConfig, variant: str, *, dtype: str) -> dict:
    """config.json for an openpi Pi0-FAST checkpoint in PyTorch layout: openpi's Pi0FASTConfig fields."""
    return {"model_type": "pi0_fast", "action_dim": cfg.action_dim, "action_horizon": cfg.action_horizon,
            "max_token_len": cfg.max_token_len, "paligemma_variant": variant, "precision": dtype}


def write_test_fast_tokenizer(out_dir: Path, cfg: Pi0FastConfig, action_dim: int, seed: int = 0) -> Path:
    """Fit a FAST tokenizer on synthetic smooth chunks [action_horizon, action_dim] into out_dir; -> out_dir.
    Its BPE vocabulary fits below the model's skipped ids (action token k is PaliGemma id vocab - 1 - skip - k)."""
    from pi0edge.export.fast_tokenizer_fit import fit_fast_tokenizer, synthetic_action_chunks

    room = cfg.vocab_size - cfg.fast_skip_tokens
    chunks = synthetic_action_chunks(FAST_FIT_CHUNKS, cfg.action_horizon, action_dim, seed=seed)
    fit_fast_tokenizer(chunks, out_dir, vocab_size=min(FAST_FIT_VOCAB, room // 2))
    return out_dir


def find_fast_tokenizer(root: Path) -> Path | None:
    """The first of FAST_TOKENIZER_DIRS the checkpoint holds, or None."""
    return next((root / name for name in FAST_TOKENIZER_DIRS if (root / name).is_dir()), None)
