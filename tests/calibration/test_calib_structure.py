"""The calibration package's shape: functions short enough to read, library modules that stand alone
(robot_io is wired in only by the CLI), and no import cycles between its modules."""

from __future__ import annotations

import ast
from pathlib import Path

CALIBRATION = Path(__file__).resolve().parents[2] / "calibration"
MAX_FUNCTION_LINES = 60  # docstring and signature included


def parsed_modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(CALIBRATION.glob("*.py"))}


def test_no_calibration_function_is_longer_than_60_lines():
    long = [
        f"{module}.py:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for module, tree in parsed_modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def imported_modules(tree: ast.Module) -> set[str]:
    """Every module a file imports, at module level or inside a function (both make a dependency)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_calibration_library_modules_never_import_robot_io():
    """robot_io imports calibration (the start-up drift check); only the CLI, the application layer, may wire
    robot_io's cameras in the other direction."""
    offending = {
        module: sorted(name for name in imported_modules(tree) if name.startswith("pi0edge.robot_io"))
        for module, tree in parsed_modules().items()
        if module != "cli"
    }
    assert {module: names for module, names in offending.items() if names} == {}


def test_no_import_cycle_between_calibration_modules():
    trees = parsed_modules()
    graph = {
        module: {name.split(".")[2] for name in imported_modules(tree) if name.startswith("pi0edge.calibration.")}
        & set(trees)
        for module, tree in trees.items()
    }

    def cycle_from(module: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if module in path:
            return path[path.index(module) :] + (module,)
        for dependency in sorted(graph[module]):
            found = cycle_from(dependency, path + (module,))
            if found:
                return found
        return None

    cycles = {cycle for module in graph if (cycle := cycle_from(module, ())) is not None}
    assert cycles == set()
