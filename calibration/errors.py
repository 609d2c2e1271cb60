"""Errors raised by calibration. Each message names the file, field or value at fault, so the CLI can
print it as-is and a script can tell a bad input from a failed calibration."""

from pi0edge.errors import ConfigError, Pi0EdgeError


class CalibrationError(Pi0EdgeError):
    """A calibration step could not produce a result worth writing (too few views, solver failure...)."""


class BoardSpecError(CalibrationError, ConfigError):
    """A board description is malformed or physically inconsistent (e.g. marker larger than square)."""


class ImageError(CalibrationError):
    """An image cannot be used: unreadable, corrupted, or of a different size than the others."""


class BoardNotFoundError(CalibrationError):
    """The board was not detected where it had to be (every image, or the one image of a check)."""


class CalibrationFileError(CalibrationError, ConfigError):
    """A calibration, pose or reference file is missing a field or holds a value that cannot be used."""
