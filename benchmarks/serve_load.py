"""`pi0edge serve` under a fleet of robots: throughput, latency and deadline misses, unbatched vs batched vs
Ray Serve with 2 replicas.

    python benchmarks/serve_load.py --config tiny --robots 1 4 16 64 --duration-s 20 --json load.json
    python benchmarks/serve_load.py --quick          # tiny, 1 and 4 robots, 1.5 s a cell

Robot model: each robot runs its control loop at --control-hz and executes --n-execute actions of every
chunk (defaults 50 Hz and 25 of a 50-action chunk: one request per 0.5 s per robot). When a robot starts a
chunk it asks for the next one, which it needs n_execute ticks later: that is the request's deadline. An
answer after it is a deadline miss; the robot then holds still until the answer arrives, starts that chunk
and asks again at once (so an overloaded server slows the fleet down instead of queueing without end).
Robots start at random phases (seeded) of the first period: a fleet is not synchronized.

Each cell starts `pi0edge serve BUNDLE --backend ort-cpu` as a subprocess: once with --max-batch 1 (every
request alone), once with --max-batch min(robots, --max-batch) and the server's default 2 ms window, and once
with `--ray --replicas N` (--ray-replicas, default 2; 0 leaves Ray out; each replica unbatched, on a local Ray
instance the server starts). The server's peak RSS is the sum of /proc/<pid>/status VmHWM over its process
tree (for Ray: the driver, Ray's own processes, the proxy and the replicas; pages shared between processes
count once per process, so it is an upper bound). The robots are asyncio tasks of this process,
each on its own websocket connection with serve's msgpack-numpy encoding; each cycles through a few
observations (2 cameras 224x224, a 20-token prompt) encoded once up front, so the clients' own CPU use stays
small beside the server's on the same machine. Before the clock starts every robot makes one warm-up request.

The bundle: a random pi0 checkpoint of --config (seed 0) exported with `pi0edge export`'s defaults (as
benchmarks/serve_overhead.py makes it), or --bundle. Needs the `export` extra (unless --bundle), the `serve`
extra (`ray` for the Ray cells) and openpi_client (imported by benchmarks/serve_overhead.py, whose bundle and
observation helpers this reuses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_overhead import make_bundle, observation  # noqa: E402

from pi0edge.atomic import write_text_atomic  # noqa: E402
from pi0edge.serve.msgpack_numpy import packb, unpackb  # noqa: E402

QUICK_DURATION_S = 1.5
QUICK_ROBOTS = (1, 4)
DISTINCT_OBSERVATIONS = 4
SERVER_START_TIMEOUT_S = 300.0
SERVER_STOP_TIMEOUT_S = 60.0  # Ray's shutdown takes seconds


@dataclass(frozen=True)
class RobotModel:
    control_hz: float = 50.0
    n_execute: int = 25  # actions executed from each chunk before the next one must be there

    @property
    def period_s(self) -> float:
        return self.n_execute / self.control_hz


@dataclass(frozen=True)
class Request:
    sent_s: float
    answered_s: float
    deadline_s: float


# --- the server, a subprocess -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(bundle: Path, max_batch: int, ray_replicas: int = 0) -> tuple[subprocess.Popen, int]:
    """`pi0edge serve` on a free loopback port (ray_replicas > 0: `--ray`); -> (process, port) once it listens."""
    command = [sys.executable, "-m", "pi0edge.cli", "serve", str(bundle), "--backend", "ort-cpu",
               "--seed", "0", "--max-batch", str(max_batch)]
    if ray_replicas:  # Ray's proxy needs a port number
        command += ["--port", str(free_port()), "--ray", "--replicas", str(ray_replicas)]
    else:
        command += ["--port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("pi0edge serve: ws://"):
            port = int(line.rsplit(":", 1)[1])
            # keep draining its output so a chatty server never blocks on a full pipe
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, port
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"pi0edge serve did not start ({' '.join(command)}):\n{''.join(lines[-20:])}")


def peak_rss_mib(pid: int) -> float | None:
    """The high-water resident set (VmHWM) summed over the process and its descendants, None without /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total_kib, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            if current == pid:
                return None
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return total_kib / 1024


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()  # SIGTERM: `--ray` shuts Serve and its local Ray instance down as on Ctrl-C
    try:
        proc.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the robots, asyncio tasks ------------------------------------------------------------------------------

