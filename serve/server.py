"""The websocket server, speaking openpi's policy protocol (openpi src/openpi/serving/websocket_policy_server.py,
docs/serving.md):

- after the handshake the server sends the metadata (one msgpack-numpy frame);
- each binary frame from the client is an observation dict; the answer is {"actions": [H, robot_action_dim],
  "policy_timing": {"infer_ms"}, "server_timing": {"infer_ms", "prev_total_ms"}};
- an error is sent as a text frame, then the connection is closed with code 1011 (the client raises it);
- pi0edge's extension: an optional `deadline_ms` in the observation dict; a deadline the server cannot meet is
  answered {"error", "deadline_ms", "estimate_ms"} and the connection stays open;
- `GET /healthz` is answered 200; with an API key, a handshake without `Authorization: Api-Key <key>` gets 401.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import math
import time
import traceback
from dataclasses import dataclass

import numpy as np

from pi0edge.errors import ConfigError, ObservationError, Pi0EdgeError, require
from pi0edge.net import is_loopback_host

from .batching import BatchConfig, DeadlineUnmeetable, SharedPolicy
from .msgpack_numpy import packb, unpackb
from .obs_map import ObsMap

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
INTERNAL_ERROR = 1011  # websockets.frames.CloseCode.INTERNAL_ERROR, as openpi closes on an error
DEADLINE_KEY = "deadline_ms"  # optional in an observation: from receipt, by when the client needs the answer


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (PolicyServer.port says which)
    api_key: str | None = None
    seed: int | None = None  # each connection's noise generator is spawned from this (None: fresh entropy)
    max_message_bytes: int = 64 * 2**20  # websockets max_size: a bigger frame closes that connection (1009)
    batch: BatchConfig = BatchConfig()


class PolicyServer:
    def __init__(self, policy, obs_map: ObsMap, config: ServeConfig = ServeConfig()):
        self.policy, self.obs_map, self.config = policy, obs_map, config
        self.shared = SharedPolicy(policy, config.batch)
        self._seeds = np.random.SeedSequence(config.seed)
        self.port: int | None = None
        m = policy.manifest
        self.metadata = {
            "server": "pi0edge", "bundle": m.bundle_dir.name,  # the folder's name: no server paths to clients
            "model_type": m.model_type,
            "precision": m.precision, "backend": policy.backend_name, "cameras": list(m.cameras),
            "obs_map": obs_map.name, "action_horizon": m.action_horizon, "action_dim": m.robot_action_dim,
            "state_dim": m.robot_state_dim, "observation_keys": list(obs_map.top_keys),
        }

    async def serve(self, stop: asyncio.Event | None = None, on_ready=None) -> None:
        """Serve until `stop` is set (or forever); on_ready(port) once listening."""
        require("websockets", "serve", "pi0edge serve")
        from websockets.asyncio.server import serve

        self.shared.start()
        try:
            async with await self._listen(serve) as server:
                self.port = server.sockets[0].getsockname()[1]
                log.info("serving %s on ws://%s:%d (obs map %s)", self.metadata["bundle"], self.config.host,
                         self.port, self.obs_map.name)
                if self.config.api_key is None and not is_loopback_host(self.config.host):
                    log.warning("listening on %s without an API key: anyone who reaches this port drives the "
                                "policy (--api-key)", self.config.host)
                if on_ready is not None:
                    on_ready(self.port)
                await (stop.wait() if stop is not None else asyncio.Future())
        finally:
            await self.shared.close()

    async def _listen(self, serve):
        host, port = self.config.host, self.config.port
        try:
            return await serve(self._handle, host, port, compression=None, max_size=self.config.max_message_bytes,
                               process_request=self._process_request)
        except OSError as exc:  # the port taken, an address this machine does not have
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (--host / --port; is "
                              "another server on that port?)") from exc

    def _process_request(self, connection, request):
        if request.path == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        key = self.config.api_key
        if key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {key}".encode()):
                log.warning("refused %s: missing or wrong API key", connection.remote_address)
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong Authorization: Api-Key\n")
        return None  # go on with the websocket handshake

    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        rng = np.random.default_rng(self._seeds.spawn(1)[0])  # this connection's own noise
        log.info("connection from %s", ws.remote_address)
        prev_total_ms = None
        try:
            await ws.send(packb(self.metadata))
            async for frame in ws:
                start = time.monotonic()
                try:
                    response = await self._answer(frame, rng)
                except DeadlineUnmeetable as exc:  # load, not a fault: the client may go on (docs/serving.md)
                    log.warning("refused for %s: %s", ws.remote_address, exc)
                    response = {"error": f"DeadlineUnmeetable: {exc}", "deadline_ms": exc.deadline_ms,
                                "estimate_ms": exc.needed_ms, "server_timing": {}}
                except Pi0EdgeError as exc:  # mostly bad input: the message says what is wrong, no stack trace
                    return await self._refuse(ws, f"{type(exc).__name__}: {exc}")
                except Exception:  # noqa: BLE001 - the server's fault: the traceback, as openpi sends it
                    log.exception("inference failed for %s", ws.remote_address)
                    return await self._refuse(ws, traceback.format_exc())
                if prev_total_ms is not None:
                    response["server_timing"]["prev_total_ms"] = prev_total_ms
                await ws.send(packb(response))
                prev_total_ms = (time.monotonic() - start) * 1e3
        except ConnectionClosed:
            pass
        log.info("connection from %s closed", ws.remote_address)

    async def _answer(self, frame, rng: np.random.Generator) -> dict:
        if isinstance(frame, str):
            raise ObservationError("expected a binary msgpack-numpy frame, got a text frame")
        message = unpackb(frame)
        deadline_ms = pop_deadline_ms(message)
        observation = self.obs_map.observation(message)
        m = self.policy.manifest
        noise = rng.standard_normal((m.action_horizon, m.action_dim), dtype=np.float32)
        start = time.monotonic()
        result = await self.shared.infer(observation, noise, deadline_ms)
        return {"actions": self.obs_map.actions(result.actions),
                "policy_timing": {"infer_ms": result.policy_ms},
                "server_timing": {"infer_ms": (time.monotonic() - start) * 1e3, "batch_size": result.batch_size}}

    async def _refuse(self, ws, message: str) -> None:
        from websockets.exceptions import ConnectionClosed

        log.warning("error for %s: %s", ws.remote_address, message.strip().splitlines()[-1])
        try:
            await ws.send(message)
            await ws.close(code=INTERNAL_ERROR, reason="error; the message is in the previous frame")
        except ConnectionClosed:
            pass


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
