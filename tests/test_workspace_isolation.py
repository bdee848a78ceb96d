"""The tests never read the user's workspace. The repository is also the example
workspace, and its README invites changes (turn the archive or the signup form on,
point `database:` elsewhere, edit the example issue): the tests must pass as they are
after any of that, and regenerating the golden files must leave them as they were.

Proved on a copy of the checkout whose highlights.yaml and example issue are changed so,
running the tests that render and build the example there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import REPO
from support.workspace import configure

pytestmark = pytest.mark.slow

TESTS = [
    "rendering/test_render.py",
    "review/test_build.py",
    "cli/test_example_workspace.py",
    "mail/backends/test_outbox.py",
]


def test_tests_pass_and_keep_their_golden_files_whatever_the_user_changes(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "out", "outbox", "*.db*")
    for name in ("README.md", "highlights.yaml", "issues", "subscribers", "tests"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy(source, checkout / name)
    shutil.copy(REPO / "pyproject.toml", checkout / "pyproject.toml")  # pytest's settings

    # What a user of the example does with it.
    configure(
        checkout,
        archive={"enabled": True, "path": "/news"},
        signup={"enabled": True, "welcome": "none"},
        base_url="https://news.example.net/letters",
        database="postgresql://nobody@192.0.2.1/elsewhere",
    )
    issue = checkout / "issues" / "2024-w02.yaml"
    issue.write_text(
        issue.read_text(encoding="utf-8").replace("title:", "title: Edited,", 1) + "# edited by the user\n",
        encoding="utf-8",
    )

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TESTS],
        cwd=checkout / "tests",
        env={**os.environ, "HIGHLIGHTS_REGEN_GOLDEN": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    for golden in sorted((REPO / "tests" / "rendering" / "golden").iterdir()):
        copy = checkout / "tests" / "rendering" / "golden" / golden.name
        assert copy.read_bytes() == golden.read_bytes(), f"{golden.name} was rewritten"
