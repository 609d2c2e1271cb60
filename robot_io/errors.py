"""Error classes of the control loop; all are Pi0EdgeError so the CLI reports them as user-facing errors."""

from __future__ import annotations

from pi0edge.errors import ConfigError, Pi0EdgeError

__all__ = [
    "ArmError",
    "ArmTimeoutError",
    "CameraError",
    "ConfigError",
    "EpisodeError",
    "InferenceProcessError",
    "NetProtocolError",
    "PolicyRefusedError",
    "PolicyUnavailableError",
    "RemotePolicyError",
    "SafetyError",
    "StartupCheckError",
]


class SafetyError(Pi0EdgeError):
    """The loop refused to move the arm (e-stop at start, limits that do not fit the arm...)."""


class StartupCheckError(SafetyError):
    """The optional startup check (camera drift against a calibration reference) failed."""


class CameraError(Pi0EdgeError):
    """A camera cannot be opened or read; the message names the camera and its source."""


class ArmError(Pi0EdgeError):
    """An arm cannot be opened, read or commanded."""


class ArmTimeoutError(ArmError, TimeoutError):
    """A network arm did not answer within its timeout."""


class NetProtocolError(ArmError):
    """A network arm message is malformed, of another protocol version, or an error reply."""


class EpisodeError(Pi0EdgeError):
    """An episode file is missing, truncated or not an episode."""


class InferenceProcessError(Pi0EdgeError):
    """The inference process could not load the policy, raised in `infer`, or died; the message says which."""


class RemotePolicyError(Pi0EdgeError):
    """A remote policy server (`pi0edge serve`) refused the key, answered with an error or with something else
    than the actions; the message names the server's address."""


class PolicyUnavailableError(RemotePolicyError):
    """The remote policy cannot be reached now (refused, dropped, no answer in time): a transient, so the loop
    holds and goes on, and the next request reconnects; it does not count toward the policy's errors in a row."""


class PolicyRefusedError(PolicyUnavailableError):
    """The remote policy server refused a request it could not answer by the loop's control deadline (it is
    busy): the connection stays open, the arm holds, and the next request may be admitted."""
