"""`pi0edge run`, `pi0edge check` and `pi0edge replay`. Light to import: everything heavy is imported inside
the commands."""

from __future__ import annotations

import argparse
import math
import sys
import time

from pi0edge.cli_args import non_empty_text, non_negative_int, positive_float, positive_int, writable_file


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

    check = subparsers.add_parser("check", help="check a robot YAML against a bundle and the live devices",
                                  description="Verify, without moving the arm, that the robot YAML binds every policy "
                                              "camera to a connected device, the joints to the policy's dims, and "
                                              "that statistics, tokenizer and the arm's state fit the bundle. Exit 0: "
                                              "passed; 2: a check failed (each failure names its field).")
    check.add_argument("robot", help="robot YAML (see docs/control_loop.md)")
    check.add_argument("bundle", nargs="?", default=None,
                       help="exported bundle directory (leave out for a `policy: remote` robot: devices only)")
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.set_defaults(func=cmd_check)

    replay = subparsers.add_parser("replay", help="print a recorded episode, play it back against an arm, or feed "
                                   "it through a bundle", description="Without --config: print the episode's summary. "
                                   "With --config: send its commands to that YAML's arm at the recorded rate. With "
                                   "--through BUNDLE: feed its frames and states through the bundle and compare the "
                                   "policy's actions with the recorded ones per action dim (MAE, max, correlation).")
    replay.add_argument("episode", help="episode file written by `pi0edge run --record`, or (--through) a "
                                        "LeRobotDataset v3 folder")
    replay.add_argument("--config", default=None, help="robot YAML whose arm replays the commands")
    replay.add_argument("--speed", type=positive_float, default=1.0, help="playback speed factor (default 1.0)")
    through = replay.add_argument_group("replay through a bundle")
    through.add_argument("--through", metavar="BUNDLE", default=None, help="the bundle to feed the episode through")
    through.add_argument("--backend", default="ort-cpu", help="inference backend (default ort-cpu)")
    through.add_argument("--seed", type=int, default=None,
                         help="the policy's noise seed (the run's seed reproduces its chunks exactly)")
    through.add_argument("--episode-index", type=non_negative_int, default=0, help="LeRobot dataset: the episode")
    through.add_argument("--camera", action="append", default=[], metavar="KEY=NAME",
                         help="LeRobot dataset: video key -> bundle camera (repeat; default: in order)")
    through.add_argument("--prompt", type=non_empty_text, default=None, help="instead of the recorded task")
    through.add_argument("--stride", type=positive_int, default=1, help="feed every N-th sample (default 1)")
    through.add_argument("--plot", metavar="PNG", type=writable_file, help="recorded vs policy per action dim")
    through.add_argument("--json", metavar="F", nargs="?", const="-", type=writable_file,
                         help="the per-dim table as JSON: to stdout instead of the table, or written to F")
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
    from .remote_policy import RemotePolicy

    spec = config.policy
    return RemotePolicy(spec.remote, api_key=spec.api_key(), timeout_s=spec.timeout_s,
                        key_source=f"the key in ${spec.api_key_env} (policy.api_key_env)")


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


def _read_start_state(config, manifest, arm, report) -> None:
    """The arm's state against the bundle's statistics (contract_check.py); reads, never commands."""
    from .contract_check import check_start_state

    try:
        state = arm.read_state()
    except Exception as exc:  # noqa: BLE001 - any driver error is reported as the check's failure
        report.add("arm", "fail", f"read_state raised {type(exc).__name__}: {exc}")
        return
    check_start_state(config, manifest, state, report)


def cmd_check(args: argparse.Namespace) -> int:
    import json

    from pi0edge.errors import Pi0EdgeError

    from .arms import open_arm
    from .config import load_robot_config
    from .contract_check import CheckReport, check_binding

    report = CheckReport()
    try:
        config = load_robot_config(args.robot)
    except Pi0EdgeError as exc:
        report.add("robot YAML", "fail", str(exc))
        config = None
    if config is not None:
        _, manifest = check_binding(config, args.bundle, report=report)
        try:
            arm = open_arm(config.arm)
        except Exception as exc:  # noqa: BLE001 - a driver that cannot open is the check's failure, with its reason
            report.add("arm", "fail", f"cannot open the {config.arm['kind']} arm: {type(exc).__name__}: {exc}")
        else:
            try:
                if manifest is not None:
                    _read_start_state(config, manifest, arm, report)
            finally:
                arm.close()
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    return 0 if report.ok else 2


class _Refused(Exception):
    """`pi0edge run` refused by the deployment check; the report is already printed."""


def _refuse_unless(report) -> None:
    if not report.ok:
        print(report.table(), file=sys.stderr)
        raise _Refused(report.refusal())
    import logging

    unknown = [f.field for f in report.findings if f.status == "unknown"]
    logging.getLogger(__name__).info("deployment check passed%s", f"; not compared: {', '.join(unknown)}"
                                     if unknown else "")


def cmd_run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except _Refused as exc:
        print(f"pi0edge run: refused by the deployment check (pi0edge check): {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from functools import partial

    from .arms import open_arm
    from .config import load_robot_config
    from .contract_check import check_binding
    from .loop import run_loop

    config = load_robot_config(args.config)
    source = _policy_source(args, config)
    if config.arm["kind"] == "aloha":  # before the bundle loads: gym-aloha is only imported when the arm opens
        from pi0edge.errors import require_installed

        require_installed("gym_aloha", "sim", f"{args.config} (arm kind aloha)")
    report, manifest = check_binding(config, args.bundle)  # before the arm opens
    _refuse_unless(report)
    policy = _load_policy(args.bundle, args.backend) if source == "bundle" else _remote_policy(config)
    show, interactive = _status_printer()
    arm = open_arm(config.arm)
    try:
        if manifest is not None:
            _read_start_state(config, manifest, arm, report)
            _refuse_unless(report)
        stats = run_loop(config, policy, args.prompt, args.duration_s, arm=arm, record_path=args.record,
                         on_status=None if args.no_status else show, before_start=partial(startup_check, config))
    finally:
        arm.close()
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
    if args.through is not None:
        return cmd_replay_through(args)
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


def _camera_map(pairs: list[str]) -> dict[str, str] | None:
    from pi0edge.errors import ConfigError

    if not pairs:
        return None
    bad = [p for p in pairs if p.count("=") != 1 or not all(p.split("="))]
    if bad:
        raise ConfigError(f"--camera {bad[0]!r}: expected KEY=NAME, e.g. observation.images.top=base_0_rgb")
    return dict(p.split("=") for p in pairs)


def cmd_replay_through(args: argparse.Namespace) -> int:
    import json

    from pi0edge.atomic import write_text_atomic
    from pi0edge.runtime import Policy

    from .lerobot_v3 import is_lerobot_v3
    from .recording import load_episode
    from .replay_through import replay_through, samples_from_episode, samples_from_lerobot

    with Policy(args.through, backend=args.backend, seed=args.seed) as policy:
        if is_lerobot_v3(args.episode):
            samples = samples_from_lerobot(args.episode, policy, args.episode_index, _camera_map(args.camera),
                                           args.prompt)
        else:
            samples = samples_from_episode(load_episode(args.episode), args.prompt)
        result = replay_through(policy, samples, args.stride)
    if args.json == "-":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.table())
    if args.json not in (None, "-"):
        from pathlib import Path

        write_text_atomic(Path(args.json), json.dumps(result.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        result.plot(args.plot)
        print(f"wrote {args.plot}", file=sys.stderr if args.json == "-" else sys.stdout)
    return 0
