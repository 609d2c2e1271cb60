"""`pi0edge serve --ray`: the same protocol (session.py) as a Ray Serve application (docs/serving.md,
"Scale-out on Ray Serve"). Each replica loads its own Policy; Ray Serve's proxy takes the websocket handshake
and pins the connection to one replica for its life, so a robot's requests, noise stream and
`prev_total_ms` stay on one replica. The ingress is FastAPI's WebSocket (Ray Serve's websocket support).

Ray, Ray Serve and FastAPI are imported only inside these functions: nothing else in pi0edge needs them. No
`from __future__ import annotations` here: FastAPI reads the handler's `WebSocket` annotation at run time, and
a string naming a class imported inside build_app would not resolve (the handshake would be refused).
"""

import logging
import math
import signal
import threading
from dataclasses import dataclass

from pi0edge.errors import ConfigError, require
from pi0edge.net import is_loopback_host

from .obs_map import ObsMap
from .session import HEALTH_PATH, MESSAGE_TOO_BIG, PolicyService, ServeConfig

log = logging.getLogger(__name__)

POLICY_DENIED = 1008  # websocket close code "policy violation": a handshake without the right API key
APP_NAME = "pi0edge"


@dataclass(frozen=True)
class RayConfig:
    replicas: int = 2
    cpus_per_replica: float = 1.0  # Ray's scheduling units, not a thread limit
    gpus_per_replica: float = 0.0  # e.g. 0.5: two replicas share one GPU
    route_prefix: str = "/"  # the websocket's path on the proxy (several apps on one proxy need their own)
    connections_per_replica: int = 256  # Ray's max_ongoing_requests: a websocket counts for its whole life


@dataclass(frozen=True)
class PolicySource:
    """What each replica loads: `Policy(bundle_dir, backend, seed=seed)`, served with `obs_map` (resolved and
    checked against the bundle by the driver: a map file is read once, where its path is meant)."""

    bundle_dir: str  # absolute: the replicas' working directory is Ray's
    obs_map: ObsMap
    backend: str = "auto"


def build_app(source: PolicySource, config: ServeConfig, ray_config: RayConfig, app_name: str = APP_NAME):
    """The Ray Serve application: one deployment of `ray_config.replicas` replicas, each a PolicyService."""
    require("ray.serve", "ray", "pi0edge serve --ray")
    from fastapi import FastAPI, WebSocket
    from fastapi.responses import PlainTextResponse
    from ray import serve

    app = FastAPI()

    @serve.deployment(name=app_name, num_replicas=ray_config.replicas,
                      max_ongoing_requests=ray_config.connections_per_replica,
                      ray_actor_options={"num_cpus": ray_config.cpus_per_replica,
                                         "num_gpus": ray_config.gpus_per_replica})
    @serve.ingress(app)
    class PolicyReplica:
        def __init__(self):
            self.service = load_service(source, config, serve.get_replica_context().replica_id.unique_id)
            self._started = False

        @app.get(HEALTH_PATH, response_class=PlainTextResponse)
        def healthz(self) -> str:
            return "OK\n"

        @app.websocket("/")
        async def connect(self, websocket: WebSocket) -> None:
            if not self._started:  # the shared policy's worker runs on the replica's event loop
                self.service.shared.start()
                self._started = True
            await serve_websocket(self.service, websocket, config.max_message_bytes)

        def __del__(self):
            self.service.policy.close()

    return PolicyReplica.bind()


def load_service(source: PolicySource, config: ServeConfig, replica: str):
    """In a replica: its Policy, the observation map checked against the bundle, the protocol around them."""
    from pi0edge.runtime.policy import Policy

    policy = Policy(source.bundle_dir, source.backend, seed=config.seed)
    log.info("replica %s serves %s (obs map %s)", replica, source.bundle_dir, source.obs_map.name)
    return PolicyService(policy, source.obs_map, config, replica=replica)


async def serve_websocket(service, websocket, max_message_bytes: int) -> None:
    """One connection over Starlette's WebSocket, as server.py's handler over the websockets library."""
    from starlette.websockets import WebSocketDisconnect

    peer = websocket.client
    if not service.authorized(websocket.headers.get("authorization")):
        log.warning("refused %s: missing or wrong API key", peer)
        await websocket.close(code=POLICY_DENIED)  # before accept: the client's handshake fails (HTTP 403)
        return
    await websocket.accept()
    try:
        await service.session().converse(_frames(websocket, max_message_bytes), websocket.send_bytes,
                                         websocket.send_text, websocket.close, peer)
    except WebSocketDisconnect:
        return


async def _frames(websocket, max_message_bytes: int):
    """The client's frames (bytes, or str for a text frame) until it disconnects; a frame over the limit closes
    the connection (1009), as the websockets library does for server.py."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        frame = message.get("bytes") if message.get("bytes") is not None else message.get("text", "")
        if len(frame) > max_message_bytes:
            await websocket.close(code=MESSAGE_TOO_BIG, reason=f"frame over {max_message_bytes} bytes")
            return
        yield frame


def run(source: PolicySource, config: ServeConfig, ray_config: RayConfig, on_ready=None) -> None:
    """Start (or join, with RAY_ADDRESS) Ray, deploy, and serve until SIGINT / SIGTERM."""
    require("ray.serve", "ray", "pi0edge serve --ray")
    import ray
    from ray import serve

    if config.port == 0:
        raise ConfigError("--port 0 with --ray: Ray Serve's proxy needs a port number (default 8000)")
    check_ray_config(ray_config)
    ray.init(include_dashboard=False)  # a local instance, or the cluster that RAY_ADDRESS names
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(build_app(source, config, ray_config), name=APP_NAME, route_prefix=ray_config.route_prefix)
        if config.api_key is None and not is_loopback_host(config.host):
            log.warning("listening on %s without an API key: anyone who reaches this port drives the policy "
                        "(--api-key)", config.host)
        if on_ready is not None:
            on_ready(config.port)
        _wait_for_stop_signal()
    finally:
        serve.shutdown()
        ray.shutdown()


def check_ray_config(ray_config: RayConfig) -> None:
    if not isinstance(ray_config.replicas, int) or ray_config.replicas < 1:
        raise ConfigError(f"--replicas must be an integer >= 1, got {ray_config.replicas!r}")
    for name in ("cpus_per_replica", "gpus_per_replica"):
        value = getattr(ray_config, name)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a number >= 0, got {value!r}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run as Ctrl-C does: Serve and the local Ray instance shut down


def _wait_for_stop_signal() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    threading.Event().wait()  # interrupted by SIGINT / SIGTERM
