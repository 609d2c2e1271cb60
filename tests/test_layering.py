"""The walls between the packages, read from the source with `ast` (every import, including those inside
functions), as docs/architecture.md, "Layering rules" states them:

- no import cycle between the packages (ground, export, runtime, robot_io, calibration, serve), nor between the
  modules of one package;
- runtime/, robot_io/, calibration/ and serve/ never import torch, onnx or the export package;
- the CLI modules (core/cli.py, core/demo.py, each package's cli.py) are the application layer: they may
  import any package (the ground CLI dispatches to the package CLIs) and are left out of the cycle checks,
  but no library module imports one.

Every failure names the file and line of the import at fault.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# source folder -> (package name in the rules, dotted prefix it installs as; pyproject's package-dir)
PACKAGE_DIRS = {
    "core": ("ground", "pi0edge"),
    "export": ("export", "pi0edge.export"),
    "runtime": ("runtime", "pi0edge.runtime"),
    "robot_io": ("robot_io", "pi0edge.robot_io"),
    "calibration": ("calibration", "pi0edge.calibration"),
    "serve": ("serve", "pi0edge.serve"),
}
LEAN_PACKAGES = ("runtime", "robot_io", "calibration", "serve")  # what runs on the robot
FORBIDDEN_IN_LEAN = ("torch", "onnx", "pi0edge.export")  # top-level names / package prefixes


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module name (a name imported from a module resolves to the module)
    file: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.file.relative_to(root)}:{self.line}"


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the packages: dotted name -> file."""
    modules = {}
    for folder, (_, prefix) in PACKAGE_DIRS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([prefix, *parts])] = path
    return modules


def package_of(module: str) -> str | None:
    for _, (package, prefix) in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[1][1])):
        if package != "ground" and (module == prefix or module.startswith(prefix + ".")):
            return package
    return "ground" if module == "pi0edge" or module.startswith("pi0edge.") else None


def is_cli(module: str) -> bool:
    return module in ("pi0edge.cli", "pi0edge.demo") or (module.endswith(".cli") and package_of(module) is not None)


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """`pi0edge.export.engine_build.build_engines` -> the longest prefix that is a module (else the name)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return name


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """All imports in a file, at any depth (functions, branches, TYPE_CHECKING blocks alike)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: count up from this module's package
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [Import(module, _resolve(name, modules), path, node.lineno) for name in names]
    return list(dict.fromkeys(found))  # `from m import a, b` is one import of m


def all_imports(root: Path) -> list[Import]:
    modules = module_names(root)
    return [imp for module, path in modules.items() for imp in imports_of(module, path, modules)]


