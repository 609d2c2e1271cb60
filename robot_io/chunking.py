"""Chunk strategies: which action of which chunk the arm executes at each tick.

Ticks count loop periods. A chunk's row i is meant for tick `obs_tick + i`, where obs_tick is the
tick whose observation produced it. Actions here are already in robot joint order and units.

- sync (openpi's default): request a chunk, hold while it is computed, then execute rows
  0..n_execute-1 from the tick it arrives; then request the next. Simple; the arm pauses per chunk.
- async: request the next chunk every n_execute ticks while the current one keeps running. When a
  chunk arrives at tick k, its rows before k - obs_tick were meant for ticks that already passed
  (the measured inference delay), so execution starts at row k - obs_tick.
- ensemble (ACT's temporal ensembling): keep every chunk that still covers the current tick and
  average their rows for it with weights exp(-m * i), i = 0 for the oldest (ACT `imitate_episodes.py`:
  `exp_weights = np.exp(-k * np.arange(len(actions_for_curr_step)))`, oldest first). Small m
  trusts all predictions alike; larger m favours the oldest, i.e. smoother and slower to react.
- rtc (real-time chunking, an `export --rtc` bundle): async, but each request carries guidance
  (pi0edge.runtime.RtcGuidance) towards the executing chunk's leftover: its rows from the request tick on,
  in the policy's action order. The inference delay d is the largest of the last DELAY_WINDOW measured
  delays (ready_tick - obs_tick, in ticks; LeRobot takes the maximum of its latency tracker too): the new
  chunk's first d rows are pulled onto what the arm executes while it is computed, so the switch at row
  ~d continues the motion (docs/model.md, "Real-time chunking"). The first chunk has no guidance.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from pi0edge.runtime.types import RtcGuidance  # plain numpy

from .config import ChunkingConfig


@dataclass(frozen=True)
class Chunk:
    actions: np.ndarray  # [H, dof] robot joint order and units
    obs_tick: int  # the tick whose observation produced it
    ready_tick: int  # the tick it arrived at the loop
    policy_actions: np.ndarray | None = None  # [H, robot_action_dim] as the policy gave them (rtc's leftover)

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])


class ChunkStrategy:
    name = "base"
    blocking = False  # True: the loop may wait within the tick for the chunk it just requested

    def __init__(self, n_execute: int):
        self.n_execute = n_execute
        self.skipped_actions = 0  # rows dropped because the inference delay had already covered them
        self.exhausted = False  # ran out of actions while waiting for the next chunk (async/ensemble)

    def want_inference(self, tick: int, busy: bool) -> bool:
        raise NotImplementedError

    def guidance(self, tick: int):
        """What the request made at this tick hands to `policy.infer(..., guidance=)`; None: plain inference."""
        return None

    def add(self, chunk: Chunk) -> None:
        raise NotImplementedError

    def target(self, tick: int) -> np.ndarray | None:
        """The action for this tick, or None when there is none (the loop then holds)."""
        raise NotImplementedError

    def clear(self) -> None:
        """Forget all chunks (after a fault the loop resumes only from a fresh observation)."""
        raise NotImplementedError


class SyncStrategy(ChunkStrategy):
    name = "sync"
    blocking = True

    def __init__(self, n_execute: int):
        super().__init__(n_execute)
        self._chunk: Chunk | None = None
        self._executed = 0

    def want_inference(self, tick: int, busy: bool) -> bool:
        return not busy and (self._chunk is None or self._executed >= self.n_execute)

    def add(self, chunk: Chunk) -> None:
        self._chunk, self._executed = chunk, 0

    def target(self, tick: int) -> np.ndarray | None:
        if self._chunk is None or self._executed >= self.n_execute:
            return None
        # The arm held while this chunk was computed, so the observation is still current: start at row 0.
        action = self._chunk.actions[self._executed]
        self._executed += 1
        return action

    def clear(self) -> None:
        self._chunk, self._executed = None, 0


class AsyncStrategy(ChunkStrategy):
    name = "async"

    def __init__(self, n_execute: int):
        super().__init__(n_execute)
        self._chunk: Chunk | None = None
        self._last_request_tick: int | None = None

    def want_inference(self, tick: int, busy: bool) -> bool:
        if busy:
            return False
        if self._chunk is None or self._last_request_tick is None or tick - self._last_request_tick >= self.n_execute:
            self._last_request_tick = tick
            return True
        return False

    def add(self, chunk: Chunk) -> None:
        self.skipped_actions += max(0, chunk.ready_tick - chunk.obs_tick)
        self._chunk = chunk
        self.exhausted = False

    def target(self, tick: int) -> np.ndarray | None:
        if self._chunk is None:
            return None
        row = tick - self._chunk.obs_tick  # skips the rows the inference delay already covered
        if row >= self._chunk.horizon:
            self.exhausted = True
            return None
        return self._chunk.actions[row]

    def clear(self) -> None:
        self._chunk, self._last_request_tick, self.exhausted = None, None, False


class EnsembleStrategy(ChunkStrategy):
    name = "ensemble"

    def __init__(self, n_execute: int, m: float):
        super().__init__(n_execute)
        self.m = float(m)
        self._chunks: list[Chunk] = []  # oldest first
        self._last_request_tick: int | None = None
        self._had_chunk = False

    def want_inference(self, tick: int, busy: bool) -> bool:
        if busy:
            return False
        if self._last_request_tick is None or tick - self._last_request_tick >= self.n_execute:
            self._last_request_tick = tick
            return True
        return False

    def add(self, chunk: Chunk) -> None:
        self.skipped_actions += max(0, chunk.ready_tick - chunk.obs_tick)
        self._chunks.append(chunk)
        self._chunks.sort(key=lambda c: c.obs_tick)
        self._had_chunk, self.exhausted = True, False

    def target(self, tick: int) -> np.ndarray | None:
        self._chunks = [c for c in self._chunks if tick - c.obs_tick < c.horizon]
        rows = [c.actions[tick - c.obs_tick] for c in self._chunks if tick >= c.obs_tick]
        if not rows:
            self.exhausted = self._had_chunk
            return None
        weights = np.exp(-self.m * np.arange(len(rows)))  # i = 0: the oldest prediction
        return np.average(np.stack(rows), axis=0, weights=weights)

    def clear(self) -> None:
        self._chunks, self._last_request_tick, self.exhausted, self._had_chunk = [], None, False, False


DELAY_WINDOW = 10  # rtc: d is the largest of this many recent measured inference delays


class RtcStrategy(AsyncStrategy):
    name = "rtc"

    def __init__(self, n_execute: int, schedule: str, max_guidance_weight: float, execution_horizon: int):
        super().__init__(n_execute)
        self.schedule, self.max_guidance_weight = schedule, float(max_guidance_weight)
        self.execution_horizon = int(execution_horizon)
        # kept across clear() (a fault): the delays describe the policy, not the chunks
        self._delays: deque[int] = deque(maxlen=DELAY_WINDOW)

    @property
    def inference_delay(self) -> int:
        """d in ticks: the largest recent measured delay (0 before any chunk arrived)."""
        return max(self._delays, default=0)

    def add(self, chunk: Chunk) -> None:
        self._delays.append(max(0, chunk.ready_tick - chunk.obs_tick))
        super().add(chunk)

    def guidance(self, tick: int):
        chunk = self._chunk
        if chunk is None or chunk.policy_actions is None or tick - chunk.obs_tick >= chunk.horizon:
            return None  # the first chunk (or after a fault): nothing executing to continue
        leftover = chunk.policy_actions[tick - chunk.obs_tick:]
        d = self.inference_delay
        # the rows executing while the chunk is computed must be pulled whatever the execution horizon
        return RtcGuidance(leftover=np.asarray(leftover, np.float32), inference_delay=d,
                           execution_horizon=max(self.execution_horizon, d), schedule=self.schedule,
                           max_guidance_weight=self.max_guidance_weight)


def make_strategy(cfg: ChunkingConfig, horizon: int) -> ChunkStrategy:
    n_execute = cfg.resolved_n_execute(horizon)
    if cfg.strategy == "sync":
        return SyncStrategy(n_execute)
    if cfg.strategy == "async":
        return AsyncStrategy(n_execute)
    if cfg.strategy == "rtc":
        return RtcStrategy(n_execute, cfg.rtc_schedule, cfg.rtc_max_guidance_weight, cfg.rtc_execution_horizon)
    return EnsembleStrategy(n_execute, cfg.ensemble_m)
