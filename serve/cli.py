"""`pi0edge serve`: light to import; the policy and the websockets server load when the command runs."""

from __future__ import annotations

import argparse
import os

from pi0edge.cli_args import non_negative_float, positive_float, positive_int

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
    ray = p.add_argument_group("scale-out on Ray Serve (pip install 'pi0edge[ray]'; docs/serving.md)")
    ray.add_argument("--ray", action="store_true",
                     help="serve as a Ray Serve application: one policy per replica, each connection pinned to one "
                          "(a local Ray instance, or the cluster RAY_ADDRESS names)")
    ray.add_argument("--replicas", type=positive_int, default=2, help="with --ray: replicas (default 2)")
    ray.add_argument("--cpus-per-replica", type=positive_float, default=1.0,
                     help="with --ray: Ray CPUs each replica reserves (default 1)")
    ray.add_argument("--gpus-per-replica", type=non_negative_float, default=0.0,
                     help="with --ray: Ray GPUs each replica reserves, e.g. 0.5 to share one (default 0)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from pi0edge.errors import require

    from .batching import BatchConfig
    from .session import ServeConfig

    require("websockets", "serve", "pi0edge serve")
    require("msgpack", "serve", "pi0edge serve")
    window_ms = args.batch_window_ms if args.max_batch > 1 else 0.0
    config = ServeConfig(host=args.host, port=args.port, api_key=args.api_key, seed=args.seed,
                         max_message_bytes=int(args.max_message_mib * 2**20),
                         batch=BatchConfig(max_batch=args.max_batch, window_ms=window_ms))

    def ready(port: int) -> None:
        print(f"pi0edge serve: ws://{args.host}:{port}", flush=True)

    return _serve_ray(args, config, ready) if args.ray else _serve(args, config, ready)


def _serve(args, config, ready) -> int:
    import asyncio

    from pi0edge.runtime.policy import Policy

    from .map_file import resolve_obs_map
    from .server import PolicyServer

    policy = Policy(args.bundle, args.backend, seed=args.seed)
    try:
        obs_map = resolve_obs_map(args.obs_map, policy.camera_names, policy.robot_state_dim,
                                  policy.robot_action_dim)
        asyncio.run(PolicyServer(policy, obs_map, config).serve(on_ready=ready))
    finally:
        policy.close()
    return 0


def _serve_ray(args, config, ready) -> int:
    from pathlib import Path

    from pi0edge.manifest import load_manifest

    from .map_file import resolve_obs_map
    from .ray_app import PolicySource, RayConfig, run

    # The replicas load the policy; here only the manifest, so a map that does not fit fails before Ray starts.
    m = load_manifest(args.bundle, verify_checksums=False)
    obs_map = resolve_obs_map(args.obs_map, tuple(m.cameras), m.robot_state_dim, m.robot_action_dim)
    source = PolicySource(str(Path(args.bundle).resolve()), obs_map, args.backend)
    run(source, config, RayConfig(replicas=args.replicas, cpus_per_replica=args.cpus_per_replica,
                                  gpus_per_replica=args.gpus_per_replica), on_ready=ready)
    return 0
