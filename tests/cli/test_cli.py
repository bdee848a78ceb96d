"""The command line itself: --help and --version, finding the workspace, handing each
command its arguments, and errors as one line rather than a traceback."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import click
import pytest
from click.testing import CliRunner

from highlightsmail import __version__
from highlightsmail.authoring.scaffold import init_workspace
from highlightsmail.cli import main

HIGHLIGHTS = Path(sys.executable).parent / "highlights"


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def all_commands(group: click.Group = main, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += all_commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace made by `init`, with one issue 2024-w02, and the CWD elsewhere."""
    root = tmp_path / "site"
    init_workspace(root, today=dt.date(2024, 1, 12))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return root


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"highlights, version {__version__}"


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: " ".join(c) or "highlights")
def test_help_everywhere(command: tuple[str, ...]) -> None:
    for flag in ("--help", "-h"):
        result = run(*command, flag)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("Usage: ")
        assert " ".join(("main", *command)) in result.stdout.splitlines()[0] or command == ()


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: " ".join(c) or "highlights")
def test_every_option_says_what_it_does(command: tuple[str, ...]) -> None:
    """`--help` lists each option with a sentence, not a bare `--port INTEGER`."""
    for param in _command(command).params:
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"{' '.join(command)} {param.opts[0]} has no help text"


_GROUPS = [c for c in all_commands() if isinstance(_command(c), click.Group)]


@pytest.mark.parametrize("columns", ["80", "50"])
@pytest.mark.parametrize("group", _GROUPS, ids=lambda c: " ".join(c) or "highlights")
def test_the_list_of_commands_shows_each_ones_summary_whole(group: tuple[str, ...], columns: str) -> None:
    """`highlights --help` cut summaries short to fit a line ("Write OUT/<slug>.html,
    OUT/<slug>.txt and a sample..."): each is shown whole, wrapped where it is long,
    and each is a sentence of its own."""
    result = run(*group, "--help", env={"COLUMNS": columns})
    listing = result.stdout.partition("Commands:")[2]
    assert "..." not in listing
    shown = " ".join(listing.split())
    node = _command(group)
    assert isinstance(node, click.Group)
    for name, sub in node.commands.items():
        summary = sub.get_short_help_str(limit=10**6)
        assert summary.endswith("."), f"{name}: {summary!r}"
        assert f"{name} {summary}" in shown, f"{name}: {summary!r} not whole in the list"


_TAKES_ISSUE = [
    c for c in all_commands() if any(p.name == "issue" for p in _command(c).params if isinstance(p, click.Argument))
]


def test_the_commands_that_take_an_issue_are_the_expected_ones() -> None:
    names = {" ".join(c) for c in _TAKES_ISSUE}
    assert {"check", "build", "preview", "send", "status", "report"} <= names


@pytest.mark.parametrize("command", _TAKES_ISSUE, ids=" ".join)
def test_every_command_that_takes_an_issue_says_what_it_may_be(command: tuple[str, ...]) -> None:
    text = " ".join(run(*command, "--help").stdout.split())
    assert "ISSUE is a path, a slug or `latest`." in text


def test_serve_help_names_every_page_it_answers() -> None:
    text = " ".join(run("serve", "--help").stdout.split())
    for words in ("unsubscribe", "/healthz", "webhook", "signup", "confirmation", "archive"):
        assert words in text


def test_import_help_names_the_columns_export_writes() -> None:
    text = " ".join(run("subscribers", "import", "--help").stdout.split())
    for column in ("email", "name", "status", "created", "updated", "source", "consented"):
        assert column in text


@pytest.mark.parametrize("command", ["serve", "preview"])
@pytest.mark.parametrize("port", ["70000", "65536", "-1"])
def test_a_port_out_of_range_is_a_usage_error(site: Path, command: str, port: str) -> None:
    """`serve --port 70000` used to listen on 4464 (70000 - 65536), with no word why."""
    args = ["-w", str(site), command, *(["2024-w02", "--no-open"] if command == "preview" else []), "--port", port]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "--port" in result.stderr and "0<=x<=65535" in result.stderr


def test_every_product_command_is_there() -> None:
    names = {" ".join(c) for c in all_commands()}
    for expected in (
        "init",
        "new",
        "check",
        "build",
        "preview",
        "send",
        "status",
        "serve",
        "subscribers import",
        "subscribers add",
        "subscribers remove",
        "subscribers list",
        "subscribers export",
    ):
        assert expected in names


