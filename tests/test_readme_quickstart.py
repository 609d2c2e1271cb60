"""The README's two quick-start commands (the demo, the tests) do not share a venv: the demo's is a regular
install and the tests' an editable one; running one after the other must not turn one into the other."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quickstart_venvs() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [re.search(r"python3 -m venv (\S+)", block).group(1) for block in blocks if "python3 -m venv" in block]


def test_demo_and_test_commands_use_different_venvs_both_git_ignored():
    venvs = _quickstart_venvs()
    assert len(venvs) == 2 and len(set(venvs)) == 2, venvs
    ignored = (ROOT / ".gitignore").read_text().split()
    assert all(f"{venv}/" in ignored for venv in venvs), (venvs, ignored)
