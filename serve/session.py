"""openpi's policy protocol without its transport (docs/serving.md, "Protocol"): the metadata sent first, the
API key check, and per connection a `Session` that turns each frame from the client into the frame to send
back. The websockets server (server.py) and the Ray Serve ingress (ray_app.py) both run on it, so the
protocol exists once.

- each binary frame from the client is an observation dict; the answer is {"actions": [H, robot_action_dim],
  "policy_timing": {"infer_ms"}, "server_timing": {"infer_ms", "batch_size", "prev_total_ms"}};
- a fault is answered as a text frame, then the connection is closed with 1011 (`Session.converse`);
- pi0edge's extension: an optional `deadline_ms` in the observation dict; a deadline the server cannot meet is
  answered {"error", "deadline_ms", "estimate_ms"} and the connection stays open.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
import traceback
from dataclasses import dataclass

import numpy as np

from pi0edge.errors import ObservationError, Pi0EdgeError

from .batching import BatchConfig, DeadlineUnmeetable, SharedPolicy
from .msgpack_numpy import packb, unpackb
from .obs_map import ObsMap

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
INTERNAL_ERROR = 1011  # the close code after an error frame, as openpi closes on an error
MESSAGE_TOO_BIG = 1009  # the close code for a frame over max_message_bytes
ERROR_CLOSE_REASON = "error; the message is in the previous frame"
DEADLINE_KEY = "deadline_ms"  # optional in an observation: from receipt, by when the client needs the answer


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (PolicyServer.port says which)
    api_key: str | None = None
    seed: int | None = None  # each connection's noise generator is spawned from this (None: fresh entropy)
    max_message_bytes: int = 64 * 2**20  # a bigger frame closes its connection (1009)
    batch: BatchConfig = BatchConfig()


@dataclass(frozen=True)
class Reply:
    frame: bytes | None = None  # the msgpack-numpy answer; None when `error` is set
    error: str | None = None  # send as a text frame, then close the connection with INTERNAL_ERROR


class PolicyService:
    """One loaded policy behind the protocol, shared by every connection of one transport."""

    def __init__(self, policy, obs_map: ObsMap, config: ServeConfig = ServeConfig(), replica: str | None = None):
        self.policy, self.obs_map, self.config = policy, obs_map, config
        self.shared = SharedPolicy(policy, config.batch)
        self._seeds = np.random.SeedSequence(config.seed)
        m = policy.manifest
        self.metadata = {
            "server": "pi0edge", "bundle": m.bundle_dir.name,  # the folder's name: no server paths to clients
            "model_type": m.model_type,
            "precision": m.precision, "backend": policy.backend_name, "cameras": list(m.cameras),
            "obs_map": obs_map.name, "action_horizon": m.action_horizon, "action_dim": m.robot_action_dim,
            "state_dim": m.robot_state_dim, "observation_keys": list(obs_map.top_keys),
        }
        if replica is not None:  # Ray Serve: which replica this connection is pinned to
            self.metadata["replica"] = replica

    def authorized(self, authorization: str | None) -> bool:
        """The handshake's Authorization header against the key (always True without one); constant time."""
        if self.config.api_key is None:
            return True
        return hmac.compare_digest((authorization or "").encode(), f"Api-Key {self.config.api_key}".encode())

    def session(self) -> Session:
        """A new connection's state: its own noise generator, spawned in connection order."""
        return Session(self, np.random.default_rng(self._seeds.spawn(1)[0]))


class Session:
    def __init__(self, service: PolicyService, rng: np.random.Generator):
        self.service, self._rng = service, rng
        self._prev_total_ms: float | None = None  # the previous answer's time from receipt to sent, as openpi reports

    async def converse(self, frames, send_bytes, send_text, close, peer: object = None) -> None:
        """One connection's life over any transport: the metadata, then an answer to each frame of `frames` (an
        async iterable) until it ends or an error frame is sent and the connection closed (peer: for the log).
        The transport's own "connection closed" exception goes through to its handler."""
        await send_bytes(packb(self.service.metadata))
        async for frame in frames:
            received_s = time.monotonic()
            reply = await self._reply(frame, peer)
            if reply.error is not None:
                await send_text(reply.error)
                await close(code=INTERNAL_ERROR, reason=ERROR_CLOSE_REASON)
                return
            await send_bytes(reply.frame)
            self._prev_total_ms = (time.monotonic() - received_s) * 1e3

    async def _reply(self, frame: bytes | str, peer: object) -> Reply:
        """The answer to one frame from the client (peer: for the log)."""
        try:
            response = await self._answer(frame)
        except DeadlineUnmeetable as exc:  # load, not a fault: the client may go on (docs/serving.md)
            log.warning("refused for %s: %s", peer, exc)
            response = {"error": f"DeadlineUnmeetable: {exc}", "deadline_ms": exc.deadline_ms,
                        "estimate_ms": exc.needed_ms, "server_timing": {}}
        except Pi0EdgeError as exc:  # mostly bad input: the message says what is wrong, no stack trace
            return self._error(f"{type(exc).__name__}: {exc}", peer)
        except Exception:  # noqa: BLE001 - the server's fault: the traceback, as openpi sends it
            log.exception("inference failed for %s", peer)
            return self._error(traceback.format_exc(), peer)
        if self._prev_total_ms is not None:
            response["server_timing"]["prev_total_ms"] = self._prev_total_ms
        return Reply(frame=packb(response))

    @staticmethod
    def _error(message: str, peer: object) -> Reply:
        log.warning("error for %s: %s", peer, message.strip().splitlines()[-1])
        return Reply(error=message)

    async def _answer(self, frame: bytes | str) -> dict:
        if isinstance(frame, str):
            raise ObservationError("expected a binary msgpack-numpy frame, got a text frame")
        message = unpackb(frame)
        deadline_ms = pop_deadline_ms(message)
        service = self.service
        observation = service.obs_map.observation(message)
        m = service.policy.manifest
        noise = self._rng.standard_normal((m.action_horizon, m.action_dim), dtype=np.float32)
        start = time.monotonic()
        result = await service.shared.infer(observation, noise, deadline_ms)
        return {"actions": service.obs_map.actions(result.actions),
                "policy_timing": {"infer_ms": result.policy_ms},
                "server_timing": {"infer_ms": (time.monotonic() - start) * 1e3, "batch_size": result.batch_size}}


def pop_deadline_ms(message) -> float | None:
    """The optional deadline taken out of the client's dict (the policy never sees it); checked."""
    if not isinstance(message, dict) or DEADLINE_KEY not in message:
        return None
    value = message.pop(DEADLINE_KEY)
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ObservationError(f"{DEADLINE_KEY} must be a number of milliseconds, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ObservationError(f"{DEADLINE_KEY} must be finite and >= 0 (milliseconds from now), got {value:g}")
    return value
