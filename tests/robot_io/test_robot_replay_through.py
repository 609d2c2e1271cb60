"""`pi0edge replay --through`: a recorded demo episode and a LeRobotDataset v3 episode through a bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from robot_io_helpers import make_config, make_policy

from pi0edge.cli import main
from pi0edge.errors import ConfigError
from pi0edge.robot_io.config import example_config_path, load_robot_config
from pi0edge.robot_io.errors import EpisodeError
from pi0edge.robot_io.loop import run_loop
from pi0edge.robot_io.policy_spec import PolicyHandle, PolicySpec
from pi0edge.robot_io.recording import load_episode
from pi0edge.robot_io.replay_through import samples_from_episode

SEED = 7
REPRODUCED_ATOL = 1e-5  # same bundle, same seed, same inputs: float32 rounding only
FPS, FRAME_HW = 10, (48, 64)
CODEC_TOLERANCE = 4.0  # mp4v on a flat grey frame: a few levels at most


@pytest.fixture(scope="module")
def demo_episode(tiny_bundle_factory, tmp_path_factory):
    """An episode recorded on the demo robot (sim arm, synthetic camera) with a seeded tiny bundle."""
    bundle, _ = tiny_bundle_factory(action_horizon=50)
    path = tmp_path_factory.mktemp("demo") / "demo.episode"
    config = load_robot_config(example_config_path("sim_arm.yaml"))
    stats = run_loop(config, PolicyHandle(PolicySpec(str(bundle), seed=SEED)), "pick up the cube", 2.0,
                     record_path=str(path))
    assert stats.inferences >= 2, stats.summary()
    return bundle, path


def test_replay_through_the_recording_bundle_reproduces_its_chunks(demo_episode, tmp_path, capsys):
    bundle, episode = demo_episode
    out = tmp_path / "drift.json"
    assert main(["replay", str(episode), "--through", str(bundle), "--seed", str(SEED), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["samples"] == load_episode(episode).arrays["infer_obs_tick"].size
    assert [r["dim"] for r in report["per_dim"]] == ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle",
                                                     "wrist_rotate"]
    for row in report["per_dim"]:
        assert row["max"] <= REPRODUCED_ATOL, row
        assert row["dim"] in table


def test_replay_through_with_other_noise_reports_the_difference(demo_episode, tmp_path):
    bundle, episode = demo_episode
    out = tmp_path / "drift.json"
    assert main(["replay", str(episode), "--through", str(bundle), "--seed", str(SEED + 1), "--json", str(out)]) == 0
    assert max(r["max"] for r in json.loads(out.read_text())["per_dim"]) > REPRODUCED_ATOL


def test_replay_through_writes_the_plot(demo_episode, tmp_path):
    pytest.importorskip("matplotlib")
    bundle, episode = demo_episode
    png = tmp_path / "drift.png"
    assert main(["replay", str(episode), "--through", str(bundle), "--stride", "2", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_episode_recorded_without_frames_is_refused_by_name(tmp_path):
    path = tmp_path / "noframes.episode"
    run_loop(make_config(recording={"frames": False}), make_policy(), "go", 0.3, record_path=str(path))
    with pytest.raises(EpisodeError, match="without frames"):
        samples_from_episode(load_episode(path))


# --- LeRobotDataset v3 -------------------------------------------------------------------------------

def _grey(level: int) -> np.ndarray:
    return np.full((*FRAME_HW, 3), level, np.uint8)


def write_lerobot_v3(root, lengths=(4, 5), state_dim=6, action_dim=6):
    """Episodes one after another in one data file and one video file, as LeRobot's writer lays them out.
    Frame k of the video is grey level 20 * k, so a decoded frame names its place in the file."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    cv2 = pytest.importorskip("cv2")
    key = "observation.images.top"
    info = {"codebase_version": "v3.0", "fps": FPS, "total_episodes": len(lengths),
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": {"observation.state": {"dtype": "float32", "shape": [state_dim]},
                         "action": {"dtype": "float32", "shape": [action_dim],
                                    "names": [f"motor_{i}" for i in range(action_dim)]},
                         key: {"dtype": "video", "shape": [*FRAME_HW, 3]}}}
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    (root / "videos" / key / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    rng = np.random.default_rng(0)
    total = sum(lengths)
    starts = np.cumsum((0, *lengths))[:-1]
    data = {"observation.state": rng.uniform(-0.5, 0.5, (total, state_dim)).astype(np.float32).tolist(),
            "action": rng.uniform(-0.5, 0.5, (total, action_dim)).astype(np.float32).tolist(),
            "timestamp": [float(i - s) / FPS for s, n in zip(starts, lengths, strict=True) for i in range(s, s + n)],
            "frame_index": [i - s for s, n in zip(starts, lengths, strict=True) for i in range(s, s + n)],
            "episode_index": [e for e, n in enumerate(lengths) for _ in range(n)], "index": list(range(total))}
    pq.write_table(pa.table(data), root / "data" / "chunk-000" / "file-000.parquet")
    episodes = {"episode_index": list(range(len(lengths))), "tasks": [["fold the towel"]] * len(lengths),
                "length": list(lengths), "data/chunk_index": [0] * len(lengths), "data/file_index": [0] * len(lengths),
                f"videos/{key}/chunk_index": [0] * len(lengths), f"videos/{key}/file_index": [0] * len(lengths),
                f"videos/{key}/from_timestamp": [float(s) / FPS for s in starts]}
    pq.write_table(pa.table(episodes), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    writer = cv2.VideoWriter(str(root / "videos" / key / "chunk-000" / "file-000.mp4"),
                             cv2.VideoWriter_fourcc(*"mp4v"), FPS, FRAME_HW[::-1])
    for k in range(total):
        writer.write(_grey(20 * k))
    writer.release()
    return data


def test_lerobot_v3_episode_is_read_from_its_place_in_the_shared_files(tmp_path):
    from pi0edge.robot_io.lerobot_v3 import read_lerobot_episode

    data = write_lerobot_v3(tmp_path)
    ep = read_lerobot_episode(tmp_path, episode_index=1)  # frames 4..8 of the files
    np.testing.assert_array_equal(ep["state"], np.asarray(data["observation.state"][4:], np.float32))
    np.testing.assert_array_equal(ep["action"], np.asarray(data["action"][4:], np.float32))
    levels = ep["videos"]["observation.images.top"].reshape(5, -1).mean(axis=1)
    np.testing.assert_allclose(levels, 20 * np.arange(4, 9), atol=CODEC_TOLERANCE)
    assert ep["prompt"] == "fold the towel" and ep["action_names"][0] == "motor_0"


def test_replay_through_a_lerobot_v3_episode(tiny_bundle_factory, tmp_path, capsys):
    bundle, _ = tiny_bundle_factory()
    write_lerobot_v3(tmp_path / "ds")
    code = main(["replay", str(tmp_path / "ds"), "--through", str(bundle), "--episode-index", "1", "--json",
                 "--camera", "observation.images.top=base_0_rgb"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 5 and report["prompt"] == "fold the towel"
    assert [r["dim"] for r in report["per_dim"]] == [f"motor_{i}" for i in range(6)]
    assert all(r["samples"] == 5 and r["mae"] > 0 for r in report["per_dim"])


def test_lerobot_v3_dims_and_cameras_that_do_not_fit_the_bundle_are_named(tiny_bundle_factory, tmp_path):
    from pi0edge.robot_io.replay_through import samples_from_lerobot
    from pi0edge.runtime import Policy

    bundle, _ = tiny_bundle_factory()
    write_lerobot_v3(tmp_path / "ds7", state_dim=7)
    write_lerobot_v3(tmp_path / "ds")
    with Policy(bundle) as policy:
        with pytest.raises(ConfigError, match="state has 7 dims.*robot_state_dim is 6"):
            samples_from_lerobot(str(tmp_path / "ds7"), policy)
        with pytest.raises(ConfigError, match="--camera"):
            samples_from_lerobot(str(tmp_path / "ds"), policy, cameras={"observation.images.top": "nope"})


def test_lerobot_v3_without_a_layout_field_is_an_episode_error_naming_it(tmp_path):
    from pi0edge.robot_io.lerobot_v3 import read_lerobot_episode

    write_lerobot_v3(tmp_path)
    info = json.loads((tmp_path / "meta" / "info.json").read_text())
    del info["video_path"]
    (tmp_path / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(EpisodeError, match="video_path"):
        read_lerobot_episode(tmp_path, 0)
