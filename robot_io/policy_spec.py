"""A policy described by what loads it, so another process can load it itself.

The inference process (inference_process.py) is started with 'spawn': it receives a small picklable
spec, never the policy object (a loaded model does not pickle, and ONNX Runtime threads do not survive
fork). `PolicyHandle` stands in for the policy on the loop's side: the dims and camera names the loop
checks, read from the bundle's manifest without loading the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PolicySpec:
    """A bundle on a backend: `pi0edge.runtime.Policy(bundle_dir, backend, seed=seed, intra_op_threads=threads)`."""

    bundle_dir: str
    backend: str = "ort-cpu"
    threads: int | None = None  # ONNX Runtime intra-op threads; None: the backend's default
    seed: int | None = None  # of the policy's noise generator; None: fresh noise each run
    temperature: float = 0.0  # Pi0-FAST's token sampling (0: greedy)

    def load(self):
        from pi0edge.runtime import Policy
        from pi0edge.runtime.profile import synthetic_observation

        options = {"intra_op_threads": self.threads} if self.threads else {}
        policy = Policy(self.bundle_dir, backend=self.backend, seed=self.seed, temperature=self.temperature,
                        **options)
        # One chunk before the loop starts: the first run allocates (over a second on the tiny bundle), and
        # would be the loop's first chunk otherwise. Given noise, so the seeded generator is left untouched.
        m = policy.manifest
        policy.infer(synthetic_observation(policy), noise=np.zeros((m.action_horizon, m.action_dim), np.float32))
        return policy

    def describe(self) -> PolicyShape:
        from pi0edge.manifest import load_manifest

        m = load_manifest(self.bundle_dir, verify_checksums=False)  # the loading process verifies them
        return PolicyShape(tuple(m.cameras), m.action_horizon, m.robot_state_dim, m.robot_action_dim, m.rtc)


@dataclass(frozen=True)
class FakePolicySpec:
    """robot_io.fake_policy.FakePolicy(**dict(kwargs)): the benchmark and the tests run it in a process too.
    kwargs holds plain values only (no callables or events: they would not reach the process)."""

    kwargs: tuple[tuple[str, object], ...] = ()

    def load(self):
        from .fake_policy import FakePolicy

        return FakePolicy(**dict(self.kwargs))

    def describe(self) -> PolicyShape:
        policy = self.load()  # cheap: no model
        return PolicyShape(tuple(policy.camera_names), int(policy.action_horizon), int(policy.robot_state_dim),
                           int(policy.robot_action_dim))


@dataclass(frozen=True)
class PolicyShape:
    """What the loop and the shared-memory buffers need to know about a policy."""

    camera_names: tuple[str, ...]
    action_horizon: int
    robot_state_dim: int
    robot_action_dim: int
    supports_rtc: bool = False  # an `export --rtc` bundle: infer takes real-time chunking guidance


class PolicyHandle:
    """The policy surface the loop checks (camera_names, action_horizon, robot_state_dim,
    robot_action_dim) without the model; `infer` loads it in this process on first use (`inference:
    thread`), the process worker loads it in its own process from `spec`."""

    def __init__(self, spec: PolicySpec | FakePolicySpec):
        self.spec = spec
        self.shape = spec.describe()
        self._policy = None

    camera_names = property(lambda self: self.shape.camera_names)
    action_horizon = property(lambda self: self.shape.action_horizon)
    robot_state_dim = property(lambda self: self.shape.robot_state_dim)
    robot_action_dim = property(lambda self: self.shape.robot_action_dim)
    supports_rtc = property(lambda self: self.shape.supports_rtc)

    def load(self):
        if self._policy is None:
            self._policy = self.spec.load()
        return self._policy

    def infer(self, observation, guidance=None):
        return infer_guided(self.load(), observation, guidance)


def infer_guided(policy, observation, guidance=None):
    """policy.infer, with the rtc strategy's guidance when there is some: a policy without rtc (a test double,
    a remote server) takes no `guidance` argument."""
    return policy.infer(observation) if guidance is None else policy.infer(observation, guidance=guidance)


def spec_of(policy) -> PolicySpec | FakePolicySpec | None:
    """The spec another process can load `policy` from, or None for an in-process object (a FakePolicy
    with callables, a test double). A loaded runtime Policy is described by its bundle and backend."""
    if isinstance(policy, PolicyHandle):
        return policy.spec
    # backend_name: the backend that really runs it (auto resolved), for flow-matching and Pi0-FAST alike
    manifest, backend_name = getattr(policy, "manifest", None), getattr(policy, "backend_name", None)
    bundle_dir = getattr(manifest, "bundle_dir", None)
    if bundle_dir is not None and isinstance(backend_name, str):
        temperature = getattr(getattr(policy, "fast", None), "temperature", 0.0)
        return PolicySpec(str(bundle_dir), backend_name, temperature=float(temperature))
    return None
