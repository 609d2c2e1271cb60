"""One Pi0-FAST chunk for `Policy` (docs/runtime.md, "Pi0-FAST"): the prompt with the state written into it,
the decode loop (fast_decode.py), the tokens read back into actions (fast_actions.py).

A row whose tokens do not read back cleanly becomes NaN, and the chunk names why (`ActionChunk.malformed`):
NaN is what every consumer already refuses (the control loop's chunk check, a serve client), so garbage is
never executed even by a caller that ignores the reason.
"""

from __future__ import annotations

import time

import numpy as np

from pi0edge.errors import ObservationError
from pi0edge.manifest import Manifest
from pi0edge.runtime.fast_actions import ActionTokenReader
from pi0edge.runtime.fast_decode import FastDecoder
from pi0edge.runtime.preprocess import PromptTokenizer, normalize_state
from pi0edge.runtime.types import Observation

BOS_ID = 2  # PaliGemma's


class FastChunks:
    """Observations -> (normalized actions [B, H, fast width], per-row problems, timings) on a Pi0-FAST bundle."""

    def __init__(self, manifest: Manifest, backend: str, temperature: float = 0.0, **backend_options):
        if not temperature >= 0:
            raise ObservationError(f"temperature must be >= 0 (0: greedy), got {temperature!r}")
        m, fast = manifest, manifest.fast
        self.manifest, self.temperature = m, float(temperature)
        # the flow-matching backends' options (loop graph, CUDA graphs) do not apply to the decode loop
        self.decoder = FastDecoder(m, "ort-cpu" if backend == "auto" else backend,
                                   intra_op_threads=backend_options.get("intra_op_threads"))
        self.tokenizer = PromptTokenizer(m.path(m.tokenizer_file), m.max_token_len, m.model_type)
        self.reader = ActionTokenReader(m.path(m.tokenizer_file), m.path(fast.tokenizer_dir), vocab_size=m.vocab_size,
                                        fast_skip_tokens=fast.fast_skip_tokens, action_horizon=m.action_horizon,
                                        action_dim=fast.action_dim)

    def prompt_tokens(self, observation: Observation) -> tuple[np.ndarray, np.ndarray]:
        """"Task: ..., State: ...;\\n" with BOS first, padded to max_token_len; then LeRobot's extra BOS."""
        tokens, mask = self.tokenizer(observation.prompt, normalize_state(observation.state, self.manifest.norm_stats))
        if self.manifest.fast.bos_after_prompt:
            tokens, mask = np.append(tokens, BOS_ID), np.append(mask, True)
        return tokens, mask

    def __call__(self, feeds: dict[str, np.ndarray], rng: np.random.Generator
                 ) -> tuple[np.ndarray, list[str], dict]:
        decoded = self.decoder.decode(feeds, self.reader.end_ids, self.temperature, rng)
        t0 = time.perf_counter()
        rows = [self.reader(row) for row in decoded.token_ids]
        normalized = np.stack([row.actions for row in rows])
        problems = ["" if row.well_formed else row.reason for row in rows]
        timings = {"prefix_ms": decoded.prefix_ms, "token_ms": decoded.token_ms,
                   "decode_ms": float(sum(decoded.token_ms)), "tokens": int(decoded.token_ids.shape[1]),
                   "detokenize_ms": (time.perf_counter() - t0) * 1e3}
        return normalized, problems, timings

    def close(self) -> None:
        self.decoder.close()
