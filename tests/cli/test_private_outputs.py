"""What commands write that holds personal data stays out of git: exports and reports go
in the workspace's private/ folder, which init's .gitignore and the repository's ignore
(and which a command makes when it is missing); a file that git would offer for a
commit, given by path or as standard output redirected to it, gets one warning line.
No git repository, or no git at all: no warning."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from highlightsmail.cli import main
from support.paths import REPO

HIGHLIGHTS = str(Path(sys.executable).with_name("highlights"))
ISSUE = "2024-w02"
WARNING = "is in a git repository and not ignored, so git would offer it for a commit"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git decides what is ignored; it is not installed")


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def repo(workspace: Path) -> Path:
    """The example workspace as a git repository with init's .gitignore, a list of two,
    and the example issue sent to them (through the outbox)."""
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    gitignore = resources.files("highlightsmail").joinpath("skeleton/gitignore").read_text(encoding="utf-8")
    (workspace / ".gitignore").write_text(gitignore, encoding="utf-8")
    (workspace / "list.csv").write_text("email\nada@example.org\ngrace@example.org\n", encoding="utf-8")
    for args in (("subscribers", "import", "list.csv"), ("send", ISSUE, "--yes", "--skip-test-check")):
        assert _run(*args).exit_code == 0
    return workspace


def _offered(root: Path) -> set[str]:
    """What `git status` offers to add, by path."""
    out = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line[3:] for line in out.splitlines()}


FILE_OUTPUTS = [
    ("subscribers", "export", "{}"),
    ("report", ISSUE, "--out", "{}"),
    ("report", ISSUE, "--format", "html", "--out", "{}"),
    ("report", ISSUE, "--format", "json", "--out", "{}"),
]


@pytest.mark.parametrize("args", FILE_OUTPUTS, ids=" ".join)
def test_an_output_file_git_would_offer_gets_one_warning(repo: Path, args: tuple[str, ...]) -> None:
    done = _run(*(a.format("backup.out") for a in args))
    assert done.exit_code == 0, done.output
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: backup.out {WARNING}; write it in private/ (git-ignored) or add it to .gitignore"]
    assert "backup.out" in _offered(repo)


@pytest.mark.parametrize("args", FILE_OUTPUTS, ids=" ".join)
def test_the_private_folder_is_made_when_missing_and_git_ignores_it(repo: Path, args: tuple[str, ...]) -> None:
    assert not (repo / "private").exists()  # as in a fresh clone
    done = _run(*(a.format("private/backup.out") for a in args))
    assert done.exit_code == 0, done.output
    assert "warning:" not in done.stderr
    assert (repo / "private" / "backup.out").is_file()
    assert stat.S_IMODE((repo / "private").stat().st_mode) == 0o700
    assert not {p for p in _offered(repo) if p.startswith("private")}


def test_a_file_listed_in_gitignore_gets_no_warning(repo: Path) -> None:
    with (repo / ".gitignore").open("a", encoding="utf-8") as fh:
        fh.write("*.csv\n")
    done = _run("subscribers", "export", "backup.csv")
    assert done.exit_code == 0 and "warning:" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [("form",), ("subscribers", "export"), ("subscribers", "list", "--format", "csv"), ("report", ISSUE)],
    ids=" ".join,
)
def test_standard_output_redirected_into_the_repository_gets_the_same_warning(
    repo: Path, args: tuple[str, ...]
) -> None:
    """`highlights form > form.html`, `subscribers export > backup.csv`: git status
    offered them and nothing said so."""
    for target, warned in (("out.txt", True), ("private/out.txt", False)):
        (repo / target).parent.mkdir(exist_ok=True)
        with (repo / target).open("w") as out:
            done = subprocess.run(
                [HIGHLIGHTS, *args], cwd=repo, stdout=out, stderr=subprocess.PIPE, text=True, timeout=120
            )
        assert done.returncode == 0, done.stderr
        assert (repo / target).stat().st_size > 0
        lines = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
        assert lines == (
            [f"warning: {target} {WARNING}; write it in private/ (git-ignored) or add it to .gitignore"]
            if warned
            else []
        ), done.stderr


def test_a_pipe_gets_no_warning(repo: Path) -> None:
    done = subprocess.run(
        f"{HIGHLIGHTS} subscribers export | cat > /dev/null", shell=True, cwd=repo, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stderr == ""


def test_outside_a_git_repository_there_is_no_warning(workspace: Path) -> None:
    inside = subprocess.run(["git", "-C", str(workspace), "rev-parse"], capture_output=True)
    assert inside.returncode != 0, "the test's folder is in a git repository"
    done = _run("subscribers", "export", "backup.csv")
    assert done.exit_code == 0 and "warning:" not in done.stderr


def test_without_git_there_is_no_warning_and_no_error(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nothing = tmp_path / "no-programs"
    nothing.mkdir()
    monkeypatch.setenv("PATH", str(nothing))
    done = _run("subscribers", "export", "backup.csv")
    assert done.exit_code == 0, done.output
    assert "warning:" not in done.stderr and (repo / "backup.csv").is_file()


def test_the_repositorys_own_gitignore_keeps_private_out() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing decides what is ignored")
    for path in ("private/backup.csv", "private/report.html"):
        ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", "-q", path])
        assert ignored.returncode == 0, f"{path} is not git-ignored"
