"""What `pi0edge serve` adds to a chunk's latency, and what batching several clients buys.

    python benchmarks/serve_overhead.py --config tiny --iters 50 --clients 2

A random pi0 checkpoint of the config (seed 0) is exported with `pi0edge export`'s defaults; then, on ort-cpu:
1. `Policy.infer` called directly, `--iters` times (one observation: 2 cameras 224x224, a 20-token prompt);
2. the same observations through an openpi `WebsocketClientPolicy` to a `PolicyServer` on loopback: the
   round trip (encode, send, decode, queue, infer, answer) per chunk;
3. `--clients` clients at once, each `--iters` requests, without and with `--max-batch clients`: chunks/s.
Prints a markdown table and a JSON record. Needs the `export` and `serve` extras and openpi_client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from pi0edge.runtime.policy import Policy
from pi0edge.runtime.types import Observation
from pi0edge.serve.batching import BatchConfig
from pi0edge.serve.map_file import resolve_obs_map
from pi0edge.serve.server import PolicyServer, ServeConfig


def make_bundle(config: str, out: Path) -> Path:
    from pi0edge.export.bundle import export_bundle
    from pi0edge.export.config import PRESETS
    from pi0edge.export.random_checkpoint import write_random_checkpoint

    checkpoint = write_random_checkpoint(out / "checkpoint", PRESETS[config]("pi0"), seed=0)
    export_bundle(checkpoint, out / "bundle")
    return out / "bundle"


def observation(policy, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    images = {name: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for name in policy.camera_names[:2]}
    return {"images": images, "state": rng.standard_normal(policy.robot_state_dim),
            "prompt": "pick up the red cube and place it in the blue bowl on the left side of the table"}


def start_server(bundle: Path, batch: BatchConfig):
    policy = Policy(bundle, "ort-cpu")
    server = PolicyServer(policy, resolve_obs_map(None, policy.camera_names, policy.robot_state_dim,
                                                  policy.robot_action_dim),
                          ServeConfig(port=0, seed=0, batch=batch))
    ready, handle = threading.Event(), []

    async def main():
        handle.append((asyncio.get_running_loop(), asyncio.Event()))
        await server.serve(handle[0][1], on_ready=lambda port: ready.set())

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    ready.wait(timeout=120)

    def stop():
        handle[0][0].call_soon_threadsafe(handle[0][1].set)
        thread.join(timeout=60)
        policy.close()

    return server, stop


def quantiles_ms(samples: list[float]) -> dict:
    return {"p50": float(np.percentile(samples, 50)), "p95": float(np.percentile(samples, 95))}


def direct(policy, observations) -> list[float]:
    times = []
    for obs in observations:
        t0 = time.perf_counter()
        policy.infer(Observation(obs["images"], obs["state"], obs["prompt"]))
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def served(port: int, observations) -> list[float]:
    client = WebsocketClientPolicy("127.0.0.1", port)
    times = []
    for obs in observations:
        t0 = time.perf_counter()
        client.infer(obs)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def throughput(bundle: Path, observations, clients: int, max_batch: int) -> float:
    """Chunks per second with `clients` clients sending back to back."""
    server, stop = start_server(bundle, BatchConfig(max_batch=max_batch, window_ms=2.0 if max_batch > 1 else 0.0))
    try:
        threads = [threading.Thread(target=served, args=(server.port, observations)) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return clients * len(observations) / (time.perf_counter() - t0)
    finally:
        stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=("tiny", "mid"))
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(args.config, Path(tmp))
        with Policy(bundle, "ort-cpu") as policy:
            observations = [observation(policy, i) for i in range(args.iters)]
            direct(policy, observations[:3])  # warm-up
            direct_ms = quantiles_ms(direct(policy, observations))
        server, stop = start_server(bundle, BatchConfig())
        try:
            served(server.port, observations[:3])
            served_ms = quantiles_ms(served(server.port, observations))
        finally:
            stop()
        alone = throughput(bundle, observations, args.clients, 1)
        batched = throughput(bundle, observations, args.clients, args.clients)
    print("| config | direct p50 / p95 ms | served p50 / p95 ms | overhead p50 ms | "
          f"{args.clients} clients, unbatched chunks/s | batched chunks/s |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.config} | {direct_ms['p50']:.1f} / {direct_ms['p95']:.1f} | {served_ms['p50']:.1f} / "
          f"{served_ms['p95']:.1f} | {served_ms['p50'] - direct_ms['p50']:.1f} | {alone:.1f} | {batched:.1f} |")
    print(json.dumps({"config": args.config, "iters": args.iters, "clients": args.clients, "direct_ms": direct_ms,
                      "served_ms": served_ms, "unbatched_chunks_per_s": alone, "batched_chunks_per_s": batched}))


if __name__ == "__main__":
    main()
