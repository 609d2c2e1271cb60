"""Error classes shared by every stage. Messages name the file, field or value at fault."""


class Pi0EdgeError(Exception):
    """Base class: anything pi0edge raises on purpose is one of these."""


class MissingExtraError(Pi0EdgeError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str, purpose: str):
        super().__init__(f"{purpose} needs '{module}', which is not installed: pip install 'pi0edge[{extra}]'")
        self.module, self.extra = module, extra


class CheckpointError(Pi0EdgeError):
    """A checkpoint directory or one of its files cannot be used as given."""


class BundleError(Pi0EdgeError):
    """A bundle is missing, incomplete, tampered with, or of an unknown format version."""


class InsufficientMemoryError(BundleError):
    """The bundle's weights are larger than the memory they would load into (refused before allocating)."""


class ObservationError(Pi0EdgeError, ValueError):
    """An observation handed to the runtime does not fit the bundle (camera, dtype, shape, state...)."""


class BackendUnavailableError(Pi0EdgeError):
    """The requested inference backend cannot run on this machine; the message says why."""


class ConfigError(Pi0EdgeError, ValueError):
    """A YAML or command-line configuration value is invalid; the message names the field."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or fail with the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra, purpose) from exc


def require_installed(module: str, extra: str, purpose: str) -> None:
    """Check that an optional dependency is installed, without importing it (gym_aloha pulls in MuJoCo):
    commands call it before any slow work, so a missing extra fails in a second, not after an export."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module entry set to None
        found = False
    if not found:
        raise MissingExtraError(module, extra, purpose)
