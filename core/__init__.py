"""pi0edge: run Pi0 / Pi0.5 robot policies onboard.

Sub-packages, one per stage (see DESIGN.md): ``export`` (torch allowed), ``runtime``, ``robot_io``
and ``calibration`` (never torch). This top-level package holds what every stage shares: the graph
contract, the bundle manifest and the error classes.
"""

__version__ = "0.1.0"
