"""How the robot YAML binds the robot to the policy it runs (docs/control_loop.md, "Binding the robot to the
policy"): cameras by something that survives a replug, and the `binding` section (policy cameras this robot
does not have, the statistics and tokenizer it was set up with, how far outside the statistics the arm may
start). Checked against a bundle and the live devices by contract_check.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pi0edge.errors import ConfigError

STABLE_V4L_PREFIXES = ("/dev/v4l/by-id/", "/dev/v4l/by-path/")
_BARE_VIDEO_NODE = re.compile(r"^/dev/video\d+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_STATE_MARGIN = 0.25  # of the statistics' range, added on each side (contract_check.state_bounds)
BINDING_KEYS = {"masked_cameras", "stats_sha256", "tokenizer_sha256", "state_margin"}


def unstable_device_reason(spec: Mapping) -> str | None:
    """Why a camera spec names its device by something a replug can change, or None when it does not."""
    kind, device = spec.get("kind"), spec.get("device", 0)
    if kind == "opencv" and (isinstance(device, int) or (isinstance(device, str) and _BARE_VIDEO_NODE.match(device))):
        return (f"device {device!r} is an index: the kernel numbers cameras in the order they appear, so a replug or "
                f"a reboot can swap them; name it by {STABLE_V4L_PREFIXES[0]}... (ls -l {STABLE_V4L_PREFIXES[0]}) or "
                "set allow_unstable_device: true")
    if kind == "realsense" and isinstance(spec.get("serial"), int):
        return (f"serial {spec['serial']!r} is a number: quote it (serial: \"0123...\"), YAML drops leading zeros "
                "and reads 0-prefixed digits as octal")
    return None


def _sha(value, field: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not _SHA256.match(value)):
        raise ConfigError(f"{field}: must be a sha256 (64 lowercase hex digits, as `pi0edge check` prints), "
                          f"got {value!r}")
    return value


@dataclass(frozen=True)
class BindingConfig:
    """masked_cameras: policy cameras the robot has none for, fed masked (an empty image, its mask off);
    stats_sha256 / tokenizer_sha256: the bundle's statistics and tokenizer this robot was set up with (None: not
    pinned); state_margin: how far outside the statistics' range, as a share of it, the start state may be."""

    masked_cameras: tuple[str, ...] = ()
    stats_sha256: str | None = None
    tokenizer_sha256: str | None = None
    state_margin: float = DEFAULT_STATE_MARGIN

    def __post_init__(self):
        if not all(isinstance(c, str) and c for c in self.masked_cameras):
            raise ConfigError(f"binding.masked_cameras: must be a list of policy camera names, "
                              f"got {list(self.masked_cameras)!r}")
        _sha(self.stats_sha256, "binding.stats_sha256")
        _sha(self.tokenizer_sha256, "binding.tokenizer_sha256")
        margin = self.state_margin
        if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not math.isfinite(margin) or margin < 0:
            raise ConfigError(f"binding.state_margin: must be a number >= 0, got {margin!r}")


def binding_from_dict(data) -> BindingConfig:
    if data is None:
        return BindingConfig()
    if not isinstance(data, Mapping):
        raise ConfigError(f"binding: expected a mapping, got {data!r}")
    unknown = set(data) - BINDING_KEYS
    if unknown:
        raise ConfigError(f"binding: unknown field(s) {sorted(unknown)}; allowed: {sorted(BINDING_KEYS)}")
    masked = data.get("masked_cameras") or []
    if not isinstance(masked, list):
        raise ConfigError(f"binding.masked_cameras: must be a list of policy camera names, got {masked!r}")
    return BindingConfig(tuple(masked), data.get("stats_sha256"), data.get("tokenizer_sha256"),
                         data.get("state_margin", DEFAULT_STATE_MARGIN))
