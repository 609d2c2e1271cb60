"""The eager reference runs on any device (the GPU baseline of benchmarks/gpu_latency.py): every tensor it
makes is made on its inputs' device. On the `meta` device a CPU-made tensor is an error, so this checks it
on a machine without a GPU."""

from __future__ import annotations

import pytest
import torch

from pi0edge.export.config import tiny
from pi0edge.export.model import Pi0Model
from pi0edge.export.onnx.graphs import example_inputs


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_sample_actions_makes_every_tensor_on_the_inputs_device(model_type):
    cfg = tiny(model_type)
    with torch.device("meta"):
        model = Pi0Model(cfg).eval()
    observation = {k: v.to("meta") for k, v in example_inputs(cfg, 2, "float32")["prefix"].items()}
    observation["state"] = torch.zeros(2, cfg.state_dim, device="meta")
    noise = torch.zeros(2, cfg.action_horizon, cfg.action_dim, device="meta")
    with torch.no_grad():
        actions = model.sample_actions(observation, noise)
    assert actions.device.type == "meta" and actions.shape == noise.shape
