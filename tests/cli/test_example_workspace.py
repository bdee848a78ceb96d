"""The repository is itself the example workspace: what the README tells a new user to
type works in it as it is."""

from __future__ import annotations

import csv
import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from highlightsmail.cli import main
from support.paths import REPO
from support.workspace import copy_example

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


def _readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    return _readme().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _shell_lines(text: str) -> list[str]:
    """The command lines of the ```sh blocks in `text`, without their comments."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                lines.append(command)
    return lines


def test_the_readme_says_how_to_reach_highlights_before_its_first_bare_command() -> None:
    """After the README's first command (`.venv/bin/highlights ...`), `highlights new`
    was "command not found": the virtualenv was never activated."""
    readme = _readme()
    first_bare = min(m.start() for m in re.finditer(r"(?m)^highlights ", readme))
    before = readme[:first_bare]
    assert ". .venv/bin/activate" in before and ".venv/bin/highlights" in before


def test_every_command_is_named_in_the_readme() -> None:
    import click

    def commands(group: click.Group, prefix: str = "") -> list[str]:
        found = []
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found += commands(command, f"{prefix}{name} ")
            else:
                found.append(f"{prefix}{name}")
        return found

    readme = _readme()
    missing = [c for c in commands(main) if f"highlights {c}" not in readme]
    assert not missing, f"the README never shows: {missing}"


def test_every_environment_variable_the_package_reads_is_named_in_the_readme() -> None:
    """HIGHLIGHTS_SMTP_CAFILE was read but never named: a relay with a private CA had no
    way in that a reader could find."""
    import highlightsmail

    package = Path(highlightsmail.__file__).parent  # as installed: a test's copy of the checkout has no src/
    source = "\n".join(p.read_text(encoding="utf-8") for p in package.rglob("*.py"))
    names = set(re.findall(r"\bENV_[A-Z_]+ = \"([A-Z_]+)\"", source))
    names |= set(re.findall(r"environ(?:\.get\(|\[)\"([A-Z_]+)\"", source))
    assert {"HIGHLIGHTS_SMTP_CAFILE", "HIGHLIGHTS_SECRET", "SENDGRID_API_KEY", "HIGHLIGHTS_SECRET_PREVIOUS"} <= names
    readme = _readme()
    assert not [n for n in sorted(names) if not re.search(rf"\b{n}\b", readme)]


def test_the_readme_names_the_columns_export_writes() -> None:
    from highlightsmail.subscribers.manage import CSV_COLUMNS

    text = " ".join(_section("Subscribers").split())
    assert "four more columns after `email`, `name` and `status`" in text
    assert CSV_COLUMNS[:3] == ("email", "name", "status") and len(CSV_COLUMNS) == 3 + 4
    for column in CSV_COLUMNS[3:]:
        assert f"`{column}`" in text


def test_the_readmes_week_and_subscriber_commands_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every `highlights` line of the week's workflow and of the subscribers' section, in
    the README's order, in a copy of the example workspace: each one works (`send`'s
    question answered yes), with what they print as the comments say."""
    # The repository's README and list, with the tests' own settings and issue.
    root = copy_example(tmp_path / "repo", templates=False)
    (root / "subscribers").mkdir()
    shutil.copy(REPO / SUBSCRIBERS, root / SUBSCRIBERS)
    monkeypatch.chdir(root)
    monkeypatch.setenv("HIGHLIGHTS_SECRET", "example-secret-0123456789abcdef0123")

    week = _shell_lines(_section("A week in the life of an editor"))
    assert week[0] == ". .venv/bin/activate"
    lines = _shell_lines(_section("Subscribers")) + week[1:]
    ran = []
    for line in lines:
        args = line.split()
        assert args[0] == "highlights", line
        if args[1] == "preview":  # serves until Ctrl-C: tests/review/test_preview.py runs it
            continue
        args = [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', line)][1:]
        done = CliRunner().invoke(main, args, input="y\n", catch_exceptions=False)
        assert done.exit_code == 0, (line, done.output)
        ran.append(args[0] if args[0] != "subscribers" else " ".join(args[:2]))
        if args[:2] == ["subscribers", "export"]:
            assert (root / args[2]).is_file()
        if args[0] == "new":
            assert (
                done.stdout.strip()
                == f"issues/{dt.date.today().isocalendar()[0]}-w{dt.date.today().isocalendar()[1]:02d}.yaml"
            )
    assert {"new", "check", "send", "status", "subscribers add", "subscribers remove", "subscribers export"} <= set(ran)
