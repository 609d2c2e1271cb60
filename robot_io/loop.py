"""The control loop: fixed rate, chunked actions, a safety layer between the policy and the arm.

Each tick: poll the e-stop, read the arm and the cameras, take in a finished inference, check the
watchdogs, maybe request the next chunk, pick this tick's action (chunking.py), pass it through the
safety layer, command the arm, record, then wait for the next deadline (clock.py).

Faults never raise out of a tick: each is a SafetyEvent with a reason and the arm holds the last
safe command. After a fault the chunks in hand are dropped, so motion resumes only from a chunk
whose observation was taken after the fault. The e-stop latches. Whatever ends the run (duration,
Ctrl-C, an exception), the last command sent is a hold of the last safe position.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from pi0edge.errors import ConfigError
from pi0edge.runtime.types import Observation  # plain numpy; `pi0edge.runtime` is cheap to import

from .arms import Arm
from .cameras import Camera, Frame
from .chunking import Chunk, make_strategy
from .clock import Ratekeeper
from .config import RobotConfig
from .errors import ArmError, CameraError, SafetyError
from .inference import InferenceResult, InferenceWorker
from .inference_process import start_inference
from .recording import EpisodeRecorder
from .safety import EStop, SafetyEvent, SafetyLayer

log = logging.getLogger(__name__)

# sync strategy: it may wait for the chunk it just requested within the tick, leaving this share of the
# period for the command and the bookkeeping (and scheduler noise) so the wait itself never misses a deadline.
SYNC_WAIT_MARGIN_FRACTION = 0.3
MAX_CONSECUTIVE_POLICY_ERRORS = 3  # a policy that keeps raising is a bug, not a transient: stop
STATUS_EVERY_S = 0.5
GIL_SWITCH_INTERVAL_S = 0.0005


def _enter_realtime(priority: int | None, on_event) -> Callable[[], None]:
    """Give the calling (loop) thread SCHED_FIFO `priority`, as openpilot's `config_realtime_process`.

    Only the loop thread: the inference and camera threads, started before, keep the normal policy,
    so a busy model cannot delay a tick and cannot starve the machine either. The process memory is
    locked too (see _lock_memory). Without permission (not root, no CAP_SYS_NICE / rtprio or memlock
    limit) the loop runs at normal priority and says so with an event.
    Returns the function that restores the previous policy.
    """
    if not priority or not hasattr(os, "sched_setscheduler"):
        return lambda: None
    unlock = _lock_memory(on_event)
    previous = (os.sched_getscheduler(0), os.sched_getparam(0))
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # 0 = this thread on Linux
    except PermissionError as exc:
        on_event(0, "no_realtime", f"realtime_priority {priority} refused ({exc}); running at normal priority")
        return unlock

    def restore() -> None:
        os.sched_setscheduler(0, previous[0], previous[1])
        unlock()

    return restore


def _lock_memory(on_event) -> Callable[[], None]:
    """mlockall(MCL_CURRENT | MCL_FUTURE): a real-time priority does not help a thread that stalls
    on a page fault. Measured here: under memory reclaim by other processes, ticks were delayed by up
    to 30 ms at SCHED_FIFO; with the memory locked, p99 period error fell below 1 ms (docs/control_loop.md)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError as exc:
        on_event(0, "no_memlock", f"cannot load libc for mlockall ({exc})")
        return lambda: None
    mcl_current, mcl_future = 1, 2
    if libc.mlockall(mcl_current | mcl_future) != 0:
        errno = ctypes.get_errno()
        on_event(0, "no_memlock", f"mlockall failed ({os.strerror(errno)}); page faults may delay ticks")
        return lambda: None
    return lambda: libc.munlockall()


