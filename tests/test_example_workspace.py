"""The repository is itself the example workspace: what the README tells a new user to
type works in it as it is."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers_workspace import copy_example
from highlightsmail.cli import main

REPO = Path(__file__).resolve().parent.parent
SUBSCRIBERS = Path("subscribers/subscribers.csv")


def test_the_readme_import_command_imports_the_example_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"highlights subscribers import {SUBSCRIBERS}\n" in readme
    # The repository's list and README, with the tests' own settings: the user may have
    # changed the repository's highlights.yaml (another database, say).
    root = copy_example(tmp_path / "repo", templates=False)
    (root / "subscribers").mkdir()
    shutil.copy(REPO / SUBSCRIBERS, root / SUBSCRIBERS)
    monkeypatch.chdir(root)
    monkeypatch.setenv("HIGHLIGHTS_SECRET", "example-secret-0123456789abcdef0123")

    rows = list(csv.DictReader((root / SUBSCRIBERS).open(encoding="utf-8", newline="")))
    assert len(rows) >= 5
    assert all(row["email"].endswith("@example.org") and row["name"] for row in rows)
    assert [row["status"] for row in rows].count("unsubscribed") == 1

    runner = CliRunner()
    dry = runner.invoke(main, ["subscribers", "import", str(SUBSCRIBERS), "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0 and dry.stderr == "", dry.output
    done = runner.invoke(main, ["subscribers", "import", str(SUBSCRIBERS)], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert done.stderr == "", "no row is rejected or warned about"
    assert re.search(rf"imported {len(rows)} new, 0 updated, 0 unchanged, 0 rejected", done.stdout)

    listed = runner.invoke(main, ["subscribers", "list", "--format", "csv"], catch_exceptions=False)
    statuses = {row["email"]: row["status"] for row in csv.DictReader(listed.stdout.splitlines())}
    assert statuses == {row["email"]: row["status"] for row in rows}


def test_the_example_list_is_not_git_ignored() -> None:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: nothing decides what is ignored")
    ignored = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", "-q", str(SUBSCRIBERS)], capture_output=True
    )
    assert ignored.returncode == 1, f"{SUBSCRIBERS} is hidden by .gitignore"
