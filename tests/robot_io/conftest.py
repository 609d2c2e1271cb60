"""Fixtures shared by the robot_io tests."""

from __future__ import annotations

import pytest

from pi0edge.robot_io.arms import ArmLimits, SimArm


@pytest.fixture
def served():
    """A 3-joint sim arm behind an ArmServer on a free loopback port (needs the [net] extra)."""
    from pi0edge.robot_io.net_server import ArmServer

    arm = SimArm(dof=3, time_constant_s=0.01, limits=ArmLimits.uniform(3, 1.0, 5.0))
    server = ArmServer(arm, "tcp://127.0.0.1:*").start()
    yield arm, server
    server.close()
