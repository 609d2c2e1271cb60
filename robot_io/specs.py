"""The shared first check of a `kind:`-tagged spec (a YAML `arm:` or `cameras.<id>` block)."""

from __future__ import annotations

from collections.abc import Mapping

from pi0edge.errors import ConfigError


def checked_kind(spec: object, where: str, kind_keys: Mapping[str, set[str]], common_keys: set[str]) -> str:
    """-> spec["kind"] once spec is a mapping of a known kind with no unknown field; else ConfigError
    naming `where.<field>` and the value."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(spec).__name__} {spec!r}")
    kind = spec.get("kind")
    if kind not in kind_keys:
        raise ConfigError(f"{where}.kind: must be one of {sorted(kind_keys)}, got {kind!r}")
    unknown = set(spec) - common_keys - kind_keys[kind]
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)} for kind {kind!r}")
    return kind
