"""One loaded Policy shared by every connection: requests go through a bounded queue to one worker thread,
so the event loop never waits on inference and the backend (one set of buffers) runs one call at a time.

Requests that arrive within `window_ms` of the first one waiting run as one batch (`Policy.infer` takes a
list of observations and noise [B, H, A]); each request brings its own noise, so its actions are what it
would get alone. If a batch fails, its requests are retried one by one: one client's bad observation
fails only that client.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pi0edge.runtime.types import Observation


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 1  # 1: every request runs alone
    window_ms: float = 0.0  # how long the first request waits for others to join its batch
    queue_size: int = 64  # requests waiting beyond this make their connections wait (backpressure)


@dataclass(frozen=True)
class InferResult:
    actions: np.ndarray  # [H, robot_action_dim]
    policy_ms: float  # Policy.infer's own total (of the whole batch when batched)
    batch_size: int


class SharedPolicy:
    """`await shared.infer(observation, noise)` from any connection; `start()` inside the event loop first."""

    def __init__(self, policy, config: BatchConfig = BatchConfig()):
        self.policy, self.config = policy, config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pi0edge-infer")
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.config.queue_size)
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def infer(self, observation: Observation, noise: np.ndarray) -> InferResult:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((observation, noise, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            batch = [item for item in batch if not item[2].done()]  # a connection that went away
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._infer_batch, batch)
            except Exception:  # noqa: BLE001 - one request's fault must not fail the others: retry alone
                results = [await loop.run_in_executor(self._executor, self._infer_alone, item) for item in batch]
            for (_, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _collect(self) -> list:
        """The first waiting request, plus those arriving within the window (at most max_batch)."""
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.config.window_ms / 1e3
        while len(batch) < self.config.max_batch:
            remaining_s = deadline - time.monotonic()
            try:
                if remaining_s <= 0:
                    batch.append(self._queue.get_nowait())
                else:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining_s))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        return batch

    def _infer_batch(self, batch: list) -> list[InferResult]:
        if len(batch) == 1:
            return [self._infer_alone(batch[0])]
        observations = [obs for obs, _, _ in batch]
        noise = np.stack([n for _, n, _ in batch])
        chunk = self.policy.infer(observations, noise=noise)
        total_ms = float(chunk.timings_ms.get("total_ms", 0.0))
        return [InferResult(actions, total_ms, len(batch)) for actions in chunk.actions]

    def _infer_alone(self, item) -> InferResult | Exception:
        observation, noise, _ = item
        try:
            chunk = self.policy.infer(observation, noise=noise)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting connection, which reports it
            return exc
        return InferResult(chunk.actions, float(chunk.timings_ms.get("total_ms", 0.0)), 1)
