"""Deadlines: the worker runs the earliest deadline first (none last, FIFO among equals); a deadline the
inference time estimate cannot meet is refused at once, naming both; no deadline behaves as before."""

from __future__ import annotations

import asyncio
import math
import threading

import numpy as np
import pytest
import websockets.sync.client
from openpi_client import msgpack_numpy as openpi_msgpack

from pi0edge.runtime.types import ActionChunk, Observation
from pi0edge.serve.batching import DeadlineUnmeetable, SharedPolicy

STUB_TOTAL_MS = 100.0  # what the stub reports as Policy.infer's total: the estimate, exactly


class GatedPolicy:
    """Records the prompts in the order it runs them; the first call waits until `release` is set."""

    def __init__(self):
        self.ran: list[str] = []
        self.started, self.release = threading.Event(), threading.Event()

    def infer(self, observation, noise):
        self.started.set()
        self.release.wait(timeout=30)
        self.ran.append(observation.prompt)
        return ActionChunk(actions=np.zeros((1, 1), np.float32), timings_ms={"total_ms": STUB_TOTAL_MS})


def request(shared: SharedPolicy, prompt: str, deadline_ms: float | None = None):
    obs = Observation(images={}, state=np.zeros(1), prompt=prompt)
    return shared.infer(obs, np.zeros((1, 1), np.float32), deadline_ms)


async def queue_behind_a_running_request(shared: SharedPolicy, policy: GatedPolicy, waiting: list) -> list:
    """Runs 'first' (held on the worker thread), queues `waiting` [(prompt, deadline_ms)], then releases."""
    shared.start()
    first = asyncio.ensure_future(request(shared, "first"))
    await asyncio.get_running_loop().run_in_executor(None, policy.started.wait, 30)
    tasks = [asyncio.ensure_future(request(shared, prompt, deadline)) for prompt, deadline in waiting]
    while shared._queue.qsize() < len(waiting):
        await asyncio.sleep(0)
    policy.release.set()
    results = await asyncio.gather(first, *tasks, return_exceptions=True)
    await shared.close()
    return results


def test_queued_requests_run_earliest_deadline_first_then_those_without_one_in_arrival_order():
    policy = GatedPolicy()
    waiting = [("none-1", None), ("late", 60_000.0), ("soon", 10_000.0), ("none-2", None), ("late-2", 60_000.0)]
    asyncio.run(queue_behind_a_running_request(SharedPolicy(policy), policy, waiting))
    assert policy.ran == ["first", "soon", "late", "late-2", "none-1", "none-2"]


def test_without_deadlines_requests_run_in_arrival_order():
    policy = GatedPolicy()
    waiting = [(f"r{i}", None) for i in range(4)]
    asyncio.run(queue_behind_a_running_request(SharedPolicy(policy), policy, waiting))
    assert policy.ran == ["first", "r0", "r1", "r2", "r3"]


def test_a_deadline_shorter_than_the_estimate_is_refused_at_once_naming_both():
    async def main():
        policy = GatedPolicy()
        policy.release.set()
        shared = SharedPolicy(policy)
        shared.start()
        await request(shared, "seed")  # no estimate before: admitted; seeds it with the stub's 100 ms
        assert shared.estimate_ms == STUB_TOTAL_MS
        with pytest.raises(DeadlineUnmeetable, match=r"deadline_ms 1 cannot be met.*100\.0 ms") as refused:
            await request(shared, "impossible", deadline_ms=1.0)
        await request(shared, "possible", deadline_ms=60_000.0)
        await shared.close()
        return policy.ran, refused.value

    ran, refused = asyncio.run(main())
    assert ran == ["seed", "possible"]  # the refused one never ran
    assert (refused.deadline_ms, refused.needed_ms) == (1.0, STUB_TOTAL_MS)


def test_the_work_queued_before_a_request_counts_against_its_deadline():
    """Estimate 100 ms; one batch running and two queued ahead: 250 ms cannot be met (4 batches: 400 ms),
    while a deadline earlier than theirs jumps them (2 batches: 200 ms) and is admitted."""
    async def main():
        policy = GatedPolicy()
        shared = SharedPolicy(policy)
        shared.estimate_ms = STUB_TOTAL_MS  # as if a batch had run (seeding is tested above)
        shared.start()
        first = asyncio.ensure_future(request(shared, "first"))
        await asyncio.get_running_loop().run_in_executor(None, policy.started.wait, 30)
        ahead = [asyncio.ensure_future(request(shared, f"a{i}", 300.0 + i)) for i in range(2)]
        while shared._queue.qsize() < 2:
            await asyncio.sleep(0)
        with pytest.raises(DeadlineUnmeetable, match=r"400\.0 ms \(4 batch"):
            await request(shared, "behind", 350.0)
        jumper = asyncio.ensure_future(request(shared, "jumper", 250.0))
        while shared._queue.qsize() < 3:
            await asyncio.sleep(0)
        policy.release.set()
        await asyncio.gather(first, jumper, *ahead)
        await shared.close()
        return policy.ran

    assert asyncio.run(main()) == ["first", "jumper", "a0", "a1"]


@pytest.fixture(scope="module")
def bundle(tiny_bundle_factory):
    return tiny_bundle_factory()[0]


def observation(policy, **extra) -> dict:
    rng = np.random.default_rng(3)
    return {"images": {"base_0_rgb": rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)},
            "state": rng.standard_normal(policy.robot_state_dim), "prompt": "stack the cups", **extra}


def test_server_answers_an_unmeetable_deadline_with_an_error_dict_and_keeps_the_connection(bundle, serving):
    with serving(bundle, seed=5) as (server, reference):
        with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", compression=None) as ws:
            ws.recv()  # metadata
            ws.send(openpi_msgpack.packb(observation(reference, deadline_ms=60_000.0)))  # seeds the estimate
            first = openpi_msgpack.unpackb(ws.recv())
            ws.send(openpi_msgpack.packb(observation(reference, deadline_ms=0.0)))
            refused = openpi_msgpack.unpackb(ws.recv())
            ws.send(openpi_msgpack.packb(observation(reference)))  # same connection, no deadline: answered
            after = openpi_msgpack.unpackb(ws.recv())
    assert "actions" not in refused and refused["error"].startswith("DeadlineUnmeetable: deadline_ms 0 ")
    assert refused["deadline_ms"] == 0.0 and refused["estimate_ms"] > 0
    # the deadline never reached the observation map, which refuses keys it does not know
    assert first["actions"].shape == after["actions"].shape == (reference.action_horizon,
                                                                reference.robot_action_dim)


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf, "soon", True])
def test_a_deadline_that_is_not_a_finite_nonnegative_number_is_bad_input_naming_the_field(bundle, serving, value):
    with serving(bundle) as (server, reference):
        with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", compression=None) as ws:
            ws.recv()
            ws.send(openpi_msgpack.packb(observation(reference, deadline_ms=value)))
            answer = ws.recv()
    assert isinstance(answer, str) and answer.startswith("ObservationError: deadline_ms must be")
