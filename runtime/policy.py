"""`Policy`: a bundle on a backend; observation(s) in, an action chunk in robot units out.

Per chunk (docs/runtime.md, "One chunk"): preprocess (resize-with-pad, tokenize, normalize state) -> prefix once
-> the Euler loop over the KV buffers (one loop-graph call, or num_steps step-graph calls) -> crop to the
robot's dims and unnormalize.
The per-stage wall times are measured here, so `profile`, `run` and the benchmarks read the same numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pi0edge.errors import BackendUnavailableError, ObservationError
from pi0edge.manifest import Manifest, load_manifest
from pi0edge.runtime.backends.base import Backend
from pi0edge.runtime.memory_budget import check_weights_fit
from pi0edge.runtime.preprocess import AssembleImages, FinishActions, PrepareState, PromptTokenizer, normalize_state
from pi0edge.runtime.rtc_inputs import rtc_feeds
from pi0edge.runtime.types import ActionChunk, ChunkInternals, ChunkTimings, Observation, PolicyInputs, RtcGuidance
from pi0edge.schedule import euler_schedule

log = logging.getLogger(__name__)

BACKENDS = ("auto", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt")


def make_backend(manifest: Manifest, backend: str, **options):
    """Instantiate a backend by name; `auto` picks the fastest one this machine can run."""
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend == "auto":
        return _auto_backend(manifest, **options)
    if backend == "tensorrt":
        from pi0edge.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(manifest, **options)
    from pi0edge.runtime.backends.ort import OrtBackend

    return OrtBackend(manifest, backend, **options)


def _accepted(cls, options: dict) -> dict:
    """The subset of options a backend's constructor takes (auto hands one set to several backends)."""
    import inspect

    params = inspect.signature(cls).parameters
    return {k: v for k, v in options.items() if k in params}


AUTO_ORDER = ("tensorrt", "ort-trt", "ort-cuda", "ort-cpu")  # fastest first


def _auto_backend(manifest: Manifest, **options):
    """The first backend of AUTO_ORDER that starts, each skip logged with its reason (one INFO line each): a
    CPU fallback is never silent."""
    from pi0edge.runtime.backends.ort import OrtBackend

    reasons = []
    for name in AUTO_ORDER:
        try:
            if name == "tensorrt":
                from pi0edge.runtime.backends.tensorrt import TensorRTBackend

                return TensorRTBackend(manifest, **_accepted(TensorRTBackend, options))
            return OrtBackend(manifest, name, **_accepted(OrtBackend, options))
        except (BackendUnavailableError, ImportError) as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - a provider listed but failing in a way ORT words itself
            reason = f"{type(exc).__name__}: {exc}"
        log.info("auto: skipped %s: %s", name, reason)
        reasons.append(f"{name}: {reason}")
    raise BackendUnavailableError("no backend could start: " + "; ".join(reasons))


