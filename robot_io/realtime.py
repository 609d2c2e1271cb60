"""Real-time scheduling of the loop thread: SCHED_FIFO priority and locked memory, both undone afterwards.

See docs/control_loop.md, "Real-time settings".
"""

from __future__ import annotations

import os
from collections.abc import Callable

OnEvent = Callable[[int, str, str], None]  # (tick, kind, reason): how the loop records a safety event


def enter_realtime(priority: int | None, on_event: OnEvent) -> Callable[[], None]:
    """Give the calling (loop) thread SCHED_FIFO `priority`, as openpilot's `config_realtime_process`.

    Only the loop thread: the inference and camera threads, started before, keep the normal policy,
    so a busy model cannot delay a tick and cannot starve the machine either. The process memory is
    locked too (see _lock_memory). Without permission (not root, no CAP_SYS_NICE / rtprio or memlock
    limit) the loop runs at normal priority and says so with an event.
    Returns the function that restores the previous policy.
    """
    if not priority or not hasattr(os, "sched_setscheduler"):
        return lambda: None
    unlock = _lock_memory(on_event)
    previous = (os.sched_getscheduler(0), os.sched_getparam(0))
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # 0 = this thread on Linux
    except PermissionError as exc:
        on_event(0, "no_realtime", f"realtime_priority {priority} refused ({exc}); running at normal priority")
        return unlock

    def restore() -> None:
        os.sched_setscheduler(0, previous[0], previous[1])
        unlock()

    return restore


def _lock_memory(on_event: OnEvent) -> Callable[[], None]:
    """mlockall(MCL_CURRENT | MCL_FUTURE): a real-time priority does not help a thread that stalls
    on a page fault. Measured here: under memory reclaim by other processes, ticks were delayed by up
    to 30 ms at SCHED_FIFO; with the memory locked, p99 period error fell below 1 ms (docs/control_loop.md)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError as exc:
        on_event(0, "no_memlock", f"cannot load libc for mlockall ({exc})")
        return lambda: None
    mcl_current, mcl_future = 1, 2
    if libc.mlockall(mcl_current | mcl_future) != 0:
        errno = ctypes.get_errno()
        on_event(0, "no_memlock", f"mlockall failed ({os.strerror(errno)}); page faults may delay ticks")
        return lambda: None
    return lambda: libc.munlockall()
