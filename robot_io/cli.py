"""`pi0edge run` and `pi0edge replay`. Light to import: everything heavy is imported inside the commands."""

from __future__ import annotations

import argparse
import math
import sys
import time

from pi0edge.cli_args import non_empty_text, positive_float, writable_file


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="drive a robot from a robot YAML with a policy bundle",
                                description="Run the control loop: cameras + arm from --config, actions from "
                                            "--bundle or from the YAML's `policy: {remote: ws://...}` server.")
    run.add_argument("--config", required=True, help="robot YAML (see docs/control_loop.md)")
    run.add_argument("--bundle", default=None,
                     help="exported policy bundle directory (not with a `policy: remote` in --config)")
    run.add_argument("--prompt", required=True, type=non_empty_text, help="the task in plain text")
    run.add_argument("--backend", default="ort-cpu", help="inference backend (default ort-cpu)")
    run.add_argument("--duration-s", type=positive_float, default=None,
                     help="stop after this many seconds (default: Ctrl-C)")
    run.add_argument("--record", default=None, type=writable_file,
                     help="stream the episode to this file (e.g. run.episode)")
    run.add_argument("--no-status", action="store_true", help="no live status line")
    run.set_defaults(func=cmd_run)

    replay = subparsers.add_parser("replay", help="print a recorded episode, or play it back against an arm",
                                   description="Without --config: print the episode's summary. With --config: "
                                               "send its commands to that YAML's arm at the recorded rate.")
    replay.add_argument("episode", help="episode file written by `pi0edge run --record`")
    replay.add_argument("--config", default=None, help="robot YAML whose arm replays the commands")
    replay.add_argument("--speed", type=positive_float, default=1.0, help="playback speed factor (default 1.0)")
    replay.set_defaults(func=cmd_replay)


def _policy_source(args: argparse.Namespace, config) -> str:
    """'bundle' or 'remote': exactly one of --bundle and the YAML's policy.remote (errors name both)."""
    from .errors import ConfigError

    remote = config.policy.remote if config.policy is not None else None
    if args.bundle is not None and remote is not None:
        raise ConfigError(f"--bundle {args.bundle} and policy.remote {remote} in {args.config}: give one policy, "
                          "not both (drop --bundle, or the policy section)")
    if args.bundle is None and remote is None:
        raise ConfigError(f"no policy: give --bundle DIR, or `policy: {{remote: ws://host:port}}` in {args.config}")
    return "bundle" if args.bundle is not None else "remote"


def _remote_policy(config):
    from .remote_policy import RemotePolicy, control_deadline_ms

    spec = config.policy
    policy = RemotePolicy(spec.remote, api_key=spec.api_key(), timeout_s=spec.timeout_s,
                          key_source=f"the key in ${spec.api_key_env} (policy.api_key_env)")
    try:
        policy.deadline_ms = control_deadline_ms(config, policy.action_horizon)
    except BaseException:
        policy.close()
        raise
    return policy


def _load_policy(bundle: str, backend: str):
    # The bundle's manifest only: the model loads where inference runs (its own process by default).
    from .policy_spec import PolicyHandle, PolicySpec

    return PolicyHandle(PolicySpec(bundle, backend))


# Without a terminal (a service, `> run.log`) each status is a new line: one per this many seconds, not
# the loop's two per second.
LOG_STATUS_EVERY_S = 10.0


def _status_printer(stream=None, every_s: float = LOG_STATUS_EVERY_S, clock=time.monotonic):
    stream = stream or sys.stderr
    interactive = stream.isatty()
    next_s = [-math.inf]

    def show(stats) -> None:
        if interactive:
            stream.write("\r\033[K" + stats.status_line())  # redraw one line in place
        else:
            now = clock()
            if now < next_s[0]:
                return
            next_s[0] = now + every_s
            stream.write(stats.status_line() + "\n")
        stream.flush()

    return show, interactive


def startup_check(config, cameras) -> None:
    """Compare the configured camera with its calibration reference before anything moves.

    Here, in the application layer, because it wires calibration into the loop: robot_io's library
    modules do not import pi0edge.calibration (which itself reads robot_io's cameras).
    """
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
    import logging

    logging.getLogger(__name__).info("startup check: camera %r: %s", check.camera, result.message)


def cmd_run(args: argparse.Namespace) -> int:
    from functools import partial

    from .config import load_robot_config
    from .loop import run_loop

    config = load_robot_config(args.config)
    source = _policy_source(args, config)
    if config.arm["kind"] == "aloha":  # before the bundle loads: gym-aloha is only imported when the arm opens
        from pi0edge.errors import require_installed

        require_installed("gym_aloha", "sim", f"{args.config} (arm kind aloha)")
    policy = _load_policy(args.bundle, args.backend) if source == "bundle" else _remote_policy(config)
    show, interactive = _status_printer()
    try:
        stats = run_loop(config, policy, args.prompt, args.duration_s, record_path=args.record,
                         on_status=None if args.no_status else show, before_start=partial(startup_check, config))
    finally:
        if source == "remote":
            policy.close()
    if interactive and not args.no_status:
        sys.stderr.write("\n")
    print(stats.summary())
    if args.record or config.recording.path:
        print(f"episode written to {args.record or config.recording.path}")
    if stats.stop_reason.startswith("interrupted"):
        return 130
    return 1 if stats.stop_reason.startswith("policy failed") else 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .recording import load_episode

    episode = load_episode(args.episode)
    print(episode.summary())
    if args.config is None:
        return 0
    from .config import load_robot_config
    from .replay import replay_episode

    result = replay_episode(episode, load_robot_config(args.config), speed=args.speed)
    print(result.summary())
    return 130 if result.stop_reason.startswith("interrupted") else 0
