"""Real-time chunking in the graphs (`export --rtc`) against a plain numpy transcription of LeRobot's
`RTCProcessor.denoise_step` / `get_prefix_weights` (src/lerobot/policies/rtc/modeling_rtc.py) driving the eager
reference model's velocity, through `Policy` on the step graph and on the loop graph (docs/model.md,
"Real-time chunking")."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from pi0edge.errors import ObservationError  # noqa: E402
from pi0edge.runtime import Observation, Policy  # noqa: E402
from pi0edge.runtime.types import RtcGuidance  # noqa: E402

SCHEDULES = ("zeros", "ones", "linear", "exp")
TOLERANCE = 1e-5  # fp32


# ---- LeRobot's formula, transcribed (the code under test is not used here) -------------------------

def lerobot_prefix_weights(schedule: str, start: int, end: int, total: int) -> np.ndarray:
    start = min(start, end)
    if schedule == "zeros":
        w = np.zeros(total, np.float32)
        w[:start] = 1.0
        return w
    if schedule == "ones":
        w = np.ones(total, np.float32)
        w[end:] = 0.0
        return w
    steps = total - max(total - end, 0) - start
    empty = end <= start or steps <= 0
    lin = np.zeros(0, np.float32) if empty else np.linspace(1, 0, steps + 2, dtype=np.float32)[1:-1]
    if schedule == "exp":
        lin = lin * np.expm1(lin) / np.float32(math.e - 1)
    w = np.concatenate([lin, np.zeros(max(total - end, 0), np.float32)])
    return np.concatenate([np.ones(min(start, total), np.float32), w]).astype(np.float32)


def lerobot_guided_velocity(x_t, v_t, time: float, leftover, inference_delay: int, execution_horizon: int,
                            schedule: str, max_guidance_weight: float) -> np.ndarray:
    """RTCProcessor.denoise_step with the velocity computed before x_t requires grad: d x1 / d x_t is the
    identity, so the correction is the weighted error itself."""
    tau = np.float32(1 - time)
    execution_horizon = min(execution_horizon, leftover.shape[1])
    b, h, a = x_t.shape
    padded = np.zeros_like(x_t)
    padded[:, :leftover.shape[1], :leftover.shape[2]] = leftover
    weights = lerobot_prefix_weights(schedule, inference_delay, execution_horizon, h)[None, :, None]
    x1 = x_t - np.float32(time) * v_t
    correction = (padded - x1) * weights
    beta = np.float32(max_guidance_weight)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_r2 = ((1 - tau) ** 2 + tau ** 2) / (1 - tau) ** 2
        c = np.nan_to_num((1 - tau) / tau, posinf=beta)
        weight = min(np.nan_to_num(c * inv_r2, posinf=beta), beta)
    return v_t - weight * correction


def reference_chunk(model, policy: Policy, obs: Observation, noise: np.ndarray, guidance: RtcGuidance | None):
    """LeRobot's euler_integrate (time = 1 + step dt, x += dt v) over the eager model, normalized actions [1, H, A]."""
    feeds = policy.preprocess([obs])
    with torch.no_grad():
        keys, values, mask = model.prefix(*(torch.from_numpy(feeds[k]) for k in
                                            ("images", "image_masks", "tokens", "token_masks")))
        state = None if feeds["state"] is None else torch.from_numpy(feeds["state"])  # pi0.5: in the prompt
        n = model.cfg.num_steps
        dt = -1.0 / n
        x = noise[None].astype(np.float32)
        leftover = None
        if guidance is not None:
            leftover = policy.manifest.norm_stats.normalize_actions(guidance.leftover)[None]
        for step in range(n):
            time = 1.0 + step * dt
            t = torch.full((1,), time, dtype=torch.float32)
            _, v = model.denoise_step(torch.from_numpy(x), t, torch.full((1,), dt), keys, values, mask, state)
            v = v.numpy()
            if guidance is not None:
                v = lerobot_guided_velocity(x, v, time, leftover, guidance.inference_delay,
                                            guidance.execution_horizon, guidance.schedule,
                                            guidance.max_guidance_weight)
            x = (x + np.float32(dt) * v).astype(np.float32)
    return x


def observation(seed: int = 1) -> Observation:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return Observation(images={"base_0_rgb": image}, state=rng.standard_normal(6).astype(np.float32),
                       prompt="pick up the red cube")


@pytest.fixture(scope="module")
def rtc_bundle(tiny_bundle_factory):
    return tiny_bundle_factory("pi0", rtc=True)


