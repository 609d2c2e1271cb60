"""Exactly one onnxruntime in every documented install (docs/install.md).

`onnxruntime` and `onnxruntime-gpu` both own the `onnxruntime` module: installed together, whichever came last
wins, so pyproject's base dependencies name neither and each documented install brings one. Two checks: pyproject's
extras read directly (instant), and pip's own resolution of each install with every transitive dependency
(`pip install --dry-run --ignore-installed --report`: metadata only, 5-25 s a case here).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# install -> the onnxruntime distribution pip must bring (None: JetPack's wheel, installed outside pip)
DOCUMENTED_INSTALLS = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu", "jetson": None, "export,cpu": "onnxruntime",
                       "export,gpu": "onnxruntime-gpu", "export,cpu,sim": "onnxruntime", "dev": "onnxruntime",
                       "dev,ray": "onnxruntime"}
GPU_LIBRARIES = ("nvidia-cuda-runtime", "nvidia-cudnn-cu13", "nvidia-cublas")


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _requirements(extras: str | None, seen: frozenset = frozenset()) -> list[str]:
    """Base dependencies plus the extras' ("export,cpu"), with `pi0edge[...]` self-references expanded."""
    if extras is not None and "," in extras:
        return [r for extra in extras.split(",") for r in _requirements(extra, seen)]
    extra = extras
    project = PYPROJECT["project"]
    out = list(project["dependencies"]) if extra is None else []
    for requirement in ([] if extra is None else project["optional-dependencies"][extra]):
        if _name(requirement) == "pi0edge":
            for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                if inner.strip() not in seen:
                    out += _requirements(inner.strip(), seen | {extra})
        else:
            out.append(requirement)
    return out


def _onnxruntimes(names) -> list[str]:
    return sorted({n for n in names if n.startswith("onnxruntime") or n.startswith("ort-")})


def test_base_dependencies_name_no_onnxruntime():
    assert _onnxruntimes(_name(r) for r in _requirements(None)) == []


@pytest.mark.parametrize("install", sorted(DOCUMENTED_INSTALLS))
def test_pyproject_extra_brings_exactly_its_one_onnxruntime(install):
    expected = DOCUMENTED_INSTALLS[install]
    assert _onnxruntimes(_name(r) for r in _requirements(install)) == ([expected] if expected else [])


def test_readme_quick_start_installs_are_documented_installs():
    readme = (REPO / "README.md").read_text()
    installs = set(re.findall(r'pip install (?:-e )?"\.\[([a-z,]+)\]"', readme))
    assert installs and installs <= set(DOCUMENTED_INSTALLS), installs - set(DOCUMENTED_INSTALLS)


def test_gpu_extra_is_onnxruntime_gpu_for_cuda_13_with_its_cuda_and_cudnn_wheels():
    (requirement,) = [r for r in _requirements("gpu") if _name(r) == "onnxruntime-gpu"]
    assert re.search(r"\[\s*cuda\s*,\s*cudnn\s*\]", requirement)
    assert ">=1.27" in requirement and "<2" in requirement  # 1.27 is the first onnxruntime-gpu for CUDA 13


def _resolve(install: str, tmp_path: Path) -> list[str]:
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                             "--report", str(report), f".[{install}]"], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"pip could not resolve .[{install}]:\n{result.stderr[-3000:]}"
    return [item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]]


@pytest.mark.parametrize("install", sorted(DOCUMENTED_INSTALLS))
def test_pip_resolves_exactly_one_onnxruntime_per_install(install, tmp_path):
    names = _resolve(install, tmp_path)
    expected = DOCUMENTED_INSTALLS[install]
    assert _onnxruntimes(names) == ([expected] if expected else [])
    if "gpu" in install.split(","):
        assert set(GPU_LIBRARIES) <= set(names), f"missing CUDA/cuDNN wheels: {set(GPU_LIBRARIES) - set(names)}"
