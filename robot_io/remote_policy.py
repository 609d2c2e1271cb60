"""A policy served over the network by `pi0edge serve` (docs/serving.md), for `pi0edge run` on a robot whose
model runs on another machine (docs/control_loop.md, "Remote policy").

It speaks the server's openpi protocol with the websockets sync client: the metadata frame on connect gives
the camera names, action horizon and robot dims the loop checks; each `infer` sends the observation in the
server's default map (`images` keyed by the bundle's camera names, `state`, `prompt`), msgpack-numpy encoded
as serve encodes it, and waits at most `timeout_s` for the actions.

Failures are exceptions the loop turns into a `policy_error` fault and a hold: a refused or dropped
connection, or no answer in time, raises PolicyUnavailableError (a transient: the loop keeps running and the
next `infer` reconnects, attempts spaced by RECONNECT_INTERVAL_S); an error frame from the server, a refused
API key or a server now serving another bundle raises RemotePolicyError. Used from one thread at a time
(the loop's inference thread).

Each request carries the loop's control deadline (`deadline_ms`, `control_deadline_ms`: by when the loop can
still use the chunk); a server too busy to meet it refuses the request at once, on an open connection, and
`infer` raises PolicyRefusedError, a transient like PolicyUnavailableError: the arm holds, the loop asks again.
"""

from __future__ import annotations

import math
import time

import numpy as np

from pi0edge.errors import ConfigError, require
from pi0edge.runtime.types import ActionChunk, Observation
from pi0edge.serve.msgpack_numpy import packb, unpackb

from .config import RobotConfig
from .errors import PolicyRefusedError, PolicyUnavailableError, RemotePolicyError

DEFAULT_TIMEOUT_S = 5.0
# A server that is down refuses at once: without spacing, the loop would retry (and log a fault) every tick.
RECONNECT_INTERVAL_S = 0.5
_sleep = time.sleep  # a module attribute, so the tests can see the waits between attempts
DEFAULT_MAP = "bundle"  # serve's map when started without --obs-map: the observation as Observation holds it
SHAPE_KEYS = ("cameras", "action_horizon", "action_dim", "state_dim")
DEADLINE_KEY = "deadline_ms"  # serve's name for it (pi0edge.serve.session.DEADLINE_KEY)


def control_deadline_ms(config: RobotConfig, action_horizon: int) -> float:
    """By when, from the request, the loop can still use the chunk (docs/control_loop.md, "Remote policy").

    sync: the arm holds until the chunk arrives, so the only limit is the loop's own wait (safety.
    inference_timeout_s) and the request's (policy.timeout_s). async / ensemble: the request goes out n_execute
    ticks into the current chunk, which runs out horizon - n_execute ticks later (at least one tick: the next
    one reads it); a later chunk would find the arm already holding. Never beyond the sync limit either."""
    limit_s = config.safety.inference_timeout_s
    if config.policy is not None:
        limit_s = min(limit_s, config.policy.timeout_s)
    if config.chunking.strategy == "sync":
        return limit_s * 1e3
    n_execute = config.chunking.resolved_n_execute(action_horizon)
    return min(limit_s, max(action_horizon - n_execute, 1) * config.period_s) * 1e3


