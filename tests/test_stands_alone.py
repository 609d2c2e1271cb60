"""The repository stands alone: code and docs cite its own docs/, never a file a user does not have (the
founding notes outside the repository) nor a tracker's issue numbers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTSIDE_REFERENCE = re.compile(r"\b(MODEL|DESIGN|STYLE|ENV)\.md\b|\.\./shared/|(?i:\bissues? #?\d+\b)")


def outside_references(paths: list[Path], root: Path) -> list[str]:
    problems = []
    for path in paths:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE_REFERENCE.search(line):
                problems.append(f"{path.relative_to(root)}:{number}: {line.strip()[:100]}")
    return problems


def tracked_text_files(root: Path) -> list[Path]:
    names = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.yaml", "*.toml", ".ci/*"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.split()
    return [root / name for name in names if (root / name).is_file()]


def test_no_file_cites_documents_outside_the_repository_or_issue_numbers():
    files = tracked_text_files(REPO_ROOT)
    assert files, "git ls-files found nothing: is this a clone?"
    problems = outside_references(files, REPO_ROOT)
    assert not problems, "cite docs/ in the repository instead:\n" + "\n".join(problems)


def test_the_check_catches_a_cited_founding_note_and_an_issue_number(tmp_path):
    note, issue = "MODEL" + ".md", "issue " + "7"  # spelled in two parts so this file passes its own check
    (tmp_path / "a.py").write_text(f'"""Norm ({note}, "Shapes")."""\n')
    (tmp_path / "b.md").write_text(f"fine: docs/model.md\nfixed in {issue}\n")
    assert outside_references([tmp_path / "a.py", tmp_path / "b.md"], tmp_path) == [
        f'a.py:1: """Norm ({note}, "Shapes")."""', f"b.md:2: fixed in {issue}"]
