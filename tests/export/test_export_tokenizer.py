"""The tokenizer is checked where export starts: one SentencePiece cannot load, or whose ids do not fit the model,
is refused naming the file, before a bundle (or a long checkpoint load) is made with it."""

from __future__ import annotations

import shutil

import pytest

from pi0edge.cli import main
from pi0edge.errors import CheckpointError
from pi0edge.export.config import tiny
from pi0edge.export.random_checkpoint import write_random_checkpoint
from pi0edge.export.tokenizer import check_tokenizer, train_test_tokenizer

TINY_VOCAB = tiny("pi0").vocab_size


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "pi0"
    write_random_checkpoint(out, tiny("pi0"), robot_state_dim=6, robot_action_dim=6)
    return out


def test_export_refuses_a_checkpoint_tokenizer_sentencepiece_cannot_load(checkpoint, tmp_path, capsys):
    ckpt = shutil.copytree(checkpoint, tmp_path / "ckpt")
    (ckpt / "tokenizer.model").write_bytes(b"<html>an error page saved in place of the model</html>")
    assert main(["export", str(ckpt), "-o", str(tmp_path / "bundle"), "--no-optimize"]) == 1
    err = capsys.readouterr().err
    assert str(ckpt / "tokenizer.model") in err and "SentencePiece" in err
    assert not (tmp_path / "bundle").exists()


def test_export_refuses_a_broken_tokenizer_flag_before_loading_the_checkpoint(checkpoint, tmp_path, capsys,
                                                                                monkeypatch):
    broken = tmp_path / "paligemma_tokenizer.model"
    broken.write_bytes(b"\x00" * 64)

    def must_not_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the tokenizer was checked")

    monkeypatch.setattr("pi0edge.export.checkpoint.load_checkpoint", must_not_load)
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "bundle"), "--tokenizer", str(broken)]) == 1
    assert str(broken) in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()


def test_tokenizer_with_more_pieces_than_the_model_vocabulary_is_refused(tmp_path):
    path = train_test_tokenizer(tmp_path / "tokenizer.model", vocab_size=TINY_VOCAB * 2)
    pieces = check_tokenizer(path)
    assert pieces > TINY_VOCAB
    with pytest.raises(CheckpointError, match=f"{pieces} pieces .* {TINY_VOCAB} rows"):
        check_tokenizer(path, vocab_size=TINY_VOCAB)
    assert check_tokenizer(path, vocab_size=pieces) == pieces


def test_missing_tokenizer_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist; pass --tokenizer"):
        check_tokenizer(tmp_path / "absent.model")
