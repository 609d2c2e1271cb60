"""Unit tests of the pieces: the Ratekeeper clock, the chunk strategies and the safety layer."""

from __future__ import annotations

import numpy as np
import pytest

from pi0edge.robot_io.arms import ArmLimits
from pi0edge.robot_io.chunking import AsyncStrategy, Chunk, EnsembleStrategy, SyncStrategy
from pi0edge.robot_io.clock import Ratekeeper
from pi0edge.robot_io.config import SafetyConfig
from pi0edge.robot_io.quantiles import StreamQuantiles
from pi0edge.robot_io.safety import SafetyLayer

QUANTILE_RELATIVE_ERROR = 0.01  # the histogram's bin width, relative
FAKE_CLOCK_ROUNDING_S = 1e-12  # float sums of 20 ms periods around t = 100 s


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_ratekeeper_advances_deadline_by_period_without_drift():
    clock = FakeClock()
    keeper = Ratekeeper(50, spin_s=0.0, clock=clock, sleep=clock.sleep)
    start = keeper.start()
    for _ in range(10):
        clock.now += 0.005  # 5 ms of work per 20 ms tick
        assert keeper.keep_time() is False
    assert clock.now == pytest.approx(start + 10 * 0.02)
    assert keeper.deadline_misses == 0 and keeper.skipped_ticks == 0


def test_ratekeeper_counts_late_ticks_and_skips_whole_missed_periods():
    clock = FakeClock()
    keeper = Ratekeeper(50, spin_s=0.0, clock=clock, sleep=clock.sleep)
    start = keeper.start()
    clock.now += 0.025  # 5 ms past the first deadline: late, no whole period lost
    assert keeper.keep_time() is True
    clock.now += 0.045  # now 70 ms past the start, the 2nd deadline was at 40 ms: 30 ms late
    assert keeper.keep_time() is True
    assert keeper.deadline_misses == 2 and keeper.skipped_ticks == 1
    # The schedule stays on the 20 ms grid of the start, in the future.
    assert keeper.deadline_s > clock.now
    assert ((keeper.deadline_s - start) / 0.02) == pytest.approx(round((keeper.deadline_s - start) / 0.02))


def test_ratekeeper_real_clock_keeps_period():
    keeper = Ratekeeper(100)
    keeper.start()
    for _ in range(30):
        keeper.keep_time()
    assert keeper.frame == keeper.period_error_s.count == 30
    # It never runs ahead of the schedule (how far behind depends on the machine's load: benchmarks/).
    assert keeper.elapsed_s >= 30 * keeper.period_s


def test_ratekeeper_period_error_statistics_do_not_grow_with_the_run():
    clock = FakeClock()
    keeper = Ratekeeper(50, spin_s=0.0, clock=clock, sleep=clock.sleep)
    keeper.start()
    clock.now += 0.025  # one late tick: its period error is 5 ms
    keeper.keep_time()
    bytes_after_one = keeper.period_error_s.nbytes
    for _ in range(5_000):
        keeper.keep_time()
    assert keeper.period_error_s.nbytes == bytes_after_one and keeper.period_error_s.count == 5_001
    assert keeper.period_error_s.quantile(50) == pytest.approx(0.0, abs=FAKE_CLOCK_ROUNDING_S)  # wakes on time
    assert keeper.period_error_s.max == pytest.approx(0.005)


def test_stream_quantiles_match_numpy_within_their_resolution():
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=-6.0, sigma=1.5, size=2_000)  # seconds: ~0.1 ms to ~100 ms
    acc = StreamQuantiles(smallest=1e-7, largest=100.0, relative_error=QUANTILE_RELATIVE_ERROR)
    for value in values:
        acc.add(value)
    for q in (50, 90, 99):
        expected = np.percentile(values, q, method="inverted_cdf")  # nearest rank, as the histogram
        assert acc.quantile(q) == pytest.approx(expected, rel=QUANTILE_RELATIVE_ERROR)
    assert acc.max == values.max() and acc.count == values.size


def test_stream_quantiles_report_values_outside_the_range_without_losing_them():
    acc = StreamQuantiles(smallest=1e-3, largest=1.0)
    assert np.isnan(acc.quantile(50)) and np.isnan(acc.max)
    for value in (0.0, 0.0, 0.0, 5.0):
        acc.add(value)
    assert acc.quantile(50) == 0.0 and acc.quantile(100) == 5.0 and acc.max == 5.0
    with pytest.raises(ValueError, match="non-negative"):
        acc.add(-1.0)