def test_check_hands_off_the_workspace_and_the_issue_path(site: Path) -> None:
    with mock.patch("highlightsmail.review.lint.check_command", autospec=True) as check:
        result = run("--workspace", str(site), "check", "2024-w02")
    assert result.exit_code == 0, result.output
    (ws, path), kwargs = check.call_args
    assert kwargs == {}
    assert ws.root == site.resolve()
    assert path.resolve() == site / "issues" / "2024-w02.yaml"


def test_build_hands_off_the_out_folder_as_typed(site: Path) -> None:
    with mock.patch("highlightsmail.review.build.build_command", autospec=True) as build:
        assert run("-w", str(site), "build", "latest").exit_code == 0
        assert run("-w", str(site), "build", "latest", "--out", "site-out").exit_code == 0
    first, second = build.call_args_list
    assert first.args[2] == Path("out")
    assert second.args[2] == Path("site-out")
    assert first.args[1].resolve() == site / "issues" / "2024-w02.yaml"


def test_new_and_init_hand_off_their_arguments(site: Path) -> None:
    with mock.patch("highlightsmail.authoring.scaffold.new_issue", autospec=True) as new:
        assert run("-w", str(site), "new", "--date", "2024-03-01").exit_code == 0
    assert new.call_args.args[1] == dt.date(2024, 3, 1)
    with mock.patch("highlightsmail.authoring.scaffold.init_workspace", autospec=True) as init:
        assert run("init", "news").exit_code == 0
        assert run("init").exit_code == 0
    assert [c.args for c in init.call_args_list] == [(Path("news"),), (Path("."),)]


def test_a_bad_date_is_a_usage_error(site: Path) -> None:
    result = run("-w", str(site), "new", "--date", "12/01/2024")
    assert result.exit_code == 2
    assert "YYYY-MM-DD" in result.stderr or "%Y-%m-%d" in result.stderr


def test_workspace_from_the_environment(site: Path) -> None:
    with mock.patch("highlightsmail.review.lint.check_command", autospec=True) as check:
        result = run("check", "latest", env={"HIGHLIGHTS_WORKSPACE": str(site)})
    assert result.exit_code == 0, result.output
    assert check.call_args.args[0].root == site.resolve()


@pytest.mark.parametrize("padding", [" ", "\t", "\n"])
def test_a_workspace_variable_blank_or_padded_is_taken_as_it_means(
    site: Path, monkeypatch: pytest.MonkeyPatch, padding: str
) -> None:
    """A padded value named a folder that does not exist (and init was suggested for it);
    a blank one, a folder called ' '."""
    with mock.patch("highlightsmail.review.lint.check_command", autospec=True) as check:
        result = run("check", "latest", env={"HIGHLIGHTS_WORKSPACE": f"{padding}{site}{padding}"})
    assert result.exit_code == 0, result.output
    assert check.call_args.args[0].root == site.resolve()
    monkeypatch.chdir(site / "issues")
    with mock.patch("highlightsmail.review.lint.check_command", autospec=True) as check:
        result = run("check", "latest", env={"HIGHLIGHTS_WORKSPACE": padding})
    assert result.exit_code == 0, result.output
    assert check.call_args.args[0].root == site.resolve()


def test_a_workspace_that_is_the_settings_file_itself_says_so(site: Path) -> None:
    result = run("-w", str(site / "highlights.yaml"), "check", "latest")
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(
        "highlights.yaml: a file, not a folder; name the folder that holds highlights.yaml"
    )
    assert "highlights init" not in result.stderr


