"""Pi0-FAST's decoded text -> actions (docs/model.md, "Pi0-FAST"): the model writes "Action: ", its FAST
action tokens, then the end-of-action marker "|". This reads that back: cut at the first marker, check and drop
the "Action: " prefix, map PaliGemma ids to FAST tokens (k = vocab_size - 1 - fast_skip_tokens - id) and
decode them with the bundle's FAST tokenizer (pi0edge.runtime.fast_tokens).

Anything unexpected (no marker within the budget, no "Action: " prefix, ids outside the FAST vocabulary, the
wrong number of coefficients) still yields actions of the right shape, as LeRobot's relaxed decoding does, but
flagged `well_formed=False` with the reason: the policy turns such a chunk into NaN and the control loop holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import sentencepiece

from pi0edge.errors import BundleError
from pi0edge.runtime.fast_tokens import DecodedActions, load_fast_tokenizer, paligemma_to_action_token

ACTION_PREFIX = "Action: "
END_OF_ACTION = "|"


class ActionTokenReader:
    """Generated PaliGemma ids of one row -> DecodedActions [action_horizon, action_dim] (normalized)."""

    def __init__(self, paligemma_model: str | os.PathLike, fast_tokenizer_dir: str | os.PathLike, *,
                 vocab_size: int, fast_skip_tokens: int, action_horizon: int, action_dim: int):
        sp = sentencepiece.SentencePieceProcessor()
        sp.Load(os.fspath(paligemma_model))
        end = sp.piece_to_id(END_OF_ACTION)
        if end == sp.unk_id():
            raise BundleError(f"{paligemma_model}: the tokenizer has no '{END_OF_ACTION}' piece, Pi0-FAST's "
                              "end-of-action marker; is this PaliGemma's tokenizer.model?")
        self.prefix_ids = list(sp.encode(ACTION_PREFIX))
        self.end_ids = np.array([end, sp.eos_id()], np.int64)  # openpi's sampler stops at EOS, LeRobot's at "|"
        self.fast = load_fast_tokenizer(Path(fast_tokenizer_dir))
        self.vocab_size, self.fast_skip_tokens = vocab_size, fast_skip_tokens
        self.action_horizon, self.action_dim = action_horizon, action_dim

    def __call__(self, token_ids: np.ndarray) -> DecodedActions:
        ids = [int(i) for i in token_ids]
        problems = []
        ends = [i for i, token in enumerate(ids) if token in self.end_ids]
        if ends:
            ids = ids[:ends[0]]
        else:
            problems.append(f"no end-of-action marker '{END_OF_ACTION}' within {len(ids)} tokens")
        if ids[:len(self.prefix_ids)] == self.prefix_ids:
            ids = ids[len(self.prefix_ids):]
        else:
            problems.append(f"the decoded text does not start with {ACTION_PREFIX!r}")
        decoded = self.fast.decode(paligemma_to_action_token(np.array(ids, np.int64), self.vocab_size,
                                                             self.fast_skip_tokens),
                                   self.action_horizon, self.action_dim)
        if not problems:
            return decoded
        reasons = problems + ([decoded.reason] if decoded.reason else [])
        return DecodedActions(decoded.actions, False, "; ".join(reasons))
