"""A Pi0-FAST model -> bundle directory (docs/export.md, "Pi0-FAST"), written atomically like every bundle.

Beside the two graphs (export/onnx/fast_graphs.py) the bundle ships PaliGemma's tokenizer.model (the prompt,
and the "Action: " / "|" markers of the decoded text) and the FAST tokenizer folder (tokenizer.json,
processor_config.json) that turns action tokens back into actions at run time.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

from pi0edge.atomic import staged_dir, write_text_atomic
from pi0edge.errors import BundleError, CheckpointError
from pi0edge.export.config import Pi0FastConfig
from pi0edge.export.onnx.graphs import exporter_record
from pi0edge.export.tokenizer import check_tokenizer
from pi0edge.fast_settings import FAST_TOKENIZER_DIR
from pi0edge.manifest import FORMAT_VERSION, MANIFEST_NAME, TOKENIZER_NAME, load_manifest, sha256_file
from pi0edge.normalization import NormStats
from pi0edge.runtime.fast_tokens import CONFIG_FILE, TOKENIZER_FILE, read_fast_config

FAST_TOKENIZER_FILES = (TOKENIZER_FILE, CONFIG_FILE)


def fast_model_manifest(cfg: Pi0FastConfig) -> dict:
    return {"type": cfg.model_type, "cameras": list(cfg.cameras), "image_size": cfg.vision.image_size,
            "image_tokens_per_camera": cfg.vision.tokens_per_image, "max_token_len": cfg.max_token_len,
            "vocab_size": cfg.vocab_size, "action_dim": cfg.action_dim, "state_dim": cfg.state_dim,
            "action_horizon": cfg.action_horizon, "num_layers": cfg.num_layers, "prefix_len": cfg.prefix_len,
            "kv_heads": cfg.vlm.num_kv_heads, "head_dim": cfg.vlm.head_dim}


def fast_settings(cfg: Pi0FastConfig, action_dim: int) -> dict:
    """bundle.yaml `fast`: what the decode loop needs beyond the graphs (core/manifest.py reads it)."""
    return {"max_action_tokens": cfg.max_action_tokens, "fast_skip_tokens": cfg.fast_skip_tokens,
            "bos_after_prompt": cfg.bos_after_prompt, "cache_len": cfg.cache_len,
            "tokenizer_dir": FAST_TOKENIZER_DIR, "action_dim": action_dim,
            "first_position_offset": cfg.first_position_offset}


def fast_action_dim(fast_tokenizer_dir: Path, default: int, cfg: Pi0FastConfig, robot_action_dim: int) -> int:
    """The width the FAST tokenizer encodes: its processor_config.json's action_dim, else `default` (LeRobot
    tokenizes the robot's actions, openpi the model-wide padded ones); checked to lie between the two."""
    recorded = read_fast_config(fast_tokenizer_dir / CONFIG_FILE).action_dim
    width = default if recorded is None else recorded
    if not robot_action_dim <= width <= cfg.action_dim:
        raise CheckpointError(f"{fast_tokenizer_dir / CONFIG_FILE}: the FAST tokenizer encodes {width} action dims, "
                              f"but the robot has {robot_action_dim} and the model {cfg.action_dim}")
    return width


def check_fast_tokenizer_dir(path: Path) -> None:
    missing = [name for name in FAST_TOKENIZER_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{path}: not a FAST tokenizer folder (missing {', '.join(missing)}); pass "
                              "--fast-tokenizer DIR, the folder of LeRobot's fast-action-tokenizer or one written by "
                              "pi0edge.export.fast_tokenizer_fit")


def write_fast_bundle(model, out_dir: Path, *, norm_stats: NormStats, tokenizer_path: Path, fast_tokenizer_dir: Path,
                      robot_state_dim: int, robot_action_dim: int, fast_width: int, precision: str = "float32",
                      source: dict | None = None, overwrite: bool = False,
                      deployment: dict | None = None) -> tuple[float, int]:
    """Export `model` (a Pi0FastModel) with its statistics and both tokenizers into the bundle folder out_dir;
    -> (seconds taken, bundle bytes). fast_width: the action width the FAST tokenizer decodes when its
    processor_config.json does not say. deployment: bundle.yaml's `deployment` section (export/bundle.py's
    deployment_record), left out when None."""
    from pi0edge.export.onnx.fast_graphs import export_fast_graphs

    out_dir, cfg = Path(out_dir), model.cfg
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} already exists; pass --overwrite to replace it (the old bundle stays intact "
                          "until the new one is complete)")
    if robot_state_dim > cfg.state_dim or robot_action_dim > cfg.action_dim:
        raise CheckpointError(f"the robot has state {robot_state_dim} / action {robot_action_dim} dims but the model "
                              f"only {cfg.state_dim} / {cfg.action_dim} (robot vectors are zero-padded, never cut)")
    check_tokenizer(tokenizer_path, cfg.vocab_size)
    check_fast_tokenizer_dir(Path(fast_tokenizer_dir))
    width = fast_action_dim(Path(fast_tokenizer_dir), fast_width, cfg, robot_action_dim)
    start = time.perf_counter()
    with staged_dir(out_dir) as staging:
        graphs = export_fast_graphs(model, staging, precision)
        shutil.copyfile(tokenizer_path, staging / TOKENIZER_NAME)
        (staging / FAST_TOKENIZER_DIR).mkdir()
        for name in FAST_TOKENIZER_FILES:
            shutil.copyfile(Path(fast_tokenizer_dir) / name, staging / FAST_TOKENIZER_DIR / name)
        files = {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        manifest = {
            "format_version": FORMAT_VERSION, "model": fast_model_manifest(cfg),
            "robot": {"state_dim": robot_state_dim, "action_dim": robot_action_dim}, "precision": precision,
            "normalization": norm_stats.to_dict(), "tokenizer": {"file": TOKENIZER_NAME},
            "fast": fast_settings(cfg, width), "graphs": graphs,
            **({"deployment": deployment} if deployment is not None else {}), "source": source or {},
            "exporter": exporter_record(),
            "files": files,
        }
        write_text_atomic(staging / MANIFEST_NAME, yaml.safe_dump(manifest, sort_keys=False))
        load_manifest(staging, verify_checksums=False)  # the reader accepts what we wrote
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return time.perf_counter() - start, size
