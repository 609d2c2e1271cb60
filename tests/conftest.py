"""Shared fixtures: a tiny SentencePiece tokenizer and tiny random bundles, built once per session."""

from __future__ import annotations

import io
import random
from pathlib import Path

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


ROBOT_STATE_DIM = 6
ROBOT_ACTION_DIM = 6


DEFAULT = "default"  # `pi0edge export`'s optimizations (DEFAULT_OPTIMIZE), resolved where torch is imported


def make_tiny_bundle(out_dir: Path, tokenizer: Path, model_type: str = "pi0", precision: str = "float32",
                     seed: int = 0, optimize=DEFAULT, **cfg_overrides):
    """-> (bundle dir, the float32 eager reference model with the bundle's weights).

    Made as a user makes one: a random LeRobot checkpoint (beside out_dir) through `export_bundle`, the
    `pi0edge export` command, with its default optimizations and loop graph unless optimize says otherwise
    (None: the plain graphs). The reference is that checkpoint loaded as the export loads it."""
    from pi0edge.export.bundle import export_bundle
    from pi0edge.export.checkpoint import load_checkpoint
    from pi0edge.export.config import tiny
    from pi0edge.export.model import DEFAULT_OPTIMIZE
    from pi0edge.export.random_checkpoint import write_random_checkpoint

    optimize = DEFAULT_OPTIMIZE if optimize == DEFAULT else optimize
    # Pi0-FAST keeps the checkpoint's own tokenizers: its tokenizer.model has the "|" end-of-action piece and
    # its fast_tokenizer/ is fitted to the model's vocabulary.
    own_tokenizer = model_type == "pi0fast"
    checkpoint = write_random_checkpoint(out_dir.with_name(out_dir.name + "-checkpoint"),
                                         tiny(model_type, **cfg_overrides), seed=seed, tokenizer=own_tokenizer,
                                         robot_state_dim=ROBOT_STATE_DIM, robot_action_dim=ROBOT_ACTION_DIM)
    export_bundle(checkpoint, out_dir, precision=precision, tokenizer=None if own_tokenizer else tokenizer,
                  optimize=optimize)
    return out_dir, load_checkpoint(checkpoint).model.eval()


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


FAST_HORIZON, FAST_ACTION_DIM = 10, 7  # the chunk shape the test FAST tokenizer is fitted on


@pytest.fixture(scope="session")
def fast_tokenizer_dir(tmp_path_factory) -> Path:
    """A FAST action tokenizer fitted (as FAST's own `fit`) on smooth synthetic chunks [2000, 10, 7]."""
    from pi0edge.export.fast_tokenizer_fit import fit_fast_tokenizer, synthetic_action_chunks

    out_dir = tmp_path_factory.mktemp("fast") / "fast_tokenizer"
    fit_fast_tokenizer(synthetic_action_chunks(2000, FAST_HORIZON, FAST_ACTION_DIM, seed=0), out_dir, vocab_size=512)
    return out_dir