def test_option_beats_the_environment(site: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_workspace(other, today=dt.date(2024, 2, 2))
    with mock.patch("highlightsmail.review.lint.check_command", autospec=True) as check:
        result = run("-w", str(other), "check", "latest", env={"HIGHLIGHTS_WORKSPACE": str(site)})
    assert result.exit_code == 0, result.output
    assert check.call_args.args[0].root == other.resolve()


def test_workspace_found_in_a_parent_folder(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = site / "issues" / "drafts"
    deep.mkdir()
    monkeypatch.chdir(deep)
    with mock.patch("highlightsmail.review.lint.check_command", autospec=True) as check:
        result = run("check", "2024-w02")
    assert result.exit_code == 0, result.output
    assert check.call_args.args[0].root == site.resolve()


def test_no_workspace_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args in (("check", "latest"), ("build", "latest"), ("new",), ("-w", str(tmp_path), "check", "x")):
        result = run(*args)
        assert result.exit_code == 1, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "highlights.yaml" in lines[0]
        assert "highlights init" in lines[0]


def test_unknown_issue_is_a_one_line_error(site: Path) -> None:
    for ref in ("2031-w07", "issues/nope.yaml"):
        result = run("-w", str(site), "check", ref)
        assert result.exit_code == 1
        assert len(result.stderr.strip().splitlines()) == 1
        assert "nope.yaml" in result.stderr or "2031-w07" in result.stderr


def test_latest_is_the_newest_week_and_skips_what_is_not_an_issue_file(site: Path) -> None:
    issues = site / "issues"
    (issues / "2024-w01.yaml").write_text((issues / "2024-w02.yaml").read_text())
    (issues / "notes.yaml").write_text("title: [not an issue\n")  # sorts after the weeks
    (issues / "2099-w01.yaml").mkdir()  # a folder
    (issues / "2099-w02.yaml").symlink_to("2099-w02.yaml")  # a link to itself
    with mock.patch("highlightsmail.review.lint.check_command") as check:
        result = run("-w", str(site), "check", "latest")
    assert result.exit_code == 0, result.output
    assert check.call_args.args[1] == site / "issues" / "2024-w02.yaml"


@pytest.mark.parametrize("ref", ["issues/2099-w01.yaml", "issues/2099-w02.yaml"])
def test_a_folder_or_a_symlink_loop_as_issue_is_a_one_line_error(
    site: Path, ref: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (site / "issues" / "2099-w01.yaml").mkdir()
    (site / "issues" / "2099-w02.yaml").symlink_to("2099-w02.yaml")
    monkeypatch.chdir(site)
    for command in ("check", "build", "preview"):
        result = run(command, ref)
        assert result.exit_code == 1, (command, result.output)
        assert result.stderr.strip().splitlines() == [
            f"Error: {ref}: " + ("is a folder, not an issue file" if "w01" in ref else "no such issue file")
        ]


@pytest.mark.parametrize("ref", ["x" * 300, "x" * 300 + ".yaml", "issues/" + "x" * 300 + ".yaml"])
def test_an_issue_name_longer_than_the_system_takes_is_a_one_line_error(site: Path, ref: str) -> None:
    """`check <300 characters>` was an OSError (File name too long) traceback."""
    for command in ("check", "build", "send", "status", "report"):
        result = CliRunner().invoke(main, ["-w", str(site), command, ref])
        assert result.exit_code == 1, (command, result.output)
        [line] = result.stderr.splitlines()
        assert line.startswith(f"Error: {ref}: no ")


@pytest.mark.parametrize(
    "args",
    [
        ("bounces", "scan", "LONG"),
        ("init", "LONG"),
        ("-w", "LONG", "status", "latest"),
        ("build", "latest", "--out", "LONG"),
        ("publish", "--out", "LONG"),
        ("subscribers", "import", "LONG"),
        ("subscribers", "export", "LONG"),
    ],
    ids=lambda args: " ".join(a for a in args if a != "LONG"),
)
def test_a_path_longer_than_the_system_takes_is_one_line_for_every_command(
    site: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    """Path.is_file and friends raise for a name too long (ENAMETOOLONG): five commands
    ended in that OSError's traceback."""
    monkeypatch.chdir(site)
    long = "x" * 300
    result = CliRunner().invoke(main, [long if a == "LONG" else a for a in args])
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, OSError), result.exception
    line = result.stderr.splitlines()[-1]  # after any warning (a signing secret just made)
    assert line.startswith("Error: ") and ("File name too long" in line or "no such file" in line), line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["highlights.yaml", "issues", "templates"])
@pytest.mark.parametrize("how", ["link loop", "broken link"])
def test_a_workspace_file_or_folder_that_is_a_bad_link_is_named_as_such(
    site: Path, monkeypatch: pytest.MonkeyPatch, name: str, how: str
) -> None:
    """A highlights.yaml that loops was "no highlights.yaml in . or its parents"; issues/
    looping was "no issue files yet; create one with `highlights new`"; templates/
    looping silently gave the package's look."""
    target = site / name
    target.rename(site / f"{name}.real")
    target.symlink_to(name if how == "link loop" else "gone")
    monkeypatch.chdir(site)
    for args in (["check", "latest"], ["-w", str(site), "check", "latest"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        [line] = result.stderr.splitlines()
        assert line.startswith("Error: ") and "a broken link or a link loop" in line, line
        assert name in line


def test_broken_settings_name_the_place(site: Path) -> None:
    (site / "highlights.yaml").write_text("name: X\nfrom: nobody\nbase_url: ftp://x\n")
    result = run("-w", str(site), "check", "latest")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    settings = site / "highlights.yaml"  # outside the CWD: shown in full
    assert f"{settings}:2:7: from: 'nobody' is not an email address" in lines
    assert f"{settings}:3:11: base_url: links must be absolute http(s) URLs, not 'ftp:'" in lines
    assert all(line.startswith(f"{settings}:") for line in lines)


def test_a_real_process_reports_a_broken_issue_without_a_traceback(site: Path) -> None:
    """The installed `highlights` script, end to end, on a file that is not YAML."""
    (site / "issues" / "2024-w03.yaml").write_text("title: [unclosed\nitems:\n  - x\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIGHLIGHTS_", "SENDGRID_"))}
    proc = subprocess.run(
        [str(HIGHLIGHTS), "check", "2024-w03"], cwd=site, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("issues/2024-w03.yaml:")
    first = proc.stderr.splitlines()[0].split(":")
    assert first[1].isdigit() and first[2].isdigit()
    assert proc.stdout == ""


# --------------------------------------------------------------------------- hostile text in headers

BROKEN_LINES = """\
title: "Week 3\\u2028Bcc: victim@example.net"
date: 2024-01-19
subject: "Hi\\u2029there"
items:
  - title: "One"
    summary: Fine.
"""


def test_the_audit_subject_with_an_encoded_line_break_fails_check_at_its_place(site: Path) -> None:
    (site / "issues" / "2024-w03.yaml").write_text(
        'title: "T"\ndate: 2024-01-19\nsubject: "=?utf-8?q?Hi=0D=0ABcc:_victim@example.net?="\n'
        "items:\n  - title: One\n    summary: Fine.\n",
        encoding="utf-8",
    )
    result = run("-w", str(site), "check", "2024-w03")
    assert result.exit_code == 1
    issue = site / "issues" / "2024-w03.yaml"
    assert result.stderr.splitlines() == [
        f"{issue}:3:10: subject: must not contain an RFC 2047 encoded word (=?charset?Q?...?=): write the text itself"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize("command", [("check",), ("build",), ("send", "--test")])
def test_line_separators_in_the_issue_are_one_line_per_problem_for_every_command(
    site: Path, command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """U+2028 and U+2029 are line breaks to the email package: refused when the file is
    read, never a ValueError from deep in the header code."""
    monkeypatch.setenv("HIGHLIGHTS_SECRET", "test-secret-0123456789abcdef0123456789")
    (site / "issues" / "2024-w03.yaml").write_text(BROKEN_LINES, encoding="utf-8")
    result = CliRunner().invoke(main, ["-w", str(site), *command, "2024-w03"])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    issue = site / "issues" / "2024-w03.yaml"
    assert result.stderr.splitlines() == [
        f"{issue}:1:8: title: must be a single line (it holds a line break, U+2028)",
        f"{issue}:3:10: subject: must be a single line (it holds a line break, U+2029)",
    ]
    assert not (site / "outbox").exists() or not any((site / "outbox").iterdir())


@pytest.mark.parametrize("command", [("check",), ("build",), ("send", "--test")])
def test_a_line_separator_in_a_setting_is_one_line_for_every_command(
    site: Path, command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIGHLIGHTS_SECRET", "test-secret-0123456789abcdef0123456789")
    settings = site / "highlights.yaml"
    text = settings.read_text(encoding="utf-8").replace("name: My Newsletter ", 'name: "My\\u2028Newsletter"')
    settings.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["-w", str(site), *command, "2024-w02"])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.splitlines() == [
        f"{settings}:5:7: name: must be a single line (it holds a line break, U+2028)"
    ]