def _percentile(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


@dataclass
class LoopStats:
    """What one run did. Times in ms unless the name says otherwise."""

    rate_hz: float
    strategy: str
    ticks: int = 0
    duration_s: float = 0.0
    period_error_ms_p50: float = float("nan")  # |wake-to-wake interval - period|
    period_error_ms_p99: float = float("nan")
    period_error_ms_max: float = float("nan")
    deadline_misses: int = 0  # ticks whose work ran past the deadline
    skipped_ticks: int = 0  # whole periods dropped after a long stall
    inferences: int = 0
    inference_latency_ms_p50: float = float("nan")
    inference_latency_ms_p99: float = float("nan")
    rejected_chunks: int = 0
    discarded_chunks: int = 0  # arrived after a fault or a timeout: their observation was too old
    skipped_actions: int = 0  # chunk rows dropped because the inference delay had covered them
    executed_ticks: int = 0  # ticks that moved toward a policy action
    waiting_ticks: int = 0  # ticks with no action yet (first chunk, sync pause): arm holds
    hold_ticks: int = 0  # ticks held because of a fault
    clipped_ticks: int = 0  # a target was outside the joint limits (clipped)
    clamped_ticks: int = 0  # a step exceeded the velocity limit (clamped)
    events: list[SafetyEvent] = field(default_factory=list)
    stop_reason: str = ""

    @property
    def achieved_rate_hz(self) -> float:
        return self.ticks / self.duration_s if self.duration_s > 0 else 0.0

    def event_counts(self) -> dict[str, int]:
        return dict(Counter(e.kind for e in self.events))

    def status_line(self) -> str:
        events = ", ".join(f"{k} {v}" for k, v in self.event_counts().items()) or "none"
        return (f"{self.achieved_rate_hz:5.1f}/{self.rate_hz:g} Hz | infer p50 {self.inference_latency_ms_p50:6.1f} ms "
                f"| misses {self.deadline_misses} | holds {self.hold_ticks} | safety events: {events}")

    def summary(self) -> str:
        lines = [
            f"control loop: {self.ticks} ticks in {self.duration_s:.2f} s = {self.achieved_rate_hz:.2f} Hz "
            f"(target {self.rate_hz:g} Hz), strategy {self.strategy}, stopped: {self.stop_reason}",
            f"  period error ms: p50 {self.period_error_ms_p50:.3f}  p99 {self.period_error_ms_p99:.3f}  "
            f"max {self.period_error_ms_max:.3f}; deadline misses {self.deadline_misses}, "
            f"skipped ticks {self.skipped_ticks}",
            f"  inference: {self.inferences} chunks, latency ms p50 {self.inference_latency_ms_p50:.1f} "
            f"p99 {self.inference_latency_ms_p99:.1f}; rejected {self.rejected_chunks}, "
            f"discarded {self.discarded_chunks}, actions skipped for delay {self.skipped_actions}",
            f"  ticks: executing {self.executed_ticks}, waiting {self.waiting_ticks}, held on fault {self.hold_ticks}; "
            f"position clipped {self.clipped_ticks}, velocity clamped {self.clamped_ticks}",
        ]
        counts = self.event_counts()
        lines.append("  safety events: " + (", ".join(f"{k} x{v}" for k, v in counts.items()) if counts else "none"))
        for event in self.events[:10]:
            lines.append(f"    tick {event.tick}: {event.kind}: {event.reason}")
        if len(self.events) > 10:
            lines.append(f"    ... {len(self.events) - 10} more")
        return "\n".join(lines)


def check_policy_fits(config: RobotConfig, policy, arm: Arm) -> None:
    """Refuse to start when the YAML, the policy and the arm disagree (errors name the field)."""
    dof = config.joints.dof
    if arm.dof != dof:
        raise ConfigError(f"joints.names: {dof} joints, but the {config.arm['kind']} arm has {arm.dof}")
    action_dim, state_dim = int(policy.robot_action_dim), int(policy.robot_state_dim)
    if max(config.joints.action_index) >= action_dim:
        raise ConfigError(f"joints.action_index: {list(config.joints.action_index)} reaches past the policy's "
                          f"{action_dim} action dims")
    if max(config.joints.state_index) >= state_dim:
        raise ConfigError(f"joints.state_index: {list(config.joints.state_index)} reaches past the policy's "
                          f"{state_dim} state dims")
    model_cameras = tuple(policy.camera_names)
    for cam in config.cameras:
        if cam.model_camera not in model_cameras:
            raise ConfigError(f"cameras.{cam.robot_id}.model_camera: {cam.model_camera!r} is not one of the "
                              f"policy's cameras {list(model_cameras)}")
    unfed = [name for name in model_cameras if name not in {c.model_camera for c in config.cameras}]
    if unfed:
        log.warning("policy cameras %s get no robot camera; the policy sees them masked", unfed)


class ControlLoop:
    """One run of the loop over opened cameras and an arm (the caller owns and closes them)."""

    def __init__(self, config: RobotConfig, policy, prompt: str, arm: Arm, cameras: Mapping[str, Camera],
                 estop: EStop | None = None, recorder: EpisodeRecorder | None = None,
                 on_status: Callable[[LoopStats], None] | None = None):
        check_policy_fits(config, policy, arm)
        missing = [c.robot_id for c in config.cameras if c.robot_id not in cameras]
        if missing:
            raise ConfigError(f"cameras: {missing} are configured but were not opened")
        self.config, self.policy, self.prompt, self.arm = config, policy, prompt, arm
        self.cameras = {c.robot_id: cameras[c.robot_id] for c in config.cameras}
        self.model_camera = {c.robot_id: c.model_camera for c in config.cameras}
        self.estop = estop or EStop()
        self.recorder, self.on_status = recorder, on_status
        self.safety = SafetyLayer.from_config(config.safety, arm.limits, config.period_s)
        self.horizon = int(policy.action_horizon)
        self.strategy = make_strategy(config.chunking, self.horizon)
        self.action_index = np.asarray(config.joints.action_index)
        self.state_index = np.asarray(config.joints.state_index)
        self.state_dim = int(policy.robot_state_dim)
        self.action_dim = int(policy.robot_action_dim)
        self.stats = LoopStats(rate_hz=config.rate_hz, strategy=self.strategy.name)
        self._latencies_ms: list[float] = []
        self._active_faults: set[str] = set()  # conditions that hold now (stale_frame, arm_error, ...)
        self._discard_before_tick = 0  # chunks observed before this tick are too old to execute
        self._policy_errors = 0
        self._timed_out_pending = False
        self._hold_reason: str | None = None  # a one-off fault (bad chunk, timeout...) holds until a fresh chunk
        self.last_command: np.ndarray | None = None

    # --- events -------------------------------------------------------------------------------------
    def _event(self, tick: int, kind: str, reason: str) -> None:
        event = SafetyEvent(tick, time.monotonic(), kind, reason)
        self.stats.events.append(event)
        log.warning("safety: tick %d: %s: %s", tick, kind, reason)

    def _fault(self, tick: int, kind: str, reason: str, lasting: bool = True) -> None:
        """Stop motion: record the fault (once while it lasts) and drop the chunks in hand.

        lasting: a condition that holds until it clears (stale camera, arm error, e-stop); otherwise a
        one-off event (bad chunk, timeout, policy error) after which the arm holds until a chunk from a
        fresh observation arrives."""
        if kind not in self._active_faults:
            self._event(tick, kind, reason)
        if lasting:
            self._active_faults.add(kind)
        else:
            self._hold_reason = kind
        self.strategy.clear()
        self._discard_before_tick = tick + 1

    # --- pieces of a tick ---------------------------------------------------------------------------
    def _observation(self, frames: dict[str, Frame], state: np.ndarray) -> Observation:
        model_state = np.zeros(self.state_dim, dtype=np.float32)
        model_state[self.state_index] = state
        images = {self.model_camera[rid]: frame.image for rid, frame in frames.items()}
        return Observation(images=images, state=model_state, prompt=self.prompt)

    def _take_result(self, result: InferenceResult, tick: int) -> None:
        self.stats.inferences += 1
        self._latencies_ms.append(result.latency_ms)
        accepted = False
        if result.timed_out or result.obs_tick < self._discard_before_tick:
            self.stats.discarded_chunks += 1
            self._timed_out_pending = False
        elif result.error is not None:
            self._policy_errors += 1
            self._fault(tick, "policy_error", f"policy.infer raised {type(result.error).__name__}: {result.error}",
                        lasting=False)
        else:
            self._policy_errors = 0
            actions = np.asarray(result.actions)
            reason = self.safety.check_chunk(actions, self.horizon, self.action_dim)
            if reason is not None:
                self.stats.rejected_chunks += 1
                self._fault(tick, "bad_chunk", f"chunk from tick {result.obs_tick} rejected: {reason}", lasting=False)
            else:
                if actions.ndim == 3:
                    actions = actions[0]
                robot_actions = actions[:, self.action_index].astype(np.float64)  # h=horizon, j=robot joint
                self.strategy.add(Chunk(robot_actions, result.obs_tick, tick))
                self._hold_reason = None
                accepted = True
        if self.recorder is not None and result.observation is not None:
            self.recorder.add_inference(result.obs_tick, tick, result.latency_ms, accepted, result.observation,
                                        result.actions)

    def _read_frames(self, tick: int, now_s: float) -> dict[str, Frame] | None:
        frames, stale = {}, []
        for rid, camera in self.cameras.items():
            try:
                frame = camera.read()
            except CameraError as exc:
                stale.append(f"{rid}: {exc}")
                continue
            age_s = now_s - frame.timestamp_s
            if age_s > self.config.safety.stale_frame_s:
                stale.append(f"{rid} frame {frame.index} is {age_s * 1e3:.0f} ms old "
                             f"(stale_frame_s {self.config.safety.stale_frame_s})")
            frames[rid] = frame
        if stale:
            self._fault(tick, "stale_frame", "; ".join(stale))
            return None
        if "stale_frame" in self._active_faults:
            self._active_faults.discard("stale_frame")
            self._event(tick, "recovered", "all cameras fresh again")
        return frames

    def _read_state(self, tick: int) -> np.ndarray | None:
        try:
            state = np.asarray(self.arm.read_state(), dtype=np.float64)
        except ArmError as exc:
            self._fault(tick, "arm_error", f"read_state failed: {exc}")
            return None
        if not np.all(np.isfinite(state)):
            self._fault(tick, "arm_error", f"arm state not finite: {state.tolist()}")
            return None
        if "arm_error" in self._active_faults:
            self._active_faults.discard("arm_error")
            self._event(tick, "recovered", "arm answers again")
        return state

    def _send(self, tick: int, command: np.ndarray) -> None:
        try:
            self.arm.command(command)
        except ArmError as exc:
            self._fault(tick, "arm_error", f"command failed: {exc}")

    # --- the run ------------------------------------------------------------------------------------
    def run(self, duration_s: float | None = None, stop: threading.Event | None = None) -> LoopStats:
        stats, cfg = self.stats, self.config
        start_state = np.asarray(self.arm.read_state(), dtype=np.float64)
        # Start from where the arm is (inside the limits): the first commands are a hold.
        self.last_command = np.clip(start_state, self.safety.lower, self.safety.upper)
        worker = start_inference(self.policy, cfg.inference, cfg.cpu_affinity.inference, cfg.cpu_affinity.loop)
        clock = Ratekeeper(cfg.rate_hz)
        self.estop.arm()
        if self.estop.triggered:
            worker.stop()
            self.estop.disarm()
            raise SafetyError(f"e-stop is active before the start ({self.estop.reason}); clear it first")
        restore_priority = _enter_realtime(self.config.realtime_priority, self._event)
        previous_switch_s = sys.getswitchinterval()
        # The loop thread shares the GIL with the inference thread: make the handoff quick (default 5 ms).
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        start_s = clock.start()
        end_s = None if duration_s is None else start_s + duration_s
        next_status_s = start_s + STATUS_EVERY_S
        tick = 0
        stats.stop_reason = "duration reached"
        try:
            while True:
                now = time.monotonic()
                if (end_s is not None and now >= end_s) or (stop is not None and stop.is_set()):
                    if stop is not None and stop.is_set():
                        stats.stop_reason = "stopped by caller"
                    break
                self._tick(tick, now, worker, clock)
                if self.on_status is not None and now >= next_status_s:
                    next_status_s = now + STATUS_EVERY_S
                    self._update_stats(clock, clock.elapsed_s)
                    self.on_status(stats)
                if self._policy_errors >= MAX_CONSECUTIVE_POLICY_ERRORS:
                    stats.stop_reason = f"policy failed {self._policy_errors} times in a row"
                    break
                clock.keep_time()
                tick += 1
        except KeyboardInterrupt:
            stats.stop_reason = "interrupted (Ctrl-C)"
        except BaseException as exc:
            stats.stop_reason = f"error: {type(exc).__name__}: {exc}"
            raise
        finally:
            # Whatever ended the run, the last word to the arm is: hold the last safe position.
            try:
                self.arm.command(self.last_command)
            except ArmError as exc:
                self._event(tick, "arm_error", f"final hold command failed: {exc}")
            sys.setswitchinterval(previous_switch_s)
            restore_priority()
            worker.stop()
            self.estop.disarm()
            self._update_stats(clock, clock.elapsed_s)
        return stats

    def _tick(self, tick: int, now: float, worker: InferenceWorker, clock: Ratekeeper) -> None:
        cfg, stats = self.config, self.stats
        if self.estop.poll() and "estop" not in self._active_faults:
            self._fault(tick, "estop", self.estop.reason or "e-stop")
        state = self._read_state(tick)
        frames = self._read_frames(tick, now)

        result = worker.poll()
        if result is not None:
            self._take_result(result, tick)
        if worker.busy and worker.started_s is not None and not self._timed_out_pending:
            waited_s = now - worker.started_s
            if waited_s > cfg.safety.inference_timeout_s:
                worker.mark_timed_out()
                self._timed_out_pending = True
                self._fault(tick, "inference_timeout", f"no chunk after {waited_s:.2f} s "
                            f"(inference_timeout_s {cfg.safety.inference_timeout_s})", lasting=False)

        # Transient faults (bad chunk, timeout, policy error) cleared the strategy; lasting ones are active.
        can_move = not self._active_faults and state is not None and frames is not None
        if can_move and not self._timed_out_pending and self.strategy.want_inference(tick, worker.busy):
            worker.submit(self._observation(frames, state), tick)
            if self.strategy.blocking:
                wait_s = clock.deadline_s - time.monotonic() - SYNC_WAIT_MARGIN_FRACTION * clock.period_s
                result = worker.wait(wait_s)
                if result is not None:
                    self._take_result(result, tick)

        target = None
        if can_move:
            was_exhausted = self.strategy.exhausted
            target = self.strategy.target(tick)
            if target is None and self.strategy.exhausted and not was_exhausted:
                self._event(tick, "chunk_exhausted", f"the last chunk ran out before the next arrived "
                            f"(inference p50 {_percentile(self._latencies_ms, 50):.0f} ms)")
        if target is not None:
            command = self.safety.limit(target, self.last_command)
            status = "run"
            stats.executed_ticks += 1
        else:
            command = self.last_command
            reasons = sorted(self._active_faults | ({self._hold_reason} if self._hold_reason else set()))
            if reasons or state is None or frames is None:
                status = "hold:" + ",".join(reasons) if reasons else "hold"
                stats.hold_ticks += 1
            else:
                status = "wait"
                stats.waiting_ticks += 1
        self._send(tick, command)
        self.last_command = command
        if self.recorder is not None:
            # How late this tick started: now minus the deadline that keep_time() waited for.
            late_ms = (now - (clock.deadline_s - clock.period_s)) * 1e3
            self.recorder.add_tick(now, state, target, command, status, late_ms)

    def _update_stats(self, clock: Ratekeeper, elapsed_s: float) -> None:
        s = self.stats
        s.ticks, s.duration_s = clock.frame, elapsed_s
        errors_ms = np.abs(np.asarray(clock.period_error_s)) * 1e3
        s.period_error_ms_p50, s.period_error_ms_p99 = _percentile(errors_ms, 50), _percentile(errors_ms, 99)
        s.period_error_ms_max = float(errors_ms.max()) if errors_ms.size else float("nan")
        s.deadline_misses, s.skipped_ticks = clock.deadline_misses, clock.skipped_ticks
        s.inference_latency_ms_p50 = _percentile(self._latencies_ms, 50)
        s.inference_latency_ms_p99 = _percentile(self._latencies_ms, 99)
        s.clipped_ticks, s.clamped_ticks = self.safety.clipped_ticks, self.safety.clamped_ticks
        s.skipped_actions = self.strategy.skipped_actions


def open_cameras(config: RobotConfig, arm: Arm | None = None) -> dict[str, Camera]:
    from .cameras import open_camera

    cameras: dict[str, Camera] = {}
    try:
        for cam in config.cameras:
            cameras[cam.robot_id] = open_camera(cam.spec, arm=arm)
        for camera in cameras.values():
            camera.wait_first_frame()
    except BaseException:
        for camera in cameras.values():
            camera.close()
        raise
    return cameras


def startup_check(config: RobotConfig, cameras: Mapping[str, Camera]) -> None:
    """Compare the configured camera with its calibration reference before anything moves."""
    from .errors import StartupCheckError

    check = config.startup_check
    if check is None:
        return
    try:
        from pi0edge.calibration.drift import check_drift
    except ImportError as exc:
        raise StartupCheckError(f"startup_check: pi0edge.calibration.drift.check_drift is not available "
                                f"({exc}); remove startup_check from the robot YAML or install calibration") from exc
    frame = cameras[check.camera].read()
    result = check_drift(frame.image, check.reference)  # raises its own error when it cannot measure
    if not result.passed:
        raise StartupCheckError(f"startup_check: camera {check.camera!r}: {result.message}")
    log.info("startup check: camera %r: %s", check.camera, result.message)


def run_loop(config: RobotConfig, policy, prompt: str, duration_s: float | None = None, *,
             arm: Arm | None = None, cameras: Mapping[str, Camera] | None = None, record_path: str | None = None,
             estop: EStop | None = None, on_status: Callable[[LoopStats], None] | None = None,
             stop: threading.Event | None = None) -> LoopStats:
    """Open what the config describes (unless given), run the loop, close what was opened.

    For `pi0edge demo`: `run_loop(load_robot_config(example_config_path("sim_arm.yaml")), policy,
    "pick up the cube", 5.0).summary()`.
    """
    from .arms import open_arm

    own_arm = arm is None
    arm = open_arm(config.arm) if own_arm else arm
    own_cameras = cameras is None
    try:
        cameras = open_cameras(config, arm) if own_cameras else cameras
        try:
            startup_check(config, cameras)
            record_path = record_path or config.recording.path
            recorder = None
            if record_path:
                recorder = EpisodeRecorder(record_path, _episode_meta(config, policy, prompt), config.recording.frames)
            loop = ControlLoop(config, policy, prompt, arm, cameras,
                               estop=estop or EStop.from_config(config.estop), recorder=recorder, on_status=on_status)
            try:
                stats = loop.run(duration_s, stop=stop)
            finally:
                if recorder is not None:
                    recorder.save(loop.stats.events)
            return stats
        finally:
            if own_cameras:
                for camera in cameras.values():
                    camera.close()
    finally:
        if own_arm:
            arm.close()


def _episode_meta(config: RobotConfig, policy, prompt: str) -> dict:
    return {"rate_hz": config.rate_hz, "prompt": prompt, "joints": list(config.joints.names),
            "action_index": list(config.joints.action_index), "state_index": list(config.joints.state_index),
            "cameras": {c.robot_id: c.model_camera for c in config.cameras}, "strategy": config.chunking.strategy,
            "arm": config.arm["kind"], "config": config.source, "action_horizon": int(policy.action_horizon)}
