"""The robot YAML: one file that says which camera is which, which arm, how joints map to the model,
the rate, the chunk strategy and the safety limits. Loaded with pi0edge.yaml_io (safe_load that refuses
duplicate keys), validated into frozen dataclasses; every error names the field and the value (ConfigError).
Reference: docs/control_loop.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from pi0edge.errors import ConfigError

from .arms import validate_arm_spec
from .binding import BindingConfig, binding_from_dict, unstable_device_reason
from .cameras import validate_camera_spec

STRATEGIES = ("sync", "async", "ensemble")
TOP_LEVEL_KEYS = {"rate_hz", "realtime_priority", "cameras", "arm", "joints", "chunking", "safety", "estop",
                  "startup_check", "recording", "inference", "cpu_affinity", "policy", "binding"}
INFERENCE_MODES = ("process", "thread")
# The loop sleeps to ~1 ms before each deadline and spins the rest (clock.py): above 1 kHz a period is
# shorter than the sleep margin and Python's per-tick work, so the rate would not be held.
MAX_RATE_HZ = 1000.0  # where policy.infer runs: docs/control_loop.md, "Inference beside the loop"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not _is_number(value) or value <= 0:
        raise ConfigError(f"{name}: must be a number > 0, got {value!r}")


def _vector(name: str, value, size: int | None) -> tuple[float, ...] | None:
    """A list of numbers (or one number broadcast to `size`); None stays None."""
    if value is None:
        return None
    if _is_number(value):
        if size is None:
            raise ConfigError(f"{name}: give a list of numbers (joint count unknown), got {value!r}")
        return (float(value),) * size
    if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
        raise ConfigError(f"{name}: must be a list of finite numbers, got {value!r}")
    if size is not None and len(value) != size:
        raise ConfigError(f"{name}: must have {size} values (one per joint), got {len(value)}: {value!r}")
    return tuple(float(v) for v in value)


def _indices(name: str, value, size: int) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != size or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise ConfigError(f"{name}: must be a list of {size} non-negative integers (one per joint), got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{name}: indices must be distinct, got {value!r}")
    return tuple(value)


def _known_keys(name: str, data: Mapping, allowed: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {type(data).__name__} {data!r}")
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"{name}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


@dataclass(frozen=True)
class CameraConfig:
    """robot_id: the robot's name for the camera; model_camera: the bundle's camera it feeds.
    allow_unstable_device: accept a device index (/dev/video0, 0) that a replug can renumber (binding.py)."""

    robot_id: str
    model_camera: str
    spec: Mapping
    allow_unstable_device: bool = False

    def __post_init__(self):
        where = f"cameras.{self.robot_id}"
        if not isinstance(self.model_camera, str) or not self.model_camera:
            raise ConfigError(f"{where}.model_camera: must name one of the model's cameras, got {self.model_camera!r}")
        spec = dict(self.spec)
        spec.setdefault("name", self.robot_id)
        object.__setattr__(self, "spec", validate_camera_spec(spec, where))
        if not isinstance(self.allow_unstable_device, bool):
            raise ConfigError(f"{where}.allow_unstable_device: must be true or false, "
                              f"got {self.allow_unstable_device!r}")
        reason = unstable_device_reason(self.spec)
        if reason is not None and not self.allow_unstable_device:
            raise ConfigError(f"{where}.{'serial' if self.spec['kind'] == 'realsense' else 'device'}: {reason}")


@dataclass(frozen=True)
class JointMapping:
    """names: robot joints in arm order. action_index[j]: which model action dim drives joint j;
    state_index[j]: which model state dim receives joint j's position (other state dims are 0);
    units[j]: the unit of joint j's position (None: not stated; compared with the bundle's where it has them)."""

    names: tuple[str, ...]
    action_index: tuple[int, ...]
    state_index: tuple[int, ...]
    units: tuple[str, ...] | None = None

    def __post_init__(self):
        if not self.names or not all(isinstance(n, str) for n in self.names) or len(set(self.names)) != len(self.names):
            raise ConfigError(f"joints.names: must be a non-empty list of distinct names, got {list(self.names)!r}")
        _indices("joints.action_index", list(self.action_index), len(self.names))
        _indices("joints.state_index", list(self.state_index), len(self.names))
        if self.units is not None and (len(self.units) != len(self.names)
                                       or not all(isinstance(u, str) and u for u in self.units)):
            raise ConfigError(f"joints.units: must be one unit (e.g. rad) or a list of {len(self.names)} units, "
                              f"got {list(self.units)!r}")

    @property
    def dof(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class ChunkingConfig:
    """sync: infer (arm holds), then execute n_execute actions. async: request the next chunk every
    n_execute ticks while the current one runs. ensemble: request a chunk every n_execute ticks and
    average all predictions for the current tick with weights exp(-ensemble_m * i), i=0 the oldest."""

    strategy: str = "sync"
    n_execute: int | None = None  # None: sync/async use half the horizon, ensemble uses 1
    ensemble_m: float = 0.01

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"chunking.strategy: must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        if self.n_execute is not None and (not isinstance(self.n_execute, int) or isinstance(self.n_execute, bool)
                                           or self.n_execute <= 0):
            raise ConfigError(f"chunking.n_execute: must be a positive integer, got {self.n_execute!r}")
        if not _is_number(self.ensemble_m) or self.ensemble_m < 0:
            raise ConfigError(f"chunking.ensemble_m: must be a number >= 0, got {self.ensemble_m!r}")

    def resolved_n_execute(self, horizon: int) -> int:
        if self.n_execute is not None:
            if self.n_execute > horizon:
                raise ConfigError(f"chunking.n_execute: {self.n_execute} exceeds the policy's action horizon {horizon}")
            return self.n_execute
        return 1 if self.strategy == "ensemble" else max(1, horizon // 2)


@dataclass(frozen=True)
class SafetyConfig:
    """Joint limits in arm units (None: the arm's own); the velocity limit per second and/or per tick
    (the tighter wins); watchdogs in seconds."""

    lower: tuple[float, ...] | None = None
    upper: tuple[float, ...] | None = None
    max_velocity_per_s: tuple[float, ...] | None = None
    max_step_per_tick: tuple[float, ...] | None = None
    stale_frame_s: float = 0.5
    inference_timeout_s: float = 2.0

    def __post_init__(self):
        if self.lower is not None and self.upper is not None:
            for j, (lo, hi) in enumerate(zip(self.lower, self.upper, strict=True)):
                if lo >= hi:
                    raise ConfigError(f"safety.lower[{j}]: must be < safety.upper[{j}], got {lo!r} >= {hi!r}")
        for name in ("max_velocity_per_s", "max_step_per_tick"):
            values = getattr(self, name)
            if values is not None and any(v <= 0 for v in values):
                raise ConfigError(f"safety.{name}: values must be > 0, got {list(values)!r}")
        _positive("safety.stale_frame_s", self.stale_frame_s)
        _positive("safety.inference_timeout_s", self.inference_timeout_s)


@dataclass(frozen=True)
class EStopConfig:
    """Any of: a file whose existence stops the arm, a key on the terminal, SIGUSR1. All latch."""

    file: str | None = None
    key: str | None = None
    signal: bool = True

    def __post_init__(self):
        if self.file is not None and (not isinstance(self.file, str) or not self.file):
            raise ConfigError(f"estop.file: must be a path, got {self.file!r}")
        if self.key is not None and (not isinstance(self.key, str) or len(self.key) != 1):
            raise ConfigError(f"estop.key: must be a single character, got {self.key!r}")
        if not isinstance(self.signal, bool):
            raise ConfigError(f"estop.signal: must be true or false (SIGUSR1), got {self.signal!r}")


@dataclass(frozen=True)
class StartupCheckConfig:
    """Before moving: compare `camera`'s frame with a calibration reference (calibration.drift)."""

    camera: str
    reference: str

    def __post_init__(self):
        if not isinstance(self.camera, str) or not self.camera:
            raise ConfigError(f"startup_check.camera: must name a camera of `cameras`, got {self.camera!r}")
        if not isinstance(self.reference, str) or not self.reference:
            raise ConfigError(f"startup_check.reference: must be a path, got {self.reference!r}")


@dataclass(frozen=True)
class RecordingConfig:
    path: str | None = None
    frames: bool = True  # store the frames each inference saw (the bulk of the file)

    def __post_init__(self):
        if self.path is not None and not isinstance(self.path, str):
            raise ConfigError(f"recording.path: must be a path, got {self.path!r}")
        if not isinstance(self.frames, bool):
            raise ConfigError(f"recording.frames: must be true or false, got {self.frames!r}")


@dataclass(frozen=True)
class CpuAffinityConfig:
    """CPUs to pin the loop thread and the inference process (or thread) to; empty: not pinned."""

    loop: tuple[int, ...] = ()
    inference: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("loop", "inference"):
            cpus = getattr(self, name)
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cpus):
                raise ConfigError(f"cpu_affinity.{name}: must be a list of CPU numbers (0, 1, ...), got {list(cpus)!r}")


