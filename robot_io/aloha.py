"""The MuJoCo ALOHA of gym-aloha as an arm (14 joints: per side 6 arm joints + a normalised gripper)
whose rendered views are exposed as cameras.

gym-aloha's action is absolute joint positions (grippers normalised to [0, 1], as its `agent_pos`),
so it fits the position interface directly. One `command()` is one `env.step()`: 20 ms of simulated
time, but ~170 ms of wall time headless on 2 cores (software EGL rendering). The sim therefore runs
slower than real time; the loop reports the rate it really achieved instead of pretending.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from pi0edge.errors import require

from .arm_base import Arm, ArmLimits
from .cameras import Camera, Frame
from .errors import ArmError, CameraError
from .quantiles import StreamQuantiles

ALOHA_DOF = 14
# Per side, from the ViperX 300s model that gym-aloha's MJCF uses (radians), gripper normalised.
_SIDE_LOWER = [-3.14158, -1.85005, -1.76278, -3.14158, -1.8675, -3.14158, 0.0]
_SIDE_UPPER = [3.14158, 1.25664, 1.6057, 3.14158, 2.23402, 3.14158, 1.0]
_SIDE_VELOCITY = [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 2.0]
ALOHA_JOINTS = tuple(f"{side}_{joint}" for side in ("left", "right") for joint in (
    "waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"))
RENDER_HEIGHT, RENDER_WIDTH = 480, 640


class AlohaArm(Arm):
    def __init__(self, task: str = "gym_aloha/AlohaTransferCube-v0", cameras: tuple[str, ...] = ("top",),
                 seed: int = 0):
        # Headless rendering: without MUJOCO_GL, mujoco tries GLFW and fails on a machine without a display.
        os.environ.setdefault("MUJOCO_GL", "egl")
        gym = require("gymnasium", "sim", "the gym-aloha arm")
        require("gym_aloha", "sim", "the gym-aloha arm")  # registers the gym_aloha/* envs
        try:
            self._env = gym.make(task, obs_type="pixels_agent_pos").unwrapped  # no TimeLimit: the loop decides
        except gym.error.Error as exc:
            raise ArmError(f"gym-aloha: cannot make env {task!r}: {exc}") from exc
        self.task, self.camera_names = task, tuple(cameras)
        self.limits = ArmLimits(_SIDE_LOWER * 2, _SIDE_UPPER * 2, _SIDE_VELOCITY * 2)
        self._lock = threading.Lock()
        self._frames: dict[str, Frame] = {}
        self._step_index = 0
        self.last_reward = 0.0
        self.step_ms = StreamQuantiles(smallest=0.01, largest=60_000.0)  # fixed size: a run can last days
        physics = self._env._env.physics
        known = {physics.model.id2name(i, "camera") for i in range(physics.model.ncam)}
        missing = [c for c in self.camera_names if c not in known]
        if missing:
            raise CameraError(f"gym-aloha has no camera(s) {missing}; it has {sorted(known)}")
        obs, _ = self._env.reset(seed=seed)
        self._update(obs)

    def _update(self, obs) -> None:
        now = time.monotonic()
        self._state = np.asarray(obs["agent_pos"], dtype=np.float64).copy()
        physics = self._env._env.physics
        for name in self.camera_names:
            image = obs["pixels"].get(name) if name == "top" else None
            if image is None:
                image = physics.render(height=RENDER_HEIGHT, width=RENDER_WIDTH, camera_id=name)
            self._frames[name] = Frame(np.ascontiguousarray(image), now, self._step_index)
        self._step_index += 1

    def read_state(self) -> np.ndarray:
        with self._lock:
            return self._state.copy()

    def command(self, positions) -> None:
        action = self._check(positions).astype(np.float32)
        with self._lock:
            start = time.perf_counter()
            obs, reward, _terminated, _truncated, _info = self._env.step(action)
            self.last_reward = float(reward)
            self._update(obs)
            self.step_ms.add((time.perf_counter() - start) * 1e3)

    def latest_frame(self, name: str) -> Frame:
        with self._lock:
            return self._frames[name]

    def camera(self, name: str) -> AlohaCamera:
        if name not in self.camera_names:
            raise CameraError(f"gym-aloha camera {name!r} is not rendered; "
                              f"add it to arm.cameras {list(self.camera_names)}")
        return AlohaCamera(self, name)

    def close(self) -> None:
        self._env.close()


class AlohaCamera(Camera):
    """A view of the ALOHA sim; a new frame exists only after a step (its timestamp is the step's)."""

    def __init__(self, arm: AlohaArm, camera: str):
        super().__init__()
        self._arm, self.name = arm, f"aloha/{camera}"
        self._camera = camera

    def _read(self) -> Frame | None:
        return self._arm.latest_frame(self._camera)
