"""Inference in its own process, beside the loop (as openpilot runs modeld beside its controls).

The loop thread then shares no GIL with preprocessing and the model: it copies the frames and the
state into shared memory, sends a few bytes (sequence number, prompt, buffer names) down a pipe and
goes on; the process runs `policy.infer` and writes the chunk into a shared buffer. The worker has the
thread worker's interface (submit / poll / wait / busy / started_s / mark_timed_out / stop), so the loop
does not know which one it drives. docs/control_loop.md, "Inference beside the loop".

Buffers are allocated once: the state and the chunk from the policy's dims, one frame slot per model
camera at its first frame (camera resolution, which the manifest does not know), grown only if a
larger frame ever comes. One request is in flight at a time, so the loop never writes a buffer the
process is reading. Each answer carries when the process called and left `policy.infer`
(time.monotonic, one clock with the loop's), for the latency accounting (latency.py). The process is
started with 'spawn' (ONNX Runtime threads do not survive fork) and loads the policy itself from a
picklable spec (policy_spec.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from multiprocessing import shared_memory

import numpy as np

from .errors import InferenceProcessError
from .inference import InferenceResult, InferenceWorker, check_cpus, pin_current_thread
from .policy_spec import FakePolicySpec, PolicyHandle, PolicySpec, infer_guided, spec_of

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 600.0  # a full-size bundle on a slow disk; the loop has not started yet
STOP_TIMEOUT_S = 2.0  # then the process is terminated (a hung model can be, unlike a thread)


class _Buffer:
    """A shared-memory block viewed as one numpy array; the owner unlinks it."""

    def __init__(self, shape: tuple[int, ...], dtype, name: str | None = None):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        nbytes = max(1, int(np.prod(self.shape)) * self.dtype.itemsize)
        self.shm = shared_memory.SharedMemory(name=name, create=name is None, size=nbytes if name is None else 0)
        self.array = np.ndarray(self.shape, self.dtype, buffer=self.shm.buf)

    def view(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.ndarray(shape, np.dtype(dtype), buffer=self.shm.buf)

    def close(self, unlink: bool = False) -> None:
        self.array = None
        self.shm.close()
        if unlink:
            self.shm.unlink()


class ProcessInferenceWorker:
    """Runs `spec.load().infer` in a spawned process; frames, state and chunks through shared memory."""

    def __init__(self, spec: PolicySpec | FakePolicySpec, cpus: Sequence[int] = (),
                 load_timeout_s: float = LOAD_TIMEOUT_S, on_stop: Callable[[], None] | None = None):
        shape = spec.describe()
        self.spec, self._on_stop = spec, on_stop
        self._state = _Buffer((shape.robot_state_dim,), np.float32)
        self._chunk = _Buffer((shape.action_horizon, shape.robot_action_dim), np.float32)
        self._frames: dict[str, _Buffer] = {}
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_serve, name="pi0edge-inference", daemon=True,
                                        args=(spec, child_conn, (self._state.shm.name, self._state.shape),
                                              (self._chunk.shm.name, self._chunk.shape), tuple(cpus)))
        self._process.start()
        child_conn.close()
        self._seq = 0
        self._in_flight: tuple[int, object, int] | None = None  # (seq, observation, tick)
        self._timed_out = False
        self._dead: InferenceProcessError | None = None  # set once the process is gone
        self._refused: InferenceProcessError | None = None  # the request in flight was not sent: why
        self.started_s: float | None = None
        self._wait_ready(load_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        ok = self._conn.poll(timeout_s)
        message = self._recv() if ok else None
        if message is not None and message[0] == "ready":
            return
        self.stop()
        if not ok:
            raise InferenceProcessError(f"inference process: no policy loaded from {self.spec} within "
                                        f"{timeout_s:g} s")
        if message is None:
            raise InferenceProcessError(f"inference process died while loading the policy from {self.spec} "
                                        f"({self._exit_text()})")
        raise InferenceProcessError(f"inference process could not load the policy from {self.spec}: {message[1]}")

    def _recv(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            return None

    def _exit_text(self) -> str:
        code = self._process.exitcode
        return "still running" if code is None else f"exit code {code}"

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    def submit(self, observation, tick: int, guidance=None) -> None:
        """guidance: the rtc strategy's RtcGuidance (a few kB, pickled down the pipe); None: plain infer."""
        if self._in_flight is not None:
            raise RuntimeError("inference worker: a request is already in flight")
        self._seq += 1
        self._in_flight, self._timed_out = (self._seq, observation, tick), False
        self.started_s = time.monotonic()
        self._refused = self._dead
        state = np.asarray(observation.state, np.float32).ravel()
        if state.shape != self._state.shape:
            self._refused = InferenceProcessError(f"observation state has {state.size} values, the policy "
                                                  f"{self._state.shape[0]} (robot_state_dim)")
        if self._refused is not None:
            return  # poll() answers with the error at once
        np.copyto(self._state.array, state)
        cameras = tuple(self._put_frame(name, image) for name, image in observation.images.items())
        try:
            self._conn.send(("infer", self._seq, observation.prompt, cameras, guidance))
        except OSError:
            self._died()
            self._refused = self._dead

    def _put_frame(self, name: str, image) -> tuple[str, str, tuple[int, ...], str]:
        image = np.asarray(image)
        slot = self._frames.get(name)
        if slot is None or slot.shm.size < image.nbytes:
            if slot is not None:
                slot.close(unlink=True)  # the process attaches to the new name with this request
            slot = self._frames[name] = _Buffer(image.shape, image.dtype)
        np.copyto(slot.view(image.shape, image.dtype), image)
        return name, slot.shm.name, image.shape, image.dtype.str

    def mark_timed_out(self) -> None:
        self._timed_out = True

    def poll(self) -> InferenceResult | None:
        return self.wait(0.0)

    def wait(self, timeout_s: float) -> InferenceResult | None:
        if self._in_flight is None:
            return None
        if self._refused is not None:
            return self._finish(None)
        try:
            ready = self._conn.poll(max(timeout_s, 0.0))
        except (EOFError, OSError):
            ready = True
        if not ready:
            if not self._process.is_alive():
                self._died()
                return self._finish(None)
            return None
        message = self._recv()
        if message is None:
            self._died()
        return self._finish(message)

    def _died(self) -> None:
        self._process.join(timeout=0.1)
        self._dead = InferenceProcessError(f"the inference process died ({self._exit_text()}); the loop "
                                           "cannot get chunks until it is restarted")
        self._refused = self._dead

    def _finish(self, message) -> InferenceResult:
        seq, observation, tick = self._in_flight
        result = InferenceResult(obs_tick=tick, latency_ms=(time.monotonic() - self.started_s) * 1e3,
                                 observation=observation, timed_out=self._timed_out)
        if message is None:
            result.error = self._refused
        else:
            _, answered_seq, shape, inline, timings, error, (result.start_s, result.end_s), malformed = message
            if answered_seq != seq:  # one request at a time: cannot happen unless the protocol is broken
                error = f"answer to request {answered_seq}, expected {seq}"
            if error is not None:
                result.error = InferenceProcessError(f"{error} (in the inference process)")
            else:
                result.actions = np.array(self._chunk.array if inline is None else inline).reshape(shape)
                result.timings_ms, result.malformed = timings, malformed
        self._in_flight, self.started_s = None, None
        return result

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("stop",))
            except OSError:
                pass
            self._process.join(timeout_s)
        if self._process.is_alive():  # stuck in infer(): unlike a thread, a process can be ended
            self._process.terminate()
            self._process.join(timeout_s)
        self._conn.close()
        for buffer in (self._state, self._chunk, *self._frames.values()):
            buffer.close(unlink=True)
        self._frames.clear()
        if self._on_stop is not None:
            self._on_stop()