class RemotePolicy:
    """`infer(Observation) -> ActionChunk` from a `pi0edge serve` server at `url` (ws://host:port).

    Connects in the constructor (the loop needs the dims before it starts): a server that cannot be
    reached or refuses the key fails here. key_source names where the key came from, for messages."""

    is_remote = True  # runs on the inference thread: the model is on the server, nothing to load in a process

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 key_source: str = "the API key"):
        require("websockets", "serve", "a remote policy (policy.remote)")
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"remote policy url: must start with ws:// or wss://, got {url!r}")
        if not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) or timeout_s <= 0:
            raise ConfigError(f"remote policy timeout_s: must be a number > 0, got {timeout_s!r}")
        self.url, self.api_key, self.timeout_s, self.key_source = url, api_key, float(timeout_s), key_source
        self.deadline_ms: float | None = None  # sent with each request when set (control_deadline_ms)
        self._ws = None
        self._last_attempt_s = -math.inf
        self.metadata: dict | None = None  # the first connection's; a reconnect must match its shape
        self.metadata = self._connect()
        self.camera_names = tuple(self.metadata["cameras"])
        self.action_horizon = int(self.metadata["action_horizon"])
        self.robot_state_dim = int(self.metadata["state_dim"])
        self.robot_action_dim = int(self.metadata["action_dim"])

    # --- connection ------------------------------------------------------------------------------------
    def _connect(self) -> dict:
        """Open the connection and read the metadata frame; -> the metadata."""
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
        from websockets.sync.client import connect

        self._last_attempt_s = time.monotonic()
        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key is not None else None
        try:
            ws = connect(self.url, additional_headers=headers, open_timeout=self.timeout_s, compression=None,
                         close_timeout=1.0)
        except InvalidURI as exc:
            raise ConfigError(f"remote policy url: {self.url!r} is not a websocket address ({exc})") from exc
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                given = "no API key was sent" if self.api_key is None else f"{self.key_source} was refused"
                raise RemotePolicyError(f"{self.url}: the server wants an API key and {given} (HTTP 401); set the "
                                        "key `pi0edge serve --api-key` was given (policy.api_key_env)") from exc
            raise RemotePolicyError(f"{self.url}: the server refused the connection (HTTP {status}): is it "
                                    "`pi0edge serve`?") from exc
        except (OSError, TimeoutError) as exc:
            raise PolicyUnavailableError(f"{self.url}: cannot connect: {type(exc).__name__}: {exc}") from exc
        except InvalidHandshake as exc:
            raise RemotePolicyError(f"{self.url}: not a websocket policy server: {exc}") from exc
        self._ws = ws
        try:
            metadata = self._receive("the metadata frame")
        except BaseException:
            self._drop()
            raise
        self._check_metadata(metadata)
        return metadata

    def _check_metadata(self, metadata) -> None:
        problem = self._metadata_problem(metadata)
        if problem is not None:
            self._drop()
            raise RemotePolicyError(f"{self.url}: {problem}")

    def _metadata_problem(self, metadata) -> str | None:
        """Why the server's metadata does not give the loop a policy it can drive (None: it does)."""
        missing = [k for k in SHAPE_KEYS if not isinstance(metadata, dict) or k not in metadata]
        if missing:
            return f"the server's metadata lacks {missing}: is it `pi0edge serve`?"
        shape = {k: metadata[k] for k in SHAPE_KEYS}
        dims = [metadata[k] for k in ("action_horizon", "action_dim", "state_dim")]
        cameras = metadata["cameras"]
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims) or not (
                isinstance(cameras, list) and all(isinstance(c, str) for c in cameras)):
            return f"the server's metadata {shape} is not a policy shape (camera names, positive dims)"
        if metadata.get("obs_map", DEFAULT_MAP) != DEFAULT_MAP:
            return (f"the server takes the {metadata['obs_map']!r} observation map; pi0edge run sends the "
                    "bundle's own: start `pi0edge serve` without --obs-map")
        if self.metadata is not None and any(self.metadata[k] != metadata[k] for k in SHAPE_KEYS):
            was = {k: self.metadata[k] for k in SHAPE_KEYS}
            return f"after reconnecting the server serves another policy shape {shape} (was {was}); restart the run"
        return None

    def _reconnect(self) -> None:
        wait_s = self._last_attempt_s + RECONNECT_INTERVAL_S - time.monotonic()
        if wait_s > 0:
            _sleep(wait_s)
        self._connect()

    def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- requests ---------------------------------------------------------------------------------------
    def _receive(self, what: str):
        """One frame -> the decoded object; an error frame, a timeout or a dropped connection raise."""
        from websockets.exceptions import ConnectionClosed

        try:
            frame = self._ws.recv(timeout=self.timeout_s)
        except TimeoutError as exc:
            self._drop()
            raise PolicyUnavailableError(f"{self.url}: no {what} within timeout_s {self.timeout_s:g} s; the next "
                                         "request reconnects") from exc
        except ConnectionClosed as exc:
            self._drop()
            raise PolicyUnavailableError(f"{self.url}: connection lost waiting for {what} ({exc}); the next "
                                         "request reconnects") from exc
        if isinstance(frame, str):  # the server's error message, then it closes the connection (1011)
            self._drop()
            raise RemotePolicyError(f"{self.url}: the server answered with an error: {frame.strip()}")
        try:
            return unpackb(frame)
        except Exception as exc:  # noqa: BLE001 - ObservationError names the decoding problem
            self._drop()
            raise RemotePolicyError(f"{self.url}: {what} is not msgpack-numpy: {exc}") from exc

    def infer(self, observation: Observation) -> ActionChunk:
        from websockets.exceptions import ConnectionClosed

        start = time.perf_counter()
        if self._ws is None:
            self._reconnect()
        message = {"images": dict(observation.images), "state": np.asarray(observation.state, dtype=np.float32),
                   "prompt": observation.prompt}
        if self.deadline_ms is not None:
            message[DEADLINE_KEY] = float(self.deadline_ms)
        try:
            self._ws.send(packb(message))
        except ConnectionClosed as exc:
            self._drop()
            raise PolicyUnavailableError(f"{self.url}: connection lost sending the observation ({exc}); the next "
                                         "request reconnects") from exc
        reply = self._receive("answer")
        if isinstance(reply, dict) and "error" in reply and "actions" not in reply:
            # serve's refusal of a deadline it cannot meet: load, not a fault; the connection stays open.
            raise PolicyRefusedError(f"{self.url}: the server refused the request: {reply['error']}")
        actions = reply.get("actions") if isinstance(reply, dict) else None
        shape = (self.action_horizon, self.robot_action_dim)
        if not isinstance(actions, np.ndarray) or actions.shape != shape:
            got = getattr(actions, "shape", type(actions).__name__)
            raise RemotePolicyError(f"{self.url}: the answer's actions are {got}, expected an array of shape {shape}")
        timings = {"total_ms": (time.perf_counter() - start) * 1e3}  # the round trip, as the loop sees it
        server_timing = reply.get("server_timing")
        if isinstance(server_timing, dict) and isinstance(server_timing.get("infer_ms"), (int, float)):
            timings["server_infer_ms"] = float(server_timing["infer_ms"])
        return ActionChunk(actions=actions.astype(np.float32), timings_ms=timings)
