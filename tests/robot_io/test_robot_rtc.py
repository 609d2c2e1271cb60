"""The rtc chunk strategy: guidance from the executing chunk's leftover and the measured delay, carried to
the policy by both inference workers, refused for a plain bundle, and run in the loop on a tiny rtc bundle."""

from __future__ import annotations

import numpy as np
import pytest
from robot_io_helpers import make_config, make_policy

from pi0edge.errors import ConfigError
from pi0edge.robot_io.chunking import Chunk, RtcStrategy, make_strategy
from pi0edge.robot_io.inference_process import ProcessInferenceWorker
from pi0edge.robot_io.loop import run_loop
from pi0edge.robot_io.policy_spec import PolicyHandle, PolicySpec
from pi0edge.runtime.types import RtcGuidance

WAIT_S = 60.0


def _chunk(obs_tick: int, ready_tick: int, horizon: int = 10, dof: int = 2) -> Chunk:
    rows = np.arange(horizon * dof, dtype=float).reshape(horizon, dof) + 100 * obs_tick
    return Chunk(rows, obs_tick, ready_tick, policy_actions=rows.astype(np.float32))


def test_rtc_first_request_has_no_guidance_then_the_leftover_from_the_request_tick():
    strategy = RtcStrategy(n_execute=4, schedule="exp", max_guidance_weight=5.0, execution_horizon=6)
    assert strategy.want_inference(0, busy=False) and strategy.guidance(0) is None  # the first chunk
    chunk = _chunk(obs_tick=10, ready_tick=13)
    strategy.add(chunk)
    guidance = strategy.guidance(14)
    np.testing.assert_array_equal(guidance.leftover, chunk.policy_actions[4:])  # rows for ticks 14, 15, ...
    assert (guidance.inference_delay, guidance.execution_horizon) == (3, 6)
    assert (guidance.schedule, guidance.max_guidance_weight) == ("exp", 5.0)
    assert strategy.target(13)[0] == chunk.actions[3, 0]  # executes as async: from the row the delay reached


def test_rtc_delay_is_the_largest_recent_one_and_guides_at_least_the_delayed_rows():
    strategy = RtcStrategy(n_execute=4, schedule="linear", max_guidance_weight=10.0, execution_horizon=2)
    for obs_tick, delay in ((0, 5), (4, 2), (8, 3)):
        strategy.add(_chunk(obs_tick, obs_tick + delay))
    guidance = strategy.guidance(12)
    assert guidance.inference_delay == 5
    assert guidance.execution_horizon == 5  # the configured 2 would leave rows 2..4 unguided
    strategy.clear()
    assert strategy.guidance(13) is None  # after a fault: nothing executing to continue


def test_rtc_config_fields_are_checked_and_reach_the_strategy():
    strategy = make_strategy(make_config(chunking={"strategy": "rtc", "n_execute": 3, "rtc_schedule": "ones",
                                                   "rtc_max_guidance_weight": 2.5}).chunking, horizon=10)
    assert isinstance(strategy, RtcStrategy)
    assert (strategy.schedule, strategy.max_guidance_weight, strategy.execution_horizon) == ("ones", 2.5, 10)
    with pytest.raises(ConfigError, match="chunking.rtc_schedule.*'cubic'"):
        make_config(chunking={"strategy": "rtc", "rtc_schedule": "cubic"})
    with pytest.raises(ConfigError, match="chunking.rtc_max_guidance_weight"):
        make_config(chunking={"strategy": "rtc", "rtc_max_guidance_weight": 0})
    with pytest.raises(ConfigError, match="chunking.rtc_execution_horizon"):
        make_config(chunking={"strategy": "rtc", "rtc_execution_horizon": -1})


def test_rtc_strategy_with_a_policy_without_rtc_graphs_is_refused_naming_the_export_flag():
    with pytest.raises(ConfigError, match=r"chunking.strategy: rtc needs .*export --rtc"):
        run_loop(make_config(chunking={"strategy": "rtc"}), make_policy(), "x", 0.5)


def test_plain_bundle_handle_is_refused_for_rtc_and_an_rtc_bundle_accepted(tiny_bundle_factory):
    plain, _ = tiny_bundle_factory("pi0")
    rtc, _ = tiny_bundle_factory("pi0", rtc=True)
    assert not PolicyHandle(PolicySpec(str(plain))).supports_rtc
    assert PolicyHandle(PolicySpec(str(rtc))).supports_rtc
    with pytest.raises(ConfigError, match="export --rtc"):
        run_loop(make_config(chunking={"strategy": "rtc"}), PolicyHandle(PolicySpec(str(plain))), "x", 0.5)


def test_guidance_crosses_to_the_inference_process(tiny_bundle_factory):
    from pi0edge.runtime import Policy
    from pi0edge.runtime.profile import synthetic_observation

    bundle, _ = tiny_bundle_factory("pi0", rtc=True)
    guidance = RtcGuidance(leftover=np.full((6, 6), 0.5, np.float32), inference_delay=3, execution_horizon=5)
    local = Policy(bundle, backend="ort-cpu", seed=0, intra_op_threads=1)
    obs = synthetic_observation(local)
    plain = local.infer(obs).actions
    local.rng = np.random.default_rng(0)
    expected = local.infer(obs, guidance=guidance).actions
    worker = ProcessInferenceWorker(PolicySpec(str(bundle), "ort-cpu", threads=1, seed=0))
    try:
        worker.submit(obs, tick=0, guidance=guidance)
        result = worker.wait(WAIT_S)
    finally:
        worker.stop()
    assert result.error is None, result.error
    assert np.abs(expected - plain).max() > 1e-3  # the guidance changes the chunk...
    np.testing.assert_allclose(result.actions, expected, atol=1e-6)  # ...and the process applied it


class _Recording:
    """A real rtc-bundle Policy that keeps the guidance each call received."""

    def __init__(self, policy):
        self.policy, self.guidances = policy, []
        for name in ("camera_names", "action_horizon", "robot_state_dim", "robot_action_dim", "supports_rtc"):
            setattr(self, name, getattr(policy, name))

    def infer(self, observation, guidance=None):
        self.guidances.append(guidance)
        return self.policy.infer(observation, guidance=guidance)


def test_rtc_loop_runs_an_rtc_bundle_feeding_guidance_after_the_first_chunk(tiny_bundle_factory):
    from pi0edge.runtime import Policy

    bundle, _ = tiny_bundle_factory("pi0", rtc=True)
    policy = _Recording(Policy(bundle, backend="ort-cpu", seed=0, intra_op_threads=1))
    # 10 Hz: the 10-row chunk lasts 1 s, longer than an inference on a busy shared machine
    config = make_config(rate_hz=10, inference="thread", chunking={"strategy": "rtc", "n_execute": 4})
    stats = run_loop(config, policy, "pick up the cube", 3.0)
    assert stats.inferences >= 3 and not [e for e in stats.events if e.kind == "policy_error"], stats.summary()
    assert policy.guidances[0] is None
    later = [g for g in policy.guidances[1:] if g is not None]
    assert later and all(g.leftover.shape[1] == 6 and g.schedule == "linear" for g in later)
