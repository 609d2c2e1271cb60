"""Calibration and evaluation of `pi0edge quantize`: what the float32 policy's graphs see, the activation
ranges they produce, and the action error of a quantized bundle against the float32 one (docs/quantization.md).

Ranges (max calibration): each quantized GEMM's activation input gets an extra graph output, max |x|
(Abs -> ReduceMax). That augmented graph is saved in a work folder beside a hard link of the SAME external data
file (external data locations are relative; ONNX Runtime refuses a symlink that leaves the model's folder),
and ONNX Runtime CPU runs it over the calibration samples: the weights are never loaded into Python, and only
one session of one graph is alive at a time.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pi0edge import contract as c
from pi0edge.manifest import Manifest
from pi0edge.schedule import euler_schedule

# Held-out evaluation observations use seeds the calibration never sees.
EVAL_SEED_OFFSET = 1_000_003
AMAX_SUFFIX = "_amax"


def run_chunk_recording(policy, observation, noise: np.ndarray) -> tuple[dict, list[dict], np.ndarray]:
    """One chunk through the policy's own ORT sessions, plain `run` calls, keeping every graph input.

    -> (prefix feeds, the step feeds of each Euler step, final x [1, H, A] in normalized space). The KV cache
    arrays are shared by the chunk's steps (no copy per step). Same schedule and inputs as Policy.infer."""
    m: Manifest = policy.manifest
    backend = policy.backend
    prefix_names = m.graphs[c.PREFIX_GRAPH].input_names
    step_names = m.graphs[c.DENOISE_STEP_GRAPH].input_names
    feeds = policy.preprocess([observation])
    prefix_feeds = {name: feeds[name] for name in prefix_names}
    keys, values, prefix_mask = backend.prefix_session.run([c.PAST_KEYS, c.PAST_VALUES, c.PREFIX_MASK], prefix_feeds)
    times, dt = euler_schedule(m.fixed_num_steps or m.num_steps)
    x = np.asarray(noise, np.float32).reshape(1, m.action_horizon, m.action_dim)
    steps = []
    for k in range(len(times)):
        step = {c.X_T: x, c.PAST_KEYS: keys, c.PAST_VALUES: values, c.PREFIX_MASK: prefix_mask,
                **c.step_time_feeds(step_names, k, times, dt, batch=1)}
        if c.STATE in step_names:
            step[c.STATE] = feeds["state"]
        steps.append({name: step[name] for name in step_names})
        (x,) = backend.denoise_session.run([c.X_NEXT], steps[-1])
    return prefix_feeds, steps, x


def _noise(manifest: Manifest, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, manifest.action_horizon, manifest.action_dim), dtype=np.float32)


def collect_calibration(policy, chunks: int, seed: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """graph -> calibration samples, from `chunks` synthetic observations (seeds seed, seed+1, ...)."""
    from pi0edge.runtime.profile import synthetic_observation

    prefix, step = [], []
    for i in range(chunks):
        obs = synthetic_observation(policy, seed=seed + i)
        prefix_feeds, step_feeds, _ = run_chunk_recording(policy, obs, _noise(policy.manifest, seed + i))
        prefix.append(prefix_feeds)
        step.extend(step_feeds)
    return {c.PREFIX_GRAPH: prefix, c.DENOISE_STEP_GRAPH: step}


def evaluate_actions(bundle_dir: Path, chunks: int, seed: int, *, verify_checksums: bool = True
                     ) -> tuple[np.ndarray, float]:
    """Normalized actions [chunks, H, robot_action_dim] of Policy.infer (ort-cpu) on held-out synthetic
    observations with fixed noise, and the median chunk time in ms: after one warm-up chunk when chunks > 1;
    a single chunk (a full-size run, where a chunk takes minutes) is timed cold."""
    from pi0edge.runtime import Policy
    from pi0edge.runtime.profile import synthetic_observation

    actions, total_ms = [], []
    with Policy(bundle_dir, "ort-cpu", verify_checksums=verify_checksums) as policy:
        m = policy.manifest
        for i in range(-1 if chunks > 1 else 0, chunks):  # i = -1: warm-up, not counted
            s = seed + EVAL_SEED_OFFSET + max(i, 0)
            chunk = policy.infer(synthetic_observation(policy, seed=s), noise=_noise(m, s))
            if i >= 0:
                # read_actions: the model-space x before unnormalization; only the robot's dims carry meaning
                actions.append(policy.backend.read_actions()[0, :, : m.robot_action_dim])
                total_ms.append(chunk.timings_ms["total_ms"])
    return np.stack(actions), float(np.median(total_ms))


@dataclass(frozen=True)
class ActionError:
    """Quantized vs float32 actions on the same observations and noise, normalized space, robot action dims."""

    max_abs: float
    rms: float
    reference_rms: float  # the float32 actions' own RMS: the scale the error compares against
    chunks: int

    def to_dict(self) -> dict:
        return {"action_error_max_abs": self.max_abs, "action_error_rms": self.rms,
                "reference_action_rms": self.reference_rms, "eval_chunks": self.chunks}


def action_error(reference: np.ndarray, quantized: np.ndarray) -> ActionError:
    diff = quantized.astype(np.float64) - reference.astype(np.float64)
    return ActionError(max_abs=float(np.abs(diff).max()), rms=float(np.sqrt(np.mean(diff**2))),
                       reference_rms=float(np.sqrt(np.mean(reference.astype(np.float64) ** 2))),
                       chunks=int(reference.shape[0]))


# ---- activation ranges -------------------------------------------------------------------------------------


def add_amax_outputs(model, tensors: list[str]) -> list[str]:
    """Add max |x| of each named tensor as a scalar graph output (in place); -> the output names."""
    import onnx
    from onnx import helper

    outputs = []
    for name in tensors:
        absolute, amax = name + "_abs", name + AMAX_SUFFIX
        model.graph.node.extend([helper.make_node("Abs", [name], [absolute], name=absolute),
                                 helper.make_node("ReduceMax", [absolute], [amax], name=amax, keepdims=0)])
        model.graph.output.append(helper.make_tensor_value_info(amax, onnx.TensorProto.FLOAT, []))
        outputs.append(amax)
    return outputs


def link_external_data(model, source_dir: Path, work_dir: Path) -> None:
    """Make the model's external data files visible from work_dir: a hard link (no bytes copied), or a copy
    where work_dir is on another file system."""
    from pi0edge.export.quantize.qdq import external_location

    locations = {w["location"] for t in model.graph.initializer if (w := external_location(t)) is not None}
    for location in locations:
        target = work_dir / location
        if not target.exists():
            try:
                os.link(source_dir / location, target)
            except OSError:
                shutil.copyfile(source_dir / location, target)


def calibrate_amax(graph_path: Path, tensors: list[str], samples: list[dict[str, np.ndarray]],
                   work_dir: Path) -> dict[str, float]:
    """tensor -> max |x| over the samples, from ONNX Runtime CPU running graph_path with amax outputs added."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(graph_path), load_external_data=False)
    outputs = add_amax_outputs(model, sorted(set(tensors)))
    work_dir.mkdir(parents=True, exist_ok=True)
    link_external_data(model, graph_path.parent, work_dir)
    augmented = work_dir / graph_path.name
    onnx.save(model, str(augmented))
    del model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
    amax = dict.fromkeys(outputs, 0.0)
    for sample in samples:
        for name, value in zip(outputs, session.run(outputs, sample), strict=True):
            amax[name] = max(amax[name], float(value))
    del session
    shutil.rmtree(work_dir)
    return {name[: -len(AMAX_SUFFIX)]: value for name, value in amax.items()}
