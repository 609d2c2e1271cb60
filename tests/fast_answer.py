"""A tiny Pi0-FAST checkpoint whose weights spell one known answer, "Action: " + a chunk's FAST tokens + "|", so
that the whole path (export, decode, read-back, unnormalize, the control loop) can be seen executing a
well-formed chunk. Random weights never write one.

How the weights spell it: every layer's attention output and MLP output projections are zero, so a token's last
hidden state is its own embedding and the next token depends on the current one only; the final norm's weight
is zero (scale 1). The tokens of the answer, BOS first (the prefix ends with LeRobot's appended BOS), get
embeddings r_i (cos i*d, sin i*d, 0, ...) and every other token a zero embedding. Through the tied head token
i's logits are 8 r_j cos((j - i) d) (RMSNorm makes its query (8 cos, 8 sin) at width 64): with r growing by
1 + d^2 per step, the next token of the answer wins over the current one, the one after and all others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STEP_RAD = 0.1
BASE_NORM = 10.0


def answer_ids(checkpoint: Path, actions: np.ndarray, vocab_size: int, fast_skip_tokens: int) -> list[int]:
    """BOS, "Action: ", the FAST tokens of `actions` as PaliGemma ids, "|"."""
    import sentencepiece

    from pi0edge.runtime.fast_tokens import action_token_to_paligemma, load_fast_tokenizer

    sp = sentencepiece.SentencePieceProcessor()
    sp.Load(str(checkpoint / "tokenizer.model"))
    fast = load_fast_tokenizer(checkpoint / "fast_tokenizer")
    action_ids = action_token_to_paligemma(fast.encode(actions), vocab_size, fast_skip_tokens).tolist()
    return [sp.bos_id(), *sp.encode("Action: "), *action_ids, sp.piece_to_id("|")]


def spell_answer(checkpoint: Path, chain: list[int], depth: int) -> None:
    """Rewrite the checkpoint's model.safetensors (LeRobot keys) so that the model writes `chain` after its first
    token. Every token of the chain must be distinct (the next token depends on the current one only)."""
    from safetensors.numpy import load_file, save_file

    from pi0edge.export.checkpoint import checkpoint_key

    assert len(set(chain)) == len(chain), f"a repeated token cannot be spelled: {chain}"
    path = checkpoint / "model.safetensors"
    tensors = load_file(str(path))
    key = lambda name: checkpoint_key(name, model_prefix=True)  # noqa: E731
    for layer in range(depth):
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            tensors[key(f"vlm.layers.{layer}.{name}")][:] = 0.0
    tensors[key("vlm.norm.weight")][:] = 0.0
    embedding = tensors[key("vlm.embed_tokens.weight")]
    embedding[:] = 0.0
    for i, token in enumerate(chain):
        norm = BASE_NORM * (1.0 + STEP_RAD**2) ** i
        embedding[token, :2] = norm * np.cos(i * STEP_RAD), norm * np.sin(i * STEP_RAD)
    save_file(tensors, str(path))
