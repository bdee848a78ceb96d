"""`highlights init` and `highlights new`: what they write, and what they refuse."""

from __future__ import annotations

import datetime as dt
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from highlightsmail.authoring.issue import load_issue
from highlightsmail.authoring.scaffold import init_workspace, issue_filename
from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def package_templates() -> set[str]:
    base = resources.files("highlightsmail") / "templates"
    found = set()

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.name == "__pycache__" or entry.name.startswith("."):
                continue
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            else:
                found.add(f"templates/{prefix}{entry.name}")

    walk(base, "")
    return found


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_init_creates_a_workspace_that_loads(here: Path) -> None:
    result = run("init", "letter")
    assert result.exit_code == 0, result.output
    root = here / "letter"
    files = set(tree(root))
    week = issue_filename(dt.date.today())
    assert {"highlights.yaml", ".gitignore", "subscribers/subscribers.csv", f"issues/{week}"} <= files
    assert package_templates() <= files
    assert package_templates(), "the package ships default templates"
    # What it wrote is valid: settings load, the first issue validates.
    ws = load_workspace(root)
    assert ws.settings.name == "My Newsletter"
    assert "example.org" in ws.settings.from_
    issue = load_issue(root / "issues" / week)
    assert 1 <= len(issue.items) <= 2
    assert issue.title == f"My Newsletter | Week {dt.date.today().isocalendar()[1]}, {dt.date.today().isocalendar()[0]}"
    assert (root / "subscribers/subscribers.csv").read_text().splitlines()[0] == "email,name"
    ignored = (root / ".gitignore").read_text().splitlines()
    for line in ("out/", "outbox/", "subscribers/*.db*", "subscribers/.secret", "private/"):
        assert line in ignored
    # Next steps name the folder and the first issue.
    assert "cd letter" in result.stdout
    assert f"highlights check {week.removesuffix('.yaml')}" in result.stdout


def test_init_copies_the_package_templates_byte_for_byte(here: Path) -> None:
    init_workspace(here / "w")
    base = resources.files("highlightsmail") / "templates"
    for rel in package_templates():
        inner = rel.removeprefix("templates/")
        assert (here / "w" / rel).read_bytes() == base.joinpath(*inner.split("/")).read_bytes()


def test_init_defaults_to_the_current_folder(here: Path) -> None:
    result = run("init")
    assert result.exit_code == 0, result.output
    assert (here / "highlights.yaml").is_file()
    assert "cd " not in result.stdout


def test_init_refuses_an_existing_workspace_and_writes_nothing(here: Path) -> None:
    (here / "highlights.yaml").write_text("name: Mine\n")
    before = tree(here)
    result = run("init", ".")
    assert result.exit_code == 1
    assert "highlights.yaml already exists" in result.stderr
    assert "Traceback" not in result.output
    assert tree(here) == before


def test_init_keeps_files_already_there(here: Path) -> None:
    (here / ".gitignore").write_text("node_modules/\nout/\n")
    (here / "subscribers").mkdir()
    (here / "subscribers" / "subscribers.csv").write_text("email\nme@example.net\n")
    result = run("init")
    assert result.exit_code == 0, result.output
    gitignore = (here / ".gitignore").read_text()
    assert gitignore.startswith("node_modules/\nout/\n")
    assert gitignore.count("out/\n") == 1
    assert "subscribers/.secret" in gitignore and "outbox/" in gitignore
    assert "\nprivate/\n" in gitignore  # exports and reports: personal data
    assert (here / "subscribers" / "subscribers.csv").read_text() == "email\nme@example.net\n"
    assert "kept the existing subscribers/subscribers.csv" in result.stderr


def test_init_refuses_a_file_as_folder(here: Path) -> None:
    (here / "afile").write_text("x")
    result = run("init", "afile")
    assert result.exit_code != 0
    assert (here / "afile").read_text() == "x"


