"""pi0edge: run Pi0 / Pi0.5 robot policies onboard.

Sub-packages, one per stage (see docs/architecture.md): ``export`` (torch allowed), ``runtime``, ``robot_io``
and ``calibration`` (never torch). This top-level package holds what every stage shares: the graph
contract, the bundle manifest and the error classes. Its source folder is ``core/`` (a ``pi0edge/`` folder
in the clone's root would shadow the installed package).
"""

__version__ = "0.1.0"
