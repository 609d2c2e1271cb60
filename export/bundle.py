"""checkpoint directory -> bundle directory (docs/export.md, "The bundle"), written atomically.

Everything is written into a hidden sibling folder first; only a complete, checked bundle is renamed
into place. An existing bundle is replaced only with overwrite=True, and then by rename, so a failed
or interrupted export never leaves half a bundle and never damages a good one.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pi0edge.atomic import staged_dir, write_text_atomic
from pi0edge.deployment import PROMPT_FORMATS, CameraRecord, DeploymentRecord, VectorRecord, stats_sha256
from pi0edge.errors import BundleError, CheckpointError
from pi0edge.export.checkpoint.features import TrainedFeatures
from pi0edge.export.config import FAST_MODEL_TYPE, Pi0Config
from pi0edge.export.model.options import DEFAULT_OPTIMIZE, OptimizeOptions
from pi0edge.export.onnx.graphs import export_graphs, exporter_record
from pi0edge.export.tokenizer import check_tokenizer
from pi0edge.manifest import FORMAT_VERSION, MANIFEST_NAME, TOKENIZER_NAME, load_manifest, sha256_file
from pi0edge.normalization import NormStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportReport:
    bundle_dir: Path
    precision: str
    export_s: float
    bundle_bytes: int


def model_manifest(cfg: Pi0Config) -> dict:
    return {"type": cfg.model_type, "cameras": list(cfg.cameras), "image_size": cfg.vision.image_size,
            "image_tokens_per_camera": cfg.vision.tokens_per_image, "max_token_len": cfg.max_token_len,
            "vocab_size": cfg.vocab_size, "action_dim": cfg.action_dim, "state_dim": cfg.state_dim,
            "action_horizon": cfg.action_horizon, "num_steps": cfg.num_steps, "num_layers": cfg.num_layers,
            "prefix_len": cfg.prefix_len, "kv_heads": cfg.vlm.num_kv_heads, "head_dim": cfg.vlm.head_dim}


def deployment_record(cfg: Pi0Config, norm_stats: NormStats, tokenizer_sha256: str,
                      features: TrainedFeatures | None) -> DeploymentRecord:
    """What the policy was trained with (core/deployment.py); what the checkpoint does not hold stays None."""
    features = features or TrainedFeatures()
    vectors = []
    for name, dim, names in (("state", norm_stats.state.dim, features.state_names),
                             ("action", norm_stats.action.dim, features.action_names)):
        if names is not None and len(names) != dim:
            raise CheckpointError(f"config.json names {len(names)} {name} dims ({list(names)}) but the statistics "
                                  f"have {dim}")
        vectors.append(VectorRecord(dim, names))
    cameras = tuple(CameraRecord(cam, features.camera_hw.get(cam)) for cam in cfg.cameras)
    return DeploymentRecord(cameras, vectors[0], vectors[1], stats_sha256(norm_stats), tokenizer_sha256,
                            PROMPT_FORMATS[cfg.model_type])


def write_bundle(model, out_dir: Path, *, norm_stats: NormStats, tokenizer_path: Path, robot_state_dim: int,
                 robot_action_dim: int, precision: str = "float32", source: dict | None = None,
                 overwrite: bool = False, with_velocity: bool = False,
                 optimize: OptimizeOptions | None = None, features: TrainedFeatures | None = None,
                 rtc: bool = False) -> ExportReport:
    """Export `model` (a Pi0Model) with its stats and tokenizer into the bundle folder out_dir.
    optimize: export/optimize.py's graph optimizations (None: the plain reference graphs).
    features: what the checkpoint says about its training data (camera sizes, dim names), for `deployment`.
    rtc: the real-time chunking variant (step and loop graphs take the guidance inputs)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} already exists; pass --overwrite to replace it (the old bundle stays intact "
                          "until the new one is complete)")
    tokenizer_path = Path(tokenizer_path)
    if norm_stats.state.dim != robot_state_dim or norm_stats.action.dim != robot_action_dim:
        raise CheckpointError(f"normalization statistics cover state {norm_stats.state.dim} / action "
                              f"{norm_stats.action.dim} dims but the robot has {robot_state_dim} / {robot_action_dim}")
    cfg: Pi0Config = model.cfg
    if robot_state_dim > cfg.state_dim or robot_action_dim > cfg.action_dim:
        raise CheckpointError(f"the robot has state {robot_state_dim} / action {robot_action_dim} dims but the model "
                              f"only {cfg.state_dim} / {cfg.action_dim} (robot vectors are zero-padded, never cut)")
    check_tokenizer(tokenizer_path, cfg.vocab_size)
    start = time.perf_counter()
    with staged_dir(out_dir) as staging:
        graphs = export_graphs(model, staging, precision, with_velocity=with_velocity, optimize=optimize, rtc=rtc)
        shutil.copyfile(tokenizer_path, staging / TOKENIZER_NAME)
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": model_manifest(cfg),
            "robot": {"state_dim": robot_state_dim, "action_dim": robot_action_dim},
            "precision": precision,
            "normalization": norm_stats.to_dict(),
            "tokenizer": {"file": TOKENIZER_NAME},
            "deployment": deployment_record(cfg, norm_stats, files[TOKENIZER_NAME], features).to_document(),
            "graphs": graphs,
            # which export/optimize.py optimizations the graphs carry; fixed_num_steps: the only step count a
            # step-indexed step graph can run
            "optimizations": (optimize or OptimizeOptions.none()).manifest_entry(cfg.num_steps),
            "rtc": bool(rtc),  # the denoise graphs take real-time chunking's guidance inputs
            "source": source or {},
            "exporter": exporter_record(),
            "files": files,
        }
        write_text_atomic(staging / MANIFEST_NAME, yaml.safe_dump(manifest, sort_keys=False))
        load_manifest(staging, verify_checksums=False)  # the reader accepts what we wrote
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    return ExportReport(out_dir, precision, time.perf_counter() - start, size)


