"""Shared fixtures: a tiny SentencePiece tokenizer and tiny random bundles, built once per session."""

from __future__ import annotations

import copy
import io
import random
from pathlib import Path

import numpy as np
import pytest

WORDS = ("pick place the red green blue cube block cup bowl towel drawer open close left right up down gently "
         "fold insert peg into socket transfer grasp lift move to table shelf bin push pull rotate stack").split()


def train_tokenizer(path: Path, vocab_size: int = 300) -> Path:
    """A small BPE model with PaliGemma's special ids (pad 0, eos 1, bos 2, unk 3)."""
    import sentencepiece as spm

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    lines += [" ".join(str(rng.randint(0, 255)) for _ in range(16)) for _ in range(200)]
    lines += ["Task: pick up the cube, State: 1 2 3;\nAction: ", "Action:", "State:", "Task:"]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                   model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                                   hard_vocab_limit=False, minloglevel=2)
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer.model")


def random_norm_stats(model_type: str, state_dim: int, action_dim: int, seed: int = 0):
    from pi0edge.normalization import NormStats

    rng = np.random.default_rng(seed)
    if model_type == "pi05":
        lo_s, lo_a = rng.uniform(-2, 0, state_dim), rng.uniform(-2, 0, action_dim)
        return NormStats.from_arrays("quantile", "openpi",
                                     {"q01": lo_s, "q99": lo_s + rng.uniform(0.5, 3, state_dim)},
                                     {"q01": lo_a, "q99": lo_a + rng.uniform(0.5, 3, action_dim)})
    return NormStats.from_arrays("mean_std", "openpi",
                                 {"mean": rng.normal(size=state_dim), "std": rng.uniform(0.5, 2, state_dim)},
                                 {"mean": rng.normal(size=action_dim), "std": rng.uniform(0.5, 2, action_dim)})


ROBOT_STATE_DIM = 6
ROBOT_ACTION_DIM = 6


DEFAULT = "default"  # `pi0edge export`'s optimizations (DEFAULT_OPTIMIZE), resolved where torch is imported


def make_tiny_bundle(out_dir: Path, tokenizer: Path, model_type: str = "pi0", precision: str = "float32",
                     seed: int = 0, with_velocity: bool = False, optimize=DEFAULT, **cfg_overrides):
    """-> (bundle dir, the float32 eager reference model with the bundle's weights). Written as `pi0edge export`
    writes it: its default optimizations and the loop graph, unless optimize says otherwise (None: the plain
    graphs)."""
    import torch

    from pi0edge.export.bundle import write_bundle
    from pi0edge.export.config import tiny
    from pi0edge.export.model import DEFAULT_OPTIMIZE, Pi0Model

    if optimize == DEFAULT:
        optimize = DEFAULT_OPTIMIZE
    cfg = tiny(model_type, **cfg_overrides)
    torch.manual_seed(seed)
    model = Pi0Model(cfg).eval()
    stats = random_norm_stats(model_type, ROBOT_STATE_DIM, ROBOT_ACTION_DIM, seed)
    write_bundle(copy.deepcopy(model), out_dir, norm_stats=stats, tokenizer_path=tokenizer,
                 robot_state_dim=ROBOT_STATE_DIM, robot_action_dim=ROBOT_ACTION_DIM, precision=precision,
                 with_velocity=with_velocity, optimize=optimize)
    return out_dir, model


@pytest.fixture(scope="session")
def tiny_bundle_factory(tmp_path_factory, tokenizer_path):
    """Cached tiny bundles keyed by their arguments: export once per session."""
    cache: dict = {}

    def get(model_type: str = "pi0", precision: str = "float32", optimize=DEFAULT, **cfg_overrides):
        """optimize: OptimizeOptions; by default `pi0edge export`'s (None: the plain graphs)."""
        from pi0edge.export.model import DEFAULT_OPTIMIZE

        optimize = DEFAULT_OPTIMIZE if optimize == DEFAULT else optimize
        key = (model_type, precision, optimize, tuple(sorted(cfg_overrides.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"bundle-{model_type}-{precision}") / "bundle"
            cache[key] = make_tiny_bundle(out, tokenizer_path, model_type, precision, optimize=optimize,
                                          **cfg_overrides)
        return cache[key]

    return get