@dataclass(frozen=True)
class RemotePolicyConfig:
    """`policy: {remote: ws://host:port, api_key_env: NAME, timeout_s: S}`: actions from a `pi0edge serve`
    server instead of a local bundle (robot_io/remote_policy.py). The key itself stays out of the file: the
    environment variable `api_key_env` holds it."""

    remote: str
    api_key_env: str | None = None
    timeout_s: float = 5.0  # per request, and for each connection attempt

    def __post_init__(self):
        if not isinstance(self.remote, str) or not self.remote.startswith(("ws://", "wss://")):
            raise ConfigError(f"policy.remote: must be a websocket address ws://host:port (or wss://), "
                              f"got {self.remote!r}")
        env = self.api_key_env
        if env is not None and (not isinstance(env, str) or not env or "=" in env or " " in env):
            raise ConfigError(f"policy.api_key_env: must name an environment variable (e.g. PI0EDGE_API_KEY), "
                              f"got {env!r}")
        _positive("policy.timeout_s", self.timeout_s)

    def api_key(self) -> str | None:
        """The key from the environment; a variable named but unset is an error (not a silent no-key)."""
        import os

        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"policy.api_key_env: the environment variable {self.api_key_env} is not set "
                              f"(or empty); export it with the server's API key")
        return key


