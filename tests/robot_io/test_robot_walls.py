"""The walls of robot_io: no import cycle through the loop, camera and arm modules; no calibration import.

Imports are read from the source (module-level and function-level alike), so a cycle hidden inside a
function counts as one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pi0edge.robot_io

PACKAGE = "pi0edge.robot_io"
ROBOT_IO_DIR = Path(pi0edge.robot_io.__file__).parent
APPLICATION_MODULES = {"cli"}  # the CLI wires packages together; the library below it may not


def _imports(path: Path) -> set[str]:
    """Fully qualified names of the modules `path` imports, wherever the import statement stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = f"{PACKAGE}.{base}" if base else PACKAGE
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x` imports module x
    return names


def _robot_io_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in ROBOT_IO_DIR.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name in modules:
        imported = _imports(ROBOT_IO_DIR / f"{name}.py")
        graph[name] = {m.removeprefix(PACKAGE + ".") for m in imported if m.removeprefix(PACKAGE + ".") in modules}
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """An import path from `start` back to itself, or None."""
    stack, seen = [[start, nxt] for nxt in sorted(graph[start])], set()
    while stack:
        path = stack.pop()
        if path[-1] == start:
            return path
        if path[-1] in seen:
            continue
        seen.add(path[-1])
        stack.extend(path + [nxt] for nxt in sorted(graph[path[-1]]))
    return None


# The modules of the control loop, the cameras and the arms (the arm kinds import arm_base, never the
# factory in arms.py that imports them).
LOOP_AND_CAMERA_MODULES = ("camera_base", "cameras", "camera_reader", "realsense", "clock", "quantiles", "chunking",
                           "safety", "faults", "stop_signals", "realtime", "stats", "loop")
ARM_MODULES = ("arm_base", "sim_arm", "arms", "aloha", "net_protocol", "net_arm", "net_server")


def test_loop_and_camera_modules_are_on_no_import_cycle():
    graph = _robot_io_graph()
    cycles = {name: _cycle_through(graph, name) for name in LOOP_AND_CAMERA_MODULES if name in graph}
    assert not any(cycles.values()), {name: " -> ".join(c) for name, c in cycles.items() if c}


def test_arm_modules_are_on_no_import_cycle():
    graph = _robot_io_graph()
    assert set(ARM_MODULES) <= set(graph), sorted(set(ARM_MODULES) - set(graph))
    cycles = {name: _cycle_through(graph, name) for name in ARM_MODULES}
    assert not any(cycles.values()), {name: " -> ".join(c) for name, c in cycles.items() if c}


def test_robot_io_library_does_not_import_calibration():
    offenders = {}
    for path in ROBOT_IO_DIR.glob("*.py"):
        if path.stem in APPLICATION_MODULES:
            continue
        bad = sorted(m for m in _imports(path) if m.startswith("pi0edge.calibration"))
        if bad:
            offenders[path.name] = bad
    assert not offenders, offenders
