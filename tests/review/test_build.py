"""`highlights build`: the HTML, the text and a sample .eml of the example issue."""

from __future__ import annotations

import email
import email.policy
import html as html_lib
import re
import tempfile
from email.utils import parsedate_to_datetime
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

from highlightsmail.authoring.issue import load_issue
from highlightsmail.cli import main
from highlightsmail.rendering.rendered import UNSUBSCRIBE_PLACEHOLDER
from highlightsmail.review.lint import GMAIL_CLIP_BYTES
from support.delivery import READER_HEADERS

SAMPLE_URL = "https://highlights.example.org/u/sample"


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def built(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example issue built into workspace/out, with no secret in the environment."""
    monkeypatch.delenv("HIGHLIGHTS_SECRET")
    result = run("build", "issues/2024-w02.yaml")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["out/2024-w02.html", "out/2024-w02.txt", "out/2024-w02.eml"]
    assert result.stderr == ""
    return workspace / "out"


def example_items(workspace: Path):
    issue = load_issue(workspace / "issues" / "2024-w02.yaml")
    assert len(issue.items) == 10
    return issue.items


def test_html_is_inlined_responsive_complete_and_small(built: Path, workspace: Path) -> None:
    page = (built / "2024-w02.html").read_text(encoding="utf-8")
    assert len(page.encode("utf-8")) < GMAIL_CLIP_BYTES
    assert re.search(r'<(td|div|a|p)\b[^>]*\bstyle="[^"]+"', page), "CSS is inlined onto elements"
    assert "@media" in page, "media queries survive inlining"
    text = html_lib.unescape(page)
    for item in example_items(workspace):
        assert item.title in text
        for link in item.links:
            assert f'href="{html_lib.escape(link.url)}"' in page
    assert UNSUBSCRIBE_PLACEHOLDER not in page
    assert f'href="{SAMPLE_URL}"' in page


def test_text_has_every_title_followed_by_its_links(built: Path, workspace: Path) -> None:
    text = (built / "2024-w02.txt").read_text(encoding="utf-8")
    flat = " ".join(text.split())
    items = example_items(workspace)
    # Titles appear in the table of contents and again at the item: take the last.
    starts = [flat.rindex(item.title) for item in items]
    assert starts == sorted(starts)
    for i, item in enumerate(items):
        end = starts[i + 1] if i + 1 < len(items) else len(flat)
        section = flat[starts[i] : end]
        assert item.links, "every example item has a link"
        for link in item.links:
            assert link.url in section
    assert UNSUBSCRIBE_PLACEHOLDER not in text
    assert SAMPLE_URL in text


def test_eml_is_a_complete_multipart_alternative_message(built: Path) -> None:
    raw = (built / "2024-w02.eml").read_bytes()
    assert b"\r\n" in raw and re.search(rb"(?<!\r)\n", raw) is None, "CRLF line ends only"
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    plain, html_part = msg.get_payload()
    assert plain.get_content_type() == "text/plain"
    assert plain.get_content_charset() == "utf-8"
    assert html_part.get_content_type() == "text/html"

    for header in READER_HEADERS:
        assert msg[header], header
    assert msg["From"] == "AI Research Highlights <highlights@example.org>"
    assert msg["To"] == "Reader <reader@example.org>"
    assert msg["Subject"] == "AI Research Highlights | Week 2, 2024"
    assert msg["Reply-To"] == "editors@example.org"
    assert msg["List-Id"] == '"AI Research Highlights" <highlights.example.org>'
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsedate_to_datetime(msg["Date"]).tzinfo is not None
    assert msg["Message-ID"].endswith("@example.org>")

    url = re.fullmatch(r"<(https://[^>]+)>", msg["List-Unsubscribe"])[1]
    assert url == SAMPLE_URL
    assert url in plain.get_content()
    footer_links = re.findall(r'<a\b[^>]*href="([^"]+)"[^>]*>\s*Unsubscribe', html_part.get_content())
    assert footer_links == [url]
    # The parts are those of out/ (one rendering), with the CRLF line ends of mail.
    assert html_part.get_content().replace("\r\n", "\n") == (built / "2024-w02.html").read_text(encoding="utf-8")
    assert plain.get_content().replace("\r\n", "\n") == (built / "2024-w02.txt").read_text(encoding="utf-8")


def test_build_needs_no_secret_and_writes_none(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "build-secret-0123456789-abcdefghij"
    monkeypatch.setenv("HIGHLIGHTS_SECRET", secret)
    assert run("build", "2024-w02").exit_code == 0
    for path in (workspace / "out").iterdir():
        assert secret.encode() not in path.read_bytes()
    monkeypatch.delenv("HIGHLIGHTS_SECRET")
    assert run("build", "latest").exit_code == 0
    assert not (workspace / "subscribers" / ".secret").exists()


def test_out_folder_is_relative_to_the_current_folder(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run("-w", str(workspace), "build", "2024-w02", "--out", "dist/mail")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (elsewhere / "dist" / "mail").iterdir()) == [
        "2024-w02.eml",
        "2024-w02.html",
        "2024-w02.txt",
    ]
    assert not (workspace / "out").exists()


def test_built_files_are_readable_by_others(built: Path) -> None:
    # Temporary files start at 0600; the result must not.
    for path in built.iterdir():
        assert path.stat().st_mode & 0o044 == 0o044, path


def test_an_invalid_issue_builds_nothing(workspace: Path) -> None:
    (workspace / "issues" / "2024-w03.yaml").write_text("title: T\ndate: 2024-01-17\nitems: []\n")
    result = run("build", "2024-w03")
    assert result.exit_code == 1
    assert result.stderr.startswith("issues/2024-w03.yaml:3:8: items: ")
    assert not (workspace / "out").exists()


def test_a_failed_write_keeps_the_previous_build(built: Path) -> None:
    before = {p.name: p.read_bytes() for p in built.iterdir()}
    real = tempfile.mkstemp
    calls = []

    def disk_fills_up(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    (built.parent / "issues" / "2024-w02.yaml").write_text(
        (built.parent / "issues" / "2024-w02.yaml").read_text().replace("Week 2, 2024", "Week 2 (v2), 2024")
    )
    with mock.patch("highlightsmail.files.tempfile.mkstemp", side_effect=disk_fills_up):
        result = run("build", "2024-w02")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: cannot write out/2024-w02.eml: No space left on device"
    assert {p.name: p.read_bytes() for p in built.iterdir()} == before, "old files kept, no temporary files left"


def test_out_must_be_a_folder(workspace: Path) -> None:
    (workspace / "out").write_text("not a folder")
    result = CliRunner().invoke(main, ["build", "2024-w02"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert (workspace / "out").read_text() == "not a folder"


def test_out_that_is_a_symlink_loop_is_a_one_line_error(workspace: Path) -> None:
    (workspace / "loop").symlink_to("loop")
    result = CliRunner().invoke(main, ["build", "2024-w02", "--out", "loop"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["Error: loop: exists and is not a folder"]


def test_build_prints_nothing_itself_and_returns_the_paths(workspace: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from highlightsmail.authoring.workspace import load_workspace
    from highlightsmail.review.build import build_command

    paths = build_command(load_workspace(), workspace / "issues" / "2024-w02.yaml", Path("out"))
    assert paths == [Path("out") / f"2024-w02.{ext}" for ext in ("html", "txt", "eml")]
    assert all(p.stat().st_size > 0 for p in paths)
    assert capfd.readouterr() == ("", "")