def _policy(data) -> RemotePolicyConfig | None:
    if data is None:
        return None
    _known_keys("policy", data, {"remote", "api_key_env", "timeout_s"})
    if "remote" not in data:
        raise ConfigError("policy.remote: missing (required: the server's address, ws://host:port)")
    return RemotePolicyConfig(**data)


@dataclass(frozen=True)
class RobotConfig:
    rate_hz: float
    cameras: tuple[CameraConfig, ...]
    arm: Mapping
    joints: JointMapping
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    estop: EStopConfig = field(default_factory=EStopConfig)
    startup_check: StartupCheckConfig | None = None
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    realtime_priority: int | None = None  # SCHED_FIFO priority (1-99) for the loop thread; None: normal
    source: str | None = None  # the YAML file, for messages
    inference: str = "process"  # a bundle's model runs in its own process; "thread": beside the loop, sharing its GIL
    cpu_affinity: CpuAffinityConfig = field(default_factory=CpuAffinityConfig)
    policy: RemotePolicyConfig | None = None  # None: the policy comes from `pi0edge run --bundle`
    binding: BindingConfig = field(default_factory=BindingConfig)  # binding.py; checked by contract_check.py

    def __post_init__(self):
        _positive("rate_hz", self.rate_hz)
        if self.rate_hz > MAX_RATE_HZ:
            raise ConfigError(f"rate_hz: must be at most {MAX_RATE_HZ:g} Hz (the loop's timer cannot hold a "
                              f"shorter period), got {self.rate_hz!r}")
        prio = self.realtime_priority
        if prio is not None and (not isinstance(prio, int) or isinstance(prio, bool) or not 1 <= prio <= 99):
            raise ConfigError(f"realtime_priority: must be an integer 1..99 (SCHED_FIFO) or null, got {prio!r}")
        if self.inference not in INFERENCE_MODES:
            raise ConfigError(f"inference: must be one of {list(INFERENCE_MODES)}, got {self.inference!r}")
        object.__setattr__(self, "arm", validate_arm_spec(self.arm, "arm"))
        models = [c.model_camera for c in self.cameras]
        dupes = sorted({m for m in models if models.count(m) > 1})
        if dupes:
            raise ConfigError(f"cameras: model camera(s) {dupes} fed by more than one robot camera")
        both = sorted(set(models) & set(self.binding.masked_cameras))
        if both:
            raise ConfigError(f"binding.masked_cameras: {both} are also fed by a camera of `cameras`")
        dof = self.joints.dof
        for name in ("lower", "upper", "max_velocity_per_s", "max_step_per_tick"):
            values = getattr(self.safety, name)
            if values is not None and len(values) != dof:
                raise ConfigError(f"safety.{name}: must have {dof} values (one per joint in joints.names), "
                                  f"got {len(values)}: {list(values)!r}")
        if self.arm["kind"] == "sim" and self.arm.get("dof", 6) != dof:
            raise ConfigError(f"arm.dof: {self.arm.get('dof', 6)} does not match the {dof} joints of joints.names")
        if self.startup_check is not None and self.startup_check.camera not in {c.robot_id for c in self.cameras}:
            raise ConfigError(f"startup_check.camera: {self.startup_check.camera!r} is not one of cameras "
                              f"{[c.robot_id for c in self.cameras]}")

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz

    def camera(self, robot_id: str) -> CameraConfig:
        return next(c for c in self.cameras if c.robot_id == robot_id)


