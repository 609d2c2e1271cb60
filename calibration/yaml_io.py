"""Reading a YAML file a user hands us, with one error that names the file and what it was meant to be."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pi0edge.calibration.errors import CalibrationFileError


def read_yaml_file(path: Path | str, what: str, error: type[Exception] = CalibrationFileError) -> Any:
    """yaml.safe_load of `path`; unreadable or invalid YAML -> `error("<what> file <path>: ...")`."""
    import yaml

    from pi0edge.yaml_io import load_yaml

    try:
        return load_yaml(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} file {path}: not valid YAML: {exc}") from None
