"""export/checkpoint/ is one package: its modules import each other without a cycle, its functions stay short,
and `load_checkpoint` is imported from the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pi0edge.export

PACKAGE = "pi0edge.export.checkpoint"
PACKAGE_DIR = Path(pi0edge.export.__file__).parent / "checkpoint"
MAX_FUNCTION_LINES = 60  # house style: a function is read in one screen


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE_DIR.glob("*.py"))}


def _imported_siblings(tree: ast.Module) -> set[str]:
    """Modules of the package that `tree` imports, at module level or inside a function alike."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (node.level or node.module.startswith(PACKAGE)):
            target = node.module if node.level else node.module.removeprefix(PACKAGE).lstrip(".")
            found.add(target.split(".")[0] or "__init__")
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix(PACKAGE).lstrip(".").split(".")[0] or "__init__" for a in node.names
                      if a.name.startswith(PACKAGE)}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> modules it imports), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for target in sorted(graph.get(module, ())):
            if cycle := visit(target, path + [module]):
                return cycle
        done.add(module)
        return None

    return next((c for m in sorted(graph) if (c := visit(m, []))), None)


def test_cycle_finder_finds_a_function_level_import_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    tree = ast.parse(f"def f():\n    from {PACKAGE}.loader import x\nfrom .config import y\n")
    assert _imported_siblings(tree) == {"loader", "config"}


def test_checkpoint_modules_import_each_other_without_a_cycle():
    modules = _modules()
    assert {"layouts", "config", "stats", "safetensors_io", "loader"} <= set(modules)
    graph = {name: _imported_siblings(tree) - {name} for name, tree in modules.items()}
    assert all("__init__" not in targets for name, targets in graph.items() if name != "__init__"), graph
    assert _cycle(graph) is None, graph


def test_every_function_of_the_checkpoint_package_is_short():
    modules = _modules()
    assert "loader" in modules
    long = [f"{name}.py:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, tree in modules.items() for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long


def test_load_checkpoint_is_the_package_entry_point():
    import pi0edge.export.checkpoint as package
    from pi0edge.export.checkpoint import LoadedCheckpoint, load_checkpoint
    from pi0edge.export.checkpoint.loader import load_checkpoint as defined

    assert hasattr(package, "__path__") and load_checkpoint is defined
    assert load_checkpoint.__annotations__["return"] in ("LoadedCheckpoint", LoadedCheckpoint)
