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