async def connect(port: int):
    from websockets.asyncio.client import connect as ws_connect

    # as openpi's WebsocketClientPolicy connects: no compression, no frame size limit
    ws = await ws_connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None)
    return ws, unpackb(await ws.recv())


async def ask(ws, message: bytes) -> None:
    await ws.send(message)
    answer = await ws.recv()
    if isinstance(answer, str):
        raise RuntimeError(f"the server answered an error: {answer}")
    unpackb(answer)


async def robot(ws, messages: list[bytes], model: RobotModel, start_s: float, end_s: float) -> list[Request]:
    """Ask for a chunk each period from start_s on until end_s; a late answer moves the schedule back."""
    requests, i = [], 0
    send_at = start_s
    while send_at < end_s:
        await asyncio.sleep(max(0.0, send_at - time.perf_counter()))
        sent = time.perf_counter()
        await ask(ws, messages[i % len(messages)])
        answered = time.perf_counter()
        deadline = sent + model.period_s
        requests.append(Request(sent, answered, deadline))
        send_at = max(deadline, answered)  # late: the robot held still, starts the chunk now, asks again
        i += 1
    return requests


async def fleet(port: int, robots: int, model: RobotModel, duration_s: float, seed: int) -> tuple[list, float]:
    """-> (every robot's requests, the measurement's start time)."""
    connections = [await connect(port) for _ in range(robots)]
    meta = connections[0][1]
    shim = SimpleNamespace(camera_names=meta["cameras"], robot_state_dim=meta["state_dim"])
    messages = [packb(observation(shim, k)) for k in range(DISTINCT_OBSERVATIONS)]
    await asyncio.gather(*(ask(ws, messages[0]) for ws, _ in connections))  # warm-up, outside the clock
    phases_s = np.random.default_rng(seed).uniform(0.0, model.period_s, robots)
    start_s = time.perf_counter() + 0.1
    end_s = start_s + duration_s
    try:
        results = await asyncio.gather(*(robot(ws, messages, model, start_s + float(phase), end_s)
                                         for (ws, _), phase in zip(connections, phases_s, strict=True)))
    finally:
        await asyncio.gather(*(ws.close() for ws, _ in connections), return_exceptions=True)
    return results, start_s


# --- one cell, the table ------------------------------------------------------------------------------------

def summarize(per_robot: list[list[Request]], start_s: float, duration_s: float) -> dict:
    requests = [r for rs in per_robot for r in rs]
    latencies_ms = [(r.answered_s - r.sent_s) * 1e3 for r in requests] or [float("nan")]
    answered_in_time_window = sum(r.answered_s <= start_s + duration_s for r in requests)
    return {"requests": len(requests), "chunks_per_s": answered_in_time_window / duration_s,
            "latency_p50_ms": float(np.percentile(latencies_ms, 50)),
            "latency_p99_ms": float(np.percentile(latencies_ms, 99)),
            "deadline_misses": sum(r.answered_s > r.deadline_s for r in requests)}


def run_cell(bundle: Path, config: str, robots: int, max_batch: int, model: RobotModel, duration_s: float,
             ray_replicas: int = 0) -> dict:
    proc, port = start_server(bundle, max_batch, ray_replicas)
    try:
        per_robot, start_s = asyncio.run(fleet(port, robots, model, duration_s, seed=robots))
        rss_mib = peak_rss_mib(proc.pid)
    finally:
        stop_server(proc)
    mode = f"ray {ray_replicas} replicas" if ray_replicas else "single" if max_batch == 1 else "batched"
    return {"config": config, "robots": robots, "max_batch": max_batch, "ray_replicas": ray_replicas,
            "mode": mode, "duration_s": duration_s,
            "offered_requests_per_s": robots / model.period_s, **summarize(per_robot, start_s, duration_s),
            "server_peak_rss_mib": rss_mib}


