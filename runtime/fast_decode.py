"""Pi0-FAST on ONNX Runtime (docs/runtime.md, "Pi0-FAST"): the prefix graph once per chunk, then one
`decode_step` call per action token over a KV cache preallocated to the bundle's slots (prefix + max action
tokens). The graph returns the new token's K/V and the decoder writes them into the next slot in place, so a
token costs one graph call and no copy of the cache.

Choosing a token: greedy (temperature 0, the default) or a sample of softmax(logits / temperature) from the
policy's seeded generator. Decoding stops once every row has emitted an end marker ("|" or EOS) or after
max_action_tokens; what a row emits after its marker is ignored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pi0edge import contract as c
from pi0edge.errors import BackendUnavailableError
from pi0edge.manifest import Manifest
from pi0edge.runtime.backends.cuda_libs import preload_cuda_libraries
from pi0edge.runtime.backends.ort import PROVIDERS, check_session_io, check_session_providers, session_options
from pi0edge.runtime.backends.ort_install import import_onnxruntime

FAST_BACKENDS = ("ort-cpu", "ort-cuda")


@dataclass(frozen=True)
class DecodedTokens:
    """token_ids: [B, n] int64, the chosen ids of every step (n <= max_action_tokens). prefix_ms: the prefix
    graph and the cache fill; token_ms: one decode_step call each (n - 1 of them: the first token comes from
    the prefix's logits)."""

    token_ids: np.ndarray
    prefix_ms: float
    token_ms: list[float]


def choose_tokens(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """logits [B, V] -> ids [B]: argmax at temperature 0, else a sample of softmax(logits / temperature)."""
    if temperature <= 0:
        return logits.argmax(axis=-1).astype(np.int64)
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(len(row), p=row) for row in probs], dtype=np.int64)


class FastDecoder:
    """The two sessions of a Pi0-FAST bundle and its host KV cache (reallocated when the batch size changes)."""

    def __init__(self, manifest: Manifest, backend: str = "ort-cpu", *, intra_op_threads: int | None = None):
        if backend not in FAST_BACKENDS:
            raise BackendUnavailableError(f"a Pi0-FAST bundle runs on {list(FAST_BACKENDS)}, not {backend!r}")
        if manifest.precision not in c.NUMPY_DTYPES:
            raise BackendUnavailableError(f"{manifest.bundle_dir}: a {manifest.precision} Pi0-FAST bundle keeps its "
                                          "KV cache on the host, which has no such dtype; export float32 or float16")
        ort = import_onnxruntime(f"backend {backend}")
        if backend != "ort-cpu":
            preload_cuda_libraries(ort)  # as OrtBackend: CUDA/cuDNN from the nvidia-* wheels, without torch
        options = session_options(ort, intra_op_threads)
        self.manifest, self.name, self.device = manifest, backend, "cpu" if backend == "ort-cpu" else "cuda"
        self.sessions = {}
        for graph in (c.PREFIX_GRAPH, c.DECODE_STEP_GRAPH):
            path = manifest.path(manifest.graphs[graph].file)
            session = ort.InferenceSession(str(path), options, providers=[PROVIDERS[backend]])
            check_session_providers(ort, backend, session.get_providers(), path)
            check_session_io(manifest, graph, session)  # an edited bundle.yaml fails here, naming the field
            self.sessions[graph] = session
        self.providers = tuple(self.sessions[c.PREFIX_GRAPH].get_providers())
        self.kv_dtype = c.NUMPY_DTYPES[manifest.precision]
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _buffers(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, values [layers, B, slots, K, D], valid slots [B, slots]) for this batch size."""
        if self._cache is None or self._cache[2].shape[0] != batch:
            layers, _, slots, heads, dim = self.manifest.graphs[c.DECODE_STEP_GRAPH].io(c.PAST_KEYS)["shape"]
            shape = (layers, batch, slots, heads, dim)
            self._cache = (np.zeros(shape, self.kv_dtype), np.zeros(shape, self.kv_dtype),
                           np.zeros((batch, slots), np.bool_))
        return self._cache

    def decode(self, feeds: dict[str, np.ndarray], end_ids: np.ndarray, temperature: float,
               rng: np.random.Generator) -> DecodedTokens:
        """The prefix graph on feeds (images, image_masks, tokens, token_masks), then tokens until every row has
        emitted one of end_ids or the budget (max_action_tokens) is spent."""
        start = time.perf_counter()
        prefix_feeds = {name: feeds[name] for name in (c.IMAGES, c.IMAGE_MASKS, c.TOKENS, c.TOKEN_MASKS)}
        past_keys, past_values, prefix_mask, logits = self.sessions[c.PREFIX_GRAPH].run(
            [c.PAST_KEYS, c.PAST_VALUES, c.PREFIX_MASK, c.LOGITS], prefix_feeds)
        batch, prefix_len = prefix_mask.shape
        keys, values, valid = self._buffers(batch)
        keys[:, :, :prefix_len], values[:, :, :prefix_len] = past_keys, past_values
        valid[:, :prefix_len], valid[:, prefix_len:] = prefix_mask, False
        # right after the last valid prefix token, + openpi's offset (docs/model.md, "Pi0-FAST")
        position = prefix_mask.sum(axis=1).astype(np.int64) + self.manifest.fast.first_position_offset
        prefix_ms = (time.perf_counter() - start) * 1e3
        budget = self.manifest.fast.max_action_tokens
        chosen, token_ms = np.zeros((batch, budget), np.int64), []
        done = np.zeros(batch, np.bool_)
        step_session = self.sessions[c.DECODE_STEP_GRAPH]
        for step in range(budget):
            chosen[:, step] = choose_tokens(logits, temperature, rng)
            done |= np.isin(chosen[:, step], end_ids)
            if done.all() or step == budget - 1:
                break
            t0 = time.perf_counter()
            logits, new_keys, new_values = step_session.run([c.LOGITS, c.NEW_KEYS, c.NEW_VALUES], {
                c.TOKEN_ID: chosen[:, step], c.POSITION: position + step, c.PAST_KEYS: keys, c.PAST_VALUES: values,
                c.CACHE_MASK: valid})
            slot = prefix_len + step
            keys[:, :, slot], values[:, :, slot], valid[:, slot] = new_keys[:, :, 0], new_values[:, :, 0], True
            token_ms.append((time.perf_counter() - t0) * 1e3)
        return DecodedTokens(chosen[:, :step + 1], prefix_ms, token_ms)

    def read_cache(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the last chunk's (keys, values, valid slots): debugging and tests only."""
        if self._cache is None:
            raise RuntimeError("no chunk decoded yet")
        return tuple(a.copy() for a in self._cache)

    def close(self) -> None:
        self.sessions.clear()
        self._cache = None