def _chunk(value_rows, obs_tick, ready_tick):
    return Chunk(np.asarray(value_rows, dtype=float)[:, None], obs_tick, ready_tick)


def test_sync_executes_n_then_asks_again():
    strategy = SyncStrategy(n_execute=3)
    assert strategy.want_inference(0, busy=False)
    strategy.add(_chunk([10, 11, 12, 13, 14], obs_tick=0, ready_tick=4))
    assert not strategy.want_inference(4, busy=False)
    got = [strategy.target(t)[0] for t in range(4, 7)]
    assert got == [10, 11, 12]  # from row 0: the arm held while the chunk was computed
    assert strategy.target(7) is None and strategy.want_inference(7, busy=False)


def test_async_drops_the_rows_the_inference_delay_covered():
    strategy = AsyncStrategy(n_execute=4)
    strategy.add(_chunk(range(100, 110), obs_tick=10, ready_tick=13))
    assert strategy.target(13)[0] == 103  # 3 ticks of delay: rows 0..2 already past
    assert strategy.skipped_actions == 3
    assert strategy.target(19)[0] == 109
    assert strategy.target(20) is None and strategy.exhausted


def test_ensemble_weights_oldest_first():
    m = 0.5
    strategy = EnsembleStrategy(n_execute=1, m=m)
    strategy.add(_chunk([0.0] * 10, obs_tick=0, ready_tick=1))  # oldest prediction: 0
    strategy.add(_chunk([1.0] * 10, obs_tick=2, ready_tick=3))  # newer: 1
    w = np.exp(-m * np.arange(2))
    assert strategy.target(3)[0] == pytest.approx(w[1] / w.sum())
    # Once the oldest chunk no longer covers the tick, only the newer one counts.
    assert strategy.target(10)[0] == pytest.approx(1.0)


def _layer():
    limits = ArmLimits([-1, -1], [1, 1], [10, 10])
    return SafetyLayer.from_config(SafetyConfig(lower=(-0.5, -0.5), upper=(0.5, 0.5), max_velocity_per_s=(1.0, 1.0)),
                                   limits, period_s=0.02)


def test_safety_clips_positions_and_clamps_velocity_per_tick():
    layer = _layer()
    assert layer.max_step_per_tick == pytest.approx([0.02, 0.02])
    command = np.zeros(2)
    for _ in range(100):
        command = layer.limit(np.array([5.0, -0.01]), command)
        assert np.all(command <= 0.5) and np.all(command >= -0.5)
    assert command == pytest.approx([0.5, -0.01])
    assert layer.clipped_ticks == 100 and layer.clamped_ticks > 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_safety_rejects_non_finite_chunks(bad):
    layer = _layer()
    actions = np.zeros((10, 2))
    actions[3, 1] = bad
    assert "NaN/Inf" in layer.check_chunk(actions, 10, 2)
    assert "shape" in layer.check_chunk(np.zeros((10, 3)), 10, 2)
    assert layer.check_chunk(np.zeros((1, 10, 2)), 10, 2) is None


def test_safety_rejects_a_chunk_with_fewer_rows_than_the_horizon():
    reason = _layer().check_chunk(np.zeros((10, 2)), 50, 2)
    assert reason is not None and "expected [50, 2]" in reason


@pytest.mark.parametrize(("reported", "words"), [
    ([0.1], "1 values"),
    ("0.1, 0.2", "not a vector of numbers"),
    ([np.nan, 0.0], "not finite"),
    ([1e9, 0.0], "far outside the joint limits (joints [0]"),
])
def test_safety_refuses_arm_states_that_cannot_be_positions(reported, words):
    state, reason = _layer().check_state(reported)
    assert state is None and words in reason


def test_safety_accepts_a_state_slightly_outside_the_limits_and_holds_it_inside():
    layer = _layer()  # limits -0.5..0.5: a reading of 0.6 is a real (if unsafe) position
    state, reason = layer.check_state([0.6, -0.2])
    assert reason is None
    np.testing.assert_array_equal(layer.hold_at(state), [0.5, -0.2])
