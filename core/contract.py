"""The graph contract: every input and output of the two graphs, in one place.

Export writes graphs with these names and records the resolved shapes in bundle.yaml; the runtime
reads them back and checks them at load. Importable without torch or onnx. Nobody types
"past_keys" anywhere else.

Symbolic dims: B batch, N_cam cameras, L max_token_len, T prefix tokens (N_cam * image_tokens + L),
layers (VLM depth), K kv heads, D head dim, H action horizon, A model action dim, S model state dim;
Pi0-FAST: V vocabulary, slots (the decode cache: T + max action tokens), one (a single token).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

PREFIX_GRAPH = "prefix"
DENOISE_STEP_GRAPH = "denoise_step"
DENOISE_LOOP_GRAPH = "denoise_loop"  # optional: the step graph unrolled over the fixed schedule

# prefix graph (images + prompt -> KV cache); docs/model.md, "Prefix".
IMAGES = "images"
IMAGE_MASKS = "image_masks"
TOKENS = "tokens"
TOKEN_MASKS = "token_masks"
PAST_KEYS = "past_keys"
PAST_VALUES = "past_values"
PREFIX_MASK = "prefix_mask"

# denoise_step graph (x_t, t, KV cache -> x_{t+dt}); docs/model.md, "Suffix and one denoise step".
X_T = "x_t"
TIME = "t"
DT = "dt"
STATE = "state"  # pi0 only: pi0.5 carries the state in the prompt
STEP_INDEX = "step_index"  # optimized step graphs: time branch precomputed per step
X_NEXT = "x_next"
VELOCITY = "velocity"  # optional, for tests
ACTIONS = "actions"  # denoise_loop graph: x after the last step (normalized actions, model dims)

KV_DTYPE = "kv"  # placeholder resolved to the graph precision's float type

# bundle.yaml dtype name -> numpy dtype of a host buffer. bfloat16 has none: it never crosses to the host.
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bool": np.bool_, "int64": np.int64,
                "int32": np.int32, "uint8": np.uint8}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, or KV_DTYPE for the precision-dependent cache type
    dims: tuple[str, ...]

    def resolve(self, sizes: dict[str, int], kv_dtype: str) -> dict:
        """The manifest entry: concrete dtype and shape, batch kept symbolic."""
        shape = [d if d == "B" else int(sizes[d]) for d in self.dims]
        return {"name": self.name, "dtype": kv_dtype if self.dtype == KV_DTYPE else self.dtype, "shape": shape}


KV_DIMS = ("layers", "B", "T", "K", "D")

PREFIX_INPUTS = (
    TensorSpec(IMAGES, "uint8", ("B", "N_cam", "image_size", "image_size", "C")),
    TensorSpec(IMAGE_MASKS, "bool", ("B", "N_cam")),
    TensorSpec(TOKENS, "int64", ("B", "L")),
    TensorSpec(TOKEN_MASKS, "bool", ("B", "L")),
)
PREFIX_OUTPUTS = (
    TensorSpec(PAST_KEYS, KV_DTYPE, KV_DIMS),
    TensorSpec(PAST_VALUES, KV_DTYPE, KV_DIMS),
    TensorSpec(PREFIX_MASK, "bool", ("B", "T")),
)


def denoise_step_inputs(has_state_input: bool, time_as_step_index: bool) -> tuple[TensorSpec, ...]:
    """Step-graph inputs. pi0 feeds the state token here; optimized graphs index a per-step table."""
    time_inputs = (
        (TensorSpec(STEP_INDEX, "int64", ("B",)),)
        if time_as_step_index
        else (TensorSpec(TIME, "float32", ("B",)), TensorSpec(DT, "float32", ("B",)))
    )
    state = (TensorSpec(STATE, "float32", ("B", "S")),) if has_state_input else ()
    return (
        TensorSpec(X_T, "float32", ("B", "H", "A")),
        *time_inputs,
        TensorSpec(PAST_KEYS, KV_DTYPE, KV_DIMS),
        TensorSpec(PAST_VALUES, KV_DTYPE, KV_DIMS),
        TensorSpec(PREFIX_MASK, "bool", ("B", "T")),
        *state,
    )


def denoise_step_outputs(with_velocity: bool = False) -> tuple[TensorSpec, ...]:
    out = (TensorSpec(X_NEXT, "float32", ("B", "H", "A")),)
    return out + ((TensorSpec(VELOCITY, "float32", ("B", "H", "A")),) if with_velocity else ())


def denoise_loop_inputs(has_state_input: bool) -> tuple[TensorSpec, ...]:
    """The loop graph reads what a step reads but the step index: the schedule is inside it
    (export/onnx/loop_graph.py); x_t is the noise x_0."""
    return tuple(s for s in denoise_step_inputs(has_state_input, time_as_step_index=True) if s.name != STEP_INDEX)


DENOISE_LOOP_OUTPUTS = (TensorSpec(ACTIONS, "float32", ("B", "H", "A")),)


def step_time_feeds(step_input_names: Collection[str], step: int, times: Sequence[float], dt: float,
                    batch: int) -> dict[str, np.ndarray]:
    """The time inputs of Euler step `step` (docs/model.md, "Sampling"): `step_index` [B] int64 for a
    step-indexed graph (its time tables hold times[step]), else `t` = times[step] and `dt`, [B] float32."""
    if STEP_INDEX in step_input_names:
        return {STEP_INDEX: np.full(batch, step, np.int64)}
    return {TIME: np.full(batch, times[step], np.float32), DT: np.full(batch, dt, np.float32)}


# ---- Pi0-FAST (docs/model.md, "Pi0-FAST"): a prefix that also gives the first token's logits, then one
# decode step per action token over a cache preallocated to slots = T + max_action_tokens.
DECODE_STEP_GRAPH = "decode_step"
LOGITS = "logits"  # [B, V] float32: the next token's logits
TOKEN_ID = "token_id"  # [B] int64: the token just chosen
POSITION = "position"  # [B] int64: its RoPE position
CACHE_MASK = "cache_mask"  # [B, slots] bool: the cache slots holding a valid token
NEW_KEYS = "new_keys"  # [layers, B, 1, K, D]: the token's own K/V, which the runtime writes into slot T + step
NEW_VALUES = "new_values"

FAST_CACHE_DIMS = ("layers", "B", "slots", "K", "D")
FAST_PREFIX_OUTPUTS = (*PREFIX_OUTPUTS, TensorSpec(LOGITS, "float32", ("B", "V")))
DECODE_STEP_INPUTS = (
    TensorSpec(TOKEN_ID, "int64", ("B",)),
    TensorSpec(POSITION, "int64", ("B",)),
    TensorSpec(PAST_KEYS, KV_DTYPE, FAST_CACHE_DIMS),
    TensorSpec(PAST_VALUES, KV_DTYPE, FAST_CACHE_DIMS),
    TensorSpec(CACHE_MASK, "bool", ("B", "slots")),
)
DECODE_STEP_OUTPUTS = (
    TensorSpec(LOGITS, "float32", ("B", "V")),
    TensorSpec(NEW_KEYS, KV_DTYPE, ("layers", "B", "one", "K", "D")),
    TensorSpec(NEW_VALUES, KV_DTYPE, ("layers", "B", "one", "K", "D")),
)

# The camera order the checkpoints were trained with (docs/model.md, "Prefix").
DEFAULT_CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
