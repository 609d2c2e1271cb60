"""Capture-to-command latency accounting (robot_io/latency.py): a camera of known delay is measured as that
delay, the timeline's instants keep their order through the thread and the process worker, and the
spans add up to capture -> command."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from robot_io_helpers import make_config, make_policy

from pi0edge.errors import ConfigError
from pi0edge.robot_io.camera_base import Frame
from pi0edge.robot_io.cameras import open_camera
from pi0edge.robot_io.latency import CAPTURE_TO_COMMAND, FRAME_AGE, STALENESS, ChunkTimeline, LatencyAccount
from pi0edge.robot_io.loop import run_loop

CAMERA_DELAY_S = 0.08
SAME_INSTANT_MS = 1e-6  # two subtractions of the same monotonic reading: float rounding only
QUANTILE_RELATIVE_ERROR = 0.01  # StreamQuantiles' bin width


def _raw_instants(t: ChunkTimeline) -> list[float]:
    """The timeline's recorded instants, unclamped, in the order they must happen."""
    return [t.capture_s, t.received_s, t.observed_s, t.start_s, t.end_s, t.command_s]


def _check_timeline(t: ChunkTimeline) -> None:
    instants = _raw_instants(t)
    assert all(math.isfinite(x) for x in instants), instants
    assert instants == sorted(instants), f"out of order: {instants}"
    assert math.fsum(t.spans_ms().values()) == pytest.approx(t.capture_to_command_ms, abs=SAME_INSTANT_MS)


def test_camera_of_known_delay_is_recorded_as_that_delay_and_spans_add_up():
    config = make_config(cameras={"front": {"delay_s": CAMERA_DELAY_S}})
    stats = run_loop(config, make_policy(latency_s=0.02), "go", 1.5)
    timelines = list(stats.latency.recent)
    assert len(timelines) >= 3, stats.summary()
    for t in timelines:
        # The camera's own latency is exactly its delay: both ends are stamped from one clock reading.
        assert t.spans_ms()["camera"] == pytest.approx(CAMERA_DELAY_S * 1e3, abs=SAME_INSTANT_MS)
        assert t.frame_age_at_inference_ms >= CAMERA_DELAY_S * 1e3
        _check_timeline(t)
    figures = stats.latency.figures()
    assert figures["camera"]["p50"] == pytest.approx(CAMERA_DELAY_S * 1e3, rel=QUANTILE_RELATIVE_ERROR)
    assert figures[STALENESS]["count"] == stats.executed_ticks
    assert figures[CAPTURE_TO_COMMAND]["count"] == len(timelines)
    assert "capture_to_command" in stats.summary() and "frame_age_at_inference" in stats.summary()


def test_process_worker_stamps_policy_stages_inside_the_timeline(tiny_bundle_factory, tmp_path):
    """A real bundle in the inference process: its stage timings fall between the process's start and end."""
    from pi0edge.robot_io.policy_spec import PolicyHandle, PolicySpec

    bundle, _ = tiny_bundle_factory()
    config = make_config(cameras={"front": {"delay_s": CAMERA_DELAY_S}}, chunking={"strategy": "sync"},
                         safety={"inference_timeout_s": 5.0})
    stats = run_loop(config, PolicyHandle(PolicySpec(str(bundle))), "pick up the cube", 2.0)
    timelines = list(stats.latency.recent)
    assert timelines, stats.summary()
    for t in timelines:
        _check_timeline(t)
        stages_s = sum(t.stages_ms[k] for k in ("preprocess_ms", "prefix_ms", "denoise_ms")) / 1e3
        assert t.start_s + stages_s <= t.end_s
        assert list(t.spans_ms()) == ["camera", "to_tick", "handoff", "preprocess", "prefix", "denoise",
                                      "postprocess", "to_command"]


def test_timeline_spans_from_explicit_instants():
    t = ChunkTimeline(obs_tick=7, capture_s=10.0, received_s=10.05, observed_s=10.06, start_s=10.07,
                      end_s=10.30, stages_ms={"preprocess_ms": 10.0, "prefix_ms": 100.0, "denoise_ms": 110.0},
                      command_s=10.32)
    spans = t.spans_ms()
    expected = {"camera": 50, "to_tick": 10, "handoff": 10, "preprocess": 10, "prefix": 100, "denoise": 110,
                "postprocess": 10, "to_command": 20}
    assert spans == pytest.approx(expected)
    assert t.frame_age_at_inference_ms == pytest.approx(70.0)
    assert t.capture_to_command_ms == pytest.approx(320.0)


def test_policy_reporting_only_its_total_gets_one_inference_span():
    t = ChunkTimeline(0, 1.0, 1.0, 1.01, 1.02, 1.12, {"total_ms": 100.0}, 1.13)
    assert t.spans_ms() == pytest.approx({"camera": 0, "to_tick": 10, "handoff": 10, "inference": 100,
                                          "to_command": 10})


def test_stage_timings_longer_than_the_worker_measured_are_capped_at_its_end():
    t = ChunkTimeline(0, 1.0, 1.0, 1.0, 1.0, 1.1, {"preprocess_ms": 60.0, "prefix_ms": 60.0, "denoise_ms": 1.0}, 1.2)
    marks = [instant for _, instant in t.marks()]
    assert marks == sorted(marks) and t.spans_ms()["denoise"] == 0.0


