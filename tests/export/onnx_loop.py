"""Shared by the ONNX parity tests: random graph inputs and a plain ONNX Runtime loop over the two graphs
(prefix once, then the step graph num_steps times, fed `step_index` or `t`/`dt` as its inputs ask)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from pi0edge import contract as c
from pi0edge.schedule import euler_schedule

NUM_STEPS = 10


def random_observation(cfg, batch: int, seed: int, masked_camera: int | None, prompt_lengths: list[int]):
    g = torch.Generator().manual_seed(seed)
    s = cfg.vision.image_size
    images = torch.randint(0, 256, (batch, cfg.num_cameras, s, s, 3), dtype=torch.uint8, generator=g)
    image_masks = torch.ones(batch, cfg.num_cameras, dtype=torch.bool)
    if masked_camera is not None:
        images[:, masked_camera] = 0  # a missing camera, as the runtime feeds it
        image_masks[:, masked_camera] = False
    tokens = torch.zeros(batch, cfg.max_token_len, dtype=torch.int64)
    token_masks = torch.zeros(batch, cfg.max_token_len, dtype=torch.bool)
    for i, n in enumerate(prompt_lengths):
        tokens[i, :n] = torch.randint(4, cfg.vocab_size, (n,), generator=g)
        token_masks[i, :n] = True
    return {"images": images, "image_masks": image_masks, "tokens": tokens, "token_masks": token_masks,
            "state": torch.randn(batch, cfg.state_dim, generator=g)}


def run_onnx(graph_dir, obs: dict, noise: np.ndarray, num_steps: int = NUM_STEPS):
    """Prefix once, then the step graph num_steps times, fed step_index or t/dt as its inputs ask."""
    sessions = {g: ort.InferenceSession(str(graph_dir / f"{g}.onnx"), providers=["CPUExecutionProvider"])
                for g in (c.PREFIX_GRAPH, c.DENOISE_STEP_GRAPH)}
    past_keys, past_values, prefix_mask = sessions[c.PREFIX_GRAPH].run(
        None, {name: obs[name].numpy() for name in (c.IMAGES, c.IMAGE_MASKS, c.TOKENS, c.TOKEN_MASKS)})
    step_inputs = {i.name for i in sessions[c.DENOISE_STEP_GRAPH].get_inputs()}
    times, dt = euler_schedule(num_steps)
    batch = noise.shape[0]
    x = noise
    for k in range(len(times)):
        feeds = {c.X_T: x, c.PAST_KEYS: past_keys, c.PAST_VALUES: past_values, c.PREFIX_MASK: prefix_mask,
                 **c.step_time_feeds(step_inputs, k, times, dt, batch)}
        if c.STATE in step_inputs:
            feeds[c.STATE] = obs["state"].numpy()
        (x,) = sessions[c.DENOISE_STEP_GRAPH].run([c.X_NEXT], feeds)
    return x, past_keys, past_values, prefix_mask
