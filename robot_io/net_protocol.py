"""Wire format between NetArm (the loop's side) and ArmServer (the driver's side).

Transport: ZeroMQ, the client a DEALER and the server a ROUTER, so a lost reply never wedges the
socket (as REQ/REP's strict alternation would) and late replies can be recognised and dropped.
Payload: one msgpack map per message, all numbers plain floats/ints (no numpy on the wire).

Request  {"v": 1, "seq": n, "op": "hello" | "state" | "command", "positions": [...] (command only)}
Reply    {"v": 1, "seq": n, "ok": true, "state": [...], "t_state_s": server monotonic time of the state}
         hello adds "dof", "lower", "upper", "max_velocity_per_s";  on failure {"ok": false, "error": "..."}

`seq` increases by one per request; a reply whose seq is not the one awaited is late (earlier
request) or foreign, and is counted and dropped. The server applies a command only if its seq is
newer than the last one applied for that client, so a delayed command can never move the arm back.
"""

from __future__ import annotations

import math

from .errors import NetProtocolError

PROTOCOL_VERSION = 1
OPS = ("hello", "state", "command")
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"  # localhost unless configured otherwise


def _msgpack():
    from pi0edge.errors import require

    return require("msgpack", "net", "the network arm")


def encode(message: dict) -> bytes:
    return _msgpack().packb({"v": PROTOCOL_VERSION, **message}, use_bin_type=True)


def decode(payload: bytes, expect: str) -> dict:
    """Decode and check the envelope. `expect` is "request" or "reply" (for the error messages)."""
    msgpack = _msgpack()
    try:
        message = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # whatever bytes a peer sends
        raise NetProtocolError(f"{expect}: not a msgpack message ({len(payload)} bytes): {exc}") from exc
    if not isinstance(message, dict):
        raise NetProtocolError(f"{expect}: expected a map, got {type(message).__name__}")
    version = message.get("v")
    if version != PROTOCOL_VERSION:
        raise NetProtocolError(f"{expect}: protocol version {version!r}, this side speaks {PROTOCOL_VERSION}")
    seq = message.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise NetProtocolError(f"{expect}: field seq must be a non-negative integer, got {seq!r}")
    if expect == "request" and message.get("op") not in OPS:
        raise NetProtocolError(f"request: field op must be one of {OPS}, got {message.get('op')!r}")
    return message


def positions_field(message: dict, key: str, dof: int) -> list[float]:
    """A list of `dof` finite numbers, or NetProtocolError naming the field."""
    value = message.get(key)
    if not isinstance(value, list) or len(value) != dof:
        raise NetProtocolError(f"field {key} must be a list of {dof} numbers, got {value!r}")
    out = []
    for v in value:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise NetProtocolError(f"field {key} must hold finite numbers, got {value!r}")
        out.append(float(v))
    return out