def _resolve(path: str | None, base: Path | None) -> str | None:
    if path is None or base is None:
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base / p)


def _cameras(cameras_data, base_dir: Path | None) -> list[CameraConfig]:
    if cameras_data is not None and not cameras_data:  # `cameras: {}` or `cameras: []`
        raise ConfigError(f"cameras: empty ({cameras_data!r}); name at least one camera and the model camera it "
                          f"feeds, or leave the field out for a policy that needs no camera")
    cameras_data = cameras_data or {}
    _known_keys("cameras", cameras_data, set(cameras_data))
    cameras = []
    for robot_id, spec in cameras_data.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"cameras.{robot_id}: expected a mapping, got {spec!r}")
        spec = dict(spec)
        model_camera = spec.pop("model_camera", None)
        allow_unstable = spec.pop("allow_unstable_device", False)
        for key in ("file", "folder", "video"):
            if isinstance(spec.get(key), str):
                spec[key] = _resolve(spec[key], base_dir)
        device = spec.get("device")
        if spec.get("kind") == "opencv" and isinstance(device, str) and not device.startswith("/dev"):
            spec["device"] = _resolve(spec["device"], base_dir)
        cameras.append(CameraConfig(str(robot_id), model_camera, MappingProxyType(spec), allow_unstable))
    return cameras


def _joints(joints) -> JointMapping:
    _known_keys("joints", joints, {"names", "action_index", "state_index", "units"})
    names = joints.get("names")
    if not isinstance(names, list):
        raise ConfigError(f"joints.names: must be a list of joint names, got {names!r}")
    default_index = list(range(len(names)))
    action_index = _indices("joints.action_index", joints.get("action_index", default_index), len(names))
    state_index = _indices("joints.state_index", joints.get("state_index", default_index), len(names))
    units = joints.get("units")
    units = [units] * len(names) if isinstance(units, str) else units  # one unit for every joint
    return JointMapping(tuple(names), action_index, state_index,
                        None if units is None else tuple(units) if isinstance(units, list) else (units,))


