"""Reference driver-side server for NetArm: wraps any Arm and answers the protocol of net_protocol.py.

    python -m pi0edge.robot_io.net_server --bind tcp://127.0.0.1:5555 --dof 6     # a simulated arm
    python -m pi0edge.robot_io.net_server --config robot.yaml                      # the YAML's arm

A real driver (ROS node, vendor SDK) replaces the wrapped Arm. It binds to localhost unless told
otherwise. If commands stop arriving the wrapped arm simply keeps its last target, i.e. holds.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time

from pi0edge.errors import require

from .arm_base import Arm
from .errors import ArmError, NetProtocolError
from .net_protocol import DEFAULT_ADDRESS, decode, encode, positions_field

log = logging.getLogger(__name__)


class ArmServer:
    """Serve `arm` on a ZeroMQ ROUTER socket. `serve_forever()` in the foreground, or `start()` a thread."""

    def __init__(self, arm: Arm, address: str = DEFAULT_ADDRESS):
        zmq = require("zmq", "net", "the network arm server")
        self.arm, self.address = arm, address
        self._zmq = zmq
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(address)
        self.bound_address = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()  # resolves a ":*" port
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_command_seq: dict[bytes, int] = {}
        # Fault injection for tests of the client: drop the next N replies / delay the next reply.
        self.drop_replies = 0
        self.delay_next_reply_s = 0.0
        self.requests = self.rejected_requests = self.stale_commands = 0

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
            identity, payload = self._sock.recv_multipart()
            reply = self._handle(identity, payload)
            if reply is None:
                continue
            if self.drop_replies > 0:
                self.drop_replies -= 1
                continue
            if self.delay_next_reply_s > 0:
                delay, self.delay_next_reply_s = self.delay_next_reply_s, 0.0
                time.sleep(delay)
            self._sock.send_multipart([identity, encode(reply)])

    def _handle(self, identity: bytes, payload: bytes) -> dict | None:
        self.requests += 1
        try:
            request = decode(payload, "request")
        except NetProtocolError as exc:
            self.rejected_requests += 1
            log.warning("arm server: rejected request: %s", exc)
            return {"seq": 0, "ok": False, "error": str(exc)}
        seq, op = request["seq"], request["op"]
        try:
            if op == "command":
                positions = positions_field(request, "positions", self.arm.dof)
                if seq <= self._last_command_seq.get(identity, -1):
                    # Arrived after a newer command: applying it would move the arm backwards.
                    self.stale_commands += 1
                    return {"seq": seq, "ok": False, "error": f"stale command seq {seq}"}
                self._last_command_seq[identity] = seq
                self.arm.command(positions)
            state = self.arm.read_state()
            reply = {"seq": seq, "ok": True, "state": [float(x) for x in state], "t_state_s": time.monotonic()}
            if op == "hello":
                limits = self.arm.limits
                reply.update(dof=self.arm.dof, lower=limits.lower.tolist(), upper=limits.upper.tolist(),
                             max_velocity_per_s=limits.max_velocity_per_s.tolist())
            return reply
        except (NetProtocolError, ArmError) as exc:
            self.rejected_requests += 1
            return {"seq": seq, "ok": False, "error": str(exc)}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._sock.close(linger=0)


def main(argv: list[str] | None = None) -> int:
    from .arms import open_arm

    parser = argparse.ArgumentParser(prog="python -m pi0edge.robot_io.net_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bind", default=DEFAULT_ADDRESS, help=f"ZeroMQ address to bind (default {DEFAULT_ADDRESS})")
    parser.add_argument("--config", help="robot YAML whose arm to serve (not a net arm)")
    parser.add_argument("--dof", type=int, default=6, help="joints of the simulated arm when no --config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.config:
        from .config import load_robot_config

        spec = load_robot_config(args.config).arm
        if spec["kind"] == "net":
            parser.error("--config: its arm is itself a net arm; serve the driver's arm instead")
    else:
        spec = {"kind": "sim", "dof": args.dof}
    arm = open_arm(spec)
    server = ArmServer(arm, args.bind)
    log.info("serving %s arm (%d joints) on %s; Ctrl-C to stop", spec["kind"], arm.dof, server.bound_address)
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
