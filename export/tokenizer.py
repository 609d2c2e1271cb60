"""The prompt tokenizer at export: the check a bundle's tokenizer must pass, and a small test tokenizer.

`check_tokenizer` loads a tokenizer.model the way the runtime will, so a file it cannot use stops the
export, not the robot. The rest is a small PaliGemma-like SentencePiece tokenizer, trained at write time
for random checkpoints and tests.

No model hub is reachable, so PaliGemma's own `tokenizer.model` (vocab 257152) cannot be fetched. This
trains a BPE model with the same special ids (pad 0, eos 1, bos 2, unk 3; docs/model.md, "Prefix") and the
same Gemma habits that matter to the prompt code (no dummy prefix, whitespace kept, digits split, "\\n"
as one piece), on a varied corpus of robot instructions and the pi0.5 prompt template. Its ids are all
below the model's vocab size, so any prompt it encodes is a valid input to the random model.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

from pi0edge.errors import CheckpointError

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
MAX_TEST_VOCAB = 1000
# Byte fallback needs 256 byte pieces + the 4 specials: below this it is left out (unknowns map to unk).
_BYTE_FALLBACK_MIN_VOCAB = 400

_VERBS = ("pick up", "put", "place", "move", "push", "pull", "open", "close", "grasp", "lift", "drop", "fold",
          "stack", "insert", "rotate", "slide", "pour", "wipe", "hand over", "transfer", "turn on", "turn off")
_OBJECTS = ("the red cube", "the blue block", "a green bowl", "the cup", "the towel", "the drawer", "the lid",
            "the peg", "the socket", "a spoon", "the mug", "the bottle", "the sponge", "the box", "the shirt",
            "the yellow ball", "the marker", "the plate", "the banana", "the screwdriver", "the door handle")
_PLACES = ("on the table", "into the basket", "in the sink", "on the left", "to the right", "onto the shelf",
           "next to the plate", "inside the drawer", "under the lamp", "behind the box", "in front of the robot")
_ADVERBS = ("", "slowly", "carefully", "quickly", "gently", "with the left arm", "with the right arm", "twice")


def _corpus(seed: int = 0, sentences: int = 3000) -> Iterator[str]:
    """Varied instructions, pi0.5 state prompts and digit runs (SentencePiece fails on uniform text)."""
    rng = random.Random(seed)
    for i in range(sentences):
        kind = i % 4
        task = f"{rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)} {rng.choice(_ADVERBS)}".strip()
        if kind == 0:
            yield task
        elif kind == 1:
            yield task.capitalize() + "."
        elif kind == 2:
            # The pi0.5 prompt (docs/model.md, "Prefix"); the "\n" is a user-defined piece, not training text.
            state = " ".join(str(rng.randrange(256)) for _ in range(rng.randint(6, 16)))
            yield f"Task: {task}, State: {state};"
        else:
            yield " ".join(str(rng.randrange(10 ** rng.randint(1, 4))) for _ in range(rng.randint(3, 12)))
    yield "Action: "


def train_test_tokenizer(path: str | Path, vocab_size: int = MAX_TEST_VOCAB, *, seed: int = 0) -> Path:
    """Train a BPE SentencePiece model with PaliGemma's special ids and write it to `path`.

    vocab_size: the model's vocabulary (cfg.vocab_size); the tokenizer uses at most min(vocab_size, 1000)
    pieces so every id it emits is a valid embedding row. Deterministic for a given seed.
    """
    import sentencepiece as spm

    pieces = min(int(vocab_size), MAX_TEST_VOCAB)
    if pieces < 16:
        raise ValueError(f"vocab_size {vocab_size} is too small for a tokenizer (need at least 16 pieces)")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_corpus(seed), model_writer=model, vocab_size=pieces, model_type="bpe",
        pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
        # Gemma's habits: keep whitespace as written, split digits, newline as its own piece; "|" too (Pi0-FAST's
        # end-of-action marker is one PaliGemma piece).
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        split_digits=True, user_defined_symbols=["\n", "|"], allow_whitespace_only_pieces=True,
        byte_fallback=pieces >= _BYTE_FALLBACK_MIN_VOCAB,
        # A corpus too small for the requested size still trains (fewer pieces) instead of failing.
        hard_vocab_limit=False, character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def check_tokenizer(path: str | Path, vocab_size: int | None = None) -> int:
    """Load `path` with SentencePiece as the runtime does (runtime/preprocess.py) and return its piece count.

    vocab_size: the model's text embedding rows; a tokenizer with more pieces could emit ids outside it.
    Raises CheckpointError naming the file when it is absent, not a SentencePiece model, or too large.
    """
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"tokenizer {path} does not exist; pass --tokenizer PATH to a PaliGemma "
                              "SentencePiece tokenizer.model")
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (RuntimeError, OSError) as exc:  # sentencepiece reports a bad file as RuntimeError
        raise CheckpointError(f"{path}: not a SentencePiece model ({exc}); pass --tokenizer PATH to PaliGemma's "
                              "SentencePiece tokenizer.model") from exc
    pieces = processor.GetPieceSize()
    if vocab_size is not None and pieces > vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {pieces} pieces but the model's text embedding has "
                              f"{vocab_size} rows, so ids from {vocab_size} up have no embedding; pass the "
                              "tokenizer this model was trained with (--tokenizer PATH)")
    return pieces
