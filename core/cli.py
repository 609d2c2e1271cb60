"""The `pi0edge` command. Each stage registers its own subcommands; heavy imports happen only when
a subcommand runs, so `pi0edge --help` works on a robot computer without torch."""

from __future__ import annotations

import argparse
import logging
import sys

from pi0edge.errors import Pi0EdgeError

# Each module's register(sub) adds its subcommands with set_defaults(func=...).
_REGISTRARS = (
    "pi0edge.export.cli",
    "pi0edge.runtime.cli",
    "pi0edge.robot_io.cli",
    "pi0edge.calibration.cli",
    "pi0edge.serve.cli",
    "pi0edge.demo",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="pi0edge", description="Run Pi0 / Pi0.5 robot policies onboard: export a "
                                     "checkpoint, build engines, profile, run the control loop, calibrate cameras.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _REGISTRARS:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Pi0EdgeError as exc:
        print(f"pi0edge {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pi0edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