def test_timeline_of_frames_takes_the_oldest_frame():
    image = np.zeros((2, 2, 3), np.uint8)
    frames = [Frame(image, 5.0, 0, received_s=5.2), Frame(image, 4.9, 3, received_s=5.0), Frame(image, 5.1, 1)]
    t = ChunkTimeline.of_frames(4, frames, observed_s=5.3)
    assert (t.capture_s, t.received_s, t.observed_s) == (4.9, 5.0, 5.3)


def test_account_memory_is_bounded_and_figures_lead_with_the_headlines():
    account = LatencyAccount(kept_timelines=4)
    for i in range(50):
        account.add_chunk(ChunkTimeline(i, i, i + 0.01, i + 0.02, i + 0.03, i + 0.05, {}, i + 0.06))
        account.add_row(60.0)
    assert len(account.recent) == 4 and account.chunks == 50
    figures = account.figures()
    assert list(figures)[:3] == [CAPTURE_TO_COMMAND, FRAME_AGE, STALENESS]
    assert figures[FRAME_AGE]["p50"] == pytest.approx(30.0, rel=QUANTILE_RELATIVE_ERROR)


def test_chrome_trace_has_one_event_per_span_with_the_span_durations():
    account = LatencyAccount()
    t = ChunkTimeline(3, 2.0, 2.01, 2.02, 2.03, 2.13, {"total_ms": 100.0}, 2.15)
    account.add_chunk(t)
    events = [e for e in account.chrome_trace()["traceEvents"] if e.get("cat") == "span"]
    assert [e["name"] for e in events] == list(t.spans_ms())
    assert [e["dur"] / 1e3 for e in events] == pytest.approx(list(t.spans_ms().values()))
    assert events[0]["ts"] == 0.0


@pytest.mark.parametrize("delay", [-0.1, "soon", True, float("inf")])
def test_synthetic_camera_refuses_a_bad_delay(delay):
    with pytest.raises(ConfigError, match="delay_s"):
        open_camera({"kind": "synthetic", "delay_s": delay})


def test_profile_live_prints_the_figures_on_the_demo_robot(tiny_bundle_factory, tmp_path, capsys):
    import json

    from pi0edge.cli import main
    from pi0edge.robot_io.config import example_config_path

    bundle, _ = tiny_bundle_factory(action_horizon=50)  # the demo robot executes 25 rows per chunk
    trace, summary = tmp_path / "trace.json", tmp_path / "live.json"
    code = main(["profile", "--live", str(example_config_path("sim_arm.yaml")), str(bundle), "--duration-s", "3",
                 "--trace", str(trace), "--json", str(summary)])
    out = capsys.readouterr().out
    assert code == 0, out
    for figure in (CAPTURE_TO_COMMAND, FRAME_AGE, STALENESS, "prefix", "denoise", "to_command"):
        assert figure in out
    figures = json.loads(summary.read_text())["latency_ms"]
    assert figures[CAPTURE_TO_COMMAND]["count"] >= 1
    assert figures[CAPTURE_TO_COMMAND]["p50"] >= figures[FRAME_AGE]["p50"]
    spans = {e["name"] for e in json.loads(trace.read_text())["traceEvents"] if e.get("cat") == "span"}
    assert {"camera", "prefix", "denoise", "to_command"} <= spans


def test_realsense_global_time_metadata_moves_capture_before_arrival():
    """A frame whose metadata says it was captured 50 ms ago on the wall clock is stamped 50 ms before
    arrival; a hardware-clock timestamp (no host clock) or an implausible one is stamped at arrival."""
    rs = pytest.importorskip("pyrealsense2")
    from pi0edge.robot_io.realsense import _capture_monotonic_s

    class Metadata:  # the two calls of a librealsense frame the conversion reads
        def __init__(self, domain, wall_ms):
            self.domain, self.wall_ms = domain, wall_ms

        def get_frame_timestamp_domain(self):
            return self.domain

        def get_timestamp(self):
            return self.wall_ms

    arrival_s, latency_s = 1000.0, 0.05
    before = time.time()
    capture_s = _capture_monotonic_s(Metadata(rs.timestamp_domain.global_time, (before - latency_s) * 1e3),
                                     arrival_s, rs)
    elapsed_s = time.time() - before
    assert latency_s - 1e-6 <= arrival_s - capture_s <= latency_s + elapsed_s + 1e-6
    assert _capture_monotonic_s(Metadata(rs.timestamp_domain.hardware_clock, 5.0), arrival_s, rs) == arrival_s
    stale = Metadata(rs.timestamp_domain.system_time, (time.time() - 3600) * 1e3)
    assert _capture_monotonic_s(stale, arrival_s, rs) == arrival_s


def test_profile_live_refuses_offline_only_flags(capsys):
    from pi0edge.cli import main
    from pi0edge.robot_io.config import example_config_path

    assert main(["profile", "--live", str(example_config_path("sim_arm.yaml")), "BUNDLE", "--per-step"]) == 1
    assert "--per-step: not with --live" in capsys.readouterr().err