class Policy:
    """policy = Policy("bundle/"); chunk = policy.infer(Observation(images, state, prompt))."""

    def __init__(self, bundle_dir: str | Path, backend: str = "ort-cpu", *, verify_checksums: bool = True,
                 seed: int | None = None, temperature: float = 0.0, **backend_options):
        """temperature: Pi0-FAST's token sampling (0: greedy); flow-matching bundles take only 0."""
        self.manifest = load_manifest(bundle_dir, verify_checksums=verify_checksums)
        m = self.manifest
        check_weights_fit(m, backend)  # before any session allocates
        self.fast = None
        if m.is_fast:  # Pi0-FAST: a decode loop instead of the Euler loop (runtime/fast_policy.py)
            from pi0edge.runtime.fast_policy import FastChunks

            self.fast = FastChunks(m, backend, temperature, **backend_options)
            runner = self.fast.decoder
        elif temperature:
            raise ObservationError(f"{m.bundle_dir}: temperature is a Pi0-FAST option; this is a {m.model_type} "
                                   "bundle (its randomness is the noise)")
        else:
            self.backend: Backend = make_backend(m, backend, **backend_options)
            runner = self.backend
        # The truth about where it runs (auto may have fallen back): profile, doctor and logs print these.
        self.backend_name: str = runner.name
        self.providers: tuple[str, ...] = tuple(runner.providers)  # proven at start-up by ORT backends
        self.assemble_images = AssembleImages(m.cameras, m.image_size)
        # Pi0-FAST's chunks already loaded the same tokenizer.model for their prompts
        self.tokenizer = (self.fast.tokenizer if self.fast is not None
                          else PromptTokenizer(m.path(m.tokenizer_file), m.max_token_len, m.model_type))
        self.prepare_state = PrepareState(m.norm_stats, m.state_dim)
        self.finish_actions = FinishActions(m.norm_stats, m.robot_action_dim)
        self.rng = np.random.default_rng(seed)
        # Optimized step graphs carry the schedule (time tables, folded dt): only this step count is valid.
        self.fixed_num_steps = m.fixed_num_steps
        log.info("policy %s (%s, %s) on %s (%s)", m.bundle_dir, m.model_type, m.precision, self.backend_name,
                 ", ".join(self.providers))

    # what robot_io needs to know about a policy
    @property
    def camera_names(self) -> tuple[str, ...]:
        return self.manifest.cameras

    @property
    def action_horizon(self) -> int:
        return self.manifest.action_horizon

    @property
    def robot_state_dim(self) -> int:
        return self.manifest.robot_state_dim

    @property
    def robot_action_dim(self) -> int:
        return self.manifest.robot_action_dim

    def preprocess(self, observations: Sequence[Observation]) -> PolicyInputs:
        """Observations -> the prefix graph's inputs and the step graph's state, batched."""
        images, image_masks, tokens, token_masks, states = [], [], [], [], []
        for obs in observations:
            if not isinstance(obs, Observation):
                raise ObservationError(f"expected pi0edge.runtime.Observation, got {type(obs).__name__}")
            imgs, masks = self.assemble_images(obs.images)
            images.append(imgs)
            image_masks.append(masks)
            if self.fast is not None:
                tok, tok_mask = self.fast.prompt_tokens(obs)
            elif self.manifest.is_pi05:
                tok, tok_mask = self.tokenizer(obs.prompt, normalize_state(obs.state, self.manifest.norm_stats))
            else:
                states.append(self.prepare_state(obs.state))
                tok, tok_mask = self.tokenizer(obs.prompt)
            tokens.append(tok)
            token_masks.append(tok_mask)
        return PolicyInputs(images=np.stack(images), image_masks=np.stack(image_masks), tokens=np.stack(tokens),
                            token_masks=np.stack(token_masks), state=np.stack(states) if states else None)

    @property
    def supports_rtc(self) -> bool:
        """The bundle is the real-time chunking variant (`pi0edge export --rtc`): infer takes `guidance`."""
        return self.manifest.rtc

    def infer(self, observation: Observation | Sequence[Observation], noise: np.ndarray | None = None,
              num_steps: int | None = None, guidance: RtcGuidance | None = None) -> ActionChunk:
        """One action chunk. A single observation gives actions [H, robot_action_dim]; a list of B
        observations (several robots) gives [B, H, robot_action_dim]. noise [B, H, A] (or [H, A]) makes the
        result reproducible; otherwise it comes from the policy's seeded generator. num_steps: Euler steps
        (default: the bundle's; a bundle exported for a fixed count refuses another). guidance: real-time
        chunking towards the executing chunk's leftover (an `export --rtc` bundle; None: plain inference)."""
        chunk, _ = self._infer(observation, noise, num_steps, guidance)
        return chunk

    def infer_internals(self, observation: Observation | Sequence[Observation], noise: np.ndarray | None = None,
                        num_steps: int | None = None, guidance: RtcGuidance | None = None
                        ) -> tuple[ActionChunk, ChunkInternals]:
        """`infer`, plus what the chunk computed on the way (ChunkInternals: the normalized actions and the
        prefix KV cache), for debugging. Costs a host copy of the whole cache: not for the control loop."""
        chunk, normalized = self._infer(observation, noise, num_steps, guidance)
        if self.fast is not None:  # Pi0-FAST: the whole decode cache, its valid slots as the mask
            return chunk, ChunkInternals(normalized, *self.fast.decoder.read_cache())
        past_keys, past_values = self.backend.read_kv()
        return chunk, ChunkInternals(normalized, past_keys, past_values, self.backend.read_prefix_mask())

    def _infer(self, observation, noise, num_steps, guidance=None) -> tuple[ActionChunk, np.ndarray]:
        """-> (the chunk, the normalized actions [B, H, A] it was made from)."""
        t0 = time.perf_counter()
        single = isinstance(observation, Observation)
        observations = [observation] if single else list(observation)
        if not observations:
            raise ObservationError("infer() needs at least one observation")
        if guidance is not None and not self.manifest.rtc:
            raise ObservationError(f"{self.manifest.bundle_dir}: real-time chunking guidance needs a bundle exported "
                                   "with `pi0edge export --rtc` (this one's graphs take no guidance inputs)")
        feeds = self.preprocess(observations)
        if self.fast is not None:
            # noise is accepted and unused (pi0edge serve sends every policy one); a step count is a mistake
            if num_steps is not None:
                raise ObservationError("num_steps drives the flow-matching Euler loop; a Pi0-FAST bundle decodes "
                                       "tokens (its randomness: Policy(..., temperature=T, seed=N))")
            return self._infer_fast(feeds, single, t0)
        noise = self._noise(len(observations), noise)
        times, dt = euler_schedule(self._num_steps(num_steps))
        self.backend.prepare(len(observations), times, dt)
        t1 = time.perf_counter()

        self.backend.run_prefix(feeds["images"], feeds["image_masks"], feeds["tokens"], feeds["token_masks"])
        self.backend.set_noise(noise, feeds["state"])
        if self.manifest.rtc:  # W = 0 without guidance: exactly the plain step
            m = self.manifest
            self.backend.set_guidance(*rtc_feeds(guidance, len(observations), m.action_horizon, m.action_dim,
                                                 m.norm_stats))
        self.backend.synchronize()
        t2 = time.perf_counter()
        step_ms = self._denoise(len(times))
        t3 = time.perf_counter()
        normalized = self.backend.read_actions()
        actions = self.finish_actions(normalized)
        t4 = time.perf_counter()
        timings = ChunkTimings(preprocess_ms=(t1 - t0) * 1e3, prefix_ms=(t2 - t1) * 1e3, step_ms=step_ms,
                               denoise_ms=(t3 - t2) * 1e3, postprocess_ms=(t4 - t3) * 1e3, total_ms=(t4 - t0) * 1e3)
        return ActionChunk(actions[0] if single else actions, timings), normalized

    def _infer_fast(self, feeds: PolicyInputs, single: bool, t0: float) -> tuple[ActionChunk, np.ndarray]:
        """A Pi0-FAST chunk: decode, read the tokens back, unnormalize; a malformed row is NaN, and named."""
        t1 = time.perf_counter()
        normalized, problems, fast_ms = self.fast(feeds, self.rng)
        t2 = time.perf_counter()
        actions = self.finish_actions(normalized)
        bad = [i for i, problem in enumerate(problems) if problem]
        actions[bad] = np.nan  # never executed: the loop's chunk check refuses non-finite actions
        malformed = "; ".join(f"row {i}: {problems[i]}" if not single else problems[i] for i in bad) or None
        t3 = time.perf_counter()
        timings = ChunkTimings(preprocess_ms=(t1 - t0) * 1e3, prefix_ms=fast_ms["prefix_ms"], step_ms=[],
                               denoise_ms=0.0, token_ms=fast_ms["token_ms"], decode_ms=fast_ms["decode_ms"],
                               tokens=fast_ms["tokens"], postprocess_ms=(t3 - t2) * 1e3 + fast_ms["detokenize_ms"],
                               total_ms=(t3 - t0) * 1e3)
        return ActionChunk(actions[0] if single else actions, timings, malformed), normalized

    def _noise(self, batch: int, noise: np.ndarray | None) -> np.ndarray:
        noise_shape = (batch, self.manifest.action_horizon, self.manifest.action_dim)
        if noise is None:
            return self.rng.standard_normal(noise_shape, dtype=np.float32)
        noise = np.asarray(noise, np.float32)
        if noise.size != np.prod(noise_shape):
            raise ObservationError(f"noise has shape {noise.shape}, expected {noise_shape[1:]} per observation")
        return noise.reshape(noise_shape)

    def _num_steps(self, num_steps: int | None) -> int:
        fixed = self.fixed_num_steps
        if fixed is not None and num_steps not in (None, fixed):
            # Optimized step graphs carry per-step time tables and dt folded in: another count would index
            # past the table or silently integrate the wrong schedule.
            raise ObservationError(f"{self.manifest.bundle_dir}: this bundle's step graph was exported for "
                                   f"{fixed} steps (bundle.yaml optimizations.fixed_num_steps), {num_steps} were "
                                   f"asked for (--num-steps); re-export with --num-steps {num_steps}, or with "
                                   "--disable precompute_time --disable fold_dt")
        return num_steps or self.manifest.num_steps

    def _denoise(self, num_steps: int) -> list[float]:
        """The Euler loop on the backend; -> per-step wall times in ms (none when it runs as one call)."""
        if self.backend.whole_loop:
            # The whole loop in one call (one CUDA graph on a GPU): per-step times do not exist, only the loop's.
            self.backend.run_loop()
            self.backend.synchronize()
            return []
        step_ms = []
        for k in range(num_steps):
            s0 = time.perf_counter()
            self.backend.run_step(k)
            self.backend.synchronize()
            step_ms.append((time.perf_counter() - s0) * 1e3)
        return step_ms

    def close(self) -> None:
        (self.backend if self.fast is None else self.fast).close()

    def __enter__(self) -> Policy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