def _cycles(edges: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Strongly connected components with more than one node, or a node importing itself (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, {}):
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def _describe_cycle(kind: str, component: list[str], edges, root: Path) -> str:
    members = set(component)
    lines = [f"import cycle between {kind} {' <-> '.join(component)}:"]
    for source in component:
        for target, evidence in sorted(edges.get(source, {}).items()):
            if target in members:
                shown = ", ".join(f"{imp.where(root)} imports {imp.imported}" for imp in evidence[:3])
                more = f" (+{len(evidence) - 3} more)" if len(evidence) > 3 else ""
                lines.append(f"  {source} -> {target}: {shown}{more}")
    return "\n".join(lines)


def cycle_violations(root: Path, imports: list[Import]) -> list[str]:
    """Package-level and module-level (within one package) cycles among library modules."""
    packages: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    inside: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    for imp in imports:
        source, target = package_of(imp.importer), package_of(imp.imported)
        if target is None or is_cli(imp.importer) or is_cli(imp.imported):
            continue
        if source != target:
            packages[source][target].append(imp)
        elif imp.importer != imp.imported:
            inside[imp.importer][imp.imported].append(imp)
    problems = [_describe_cycle("packages", comp, packages, root) for comp in _cycles(packages)]
    problems += [_describe_cycle("modules", comp, inside, root) for comp in _cycles(inside)]
    return problems


def lean_violations(root: Path, imports: list[Import]) -> list[str]:
    out = []
    for imp in imports:
        if package_of(imp.importer) not in LEAN_PACKAGES or is_cli(imp.importer):
            continue
        for name in FORBIDDEN_IN_LEAN:
            if imp.imported == name or imp.imported.startswith(name + "."):
                out.append(f"{imp.where(root)}: {imp.importer} imports {imp.imported} "
                           f"({package_of(imp.importer)}/ runs on the robot: no torch, onnx or export)")
    return out


def cli_violations(root: Path, imports: list[Import]) -> list[str]:
    out = []
    for imp in imports:
        if is_cli(imp.imported) and not is_cli(imp.importer):
            out.append(f"{imp.where(root)}: {imp.importer} imports the CLI module {imp.imported} "
                       "(library modules never import the application layer)")
    return out


def layering_violations(root: Path) -> list[str]:
    imports = all_imports(root)
    return cycle_violations(root, imports) + lean_violations(root, imports) + cli_violations(root, imports)


# ---- the real tree ----------------------------------------------------------------------------------------


def test_the_source_tree_keeps_the_layering_rules():
    problems = layering_violations(REPO_ROOT)
    assert not problems, "layering rules broken (docs/architecture.md):\n" + "\n".join(problems)


def test_the_runtime_never_imports_the_export_package():
    """The runtime <-> export cycle is gone: the engine fingerprint the runtime checks lives in runtime/."""
    imports = all_imports(REPO_ROOT)
    into_export = [f"{imp.where(REPO_ROOT)} imports {imp.imported}" for imp in imports
                   if package_of(imp.importer) == "runtime" and package_of(imp.imported) == "export"]
    assert into_export == []


def test_only_the_manifest_module_reads_the_bundle_yaml_document():
    """Every bundle.yaml field is read through the typed Manifest: `<manifest>.raw` appears nowhere else."""
    readers = []
    for module, path in module_names(REPO_ROOT).items():
        if module == "pi0edge.manifest":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "raw":
                owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
                if owner in ("m", "manifest"):
                    readers.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert readers == []


def test_the_checker_sees_every_package_of_the_real_tree():
    modules = module_names(REPO_ROOT)
    assert {package_of(m) for m in modules} == {package for package, _ in PACKAGE_DIRS.values()}
    assert "pi0edge.runtime.backends.ort" in modules and "pi0edge.export.cli" in modules


# ---- the checker on synthetic trees -----------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for folder in PACKAGE_DIRS:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "__init__.py").touch()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_checker_reports_an_injected_package_cycle_with_file_and_line(tmp_path):
    root = _tree(tmp_path, {
        "runtime/engines.py": "import numpy\n\n\ndef load():\n    from pi0edge.export.build import plan\n",
        "export/build.py": "from pi0edge.runtime import engines\n\nplan = 1\n",
    })
    problems = cycle_violations(root, all_imports(root))
    assert len(problems) == 1
    assert "packages export <-> runtime" in problems[0]
    assert "runtime/engines.py:5 imports pi0edge.export.build" in problems[0]
    assert "export/build.py:1 imports pi0edge.runtime.engines" in problems[0]


def test_checker_reports_a_module_cycle_inside_one_package_through_a_relative_import(tmp_path):
    root = _tree(tmp_path, {
        "robot_io/arms.py": "from . import aloha\n",
        "robot_io/aloha.py": "def make():\n    from pi0edge.robot_io.arms import Arm\n",
    })
    problems = cycle_violations(root, all_imports(root))
    assert len(problems) == 1 and "modules pi0edge.robot_io.aloha <-> pi0edge.robot_io.arms" in problems[0]
    assert "robot_io/arms.py:1" in problems[0] and "robot_io/aloha.py:2" in problems[0]


def test_checker_leaves_the_cli_modules_out_of_the_cycle_check(tmp_path):
    root = _tree(tmp_path, {
        "core/cli.py": "from pi0edge.export import cli\nfrom pi0edge.runtime import cli as rcli\n",
        "export/cli.py": "from pi0edge.runtime import policy\n",
        "runtime/cli.py": "from pi0edge.export import bundle\n",
        "runtime/policy.py": "from pi0edge import manifest\n",
        "export/bundle.py": "from pi0edge import manifest\n",
        "core/manifest.py": "import yaml\n",
    })
    assert layering_violations(root) == []


def test_checker_refuses_a_library_module_importing_a_cli_module(tmp_path):
    root = _tree(tmp_path, {"runtime/cli.py": "",
                            "runtime/policy.py": "\n\ndef f():\n    import pi0edge.runtime.cli\n"})
    assert cli_violations(root, all_imports(root)) == [
        "runtime/policy.py:4: pi0edge.runtime.policy imports the CLI module pi0edge.runtime.cli "
        "(library modules never import the application layer)"]


def test_checker_refuses_torch_onnx_and_export_in_the_lean_packages_but_not_onnxruntime(tmp_path):
    root = _tree(tmp_path, {
        "runtime/a.py": "import onnxruntime\n\n\ndef f():\n    import torch.nn\n",
        "calibration/b.py": "from onnx import helper\n",
        "robot_io/c.py": "from pi0edge.export.model import Pi0\n",
        "export/d.py": "import torch\nimport onnx\n",
    })
    problems = lean_violations(root, all_imports(root))
    assert [p.split(": ")[0] for p in problems] == ["runtime/a.py:5", "robot_io/c.py:1", "calibration/b.py:1"]
