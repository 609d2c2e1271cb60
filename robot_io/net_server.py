"""Reference driver-side server for NetArm: wraps any Arm and answers the protocol of net_protocol.py.

    python -m pi0edge.robot_io.net_server --dof 6                          # a simulated arm on 127.0.0.1:5555
    python -m pi0edge.robot_io.net_server --config robot.yaml              # the YAML's arm
    python -m pi0edge.robot_io.net_server --make-keys keys/                # a CURVE server + client key pair
    python -m pi0edge.robot_io.net_server --bind tcp://0.0.0.0:5555 --keys keys/   # reachable, authenticated

A real driver (ROS node, vendor SDK) replaces the wrapped Arm. It binds to localhost unless told
otherwise, and refuses a non-loopback address without CURVE keys unless --allow-unauthenticated.
Whatever arrives (malformed, out of bounds, or a driver that raises) gets an error reply where one is
possible and is counted in `rejected_requests`; the server keeps serving. If commands stop arriving
the wrapped arm simply keeps its last target, i.e. holds.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

import numpy as np

from pi0edge.cli_args import positive_int
from pi0edge.errors import ConfigError, Pi0EdgeError, require
from pi0edge.net import is_loopback_host

from .arm_base import Arm
from .errors import NetProtocolError
from .net_protocol import DEFAULT_ADDRESS, decode, encode, positions_field

log = logging.getLogger(__name__)


def is_local_address(address: str) -> bool:
    """True for addresses only this machine can reach: ipc://, inproc://, tcp on a loopback host."""
    transport, _, rest = address.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    return is_loopback_host(rest.rpartition(":")[0])


class _AllowedClients:
    """ZAP credentials check (pyzmq's ThreadAuthenticator): only the listed client public keys get in."""

    def __init__(self, public_keys: set[bytes]):
        self.public_keys = public_keys

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.public_keys
        if not allowed:
            log.warning("arm server: refused a client with an unknown CURVE key %s", key.decode(errors="replace"))
        return allowed