def _serve(spec, conn, state_buffer: tuple[str, tuple], chunk_buffer: tuple[str, tuple], cpus: tuple[int, ...]) -> None:
    """The inference process: load the policy, then answer requests until told to stop."""
    from pi0edge.runtime.types import Observation

    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))  # before loading: the model's threads inherit it
    try:
        policy = spec.load()
        state = _Buffer(state_buffer[1], np.float32, state_buffer[0])
        chunk = _Buffer(chunk_buffer[1], np.float32, chunk_buffer[0])
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it as a load error
        conn.send(("load_error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    frames: dict[str, _Buffer] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the loop's process is gone
        if message[0] == "stop":
            return
        _, seq, prompt, cameras, guidance = message
        start_s = time.monotonic()  # one clock with the loop's process (CLOCK_MONOTONIC): see InferenceResult
        try:
            images = {name: _attach(frames, shm_name).view(shape, dtype) for name, shm_name, shape, dtype in cameras}
            observation = Observation(images=images, state=state.array.copy(), prompt=prompt)
            out = infer_guided(policy, observation, guidance)
            actions = np.asarray(out.actions, np.float32)
            inline = None
            if actions.shape == chunk.array.shape:
                np.copyto(chunk.array, actions)
            else:
                inline = actions  # another shape (a batch): rare, sent through the pipe
            conn.send(("result", seq, actions.shape, inline, dict(out.timings_ms or {}), None,
                       (start_s, time.monotonic()), getattr(out, "malformed", None)))
        except Exception as exc:  # noqa: BLE001 - the loop turns it into a policy_error fault
            conn.send(("result", seq, None, None, {}, f"{type(exc).__name__}: {exc}", (start_s, time.monotonic()),
                       None))


def _attach(frames: dict[str, _Buffer], shm_name: str) -> _Buffer:
    if shm_name not in frames:
        frames[shm_name] = _Buffer((), np.uint8, shm_name)
    return frames[shm_name]


def start_inference(policy, inference: str = "process", cpus: Sequence[int] = (), loop_cpus: Sequence[int] = ()):
    """The worker the loop uses: a process when `inference` is "process" and the policy can be loaded
    from a spec (a bundle), else a thread (in-process objects: tests, the fake policy). Pins the calling
    (loop) thread to `loop_cpus` and the worker to `cpus`; the worker's stop() undoes the loop's pinning."""
    check_cpus(cpus, "cpu_affinity.inference")
    unpin = pin_current_thread(loop_cpus, "cpu_affinity.loop")
    spec = spec_of(policy) if inference == "process" else None
    try:
        if spec is not None:
            worker = ProcessInferenceWorker(spec, cpus=cpus, on_stop=unpin)
        else:
            if inference == "process" and not getattr(policy, "is_remote", False):
                log.info("inference: %s cannot be loaded in another process; running it in a thread",
                         type(policy).__name__)
            worker = InferenceWorker(policy.load() if isinstance(policy, PolicyHandle) else policy, cpus=cpus,
                                     on_stop=unpin)
    except BaseException:
        unpin()
        raise
    return worker