def over_single(cells: list[dict], mode: str) -> dict:
    """{"config/robots": chunks/s of `mode` over single chunks/s}, from the same run."""
    single = {(c["config"], c["robots"]): c["chunks_per_s"] for c in cells if c["mode"] == "single"}
    return {f"{c['config']}/{c['robots']}": c["chunks_per_s"] / single[(c["config"], c["robots"])]
            for c in cells if c["mode"].startswith(mode) and single.get((c["config"], c["robots"]))}


def table(cells: list[dict]) -> str:
    rows = ["| config | robots | mode (--max-batch) | offered req/s | chunks/s | p50 ms | p99 ms | "
            "deadline misses / requests | server peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        rss = "n/a" if c["server_peak_rss_mib"] is None else f"{c['server_peak_rss_mib']:.0f}"
        rows.append(f"| {c['config']} | {c['robots']} | {c['mode']} ({c['max_batch']}) | "
                    f"{c['offered_requests_per_s']:.1f} | {c['chunks_per_s']:.1f} | {c['latency_p50_ms']:.1f} | "
                    f"{c['latency_p99_ms']:.1f} | {c['deadline_misses']} / {c['requests']} | {rss} |")
    return "\n".join(rows)


# --- the command line ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=None, choices=("tiny", "mid"),
                        help="model presets, each exported from a random checkpoint (default tiny)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="an exported bundle to serve instead of exporting --config (one config only)")
    parser.add_argument("--robots", type=int, nargs="+", default=None,
                        help="fleet sizes (default 1 4 16 64; --quick: 1 4)")
    parser.add_argument("--duration-s", type=float, default=None, help="measured seconds a cell (default 20)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: {QUICK_DURATION_S} s a cell, robots {' '.join(map(str, QUICK_ROBOTS))}")
    parser.add_argument("--control-hz", type=float, default=RobotModel.control_hz)
    parser.add_argument("--n-execute", type=int, default=RobotModel.n_execute)
    parser.add_argument("--max-batch", type=int, default=16, help="batched cells: min(robots, this) (default 16)")
    parser.add_argument("--ray-replicas", type=int, default=2,
                        help="Ray Serve cells with this many replicas (default 2; 0: no Ray cells)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    args.config = args.config or ["tiny"]
    args.robots = args.robots or list(QUICK_ROBOTS if args.quick else (1, 4, 16, 64))
    args.duration_s = args.duration_s if args.duration_s is not None else (QUICK_DURATION_S if args.quick else 20.0)
    if args.bundle is not None and len(args.config) != 1:
        parser.error("--bundle serves one bundle: give one --config (its name in the table)")
    for name in ("duration_s", "control_hz", "n_execute", "max_batch"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.ray_replicas < 0:
        parser.error(f"--ray-replicas must be >= 0, got {args.ray_replicas}")
    if min(args.robots) < 1:
        parser.error(f"--robots must be >= 1, got {args.robots}")
    return args


def measure(args: argparse.Namespace, model: RobotModel, tmp: Path) -> list[dict]:
    cells = []
    for config in args.config:
        bundle = args.bundle or make_bundle(config, tmp / config)
        for robots in args.robots:
            for max_batch in (1, min(robots, args.max_batch)) if robots > 1 else (1,):
                cells.append(run_cell(bundle, config, robots, max_batch, model, args.duration_s))
                print(table(cells[-1:]).splitlines()[2], flush=True)
            if args.ray_replicas:
                cells.append(run_cell(bundle, config, robots, 1, model, args.duration_s, args.ray_replicas))
                print(table(cells[-1:]).splitlines()[2], flush=True)
    return cells


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = RobotModel(args.control_hz, args.n_execute)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cells = measure(args, model, Path(tmp))
    figures = {"command": "python benchmarks/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "processor": platform.processor() or platform.machine(),
                           "load_average_before": load_before, "load_average_after": os.getloadavg()},
               "robot_model": {**asdict(model), "period_s": model.period_s},
               "cells": cells, "batched_over_single": over_single(cells, "batched"),
               "ray_over_single": over_single(cells, "ray")}
    print(table(cells))
    for mode in ("batched", "ray"):
        ratios = figures[f"{mode}_over_single"]
        print(f"{mode} / single chunks/s: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    if args.json:
        write_text_atomic(args.json, json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
