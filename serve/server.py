"""The websocket server (the `websockets` library) speaking openpi's policy protocol (openpi
src/openpi/serving/websocket_policy_server.py, docs/serving.md) through session.py:

- after the handshake the server sends the metadata (one msgpack-numpy frame), then answers each frame;
- an error is sent as a text frame, then the connection is closed with code 1011 (the client raises it);
- `GET /healthz` is answered 200; with an API key, a handshake without `Authorization: Api-Key <key>` gets 401.
"""

from __future__ import annotations

import asyncio
import http
import logging

from pi0edge.errors import ConfigError, require
from pi0edge.net import is_loopback_host

from .obs_map import ObsMap
from .session import HEALTH_PATH, PolicyService, ServeConfig

__all__ = ["PolicyServer", "ServeConfig"]

log = logging.getLogger(__name__)


class PolicyServer:
    def __init__(self, policy, obs_map: ObsMap, config: ServeConfig | None = None):
        self.config = config = config if config is not None else ServeConfig()
        self.service = PolicyService(policy, obs_map, config)
        self.port: int | None = None

    async def serve(self, stop: asyncio.Event | None = None, on_ready=None) -> None:
        """Serve until `stop` is set (or forever); on_ready(port) once listening."""
        require("websockets", "serve", "pi0edge serve")
        from websockets.asyncio.server import serve

        shared, metadata = self.service.shared, self.service.metadata
        shared.start()
        try:
            async with await self._listen(serve) as server:
                self.port = server.sockets[0].getsockname()[1]
                log.info("serving %s on ws://%s:%d (obs map %s)", metadata["bundle"], self.config.host,
                         self.port, metadata["obs_map"])
                if self.config.api_key is None and not is_loopback_host(self.config.host):
                    log.warning("listening on %s without an API key: anyone who reaches this port drives the "
                                "policy (--api-key)", self.config.host)
                if on_ready is not None:
                    on_ready(self.port)
                await (stop.wait() if stop is not None else asyncio.Future())
        finally:
            await shared.close()

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
        if not self.service.authorized(request.headers.get("Authorization")):
            log.warning("refused %s: missing or wrong API key", connection.remote_address)
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong Authorization: Api-Key\n")
        return None  # go on with the websocket handshake

    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        log.info("connection from %s", ws.remote_address)
        try:  # websockets' send takes bytes (binary frame) and str (text frame) alike
            await self.service.session().converse(ws, ws.send, ws.send, ws.close, ws.remote_address)
        except ConnectionClosed:
            pass
        log.info("connection from %s closed", ws.remote_address)
