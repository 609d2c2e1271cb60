"""`pi0edge serve`: light to import; the policy and the websockets server load when the command runs."""

from __future__ import annotations

import argparse
import os

from pi0edge.cli_args import positive_float, positive_int

API_KEY_ENV = "PI0EDGE_API_KEY"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {text!r}")
    return port


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve a bundle to openpi clients over a websocket",
                              description="An openpi-compatible policy server: an unmodified openpi_client "
                                          "WebsocketClientPolicy connects to it (docs/serving.md).")
    p.add_argument("bundle", help="exported policy bundle directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0: any free port)")
    p.add_argument("--backend", default="auto", help="inference backend (default auto)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                   help=f"require `Authorization: Api-Key KEY` on every connection (default: ${API_KEY_ENV}; the "
                        "variable keeps the key out of the process list)")
    p.add_argument("--obs-map", default=None, metavar="aloha|droid|libero|FILE.yaml",
                   help="the clients' observation keys (default: the bundle's camera names, `state`, `prompt`)")
    p.add_argument("--seed", type=int, default=None, help="seed of the per-connection noise (default: random)")
    p.add_argument("--max-batch", type=positive_int, default=1,
                   help="run up to this many clients' requests as one batch (default 1: no batching)")
    p.add_argument("--batch-window-ms", type=positive_float, default=2.0,
                   help="how long a request waits for others to join its batch (default 2 ms)")
    p.add_argument("--max-message-mib", type=positive_float, default=64.0,
                   help="largest observation frame accepted; a bigger one closes its connection (default 64 MiB)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import asyncio

    from pi0edge.errors import require
    from pi0edge.runtime.policy import Policy

    from .batching import BatchConfig
    from .map_file import resolve_obs_map
    from .server import PolicyServer, ServeConfig

    require("websockets", "serve", "pi0edge serve")
    require("msgpack", "serve", "pi0edge serve")
    policy = Policy(args.bundle, args.backend, seed=args.seed)
    try:
        obs_map = resolve_obs_map(args.obs_map, policy.camera_names, policy.robot_state_dim,
                                  policy.robot_action_dim)
        window_ms = args.batch_window_ms if args.max_batch > 1 else 0.0
        config = ServeConfig(host=args.host, port=args.port, api_key=args.api_key, seed=args.seed,
                             max_message_bytes=int(args.max_message_mib * 2**20),
                             batch=BatchConfig(max_batch=args.max_batch, window_ms=window_ms))
        server = PolicyServer(policy, obs_map, config)
        asyncio.run(server.serve(on_ready=lambda port: print(f"pi0edge serve: ws://{args.host}:{port}", flush=True)))
    finally:
        policy.close()
    return 0
