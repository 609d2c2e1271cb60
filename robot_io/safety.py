"""The safety layer between the policy and the arm, and the e-stop.

Every tick the loop asks this layer for the command to send. Targets are clipped to the joint limits
and the step from the last command is clamped to the per-tick velocity limit, so even a wild but
finite chunk moves the arm only gently and never past a limit. Chunks with NaN/Inf or the wrong
shape are rejected whole, and so are arm states that cannot be positions. When the loop holds
(rejected chunk, stale camera, inference timeout, e-stop) it re-sends the last safe command. Each
fault is a SafetyEvent with a reason, kept in order.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass

import numpy as np

from pi0edge.errors import ConfigError

from .arm_base import ArmLimits
from .config import SafetyConfig

log = logging.getLogger(__name__)

COUNT_TOLERANCE = 1e-9  # arm units: below this a clip/clamp is rounding, not an event worth counting
# A reading beyond a joint's limits by more than this share of its range is a driver or sensor error
# (1e9, a unit mix-up), not a position: the arm cannot be there, and the policy never saw such a state.
STATE_MARGIN_FRACTION = 0.5


@dataclass(frozen=True)
class SafetyEvent:
    """kind: a short tag (nan_chunk, stale_frame, inference_timeout, estop, chunk_exhausted, arm_error,
    policy_error, ...); reason: a sentence for the user; tick: loop tick; time_s: time.monotonic()."""

    tick: int
    time_s: float
    kind: str
    reason: str


class SafetyLayer:
    """Limits are the tighter of the YAML's `safety` and the arm's own; all arrays have one value per joint."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, max_step_per_tick: np.ndarray):
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.max_step_per_tick = np.asarray(max_step_per_tick, dtype=np.float64)
        self.clipped_ticks = 0  # ticks where a target was outside the position limits
        self.clamped_ticks = 0  # ticks where a step exceeded the velocity limit

    @classmethod
    def from_config(cls, safety: SafetyConfig, arm_limits: ArmLimits, period_s: float) -> SafetyLayer:
        dof = arm_limits.dof
        lower = arm_limits.lower if safety.lower is None else np.maximum(safety.lower, arm_limits.lower)
        upper = arm_limits.upper if safety.upper is None else np.minimum(safety.upper, arm_limits.upper)
        if np.any(lower >= upper):
            raise ConfigError(f"safety.lower/upper: no room left inside the arm's own limits "
                              f"{arm_limits.lower.tolist()}..{arm_limits.upper.tolist()}")
        velocity = arm_limits.max_velocity_per_s
        if safety.max_velocity_per_s is not None:
            velocity = np.minimum(velocity, safety.max_velocity_per_s)
        step = velocity * period_s
        if safety.max_step_per_tick is not None:
            step = np.minimum(step, safety.max_step_per_tick)
        if step.shape != (dof,):
            raise ConfigError(f"safety: limits have {step.size} values, the arm has {dof} joints")
        return cls(lower, upper, step)

    def check_chunk(self, actions: np.ndarray, horizon: int, action_dim: int) -> str | None:
        """None when the chunk can be used, else the reason to reject it."""
        if not isinstance(actions, np.ndarray):
            return f"actions are a {type(actions).__name__}, not a numpy array"
        if actions.ndim == 3 and actions.shape[0] == 1:
            actions = actions[0]
        if actions.ndim != 2 or actions.shape != (horizon, action_dim):
            return f"actions have shape {actions.shape}, expected [{horizon}, {action_dim}]"
        bad = ~np.isfinite(actions)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            return f"{int(bad.sum())} NaN/Inf value(s) in action rows {rows[:5].tolist()}"
        return None

    def check_state(self, reported) -> tuple[np.ndarray | None, str | None]:
        """A state as the driver reported it -> (joint positions, None), or (None, the reason it is unusable)."""
        try:
            state = np.asarray(reported, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            return None, f"state is not a vector of numbers ({type(reported).__name__}: {exc})"
        dof = self.lower.size
        if state.shape != (dof,):
            return None, f"state has {state.size} values (shape {state.shape}), the arm has {dof} joints"
        if not np.all(np.isfinite(state)):
            return None, f"state is not finite: {state.tolist()}"
        margin = STATE_MARGIN_FRACTION * (self.upper - self.lower)
        far = np.nonzero((state < self.lower - margin) | (state > self.upper + margin))[0]
        if far.size:
            return None, (f"state {state.tolist()} is far outside the joint limits (joints {far.tolist()} beyond "
                          f"{self.lower[far].tolist()}..{self.upper[far].tolist()} by more than "
                          f"{STATE_MARGIN_FRACTION:.0%} of their range): a driver or sensor error")
        return state, None

    def hold_at(self, state: np.ndarray) -> np.ndarray:
        """The command that holds the arm where it is measured (inside the limits): the velocity clamp
        ramps from here at the start and after an arm fault, never from a command the arm did not follow."""
        return np.clip(state, self.lower, self.upper)

    def limit(self, target: np.ndarray, last_command: np.ndarray) -> np.ndarray:
        """The command that moves from `last_command` toward `target` without breaking any limit."""
        clipped = np.clip(target, self.lower, self.upper)
        if np.any(np.abs(clipped - target) > COUNT_TOLERANCE):
            self.clipped_ticks += 1
        step = clipped - last_command
        clamped = np.clip(step, -self.max_step_per_tick, self.max_step_per_tick)
        if np.any(np.abs(clamped - step) > COUNT_TOLERANCE):
            self.clamped_ticks += 1  # (a step exactly at the limit, give or take rounding, is not counted)
        return np.clip(last_command + clamped, self.lower, self.upper)


class EStop:
    """Latching e-stop from any of: a file that exists, a key on the controlling terminal, SIGUSR1.

    Once triggered it stays triggered for the rest of the run: resuming motion is a human decision
    (restart the command). `poll()` is called every tick and is cheap (one stat() for the file).
    """

    def __init__(self, file: str | None = None, key: str | None = None, use_signal: bool = True):
        self.file, self.key, self.use_signal = file, key, use_signal
        self._event = threading.Event()
        self.reason: str | None = None
        self.unavailable: list[str] = []  # sources that could not be armed (reported, not hidden)
        self._previous_handler = None
        self._key_thread: threading.Thread | None = None
        self._stop_keys = threading.Event()
        self._tty_state = None

    @classmethod
    def from_config(cls, cfg) -> EStop:
        return cls(file=cfg.file, key=cfg.key, use_signal=cfg.signal)

    def arm(self) -> EStop:
        """Install the sources. A file that already exists refuses the start: someone pressed stop."""
        if self.file and os.path.exists(self.file):
            self.trigger(f"e-stop file {self.file} exists")
        if self.use_signal:
            if threading.current_thread() is threading.main_thread():
                self._previous_handler = signal.signal(signal.SIGUSR1, self._on_signal)
            else:
                self.unavailable.append("SIGUSR1 (the loop is not in the main thread)")
        if self.key:
            if sys.stdin is not None and sys.stdin.isatty():
                self._start_key_thread()
            else:
                self.unavailable.append(f"key {self.key!r} (stdin is not a terminal)")
        for source in self.unavailable:
            # No terminal (a service, a pipe, a test run) is the normal case for the key, not a fault: info.
            level = logging.INFO if source.startswith("key ") else logging.WARNING
            log.log(level, "e-stop source unavailable: %s", source)
        return self

    def _on_signal(self, signum, frame) -> None:
        self.trigger("SIGUSR1 received")

    def _start_key_thread(self) -> None:
        import select
        import termios
        import tty

        fd = sys.stdin.fileno()
        self._tty_state = termios.tcgetattr(fd)
        tty.setcbreak(fd)  # keys arrive without Enter; output processing stays as it was

        def watch() -> None:
            while not self._stop_keys.is_set():
                ready, _, _ = select.select([fd], [], [], 0.1)
                if ready and os.read(fd, 1).decode(errors="replace") == self.key:
                    self.trigger(f"key {self.key!r} pressed")

        self._key_thread = threading.Thread(target=watch, name="estop-key", daemon=True)
        self._key_thread.start()

    def trigger(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def poll(self) -> bool:
        if not self._event.is_set() and self.file and os.path.exists(self.file):
            self.trigger(f"e-stop file {self.file} appeared")
        return self._event.is_set()

    @property
    def triggered(self) -> bool:
        return self._event.is_set()

    def disarm(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGUSR1, self._previous_handler)
            self._previous_handler = None
        self._stop_keys.set()
        if self._key_thread is not None:
            self._key_thread.join(timeout=1.0)
        if self._tty_state is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._tty_state)
            self._tty_state = None
