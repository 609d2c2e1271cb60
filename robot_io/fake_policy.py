"""A stand-in policy for tests, benchmarks and demos without a bundle: deterministic, with a
configurable latency (sleeping, or CPU-busy like a real model) and injectable faults (NaN, raise).

It has the policy surface the loop uses: `infer(Observation) -> ActionChunk`, `camera_names`,
`action_horizon`, `robot_state_dim`, `robot_action_dim`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import numpy as np

from pi0edge.runtime.types import ActionChunk, Observation


class FakePolicy:
    """Every row of every chunk is `goal` (default zeros), unless `actions_fn(observation, call)` is given.

    latency_s: time per call; busy=True spends it in numpy matmuls (which release the GIL, as
    onnxruntime does) instead of sleeping. nan_calls / raise_calls: 0-based call numbers that return
    a NaN chunk / raise RuntimeError. block: an Event the call waits on (simulates a hung model).
    """

    def __init__(self, camera_names: Iterable[str] = ("base_0_rgb",), action_horizon: int = 10,
                 robot_state_dim: int = 6, robot_action_dim: int = 6, goal=None, latency_s: float = 0.0,
                 busy: bool = False, nan_calls: Iterable[int] = (), raise_calls: Iterable[int] = (),
                 actions_fn: Callable[[Observation, int], np.ndarray] | None = None,
                 block: threading.Event | None = None):
        self.camera_names = tuple(camera_names)
        self.action_horizon = action_horizon
        self.robot_state_dim, self.robot_action_dim = robot_state_dim, robot_action_dim
        self.goal = np.zeros(robot_action_dim) if goal is None else np.asarray(goal, dtype=np.float64)
        self.latency_s, self.busy = float(latency_s), busy
        self.nan_calls, self.raise_calls = set(nan_calls), set(raise_calls)
        self.actions_fn, self.block = actions_fn, block
        self.calls = 0
        self.observations: list[Observation] = []
        self._work = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32) if busy else None

    def _spend(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        if self._work is None:
            time.sleep(seconds)
            return
        while time.perf_counter() < end:
            self._work = np.tanh(self._work @ self._work * 1e-2)  # ~0.5 ms of BLAS, GIL released

    def infer(self, observation: Observation) -> ActionChunk:
        start = time.perf_counter()
        call = self.calls
        self.calls += 1
        self.observations.append(observation)
        if self.block is not None:
            self.block.wait()
        if self.latency_s:
            self._spend(self.latency_s)
        if call in self.raise_calls:
            raise RuntimeError(f"fake policy: injected failure on call {call}")
        if self.actions_fn is not None:
            actions = np.asarray(self.actions_fn(observation, call), dtype=np.float32)
        else:
            actions = np.tile(self.goal.astype(np.float32), (self.action_horizon, 1))
        if call in self.nan_calls:
            actions = actions.copy()
            actions[self.action_horizon // 2, 0] = np.nan
        return ActionChunk(actions=actions, timings_ms={"total_ms": (time.perf_counter() - start) * 1e3})