class ArmServer:
    """Serve `arm` on a ZeroMQ ROUTER socket. `serve_forever()` in the foreground, or `start()` a thread.

    curve_keys: (server secret key, allowed client public key), Z85 (net_keys.server_keys) to require
    CURVE; without them only a local address is bound unless allow_unauthenticated. A command is applied
    only inside the arm's limits and within max_velocity_per_s * (time since the last applied command +
    step_slack_s) of that command (of the current state for the first one); step_slack_s absorbs jitter.
    """

    def __init__(self, arm: Arm, address: str = DEFAULT_ADDRESS, curve_keys: tuple[bytes, bytes] | None = None,
                 allow_unauthenticated: bool = False, step_slack_s: float = 0.1):
        zmq = require("zmq", "net", "the network arm server")
        if curve_keys is None and not allow_unauthenticated and not is_local_address(address):
            raise ConfigError(f"refusing to serve the arm on {address} without authentication: anyone who can "
                              f"reach it could move the arm. Use --keys DIR (make them with --make-keys DIR), "
                              f"bind tcp://127.0.0.1, or pass --allow-unauthenticated on a trusted network")
        self.arm, self.address, self.step_slack_s = arm, address, float(step_slack_s)
        self._zmq = zmq
        self._ctx = zmq.Context()  # its own: a ZAP authenticator applies to a whole context
        self._auth = None
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve_keys is not None:
            self._require_curve(*curve_keys)
        try:
            self._sock.bind(address)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            self._ctx.term()
            raise ConfigError(f"cannot bind the arm server to {address}: {exc}") from exc
        self.bound_address = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()  # resolves a ":*" port
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_command_seq: dict[bytes, int] = {}
        self._last_applied: tuple[np.ndarray, float] | None = None  # (positions, monotonic time)
        # Fault injection for tests of the client: drop the next N replies / delay the next reply.
        self.drop_replies = 0
        self.delay_next_reply_s = 0.0
        self.requests = self.rejected_requests = self.stale_commands = 0

    def _require_curve(self, secret_key: bytes, client_public_key: bytes) -> None:
        zmq = self._zmq
        if not zmq.has("curve"):
            raise ConfigError("this libzmq has no CURVE support; install a pyzmq wheel built with libsodium")
        from zmq.auth.thread import ThreadAuthenticator

        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve_callback("*", _AllowedClients({client_public_key}))
        self._sock.curve_secretkey = secret_key
        self._sock.curve_publickey = zmq.curve_public(secret_key)
        self._sock.curve_server = True

    def start(self) -> ArmServer:
        self._thread = threading.Thread(target=self.serve_forever, name="arm-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        poller = self._zmq.Poller()
        poller.register(self._sock, self._zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            frames = self._sock.recv_multipart()
            try:
                reply = self._answer(frames)
                if reply is None:
                    continue
                if self.drop_replies > 0:
                    self.drop_replies -= 1
                    continue
                if self.delay_next_reply_s > 0:
                    delay, self.delay_next_reply_s = self.delay_next_reply_s, 0.0
                    time.sleep(delay)
                self._sock.send_multipart([frames[0], encode(reply)])
            except Exception:  # last resort: nothing a peer or the driver does may stop the server
                self.rejected_requests += 1
                log.exception("arm server: could not answer a request; serving on")

    def _refuse(self, seq: int, error: str) -> dict:
        self.rejected_requests += 1
        log.warning("arm server: rejected request: %s", error)
        return {"seq": seq, "ok": False, "error": error}

    def _answer(self, frames: list[bytes]) -> dict:
        """The reply to one ROUTER message: [client identity, payload frames...]."""
        self.requests += 1
        if len(frames) != 2:
            return self._refuse(0, f"request: expected 1 payload frame, got {len(frames) - 1}")
        identity, payload = frames
        try:
            request = decode(payload, "request")
        except NetProtocolError as exc:
            return self._refuse(0, str(exc))
        seq, op = request["seq"], request["op"]
        try:
            if op == "command":
                refusal = self._command(identity, seq, request)
                if refusal is not None:
                    return refusal
            state = self.arm.read_state()
            reply = {"seq": seq, "ok": True, "state": [float(x) for x in state], "t_state_s": time.monotonic()}
            if op == "hello":
                limits = self.arm.limits
                reply.update(dof=self.arm.dof, lower=limits.lower.tolist(), upper=limits.upper.tolist(),
                             max_velocity_per_s=limits.max_velocity_per_s.tolist())
            return reply
        except NetProtocolError as exc:
            return self._refuse(seq, str(exc))
        except Exception as exc:  # the driver's own failure: the client hears of it, the server lives on
            return self._refuse(seq, f"arm driver failed in {op}: {type(exc).__name__}: {exc}")

    def _command(self, identity: bytes, seq: int, request: dict) -> dict | None:
        """Apply a command request; -> an error reply, or None once applied."""
        positions = np.asarray(positions_field(request, "positions", self.arm.dof))
        if seq <= self._last_command_seq.get(identity, -1):
            # Arrived after a newer command: applying it would move the arm backwards.
            self.stale_commands += 1
            return {"seq": seq, "ok": False, "error": f"stale command seq {seq}"}
        now = time.monotonic()
        problem = self._out_of_bounds(positions, now)
        if problem is not None:
            return self._refuse(seq, problem)
        self.arm.command(positions)
        self._last_command_seq[identity] = seq
        self._last_applied = (positions, now)
        return None

    def _out_of_bounds(self, positions: np.ndarray, now: float) -> str | None:
        limits = self.arm.limits
        outside = np.flatnonzero((positions < limits.lower) | (positions > limits.upper))
        if outside.size:
            j = int(outside[0])
            return (f"command joint {j} = {float(positions[j])!r} is outside the arm's limits "
                    f"[{float(limits.lower[j])!r}, {float(limits.upper[j])!r}]; not applied")
        if self._last_applied is None:
            reference, since, elapsed_s = np.asarray(self.arm.read_state(), dtype=np.float64), "the state", 0.0
        else:
            reference, since, elapsed_s = self._last_applied[0], "the last command", now - self._last_applied[1]
        max_step = limits.max_velocity_per_s * (elapsed_s + self.step_slack_s)
        too_far = np.flatnonzero(np.abs(positions - reference) > max_step)
        if too_far.size:
            j = int(too_far[0])
            return (f"command joint {j} = {float(positions[j])!r} is {abs(positions[j] - reference[j]):.4g} from "
                    f"{since} {reference[j]:.4g}, more than the {max_step[j]:.4g} that max_velocity_per_s "
                    f"{limits.max_velocity_per_s[j]:.4g} allows in {elapsed_s + self.step_slack_s:.3g} s; not applied")
        return None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pi0edge.robot_io.net_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bind", default=DEFAULT_ADDRESS, help=f"ZeroMQ address to bind (default {DEFAULT_ADDRESS})")
    parser.add_argument("--config", help="robot YAML whose arm to serve (not a net arm)")
    parser.add_argument("--dof", type=positive_int, default=6, help="joints of the simulated arm when no --config")
    parser.add_argument("--keys", metavar="DIR", help="require CURVE: server.secret and client.public from DIR")
    parser.add_argument("--make-keys", metavar="DIR", help="write a server and a client key pair into DIR and exit")
    parser.add_argument("--allow-unauthenticated", action="store_true",
                        help="serve a non-loopback --bind without --keys (a trusted network only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .arms import open_arm
    from .net_keys import make_keys, server_keys

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.make_keys:
            for path in make_keys(args.make_keys).values():
                print(path)
            return 0
        if args.config:
            from .config import load_robot_config

            spec = load_robot_config(args.config).arm
            if spec["kind"] == "net":
                raise ConfigError("--config: its arm is itself a net arm; serve the driver's arm instead")
        else:
            spec = {"kind": "sim", "dof": args.dof}
        keys = server_keys(args.keys) if args.keys else None
        arm = open_arm(spec)
        try:
            server = ArmServer(arm, args.bind, curve_keys=keys, allow_unauthenticated=args.allow_unauthenticated)
        except BaseException:
            arm.close()
            raise
    except Pi0EdgeError as exc:
        print(f"net_server: error: {exc}", file=sys.stderr)
        return 1
    log.info("serving %s arm (%d joints) on %s%s; Ctrl-C to stop", spec["kind"], arm.dof, server.bound_address,
             " (CURVE)" if keys else "")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.close()
        arm.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