def _export_fast(ckpt, checkpoint_dir, out_dir, tokenizer_path: Path, fast_tokenizer, source: dict, *,
                 precision: str, overwrite: bool) -> ExportReport:
    from pi0edge.export.fast_bundle import write_fast_bundle
    from pi0edge.export.fast_checkpoint import find_fast_tokenizer

    fast_dir = Path(fast_tokenizer) if fast_tokenizer else find_fast_tokenizer(Path(checkpoint_dir))
    if fast_dir is None:
        raise CheckpointError(f"{checkpoint_dir}: a Pi0-FAST checkpoint needs its FAST tokenizer (tokenizer.json, "
                              "processor_config.json): none in fast_tokenizer/; pass --fast-tokenizer DIR")
    deployment = deployment_record(ckpt.config, ckpt.norm_stats, sha256_file(tokenizer_path), ckpt.features)
    export_s, size = write_fast_bundle(ckpt.model, Path(out_dir), norm_stats=ckpt.norm_stats,
                                       tokenizer_path=tokenizer_path, deployment=deployment.to_document(),
                                       fast_tokenizer_dir=fast_dir, robot_state_dim=ckpt.robot_state_dim,
                                       robot_action_dim=ckpt.robot_action_dim, precision=precision, source=source,
                                       overwrite=overwrite, fast_width=ckpt.robot_action_dim if ckpt.layout == "lerobot"
                                       else ckpt.config.action_dim)
    return ExportReport(Path(out_dir), precision, export_s, size)


def export_bundle(checkpoint_dir: str | Path, out_dir: str | Path, *, precision: str = "float32",
                  tokenizer: str | Path | None = None, overwrite: bool = False, num_steps: int | None = None,
                  check_finite: bool = True, optimize: OptimizeOptions | None = DEFAULT_OPTIMIZE,
                  asset_id: str | None = None, fast_tokenizer: str | Path | None = None,
                  rtc: bool = False, settings: dict | None = None) -> ExportReport:
    """The `pi0edge export` command: load the checkpoint lazily, export both graphs, write the bundle.
    The graph optimizations are on by default (optimize=None exports the plain graphs); rtc exports the
    real-time chunking variant (docs/model.md, "Real-time chunking"). A Pi0-FAST checkpoint exports its plain
    prefix and decode_step graphs, with its FAST tokenizer (`fast_tokenizer`, else the checkpoint's
    fast_tokenizer/ folder). settings: what an openpi JAX checkpoint does not record
    (load_checkpoint's, e.g. {"action_horizon": 10})."""
    from dataclasses import replace

    import torch

    from pi0edge.export.checkpoint import load_checkpoint
    from pi0edge.export.onnx.graphs import PRECISIONS

    if precision not in PRECISIONS:
        raise BundleError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if tokenizer:
        check_tokenizer(tokenizer)  # before a checkpoint load that can take minutes
    # Optimized graphs are derived from float32 weights (folding is done in float32, then cast per tensor);
    # the plain graphs load straight into their precision. A tensor already in that dtype stays a memory-mapped
    # view of the checkpoint, so no second copy is made.
    load_dtype = torch.float32 if optimize is not None else PRECISIONS[precision]
    ckpt = load_checkpoint(checkpoint_dir, dtype=load_dtype, check_finite=check_finite, asset_id=asset_id,
                           settings=settings)
    model = ckpt.model
    if num_steps is not None and ckpt.config.model_type != FAST_MODEL_TYPE:  # Pi0-FAST has no Euler steps
        model.cfg = replace(model.cfg, num_steps=num_steps)
    tokenizer_path = Path(tokenizer) if tokenizer else ckpt.tokenizer_path
    if tokenizer_path is None:
        raise CheckpointError(f"{checkpoint_dir}: no tokenizer.model in the checkpoint directory; pass --tokenizer "
                              "PATH (PaliGemma's SentencePiece model, e.g. paligemma_tokenizer.model)")
    if ckpt.norm_stats is None:
        raise CheckpointError(f"{checkpoint_dir}: no normalization statistics found")
    source = {"checkpoint": str(Path(checkpoint_dir).resolve()), "layout": ckpt.layout,
              "sha256": ckpt.source_sha256}
    if ckpt.config.model_type == FAST_MODEL_TYPE:
        if rtc:  # real-time chunking guides the Euler loop, which Pi0-FAST does not have
            raise CheckpointError(f"{checkpoint_dir}: a Pi0-FAST checkpoint decodes tokens; --rtc applies to the "
                                  "flow-matching models (pi0, pi0.5) only")
        return _export_fast(ckpt, checkpoint_dir, out_dir, tokenizer_path, fast_tokenizer, source, precision=precision,
                            overwrite=overwrite)
    return write_bundle(model, Path(out_dir), norm_stats=ckpt.norm_stats, tokenizer_path=tokenizer_path,
                        robot_state_dim=ckpt.robot_state_dim, robot_action_dim=ckpt.robot_action_dim,
                        precision=precision, source=source, overwrite=overwrite, optimize=optimize,
                        features=ckpt.features, rtc=rtc)

