"""Fixtures of the serve tests: tiny bundles with a preset's robot dims, and a PolicyServer on a free loopback
port in a thread of its own (the server's event loop, as `pi0edge serve` runs it)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from pi0edge.runtime.policy import Policy
from pi0edge.serve.map_file import resolve_obs_map
from pi0edge.serve.server import PolicyServer, ServeConfig


@pytest.fixture(scope="session")
def robot_bundle_factory(tmp_path_factory, tokenizer_path):
    """-> bundle dir of a tiny pi0 bundle for a robot with these state / action lengths (export once each)."""
    cache: dict = {}

    def get(robot_state_dim: int, robot_action_dim: int):
        from pi0edge.export.bundle import export_bundle
        from pi0edge.export.config import tiny
        from pi0edge.export.random_checkpoint import write_random_checkpoint

        key = (robot_state_dim, robot_action_dim)
        if key not in cache:
            width = max(8, robot_state_dim, robot_action_dim)
            out = tmp_path_factory.mktemp(f"bundle-{robot_state_dim}x{robot_action_dim}")
            checkpoint = write_random_checkpoint(out / "checkpoint", tiny("pi0", state_dim=width, action_dim=width),
                                                 tokenizer=False, robot_state_dim=robot_state_dim,
                                                 robot_action_dim=robot_action_dim)
            export_bundle(checkpoint, out / "bundle", tokenizer=tokenizer_path)
            cache[key] = out / "bundle"
        return cache[key]

    return get


@contextlib.contextmanager
def running_server(bundle, obs_map: str | None = None, wrap=None, **config):
    """A PolicyServer for `bundle` on 127.0.0.1 and a free port; yields (server, reference Policy on ort-cpu).
    wrap: policy -> what the server serves instead (a test double around the real policy)."""
    policy = Policy(bundle, "ort-cpu")
    mapping = resolve_obs_map(obs_map, policy.camera_names, policy.robot_state_dim,
                              policy.robot_action_dim)
    server = PolicyServer(wrap(policy) if wrap else policy, mapping, ServeConfig(port=0, **config))
    ready, stop, failure = threading.Event(), [], []

    def run():
        async def main():
            stop.append((asyncio.get_running_loop(), asyncio.Event()))
            await server.serve(stop[0][1], on_ready=lambda port: ready.set())

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting test
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(timeout=60)
    if failure:
        raise failure[0]
    reference = Policy(bundle, "ort-cpu")
    try:
        yield server, reference
    finally:
        loop, event = stop[0]
        loop.call_soon_threadsafe(event.set)
        thread.join(timeout=30)
        reference.close()
        policy.close()


@pytest.fixture
def serving():
    """`with serving(bundle, obs_map=None, **ServeConfig fields) as (server, reference_policy):`"""
    return running_server
