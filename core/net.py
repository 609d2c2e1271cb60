"""Network addresses, shared by the servers (robot_io's arm server, serve's policy server)."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """True for a host only this machine can reach: `localhost` or a loopback IP (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a host name: may be reachable from elsewhere
        return False