@pytest.mark.parametrize("blocker", ["file", "broken link", "link loop"])
def test_init_says_what_is_in_the_way_not_that_a_workspace_exists(here: Path, blocker: str) -> None:
    """A file where the issues folder goes, or a directory argument that is a broken link
    or a loop, was reported as "highlights.yaml already exists: this is a workspace"."""
    if blocker == "file":
        (here / "letter").mkdir()
        (here / "letter" / "issues").write_text("not a folder")
        in_the_way = "letter/issues"
    elif blocker == "broken link":
        (here / "letter").symlink_to(here / "gone")
        in_the_way = "letter"
    else:
        (here / "letter").symlink_to("letter")
        in_the_way = "letter"
    result = CliRunner().invoke(main, ["init", "letter"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {in_the_way}: cannot create the workspace: something that is not a folder is in the way "
        "(a file, a broken link or a link loop)\n"
    )
    assert not (here / "letter" / "highlights.yaml").exists()


def test_init_with_a_gitignore_that_is_not_utf8_is_a_clear_error_and_writes_nothing(here: Path) -> None:
    (here / "letter").mkdir()
    (here / "letter" / ".gitignore").write_bytes(b"caf\xe9/\n")
    result = CliRunner().invoke(main, ["init", "letter"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: letter/.gitignore: not UTF-8 text; init adds the lines")
    assert sorted(p.name for p in (here / "letter").iterdir()) == [".gitignore"]


def test_new_creates_the_file_of_the_iso_week(workspace: Path) -> None:
    (workspace / "issues" / "2024-w02.yaml").unlink()
    result = run("new", "--date", "2024-01-12")
    assert result.exit_code == 0, result.output
    path = workspace / "issues" / "2024-w02.yaml"
    assert result.stdout.strip() == "issues/2024-w02.yaml"
    issue = load_issue(path)
    assert issue.title == "AI Research Highlights | Week 2, 2024"
    assert issue.date == dt.date(2024, 1, 12)
    assert len(issue.items) == 1
    # The placeholder is plainly something to replace.
    assert "TODO" in issue.items[0].title and "TODO" in issue.items[0].summary


def test_new_uses_the_iso_year_at_a_year_boundary(workspace: Path) -> None:
    result = run("new", "--date", "2024-12-30")
    assert result.exit_code == 0, result.output
    issue = load_issue(workspace / "issues" / "2025-w01.yaml")
    assert issue.title == "AI Research Highlights | Week 1, 2025"
    assert issue.date == dt.date(2024, 12, 30)


def test_new_refuses_an_existing_issue(workspace: Path) -> None:
    path = workspace / "issues" / "2024-w02.yaml"
    before = path.read_bytes()
    result = run("new", "--date", "2024-01-10")
    assert result.exit_code == 1
    assert "issues/2024-w02.yaml already exists" in result.stderr
    assert path.read_bytes() == before


def test_new_defaults_to_today(workspace: Path) -> None:
    result = run("new")
    assert result.exit_code == 0, result.output
    assert (workspace / "issues" / issue_filename(dt.date.today())).is_file()


def test_new_right_after_init_makes_next_weeks_issue(here: Path) -> None:
    """`init` writes this week's issue and tells the editor `highlights new` starts next
    week's: it must, not refuse because this week's file exists."""
    assert run("init", "letter").exit_code == 0
    today = dt.date.today()
    this_week = here / "letter" / "issues" / issue_filename(today)
    before = this_week.read_bytes()
    runner = CliRunner()
    result = runner.invoke(main, ["-w", str(here / "letter"), "new"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    next_week = today + dt.timedelta(days=7)
    assert result.stdout.strip().endswith(issue_filename(next_week))
    assert load_issue(here / "letter" / "issues" / issue_filename(next_week)).date == next_week
    assert this_week.read_bytes() == before
    # And again: the week after that.
    again = runner.invoke(main, ["-w", str(here / "letter"), "new"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert again.stdout.strip().endswith(issue_filename(today + dt.timedelta(days=14)))


def test_new_quotes_a_name_that_yaml_would_misread(workspace: Path) -> None:
    settings = workspace / "highlights.yaml"
    text = settings.read_text().replace("name: AI Research Highlights", "name: 'Notes: \"weekly\" # 1'")
    settings.write_text(text)
    assert load_workspace(workspace).settings.name == 'Notes: "weekly" # 1'
    result = run("new", "--date", "2024-03-01")
    assert result.exit_code == 0, result.output
    assert load_issue(workspace / "issues" / "2024-w09.yaml").title == 'Notes: "weekly" # 1 | Week 9, 2024'


def test_new_creates_the_issues_folder(here: Path) -> None:
    init_workspace(here, today=dt.date(2024, 1, 3))
    for path in (here / "issues").iterdir():
        path.unlink()
    (here / "issues").rmdir()
    result = run("new", "--date", "2024-01-20")
    assert result.exit_code == 0, result.output
    assert (here / "issues" / "2024-w03.yaml").is_file()


def test_new_outside_a_workspace_is_a_one_line_error(here: Path) -> None:
    result = run("new")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "highlights.yaml" in result.stderr


def test_a_new_workspace_checks_builds_and_takes_new_issues(here: Path) -> None:
    assert run("init", "letter").exit_code == 0
    week = issue_filename(dt.date.today()).removesuffix(".yaml")
    runner = CliRunner()
    ws = ["--workspace", str(here / "letter")]

    checked = runner.invoke(main, [*ws, "check", "latest"], catch_exceptions=False)
    assert checked.exit_code == 0, checked.output
    assert checked.stderr == "", "the first issue is clean: no warnings"
    assert checked.stdout.startswith(f"letter/issues/{week}.yaml: OK (2 items, HTML ")

    built = runner.invoke(main, [*ws, "build", week], catch_exceptions=False)
    assert built.exit_code == 0, built.output
    for ext in ("html", "txt", "eml"):
        assert (here / "out" / f"{week}.{ext}").stat().st_size > 0
    assert "https://newsletter.example.org/u/sample" in (here / "out" / f"{week}.txt").read_text()

    created = runner.invoke(main, [*ws, "new", "--date", "2024-01-12"], catch_exceptions=False)
    assert created.exit_code == 0, created.output
    assert (here / "letter" / "issues" / "2024-w02.yaml").is_file()
    rechecked = runner.invoke(main, [*ws, "check", "2024-w02"], catch_exceptions=False)
    assert rechecked.exit_code == 0, rechecked.output
    assert "TODO" in rechecked.stderr, "the skeleton's placeholders are pointed out"
    assert runner.invoke(main, [*ws, "build", "2024-w02"]).exit_code == 0


def test_init_and_new_print_nothing_themselves(here: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from highlightsmail.authoring.scaffold import new_issue

    (here / "w").mkdir()
    (here / "w" / ".gitignore").write_text("out/\n")
    created = init_workspace(here / "w", today=dt.date(2024, 1, 3))
    assert created.first_issue == "2024-w01"
    assert created.kept == []
    assert set(created.written) == {p for p in (here / "w").rglob("*") if p.is_file()}
    path = new_issue(load_workspace(here / "w"), dt.date(2024, 1, 12))
    assert path == here / "w" / "issues" / "2024-w02.yaml" and path.is_file()
    assert capfd.readouterr() == ("", "")
