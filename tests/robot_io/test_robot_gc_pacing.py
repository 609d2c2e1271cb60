"""The cyclic garbage collector runs between ticks during a run (robot_io/gc_pacing.py), and is given
back as it was when the run ends."""

from __future__ import annotations

import gc
import weakref

from robot_io_helpers import make_config, make_policy

from pi0edge.robot_io.arms import open_arm
from pi0edge.robot_io.gc_pacing import GcPacer
from pi0edge.robot_io.loop import open_cameras, run_loop


class _Cycle:
    def __init__(self):
        self.me = self


def _cycle_with_probe() -> weakref.ref:
    cycle = _Cycle()
    return weakref.ref(cycle)  # alive only through its own reference cycle


def test_the_pacer_collects_young_cycles_once_a_second_and_everything_once_a_minute():
    generations = []

    def count(phase, info):
        if phase == "stop":
            generations.append(info["generation"])

    pacer = GcPacer().start(now=100.0)
    gc.callbacks.append(count)
    try:
        probe = _cycle_with_probe()
        pacer.after_tick(100.5)
        assert generations == [] and probe() is not None  # automatic collection is off; not due yet
        pacer.after_tick(101.0)
        assert generations == [1] and probe() is None
        for second in range(102, 160):
            pacer.after_tick(float(second))
        pacer.after_tick(160.0)
        assert generations.count(2) == 1 and generations[-1] == 2
    finally:
        gc.callbacks.remove(count)
        pacer.stop()
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_stop_leaves_a_collector_the_caller_had_disabled_disabled():
    gc.disable()
    try:
        GcPacer().start(now=0.0).stop()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_during_a_run_automatic_collection_is_off_and_the_heap_frozen_and_both_are_undone_after():
    config = make_config()
    seen = []

    class WatchedArm:
        """The sim arm, noting the collector's state at each command (called inside the run)."""

        def __init__(self, arm):
            self._arm = arm

        def __getattr__(self, name):
            return getattr(self._arm, name)

        def command(self, positions):
            seen.append((gc.isenabled(), gc.get_freeze_count() > 0))
            return self._arm.command(positions)

    arm = WatchedArm(open_arm(config.arm))
    cameras = open_cameras(config, arm._arm)
    try:
        run_loop(config, make_policy(), "pick up the cube", 0.3, arm=arm, cameras=cameras)
    finally:
        for camera in cameras.values():
            camera.close()
    assert seen and all(state == (False, True) for state in seen[:-1])  # the last one is the final hold
    assert gc.isenabled() and gc.get_freeze_count() == 0