def robot_config_from_dict(data: Mapping, source: str | None = None, base_dir: Path | None = None) -> RobotConfig:
    """Validate a parsed YAML mapping. Relative paths in it are taken relative to `base_dir`."""
    _known_keys("robot config", data, TOP_LEVEL_KEYS)
    for required in ("rate_hz", "arm", "joints"):
        if required not in data:
            raise ConfigError(f"{required}: missing (required)")
    cameras = _cameras(data.get("cameras"), base_dir)
    mapping = _joints(data["joints"])

    chunk = data.get("chunking") or {}
    _known_keys("chunking", chunk, {"strategy", "n_execute", "ensemble_m"})
    chunking = ChunkingConfig(**chunk)

    safety = data.get("safety") or {}
    _known_keys("safety", safety, {"lower", "upper", "max_velocity_per_s", "max_step_per_tick", "stale_frame_s",
                                   "inference_timeout_s"})
    safety_cfg = SafetyConfig(
        **{k: _vector(f"safety.{k}", safety.get(k), mapping.dof)
           for k in ("lower", "upper", "max_velocity_per_s", "max_step_per_tick")},
        **{k: safety[k] for k in ("stale_frame_s", "inference_timeout_s") if k in safety})

    estop = data.get("estop") or {}
    _known_keys("estop", estop, {"file", "key", "signal"})
    estop_cfg = EStopConfig(file=_resolve(estop.get("file"), base_dir) if isinstance(estop.get("file"), str)
                            else estop.get("file"), key=estop.get("key"), signal=estop.get("signal", True))

    check = data.get("startup_check")
    check_cfg = None
    if check is not None:
        _known_keys("startup_check", check, {"camera", "reference"})
        reference = check.get("reference")
        check_cfg = StartupCheckConfig(check.get("camera"),
                                       _resolve(reference, base_dir) if isinstance(reference, str) else reference)

    rec = data.get("recording") or {}
    _known_keys("recording", rec, {"path", "frames"})
    rec_cfg = RecordingConfig(path=_resolve(rec.get("path"), base_dir) if isinstance(rec.get("path"), str)
                              else rec.get("path"), frames=rec.get("frames", True))

    affinity = data.get("cpu_affinity") or {}
    _known_keys("cpu_affinity", affinity, {"loop", "inference"})
    affinity_cfg = CpuAffinityConfig(**{k: tuple(_cpu_list(f"cpu_affinity.{k}", affinity[k])) for k in affinity})

    arm = dict(data["arm"]) if isinstance(data["arm"], Mapping) else data["arm"]
    if isinstance(arm, dict) and arm.get("kind") == "net":
        for key in ("server_public_key", "client_secret_key"):
            if isinstance(arm.get(key), str):
                arm[key] = _resolve(arm[key], base_dir)
    return RobotConfig(rate_hz=data["rate_hz"], cameras=tuple(cameras), arm=arm, joints=mapping, chunking=chunking,
                       safety=safety_cfg, estop=estop_cfg, startup_check=check_cfg, recording=rec_cfg,
                       realtime_priority=data.get("realtime_priority"), source=source,
                       inference=data.get("inference", "process"), cpu_affinity=affinity_cfg,
                       policy=_policy(data.get("policy")), binding=binding_from_dict(data.get("binding")))


def _cpu_list(field_name: str, value) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{field_name}: must be a list of CPU numbers, e.g. [1], got {value!r}")
    return value


def load_robot_config(path: str | Path) -> RobotConfig:
    """Read and validate a robot YAML. Errors: ConfigError naming the file, the field and the value."""
    import yaml

    from pi0edge.yaml_io import load_yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: robot config file does not exist")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return robot_config_from_dict(data if data is not None else {}, source=str(path), base_dir=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except TypeError as exc:  # a dataclass given a field of the wrong shape
        raise ConfigError(f"{path}: {exc}") from exc


def example_config_path(name: str) -> Path:
    """Path of a shipped example (sim_arm.yaml, aloha.yaml)."""
    path = Path(__file__).parent / "examples" / name
    if not path.is_file():
        raise ConfigError(f"no example robot config {name!r} in {path.parent}")
    return path