@pytest.mark.parametrize("whole_loop", [False, True], ids=["step_graph", "loop_graph"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_rtc_graphs_equal_lerobot_formula(rtc_bundle, schedule, whole_loop):
    bundle, model = rtc_bundle
    rng = np.random.default_rng(7)
    with Policy(bundle, whole_loop=whole_loop) as policy:
        horizon = policy.action_horizon
        noise = rng.standard_normal((horizon, policy.manifest.action_dim)).astype(np.float32)
        # the executing chunk's leftover, shorter than the horizon (zero-padded rows and dims in the graph)
        guidance = RtcGuidance(leftover=rng.standard_normal((horizon - 3, 6)).astype(np.float32),
                               inference_delay=2, execution_horizon=6, schedule=schedule, max_guidance_weight=5.0)
        obs = observation()
        _, internals = policy.infer_internals(obs, noise=noise, guidance=guidance)
        expected = reference_chunk(model, policy, obs, noise, guidance)
        plain = reference_chunk(model, policy, obs, noise, None)
    np.testing.assert_allclose(internals.normalized_actions, expected, atol=TOLERANCE, rtol=0)
    if schedule != "zeros" or guidance.inference_delay:
        assert np.abs(expected - plain).max() > 100 * TOLERANCE  # the guidance did act


@pytest.mark.parametrize("whole_loop", [False, True], ids=["step_graph", "loop_graph"])
def test_rtc_bundle_without_guidance_is_the_plain_bundle_exactly(tiny_bundle_factory, rtc_bundle, whole_loop):
    """The first chunk (no previous chunk): W = 0, and the guided step computes the plain one bit for bit."""
    plain_bundle, _ = tiny_bundle_factory("pi0")
    noise = np.random.default_rng(3).standard_normal((10, 8)).astype(np.float32)
    with Policy(rtc_bundle[0], whole_loop=whole_loop) as rtc, Policy(plain_bundle, whole_loop=whole_loop) as plain:
        got = rtc.infer(observation(), noise=noise).actions
        want = plain.infer(observation(), noise=noise).actions
    np.testing.assert_array_equal(got, want)


def test_rtc_plain_graphs_taking_t_and_dt_equal_lerobot_formula(tiny_bundle_factory):
    """`export --rtc --no-optimize`: the step graph reads t and dt as inputs instead of its step's tables."""
    bundle, model = tiny_bundle_factory("pi0", optimize=None, rtc=True)
    rng = np.random.default_rng(9)
    with Policy(bundle) as policy:
        assert not policy.backend.whole_loop  # no loop graph without precompute_time
        noise = rng.standard_normal((policy.action_horizon, policy.manifest.action_dim)).astype(np.float32)
        guidance = RtcGuidance(leftover=rng.standard_normal((8, 6)).astype(np.float32), inference_delay=1,
                               execution_horizon=6, schedule="linear", max_guidance_weight=3.0)
        obs = observation(5)
        _, internals = policy.infer_internals(obs, noise=noise, guidance=guidance)
        expected = reference_chunk(model, policy, obs, noise, guidance)
    np.testing.assert_allclose(internals.normalized_actions, expected, atol=TOLERANCE, rtol=0)


def test_rtc_pi05_loop_graph_equals_lerobot_formula(tiny_bundle_factory):
    bundle, model = tiny_bundle_factory("pi05", rtc=True)
    rng = np.random.default_rng(11)
    with Policy(bundle) as policy:
        noise = rng.standard_normal((policy.action_horizon, policy.manifest.action_dim)).astype(np.float32)
        guidance = RtcGuidance(leftover=rng.standard_normal((7, 6)).astype(np.float32), inference_delay=3,
                               execution_horizon=8, schedule="exp")
        obs = observation(4)
        _, internals = policy.infer_internals(obs, noise=noise, guidance=guidance)
        expected = reference_chunk(model, policy, obs, noise, guidance)
    np.testing.assert_allclose(internals.normalized_actions, expected, atol=TOLERANCE, rtol=0)


def test_plain_bundle_refuses_guidance_naming_the_rtc_export(tiny_bundle_factory):
    bundle, _ = tiny_bundle_factory("pi0")
    guidance = RtcGuidance(leftover=np.zeros((5, 6), np.float32), inference_delay=1, execution_horizon=5)
    with Policy(bundle) as policy, pytest.raises(ObservationError, match="--rtc"):
        policy.infer(observation(), guidance=guidance)


def test_rtc_leftover_of_the_wrong_width_is_refused_with_the_expected_shape(rtc_bundle):
    guidance = RtcGuidance(leftover=np.zeros((5, 4), np.float32), inference_delay=1, execution_horizon=5)
    with Policy(rtc_bundle[0]) as policy, pytest.raises(ObservationError, match=r"\[n, 6\]"):
        policy.infer(observation(), guidance=guidance)


@pytest.fixture(scope="module")
def mid_rtc_bundle(tmp_path_factory, tokenizer_path):
    """mid() (VLM 512 x 6, expert 256 x 6, H 50, A 32), exported once for the module: the four tests take
    about 90 s on 2 shared cores, most of it the export."""
    from pi0edge.export.bundle import export_bundle
    from pi0edge.export.checkpoint import load_checkpoint
    from pi0edge.export.config import mid
    from pi0edge.export.random_checkpoint import write_random_checkpoint

    folder = tmp_path_factory.mktemp("rtc-mid")
    checkpoint = write_random_checkpoint(folder / "checkpoint", mid("pi0"), seed=0, tokenizer=False,
                                         robot_state_dim=6, robot_action_dim=6)
    export_bundle(checkpoint, folder / "bundle", tokenizer=tokenizer_path, rtc=True)
    return folder / "bundle", load_checkpoint(checkpoint).model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_rtc_mid_size_graphs_equal_lerobot_formula(mid_rtc_bundle, schedule):
    bundle, model = mid_rtc_bundle
    rng = np.random.default_rng(5)
    obs = observation(2)
    for whole_loop in (False, True):
        with Policy(bundle, whole_loop=whole_loop) as policy:
            noise = rng.standard_normal((policy.action_horizon, policy.manifest.action_dim)).astype(np.float32)
            guidance = RtcGuidance(leftover=rng.standard_normal((35, 6)).astype(np.float32), inference_delay=4,
                                   execution_horizon=10, schedule=schedule)
            _, internals = policy.infer_internals(obs, noise=noise, guidance=guidance)
            expected = reference_chunk(model, policy, obs, noise, guidance)
        np.testing.assert_allclose(internals.normalized_actions, expected, atol=TOLERANCE, rtol=0)
