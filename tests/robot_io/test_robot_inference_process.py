"""Inference in its own process: same interface as the thread worker, frames/state/chunks through shared
memory, child errors and death come back as error results, the loop runs with it, CPUs pinned."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from robot_io_helpers import make_config

from pi0edge.errors import ConfigError
from pi0edge.robot_io.errors import InferenceProcessError
from pi0edge.robot_io.inference import InferenceWorker
from pi0edge.robot_io.inference_process import ProcessInferenceWorker, start_inference
from pi0edge.robot_io.loop import run_loop
from pi0edge.robot_io.policy_spec import FakePolicySpec, PolicyHandle, PolicySpec
from pi0edge.runtime.types import Observation

WAIT_S = 30.0  # a generous bound for a result on a shared machine; tests never assert on speed
ACTION_ATOL = 1e-5  # same graphs, same inputs, same seed: only thread-count reductions may differ
GOAL = (0.25, -0.5, 0.75)


def fake_spec(**kwargs) -> FakePolicySpec:
    kwargs = {"robot_state_dim": 3, "robot_action_dim": 3, "action_horizon": 10, "goal": GOAL, **kwargs}
    return FakePolicySpec(tuple(kwargs.items()))


def observation(state_dim: int = 3, camera: str = "base_0_rgb") -> Observation:
    rng = np.random.default_rng(0)
    return Observation(images={camera: rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)},
                       state=rng.standard_normal(state_dim).astype(np.float32), prompt="pick")


def shm_exists(name: str) -> bool:
    return Path("/dev/shm", name.lstrip("/")).exists()


def test_process_worker_returns_the_chunk_through_shared_memory_and_cleans_up():
    worker = ProcessInferenceWorker(fake_spec())
    names = [worker._state.shm.name, worker._chunk.shm.name]
    try:
        assert worker.poll() is None and not worker.busy
        obs = observation()
        worker.submit(obs, tick=7)
        assert worker.busy and worker.started_s is not None
        with pytest.raises(RuntimeError, match="already in flight"):
            worker.submit(obs, tick=8)
        result = worker.wait(WAIT_S)
        assert result is not None and result.error is None and result.obs_tick == 7 and not result.timed_out
        np.testing.assert_array_equal(result.actions, np.tile(np.float32(GOAL), (10, 1)))
        assert result.observation is obs and not worker.busy and worker.started_s is None
        names += [b.shm.name for b in worker._frames.values()]
    finally:
        worker.stop()
    assert not worker._process.is_alive()
    assert not any(shm_exists(n) for n in names)


def test_an_exception_in_the_process_comes_back_as_the_error_result():
    worker = ProcessInferenceWorker(fake_spec(raise_calls=(0,)))
    try:
        worker.submit(observation(), tick=0)
        result = worker.wait(WAIT_S)
        assert isinstance(result.error, InferenceProcessError) and result.actions is None
        assert "RuntimeError: fake policy: injected failure on call 0" in str(result.error)
        worker.submit(observation(), tick=1)  # the process keeps serving
        assert worker.wait(WAIT_S).error is None
    finally:
        worker.stop()


def test_a_dead_process_is_an_error_result_now_and_for_every_later_request():
    worker = ProcessInferenceWorker(fake_spec(latency_s=60.0))
    try:
        worker.submit(observation(), tick=0)
        os.kill(worker._process.pid, signal.SIGKILL)
        result = worker.wait(WAIT_S)
        assert isinstance(result.error, InferenceProcessError) and "died" in str(result.error)
        assert str(-signal.SIGKILL) in str(result.error)  # the exit code says how it died
        worker.submit(observation(), tick=1)
        assert "died" in str(worker.poll().error)
    finally:
        worker.stop()


def test_a_wrong_state_length_is_an_error_result_not_a_crash():
    worker = ProcessInferenceWorker(fake_spec())
    try:
        worker.submit(observation(state_dim=5), tick=0)
        result = worker.poll()
        assert isinstance(result.error, InferenceProcessError) and "5 values" in str(result.error)
    finally:
        worker.stop()


def test_stop_ends_a_process_stuck_in_infer():
    worker = ProcessInferenceWorker(fake_spec(latency_s=60.0))
    worker.submit(observation(), tick=0)
    worker.mark_timed_out()
    worker.stop(timeout_s=0.5)
    assert not worker._process.is_alive()


def test_the_loop_runs_on_the_process_worker_and_times_out_a_hung_one():
    config = make_config(chunking={"strategy": "async", "n_execute": 5})
    stats = run_loop(config, PolicyHandle(fake_spec()), "pick", 1.5)
    assert stats.inferences > 0 and stats.executed_ticks > 0 and not stats.events, stats.summary()

    stats = run_loop(config, PolicyHandle(fake_spec(latency_s=60.0)), "pick", 1.5)
    assert "inference_timeout" in stats.event_counts() and stats.executed_ticks == 0, stats.summary()


def test_start_inference_picks_a_process_for_a_spec_and_a_thread_for_an_in_process_policy():
    from pi0edge.robot_io.fake_policy import FakePolicy

    process = start_inference(PolicyHandle(fake_spec()), "process")
    thread = start_inference(FakePolicy(block=threading.Event()), "process")  # not picklable: a thread
    handle_in_thread = start_inference(PolicyHandle(fake_spec()), "thread")
    try:
        assert isinstance(process, ProcessInferenceWorker) and isinstance(thread, InferenceWorker)
        assert isinstance(handle_in_thread, InferenceWorker)
    finally:
        for worker in (process, thread, handle_in_thread):
            worker.stop(timeout_s=0.1)


def test_pinning_applies_to_the_process_and_the_loop_thread_and_is_undone():
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    worker = start_inference(PolicyHandle(fake_spec()), "process", cpus=[cpu], loop_cpus=[cpu])
    try:
        assert os.sched_getaffinity(worker._process.pid) == {cpu}
        assert os.sched_getaffinity(0) == {cpu}
    finally:
        worker.stop()
    assert os.sched_getaffinity(0) == allowed


def test_unavailable_cpus_are_a_config_error_naming_the_field():
    missing = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(ConfigError, match=rf"cpu_affinity\.inference: CPUs \[{missing}\]"):
        start_inference(PolicyHandle(fake_spec()), "process", cpus=[missing])
    with pytest.raises(ConfigError, match=r"cpu_affinity\.loop"):
        start_inference(PolicyHandle(fake_spec()), "thread", loop_cpus=[missing])


def test_config_inference_and_cpu_affinity_are_checked():
    assert make_config().inference == "process"
    assert make_config(inference="thread", cpu_affinity={"loop": [0], "inference": [1]}).cpu_affinity.inference == (1,)
    with pytest.raises(ConfigError, match="inference: must be one of"):
        make_config(inference="gpu")
    with pytest.raises(ConfigError, match=r"cpu_affinity\.loop"):
        make_config(cpu_affinity={"loop": 0})
    with pytest.raises(ConfigError, match=r"cpu_affinity\.inference"):
        make_config(cpu_affinity={"inference": [-1]})


def test_a_bundle_in_the_process_gives_the_same_chunk_as_in_this_process(tiny_bundle_factory):
    from pi0edge.runtime import Policy
    from pi0edge.runtime.profile import synthetic_observation

    bundle, _ = tiny_bundle_factory("pi0")
    spec = PolicySpec(str(bundle), "ort-cpu", threads=1, seed=0)
    local = Policy(bundle, backend="ort-cpu", seed=0, intra_op_threads=1)
    obs = synthetic_observation(local)
    expected = local.infer(obs).actions
    worker = ProcessInferenceWorker(spec)
    try:
        worker.submit(obs, tick=0)
        result = worker.wait(WAIT_S)
    finally:
        worker.stop()
    assert result.error is None, result.error
    np.testing.assert_allclose(result.actions, expected, atol=ACTION_ATOL)


def test_a_malformed_pi0fast_chunk_keeps_its_reason_through_the_process(tiny_bundle_factory):
    from pi0edge.runtime import Policy
    from pi0edge.runtime.profile import synthetic_observation

    bundle, _ = tiny_bundle_factory("pi0fast")
    with Policy(bundle, backend="ort-cpu") as local:
        obs = synthetic_observation(local)
        expected = local.infer(obs)
    worker = ProcessInferenceWorker(PolicySpec(str(bundle), "ort-cpu", threads=1, seed=0))
    try:
        worker.submit(obs, tick=0)
        result = worker.wait(WAIT_S)
    finally:
        worker.stop()
    assert result.error is None, result.error
    assert expected.malformed and result.malformed == expected.malformed  # the loop names it when it refuses
    assert np.isnan(result.actions).all()


def test_a_bundle_that_cannot_load_in_the_process_is_named(tiny_bundle_factory):
    bundle, _ = tiny_bundle_factory("pi0")
    with pytest.raises(InferenceProcessError, match="could not load the policy.*no-such-backend"):
        ProcessInferenceWorker(PolicySpec(str(bundle), "no-such-backend"))


def test_the_inference_thread_pins_itself():
    from pi0edge.robot_io.fake_policy import FakePolicy

    cpu = min(os.sched_getaffinity(0))
    worker = start_inference(FakePolicy(), "thread", cpus=[cpu])
    try:
        worker.submit(observation(state_dim=6), tick=0)
        assert worker.wait(WAIT_S) is not None
        assert os.sched_getaffinity(worker._thread.native_id) == {cpu}
    finally:
        worker.stop()


def test_the_loop_thread_runs_pinned_when_configured_and_is_unpinned_after():
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    config = make_config(cpu_affinity={"loop": [cpu]})
    seen: list[set] = []
    run_loop(config, PolicyHandle(fake_spec()), "pick", 1.0, on_status=lambda stats: seen.append(
        os.sched_getaffinity(0)))
    assert seen and all(s == {cpu} for s in seen)
    assert os.sched_getaffinity(0) == allowed


def test_errors_in_the_process_are_policy_error_faults_of_the_loop():
    stats = run_loop(make_config(), PolicyHandle(fake_spec(raise_calls=(0,))), "pick", 1.0)
    faults = [e for e in stats.events if e.kind == "policy_error"]
    assert len(faults) == 1 and "injected failure on call 0 (in the inference process)" in faults[0].reason
    assert stats.hold_ticks > 0 and stats.executed_ticks > 0  # held on the fault, then moved on fresh chunks


def test_a_loaded_pi0fast_policy_is_described_by_its_bundle_backend_and_temperature(tiny_bundle_factory):
    """A Pi0-FAST Policy has no Euler backend object: the spec comes from the backend that really runs it, and
    carries the sampling temperature, so `inference: process` loads the same policy in its own process."""
    from pi0edge.robot_io.policy_spec import spec_of
    from pi0edge.runtime import Policy

    bundle, _ = tiny_bundle_factory("pi0fast")
    with Policy(bundle, backend="ort-cpu", temperature=0.5) as policy:
        assert spec_of(policy) == PolicySpec(str(bundle), "ort-cpu", temperature=0.5)
        worker = start_inference(policy, "process")
        try:
            assert isinstance(worker, ProcessInferenceWorker)
        finally:
            worker.stop()
