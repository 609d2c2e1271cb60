"""benchmarks/serve_load.py: --quick runs a tiny bundle with 1 and 4 robots, unbatched and batched (and on Ray
Serve with 2 replicas where the `ray` extra is installed), and writes a table and a JSON record of the
documented shape (the figures themselves are timings: not checked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("websockets")
pytest.importorskip("openpi_client")  # serve_overhead, whose bundle and observation helpers it reuses

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import serve_load  # noqa: E402

CELL_KEYS = {"config", "robots", "max_batch", "ray_replicas", "mode", "duration_s", "offered_requests_per_s",
             "requests", "chunks_per_s", "latency_p50_ms", "latency_p99_ms", "deadline_misses", "server_peak_rss_mib"}


def test_serve_load_quick_runs_1_and_4_robots_single_and_batched_and_writes_table_and_json(
        tiny_bundle_factory, tmp_path, capsys):
    bundle, _ = tiny_bundle_factory()
    out = tmp_path / "load.json"
    assert serve_load.main(["--quick", "--bundle", str(bundle), "--duration-s", "1", "--json", str(out),
                            "--ray-replicas", "0"]) == 0
    figures = json.loads(out.read_text())
    cells = figures["cells"]
    assert [(c["robots"], c["mode"], c["max_batch"]) for c in cells] == [
        (1, "single", 1), (4, "single", 1), (4, "batched", 4)]
    for cell in cells:
        assert set(cell) == CELL_KEYS
        assert cell["config"] == "tiny" and cell["duration_s"] == 1.0
        assert cell["offered_requests_per_s"] == cell["robots"] / 0.5  # 25 of 50 Hz ticks a chunk
        assert cell["requests"] >= cell["robots"] and 0 <= cell["deadline_misses"] <= cell["requests"]
        assert cell["server_peak_rss_mib"] > 0  # the subprocess server's VmHWM
    assert figures["robot_model"] == {"control_hz": 50.0, "n_execute": 25, "period_s": 0.5}
    assert set(figures["batched_over_single"]) == {"tiny/4"}
    assert figures["machine"]["cpus"] >= 1 and len(figures["machine"]["load_average_before"]) == 3
    assert figures["ray_over_single"] == {}

    printed = capsys.readouterr().out.splitlines()
    header = printed.index(next(line for line in printed if line.startswith("| config | robots |")))
    rows = printed[header + 2:header + 2 + len(cells)]
    assert all(row.count("|") == 10 for row in rows)
    assert rows[2].startswith("| tiny | 4 | batched (4) |")
    assert printed[-2].startswith("batched / single chunks/s: tiny/4 ")


def test_serve_load_ray_cells_serve_every_robot_from_2_replicas_and_sum_the_process_trees_rss(
        tiny_bundle_factory, tmp_path):
    pytest.importorskip("ray.serve", reason="the `ray` extra (pip install 'pi0edge[ray]') is not installed")
    bundle, _ = tiny_bundle_factory()
    out = tmp_path / "load.json"
    assert serve_load.main(["--bundle", str(bundle), "--robots", "2", "--duration-s", "1", "--json", str(out)]) == 0
    cells = json.loads(out.read_text())["cells"]
    assert [(c["mode"], c["max_batch"], c["ray_replicas"]) for c in cells] == [
        ("single", 1, 0), ("batched", 2, 0), ("ray 2 replicas", 1, 2)]
    single, _, ray = cells
    assert ray["requests"] >= 2 and set(ray) == CELL_KEYS
    assert ray["server_peak_rss_mib"] > 2 * single["server_peak_rss_mib"]  # driver, Ray, proxy and two policies
    assert set(json.loads(out.read_text())["ray_over_single"]) == {"tiny/2"}


@pytest.mark.parametrize("argv, message", [
    (["--robots", "0"], "--robots must be >= 1"),
    (["--duration-s", "-1"], "--duration-s must be > 0"),
    (["--duration-s", "0"], "--duration-s must be > 0"),
    (["--bundle", "x", "--config", "tiny", "mid"], "--bundle serves one bundle"),
    (["--ray-replicas", "-1"], "--ray-replicas must be >= 0"),
])
def test_serve_load_refuses_bad_options_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        serve_load.main(argv)
    assert message in capsys.readouterr().err
