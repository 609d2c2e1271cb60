"""The inference thread: runs `policy.infer` off the control thread so a slow policy never stalls the
clock. One request at a time. A request that exceeds the timeout is marked; its result, if it ever
comes, is dropped (a thread cannot be killed, but its late answer can be ignored).

The thread shares the GIL with the loop; a real bundle runs in its own process instead
(inference_process.py, the default: docs/control_loop.md, "Inference beside the loop"). This worker
stays for in-process policies (tests, the fake policy) and for `inference: thread`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pi0edge.errors import ConfigError

from .policy_spec import infer_guided


def check_cpus(cpus: Sequence[int], what: str) -> None:
    """Refuse CPU numbers this process may not run on; `what` names the config field."""
    if not cpus or not hasattr(os, "sched_getaffinity"):
        return
    allowed = os.sched_getaffinity(0)
    outside = sorted(set(cpus) - allowed)
    if outside:
        raise ConfigError(f"{what}: CPUs {outside} are not available here (this process may use {sorted(allowed)})")


def pin_current_thread(cpus: Sequence[int], what: str) -> Callable[[], None]:
    """Pin the calling thread (Linux: pid 0 is the calling thread) to `cpus`; returns the undo.
    An empty `cpus` pins nothing. `what` names the config field for the error message."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return lambda: None
    check_cpus(cpus, what)
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    return lambda: os.sched_setaffinity(0, previous)


@dataclass
class InferenceResult:
    obs_tick: int
    latency_ms: float
    actions: np.ndarray | None = None
    timings_ms: dict = field(default_factory=dict)
    error: BaseException | None = None
    timed_out: bool = False  # the loop gave up on it before it arrived
    observation: object = None  # the Observation, kept for the episode recording
    malformed: str | None = None  # Pi0-FAST: why the action tokens did not read back into a chunk (it is refused)
    # When policy.infer was called and returned, on the monotonic clock (CLOCK_MONOTONIC is one clock for
    # every process of the machine, so the inference process's stamps compare with the loop's). NaN: never ran.
    start_s: float = float("nan")
    end_s: float = float("nan")


class InferenceWorker:
    def __init__(self, policy, cpus: Sequence[int] = (), on_stop: Callable[[], None] | None = None):
        self.policy, self._on_stop = policy, on_stop  # on_stop: called at the end of stop()
        self.cpus = tuple(cpus)  # the inference thread pins itself there (empty: wherever the scheduler puts it)
        self._cv = threading.Condition()
        self._request = None  # (observation, tick, guidance)
        self._result: InferenceResult | None = None
        self._stop = False
        self.started_s: float | None = None  # monotonic start of the request in flight
        self._timed_out = False
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._cv:
            return self._request is not None or self.started_s is not None

    def submit(self, observation, tick: int, guidance=None) -> None:
        """guidance: the rtc strategy's RtcGuidance for this request (None: plain `policy.infer`)."""
        with self._cv:
            if self._request is not None or self.started_s is not None:
                raise RuntimeError("inference worker: a request is already in flight")
            self._request = (observation, tick, guidance)
            self.started_s = time.monotonic()
            self._timed_out = False
            self._cv.notify_all()

    def mark_timed_out(self) -> None:
        with self._cv:
            self._timed_out = True

    def poll(self) -> InferenceResult | None:
        with self._cv:
            result, self._result = self._result, None
            return result

    def wait(self, timeout_s: float) -> InferenceResult | None:
        """Wait up to timeout_s for the result in flight (sync strategy, within one tick's budget)."""
        with self._cv:
            if self._result is None and timeout_s > 0:
                self._cv.wait_for(lambda: self._result is not None or self._stop, timeout=timeout_s)
            result, self._result = self._result, None
            return result

    def _run(self) -> None:
        if self.cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(self.cpus))  # the caller ran check_cpus
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._request is not None or self._stop)
                if self._stop:
                    return
                observation, tick, guidance = self._request
                self._request = None
                start = self.started_s
            result = InferenceResult(obs_tick=tick, latency_ms=0.0, observation=observation, start_s=time.monotonic())
            try:
                chunk = infer_guided(self.policy, observation, guidance)
                result.actions, result.timings_ms = chunk.actions, dict(chunk.timings_ms or {})
                result.malformed = getattr(chunk, "malformed", None)
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which records it as a safety event
                result.error = exc
            result.end_s = time.monotonic()
            with self._cv:
                result.latency_ms = (time.monotonic() - start) * 1e3
                result.timed_out = self._timed_out
                self._result = result
                self.started_s = None
                self._cv.notify_all()

    def stop(self, timeout_s: float = 1.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=timeout_s)  # a policy stuck in infer() is left behind (daemon thread)
        if self._on_stop is not None:
            self._on_stop()
