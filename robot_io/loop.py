"""The control loop: fixed rate, chunked actions, a safety layer between the policy and the arm.

Each tick: poll the e-stop, read the arm and the cameras, take in a finished inference, check the
watchdogs, maybe request the next chunk, pick this tick's action (chunking.py), pass it through the
safety layer, command the arm, record, then wait for the next deadline (clock.py).

Faults never raise out of a tick: whatever a driver raises or reports is a SafetyEvent with a reason
(faults.py) and the arm holds. After a fault the chunks in hand are dropped, so motion resumes only
from a chunk whose observation was taken after the fault; after an arm fault, and at the start, the
velocity clamp ramps from the measured position. The e-stop latches. Whatever ends the run
(duration, Ctrl-C, SIGTERM/SIGHUP, an exception), the last command sent is a hold, and the real-time
settings, signal handlers and threads are restored even if that hold fails."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

from pi0edge.errors import ConfigError
from pi0edge.runtime.types import Observation  # plain numpy; `pi0edge.runtime` is cheap to import

from .arm_base import Arm
from .camera_reader import CameraReader
from .cameras import Camera, Frame
from .chunking import Chunk, make_strategy
from .clock import Ratekeeper
from .config import RobotConfig
from .errors import ArmError, PolicyUnavailableError, SafetyError
from .faults import Faults
from .gc_pacing import GcPacer
from .inference import InferenceResult, InferenceWorker
from .inference_process import start_inference
from .latency import RANGE_MS as LATENCY_RANGE_MS
from .latency import RESOLUTION_MS as LATENCY_RESOLUTION_MS
from .latency import ChunkTimeline
from .quantiles import StreamQuantiles
from .realtime import enter_realtime
from .recording import EpisodeRecorder
from .safety import EStop, SafetyLayer
from .stats import LoopStats
from .stop_signals import TerminationSignals

log = logging.getLogger(__name__)

# sync strategy: it may wait for the chunk it just requested within the tick, leaving this share of the
# period for the command and the bookkeeping (and scheduler noise) so the wait itself never misses a deadline.
SYNC_WAIT_MARGIN_FRACTION = 0.3
MAX_CONSECUTIVE_POLICY_ERRORS = 3  # a policy that keeps raising is a bug, not a transient: stop
STATUS_EVERY_S = 0.5
GIL_SWITCH_INTERVAL_S = 0.0005
# Each camera is polled on its own thread this often (a share of the loop period): frames reach the
# tick at most this much older than a read in the tick itself.
CAMERA_POLL_FRACTION = 0.5


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
        log.info("policy cameras %s get no robot camera (no cameras.*.model_camera names them): the policy "
                 "sees them masked (an empty image, its mask off), as intended for a robot with fewer cameras", unfed)


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
        self.faults = Faults(self.stats.events)
        self._latencies_ms = StreamQuantiles(LATENCY_RESOLUTION_MS, LATENCY_RANGE_MS)  # bounded: runs last days
        self.latency = self.stats.latency  # capture-to-command accounting (latency.py)
        self._requested: ChunkTimeline | None = None  # the observation in flight, from its frames' capture on
        self._executing: ChunkTimeline | None = None  # the newest accepted chunk: the rows executed come from it
        self._readers: dict[str, CameraReader] = {}
        self._discard_before_tick = 0  # chunks observed before this tick are too old to execute
        self._policy_errors = 0
        self._timed_out_pending = False
        self._tick_index = 0
        self.last_command: np.ndarray | None = None  # the last command the arm accepted (or the start hold)

    # --- faults -------------------------------------------------------------------------------------
    def _event(self, tick: int, kind: str, reason: str) -> None:
        self.faults.event(tick, kind, reason)

    def _fault(self, tick: int, kind: str, reason: str, lasting: bool = True) -> None:
        """Stop motion: record the fault (faults.py) and drop the chunks in hand."""
        self.faults.fault(tick, kind, reason, lasting)
        self.strategy.clear()
        self._executing = None
        self._discard_before_tick = tick + 1

    # --- pieces of a tick ---------------------------------------------------------------------------
    def _observation(self, frames: dict[str, Frame], state: np.ndarray) -> Observation:
        model_state = np.zeros(self.state_dim, dtype=np.float32)
        model_state[self.state_index] = state
        images = {self.model_camera[rid]: frame.image for rid, frame in frames.items()}
        return Observation(images=images, state=model_state, prompt=self.prompt)

    def _take_result(self, result: InferenceResult, tick: int) -> None:
        self.stats.inferences += 1
        self._latencies_ms.add(result.latency_ms)
        timeline, self._requested = self._requested, None
        accepted = False
        if result.timed_out or result.obs_tick < self._discard_before_tick:
            self.stats.discarded_chunks += 1
            self._timed_out_pending = False
        elif result.error is not None:
            # A server that cannot be reached now is a transient (the arm holds until it answers again), not
            # a policy bug: it does not count toward the errors in a row that stop the run.
            if not isinstance(result.error, PolicyUnavailableError):
                self._policy_errors += 1
            self._fault(tick, "policy_error", f"policy.infer raised {type(result.error).__name__}: {result.error}",
                        lasting=False)
        else:
            self._policy_errors = 0
            actions = np.asarray(result.actions)
            reason = (f"malformed action tokens ({result.malformed})" if result.malformed else
                      self.safety.check_chunk(actions, self.horizon, self.action_dim))
            if reason is not None:
                self.stats.rejected_chunks += 1
                self._fault(tick, "bad_chunk", f"chunk from tick {result.obs_tick} rejected: {reason}", lasting=False)
            else:
                if actions.ndim == 3:
                    actions = actions[0]
                robot_actions = actions[:, self.action_index].astype(np.float64)  # h=horizon, j=robot joint
                self.strategy.add(Chunk(robot_actions, result.obs_tick, tick))
                self.faults.fresh_chunk_accepted()
                accepted = True
                if timeline is not None and timeline.obs_tick == result.obs_tick:
                    timeline.start_s, timeline.end_s = result.start_s, result.end_s
                    timeline.stages_ms = result.timings_ms
                    self._executing = timeline  # its first command completes it (_account_command)
        if self.recorder is not None and result.observation is not None:
            self.recorder.add_inference(result.obs_tick, tick, result.latency_ms, accepted, result.observation,
                                        result.actions)

    def _read_frames(self, tick: int, now_s: float) -> dict[str, Frame] | None:
        stale_s = self.config.safety.stale_frame_s
        frames, stale = {}, []
        for rid, reader in self._readers.items():
            outcome = reader.latest()  # never waits: the camera is read on its own thread (camera_reader.py)
            if outcome.error is not None:
                stale.append(f"{rid}: read() raised {type(outcome.error).__name__}: {outcome.error}")
                continue
            if outcome.frame is None:
                stale.append(f"{rid}: no frame yet (read() running for {outcome.blocked_s * 1e3:.0f} ms)")
                continue
            age_s = now_s - outcome.frame.timestamp_s
            if age_s > stale_s:
                blocked = f"; read() blocked for {outcome.blocked_s * 1e3:.0f} ms" if outcome.blocked_s else ""
                stale.append(f"{rid} frame {outcome.frame.index} is {age_s * 1e3:.0f} ms old "
                             f"(stale_frame_s {stale_s}){blocked}")
            frames[rid] = outcome.frame
        if stale:
            self._fault(tick, "stale_frame", "; ".join(stale))
            return None
        self.faults.clear(tick, "stale_frame", "all cameras fresh again")
        return frames

    def _read_state(self, tick: int) -> np.ndarray | None:
        """The measured joint positions, or None (an arm_error fault) when the driver raised or reported
        something that is not a position. Recovery is decided when a command goes through (_send)."""
        try:
            reported = self.arm.read_state()
        except Exception as exc:  # noqa: BLE001 - any driver error is a fault and a hold, never an abort
            self._fault(tick, "arm_error", f"read_state raised {type(exc).__name__}: {exc}")
            return None
        state, reason = self.safety.check_state(reported)
        if reason is not None:
            self._fault(tick, "arm_error", reason)
        return state

    def _send(self, tick: int, command: np.ndarray) -> bool:
        """Command the arm; False (an arm_error fault) when the driver raised."""
        try:
            self.arm.command(command)
        except Exception as exc:  # noqa: BLE001 - any driver error is a fault and a hold, never an abort
            self._fault(tick, "arm_error", f"command raised {type(exc).__name__}: {exc}")
            return False
        self.last_command = command
        self.faults.clear(tick, "arm_error", "the arm answers again; holding where it is measured")
        return True

    # --- the run ------------------------------------------------------------------------------------
    def _start_hold(self) -> np.ndarray:
        """The first command: hold where the arm is measured. A state that is not a position refuses the start."""
        state, reason = self.safety.check_state(self.arm.read_state())
        if reason is not None:
            raise ArmError(f"cannot start: {reason}")
        return self.safety.hold_at(state)

    def run(self, duration_s: float | None = None, stop: threading.Event | None = None) -> LoopStats:
        # Start (and so restart after an e-stop, which latches for the run) from the measured position.
        self.last_command = self._start_hold()
        self.estop.arm()
        if self.estop.triggered:
            self.estop.disarm()
            raise SafetyError(f"e-stop is active before the start ({self.estop.reason}); clear it first")
        clock = Ratekeeper(self.config.rate_hz)
        # Every step below is undone whatever ends the run, even if the final hold or another step raises:
        # ExitStack runs the callbacks in reverse order and each one even after an earlier one failed.
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(self.estop.disarm)
            worker = start_inference(self.policy, self.config.inference, self.config.cpu_affinity.inference,
                                     self.config.cpu_affinity.loop)
            cleanup.callback(worker.stop)
            cleanup.callback(enter_realtime(self.config.realtime_priority, self._event))
            # Started after enter_realtime, so they inherit the loop thread's priority (a camera read is
            # part of the tick; at normal priority a loaded machine delayed reads past stale_frame_s).
            for rid, camera in self.cameras.items():
                self._readers[rid] = CameraReader(rid, camera, CAMERA_POLL_FRACTION * clock.period_s).start()
                cleanup.callback(self._readers[rid].stop)
            for reader in self._readers.values():  # so the first tick has frames; a camera that hangs is a fault
                reader.wait_first_read(self.config.safety.stale_frame_s)
            cleanup.callback(sys.setswitchinterval, sys.getswitchinterval())
            # The loop thread shares the GIL with the inference thread: make the handoff quick (default 5 ms).
            sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
            signals = TerminationSignals().install()
            cleanup.callback(signals.restore)
            gc_pacer = GcPacer().start(time.monotonic())  # collections between ticks, not inside one
            cleanup.callback(gc_pacer.stop)
            cleanup.callback(self._update_stats, clock)
            cleanup.callback(self._final_hold)  # runs first
            try:
                self._run_ticks(clock, worker, duration_s, stop, signals, gc_pacer)
            except KeyboardInterrupt:
                self.stats.stop_reason = "interrupted (Ctrl-C)"
            except BaseException as exc:
                self.stats.stop_reason = f"error: {type(exc).__name__}: {exc}"
                raise
        return self.stats

    def _run_ticks(self, clock: Ratekeeper, worker: InferenceWorker, duration_s: float | None,
                   stop: threading.Event | None, signals: TerminationSignals, gc_pacer: GcPacer) -> None:
        stats = self.stats
        start_s = clock.start()
        end_s = None if duration_s is None else start_s + duration_s
        next_status_s = start_s + STATUS_EVERY_S
        stats.stop_reason = "duration reached"
        while True:
            now = time.monotonic()
            if signals.received is not None:
                stats.stop_reason = f"interrupted ({signals.received})"
                return
            if stop is not None and stop.is_set():
                stats.stop_reason = "stopped by caller"
                return
            if end_s is not None and now >= end_s:
                return
            self._tick(self._tick_index, now, worker, clock)
            if self.on_status is not None and now >= next_status_s:
                next_status_s = now + STATUS_EVERY_S
                self._update_stats(clock)
                self.on_status(stats)
            if self._policy_errors >= MAX_CONSECUTIVE_POLICY_ERRORS:
                stats.stop_reason = f"policy failed {self._policy_errors} times in a row"
                return
            gc_pacer.after_tick(now)
            clock.keep_time()
            self._tick_index += 1

    def _final_hold(self) -> None:
        """Whatever ended the run, the last word to the arm is: hold. After an arm fault that is where the
        arm is measured now; if it cannot be read, nothing is sent (see _command_for)."""
        tick, command = self._tick_index, self.last_command
        if "arm_error" in self.faults.active:
            try:
                state, reason = self.safety.check_state(self.arm.read_state())
            except Exception as exc:  # noqa: BLE001 - reported; the cleanup after this must still run
                state, reason = None, f"read_state raised {type(exc).__name__}: {exc}"
            if state is None:
                self._event(tick, "arm_error", f"final hold not sent: the arm cannot be read ({reason})")
                return
            command = self.safety.hold_at(state)
        try:
            self.arm.command(command)
        except Exception as exc:  # noqa: BLE001 - reported; the cleanup after this must still run
            self._event(tick, "arm_error", f"final hold command failed: {type(exc).__name__}: {exc}")

    def _tick(self, tick: int, now: float, worker: InferenceWorker, clock: Ratekeeper) -> None:
        if self.estop.poll() and "estop" not in self.faults.active:
            self._fault(tick, "estop", self.estop.reason or "e-stop")
        state = self._read_state(tick)
        frames = self._read_frames(tick, now)
        # Lasting faults hold; one-off faults (bad chunk, timeout, policy error) cleared the strategy.
        can_move = not self.faults.active and state is not None and frames is not None
        self._infer(tick, now, worker, clock, frames, state, can_move)
        target = self._target(tick) if can_move else None
        command, status = self._command_for(target, state)
        if command is not None and not self._send(tick, command):
            status = "hold:" + ",".join(self.faults.hold_reasons())
        elif status == "run":
            self._account_command(time.monotonic())
        self._count(status)
        if self.recorder is not None:
            # How late this tick started: now minus the deadline that keep_time() waited for.
            late_ms = (now - (clock.deadline_s - clock.period_s)) * 1e3
            recorded = self.last_command if command is None else command
            self.recorder.add_tick(now, state, target if status == "run" else None, recorded, status, late_ms)

    def _infer(self, tick: int, now: float, worker: InferenceWorker, clock: Ratekeeper,
               frames: dict[str, Frame] | None, state: np.ndarray | None, can_move: bool) -> None:
        """Take in a finished chunk, watch the one in flight, and request the next when the strategy wants it."""
        timeout_s = self.config.safety.inference_timeout_s
        result = worker.poll()
        if result is not None:
            self._take_result(result, tick)
        if worker.busy and worker.started_s is not None and not self._timed_out_pending:
            waited_s = now - worker.started_s
            if waited_s > timeout_s:
                worker.mark_timed_out()
                self._timed_out_pending = True
                self._fault(tick, "inference_timeout", f"no chunk after {waited_s:.2f} s "
                            f"(inference_timeout_s {timeout_s})", lasting=False)
        # Not in the tick of a fault: this tick's observation predates it, so its chunk would be discarded.
        fresh = tick >= self._discard_before_tick
        if can_move and fresh and not self._timed_out_pending and self.strategy.want_inference(tick, worker.busy):
            self._requested = ChunkTimeline.of_frames(tick, frames.values(), time.monotonic())
            worker.submit(self._observation(frames, state), tick)
            if self.strategy.blocking:
                wait_s = clock.deadline_s - time.monotonic() - SYNC_WAIT_MARGIN_FRACTION * clock.period_s
                result = worker.wait(wait_s)
                if result is not None:
                    self._take_result(result, tick)

    def _account_command(self, command_s: float) -> None:
        """A row of the executing chunk went to the arm: its staleness; the chunk's first row ends its timeline."""
        executing = self._executing
        if executing is None:
            return
        if math.isnan(executing.command_s):  # this is its first row
            executing.command_s = command_s
            self.latency.add_chunk(executing)
        self.latency.add_row((command_s - executing.capture_s) * 1e3)

    def _target(self, tick: int) -> np.ndarray | None:
        was_exhausted = self.strategy.exhausted
        target = self.strategy.target(tick)
        if target is None and self.strategy.exhausted and not was_exhausted:
            self._event(tick, "chunk_exhausted", f"the last chunk ran out before the next arrived "
                        f"(inference p50 {self._latencies_ms.quantile(50):.0f} ms)")
        return target

    def _command_for(self, target: np.ndarray | None, state: np.ndarray | None) -> tuple[np.ndarray | None, str]:
        """This tick's command (None: send nothing) and its status (run / wait / hold:<reasons>)."""
        hold = "hold:" + ",".join(self.faults.hold_reasons())
        if state is None:
            # The arm cannot be read: send nothing. Re-sending the last command would reach a driver that
            # restarts (or an arm moved meanwhile) as a jump from wherever the arm is now; a position-
            # controlled arm that gets no command keeps its last target anyway.
            return None, hold
        if "arm_error" in self.faults.active:
            # The arm answers again: hold where it is measured, and the velocity clamp ramps from there.
            return self.safety.hold_at(state), hold
        if target is not None:
            return self.safety.limit(target, self.last_command), "run"
        return self.last_command, hold if self.faults.hold_reasons() else "wait"

    def _count(self, status: str) -> None:
        if status == "run":
            self.stats.executed_ticks += 1
        elif status == "wait":
            self.stats.waiting_ticks += 1
        else:
            self.stats.hold_ticks += 1

    def _update_stats(self, clock: Ratekeeper) -> None:
        s = self.stats
        s.ticks, s.duration_s = clock.frame, clock.elapsed_s
        errors_s = clock.period_error_s
        s.period_error_ms_p50, s.period_error_ms_p99 = errors_s.quantile(50) * 1e3, errors_s.quantile(99) * 1e3
        s.period_error_ms_max = errors_s.max * 1e3
        s.deadline_misses, s.skipped_ticks = clock.deadline_misses, clock.skipped_ticks
        s.inference_latency_ms_p50 = self._latencies_ms.quantile(50)
        s.inference_latency_ms_p99 = self._latencies_ms.quantile(99)
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


def run_loop(config: RobotConfig, policy, prompt: str, duration_s: float | None = None, *,
             arm: Arm | None = None, cameras: Mapping[str, Camera] | None = None, record_path: str | None = None,
             estop: EStop | None = None, on_status: Callable[[LoopStats], None] | None = None,
             stop: threading.Event | None = None,
             before_start: Callable[[Mapping[str, Camera]], None] | None = None) -> LoopStats:
    """Open what the config describes (unless given), run the loop, close what was opened.

    before_start(cameras): called once the cameras are open and before anything moves; an exception
    from it refuses the start (the CLI passes its startup check here).

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
            if before_start is not None:
                before_start(cameras)
            record_path = record_path or config.recording.path
            recorder = None
            if record_path:
                recorder = EpisodeRecorder(record_path, _episode_meta(config, policy, prompt), config.recording.frames)
            loop = None
            try:
                loop = ControlLoop(config, policy, prompt, arm, cameras, estop=estop or EStop.from_config(config.estop),
                                   recorder=recorder, on_status=on_status)
                return loop.run(duration_s, stop=stop)
            finally:
                if recorder is not None:  # also when the loop refused to start: the writer thread and file close
                    recorder.save(loop.stats.events if loop is not None else [])
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
