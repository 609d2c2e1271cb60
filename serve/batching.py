"""One loaded Policy shared by every connection: requests go through a bounded queue to one worker thread,
so the event loop never waits on inference and the backend (one set of buffers) runs one call at a time.

Requests that arrive within `window_ms` of the first one waiting run as one batch (`Policy.infer` takes a
list of observations and noise [B, H, A]); each request brings its own noise, so its actions are what it
would get alone. If a batch fails, its requests are retried one by one: one client's bad observation
fails only that client.

Deadlines (docs/serving.md, "Deadlines"): the queue is ordered earliest deadline first (requests without one
after, FIFO among equals). A request whose deadline cannot be met, given the running estimate of a batch's
time and the batches that run before it, is refused at once with `DeadlineUnmeetable` rather than answered late.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pi0edge.errors import Pi0EdgeError
from pi0edge.runtime.types import Observation

ESTIMATE_WEIGHT = 0.2  # EWMA weight of the newest batch time: follows a load change within a few batches


class DeadlineUnmeetable(Pi0EdgeError):
    """A request's deadline is shorter than the time its answer would take (estimate x batches to wait)."""

    def __init__(self, deadline_ms: float, needed_ms: float, message: str):
        super().__init__(message)
        self.deadline_ms, self.needed_ms = deadline_ms, needed_ms


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


@dataclass(order=True)
class _Request:
    deadline_s: float  # time.monotonic() by which the client needs it; inf: no deadline
    seq: int  # arrival order: FIFO among equal deadlines
    observation: Observation = field(compare=False)
    noise: np.ndarray = field(compare=False)
    future: asyncio.Future = field(compare=False)


class _DeadlineQueue(asyncio.PriorityQueue):
    def count_before(self, deadline_s: float) -> int:
        """Requests waiting that run before a new one with this deadline (earlier, or equal and older)."""
        return sum(1 for request in self._queue if request.deadline_s <= deadline_s)


class SharedPolicy:
    """`await shared.infer(observation, noise)` from any connection; `start()` inside the event loop first."""

    def __init__(self, policy, config: BatchConfig = BatchConfig()):
        self.policy, self.config = policy, config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pi0edge-infer")
        self._queue: _DeadlineQueue | None = None
        self._worker: asyncio.Task | None = None
        self._seq = itertools.count()
        self._busy = False  # a batch is running on the worker thread
        self.estimate_ms: float | None = None  # EWMA of Policy.infer's total per batch; None until one ran

    def start(self) -> None:
        self._queue = _DeadlineQueue(maxsize=self.config.queue_size)
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def infer(self, observation: Observation, noise: np.ndarray, deadline_ms: float | None = None) -> InferResult:
        """deadline_ms: from now, by when the answer is needed (None: no deadline); DeadlineUnmeetable if it
        cannot be met."""
        deadline_s = math.inf if deadline_ms is None else time.monotonic() + deadline_ms / 1e3
        if deadline_ms is not None:
            self._admit(deadline_ms, deadline_s)
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(deadline_s, next(self._seq), observation, noise, future))
        return await future

    def _admit(self, deadline_ms: float, deadline_s: float) -> None:
        """Refuse now what would be answered late: the batch running (counted whole), the batches of the
        requests queued before this one, then its own."""
        if self.estimate_ms is None:
            return  # nothing measured yet: the first requests seed the estimate
        batches = math.ceil(self._queue.count_before(deadline_s) / self.config.max_batch) + int(self._busy) + 1
        needed_ms = batches * self.estimate_ms
        if deadline_ms < needed_ms:
            raise DeadlineUnmeetable(deadline_ms, needed_ms,
                f"deadline_ms {deadline_ms:g} cannot be met: the estimate is {needed_ms:.1f} ms ({batches} "
                f"batch(es) of {self.estimate_ms:.1f} ms, the inference time estimate); refused rather than late")

    def _update_estimate(self, results: list) -> None:
        times = [r.policy_ms for r in results if isinstance(r, InferResult)]
        if times:
            batch_ms = max(times)
            self.estimate_ms = batch_ms if self.estimate_ms is None else (
                (1 - ESTIMATE_WEIGHT) * self.estimate_ms + ESTIMATE_WEIGHT * batch_ms)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            batch = [item for item in batch if not item.future.done()]  # a connection that went away
            if not batch:
                continue
            self._busy = True
            try:
                results = await loop.run_in_executor(self._executor, self._infer_batch, batch)
            except Exception:  # noqa: BLE001 - one request's fault must not fail the others: retry alone
                results = [await loop.run_in_executor(self._executor, self._infer_alone, item) for item in batch]
            finally:
                self._busy = False
            self._update_estimate(results)
            for future, result in zip((item.future for item in batch), results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _collect(self) -> list:
        """The first waiting request, plus those arriving within the window (at most max_batch); each get
        takes the earliest deadline waiting."""
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
        observations = [item.observation for item in batch]
        noise = np.stack([item.noise for item in batch])
        chunk = self.policy.infer(observations, noise=noise)
        total_ms = float(chunk.timings_ms.get("total_ms", 0.0))
        return [InferResult(actions, total_ms, len(batch)) for actions in chunk.actions]

    def _infer_alone(self, item: _Request) -> InferResult | Exception:
        try:
            chunk = self.policy.infer(item.observation, noise=item.noise)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting connection, which reports it
            return exc
        return InferResult(chunk.actions, float(chunk.timings_ms.get("total_ms", 0.0)), 1)
