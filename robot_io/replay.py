"""Play a recorded episode's commands back against an arm, at the recorded rate, through the same
safety layer as the live loop (so a replay onto a robot with tighter limits stays inside them)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pi0edge.errors import ConfigError

from .arms import Arm, open_arm
from .clock import Ratekeeper
from .config import RobotConfig
from .errors import ArmError, SafetyError
from .recording import Episode
from .safety import EStop, SafetyLayer


@dataclass
class ReplayStats:
    ticks: int
    duration_s: float
    deadline_misses: int
    clipped_ticks: int
    clamped_ticks: int
    max_tracking_error: float  # max |arm state - recorded state| over joints and ticks (arm units)
    stop_reason: str
    truncated: bool = False  # the episode was cut short: only its intact part was replayed

    def summary(self) -> str:
        part = " (the intact part of a truncated episode)" if self.truncated else ""
        return (f"replay{part}: {self.ticks} ticks in {self.duration_s:.2f} s, deadline misses "
                f"{self.deadline_misses}, position clipped {self.clipped_ticks}, velocity clamped "
                f"{self.clamped_ticks}, max |state - recorded state| {self.max_tracking_error:.4f}; "
                f"stopped: {self.stop_reason}")


def replay_episode(episode: Episode, config: RobotConfig, arm: Arm | None = None, speed: float = 1.0,
                   estop: EStop | None = None) -> ReplayStats:
    commands = episode.commands
    if commands.ndim != 2 or commands.shape[1] != config.joints.dof:
        raise ConfigError(f"joints.names: the config has {config.joints.dof} joints, the episode "
                          f"{episode.path} commands {commands.shape[1] if commands.ndim == 2 else '?'}")
    if speed <= 0:
        raise ConfigError(f"--speed: must be > 0, got {speed!r}")
    own_arm = arm is None
    arm = open_arm(config.arm) if own_arm else arm
    estop = estop or EStop.from_config(config.estop)
    rate_hz = episode.rate_hz * speed
    try:
        if arm.dof != commands.shape[1]:
            raise ConfigError(f"arm: {arm.dof} joints, the episode commands {commands.shape[1]}")
        safety = SafetyLayer.from_config(config.safety, arm.limits, 1.0 / rate_hz)
        recorded_state = episode.arrays.get("tick_state")
        last = np.clip(arm.read_state(), safety.lower, safety.upper)
        clock = Ratekeeper(rate_hz)
        estop.arm()
        if estop.triggered:
            raise SafetyError(f"e-stop is active before the replay ({estop.reason}); clear it first")
        start = clock.start()
        max_error, stop_reason, tick = 0.0, "end of episode", 0
        try:
            for tick, target in enumerate(commands):
                if estop.poll():
                    stop_reason = f"e-stop: {estop.reason}"
                    break
                state = arm.read_state()
                if recorded_state is not None and np.all(np.isfinite(recorded_state[tick])):
                    max_error = max(max_error, float(np.max(np.abs(state - recorded_state[tick]))))
                last = safety.limit(target, last)
                arm.command(last)
                clock.keep_time()
        except KeyboardInterrupt:
            stop_reason = "interrupted (Ctrl-C)"
        finally:
            try:
                arm.command(last)  # end holding the last safe position
            except ArmError as exc:
                stop_reason += f"; final hold failed: {exc}"
            estop.disarm()
        return ReplayStats(clock.frame, time.monotonic() - start, clock.deadline_misses, safety.clipped_ticks,
                           safety.clamped_ticks, max_error, stop_reason, truncated=episode.truncated is not None)
    finally:
        if own_arm:
            arm.close()
