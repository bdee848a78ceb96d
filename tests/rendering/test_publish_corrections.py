"""A sent issue whose file changed since: `publish` says "Corrected on DATE" on its page,
marks the changed items, shows the text as sent beside the text now (a diff), and moves
the feed entry's `updated` while its id stays. The text as sent is the one its dispatch
kept when it began (store/messages.py). Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import feedparser
import pytest
from click.testing import CliRunner
from lxml import html as lxml_html

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.store import ImportRow, Store
from support.archive import enable_archive, strict_parse

pytestmark = pytest.mark.usefixtures("engine")
ISSUE = "2024-w02"
EDITED_AT = 1893456000  # 2030-01-01T00:00:00Z, after the send: the file's modification time


def run(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def send(root: Path) -> None:
    with Store.open(load_workspace(root)) as store:
        store.import_rows([ImportRow("reader@example.org", "Reader")])
    run("send", ISSUE, "--test")
    run("send", ISSUE, "--yes")


def site(root: Path) -> tuple[str, feedparser.FeedParserDict]:
    run("publish")
    out = root / "out" / "site"
    page = (out / ISSUE / "index.html").read_text(encoding="utf-8")
    strict_parse(page, ISSUE)
    return page, feedparser.parse((out / "feed.xml").read_bytes())


def corrected_on(page: str) -> str:
    """The page's correction notice, as text."""
    (note,) = lxml_html.fromstring(page).cssselect("#correction-title")
    return str(note.text_content())


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    os.utime(path, (EDITED_AT, EDITED_AT))


def test_a_changed_sent_issue_shows_its_correction(workspace: Path) -> None:
    enable_archive(workspace)
    send(workspace)
    page, feed = site(workspace)
    assert "Corrected" not in page
    (entry,) = feed.entries
    first_id, first_updated = entry.id, entry.updated

    issue = workspace / "issues" / f"{ISSUE}.yaml"
    edit(issue, "Mixtral of Experts", "Mixtral of Many Experts")
    page, feed = site(workspace)
    tree = lxml_html.fromstring(page)
    (note,) = tree.cssselect("aside.correction")
    assert note.cssselect("#correction-title")[0].text_content().startswith("Corrected on 1 January 2030.")
    assert note.cssselect("time")[0].get("datetime") == "2030-01-01"
    # The changed item is marked; the others are not.
    marked = [s.get("aria-labelledby") for s in tree.cssselect("section.item") if s.cssselect("p.corrected")]
    changed = [a.get("href") for a in note.cssselect("h2.changed a")]
    assert len(marked) == 1 and changed == [f"#{marked[0]}"]
    assert "Mixtral of Many Experts" in tree.cssselect(f"#{marked[0]}")[0].text_content()
    # The text as sent is there, struck out, beside the text now.
    assert [d.text_content() for d in note.cssselect("pre.diff del")] == ["- Mixtral of Experts"]
    assert [i.text_content() for i in note.cssselect("pre.diff ins")] == ["+ Mixtral of Many Experts"]
    (entry,) = feed.entries
    assert entry.id == first_id
    assert entry.updated != first_updated and entry.updated.startswith("2030-01-01T00:00:00")
    assert "Corrected on 1 January 2030" in entry.content[0].value

    # The email each reader got is still the one rebuilt from the store.
    rebuilt = workspace / "m.eml"
    run("subscribers", "show", "reader@example.org", "--issue", ISSUE, "--eml", str(rebuilt))
    assert b"Mixtral of Many Experts" not in rebuilt.read_bytes()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed: the commit date cannot be read")
def test_in_git_the_correction_is_dated_by_its_commit_not_the_checkout(workspace: Path) -> None:
    """A fresh clone sets every file's mtime to the checkout: the correction's date and the
    feed's `updated` come from the file's last commit, so each build says the same."""
    enable_archive(workspace)
    send(workspace)
    issue = workspace / "issues" / f"{ISSUE}.yaml"
    edit(issue, "Mixtral of Experts", "Mixtral of Many Experts")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Editor",
        "GIT_AUTHOR_EMAIL": "editor@example.org",
        "GIT_COMMITTER_NAME": "Editor",
        "GIT_COMMITTER_EMAIL": "editor@example.org",
        "GIT_AUTHOR_DATE": "2031-03-04T05:06:07Z",
        "GIT_COMMITTER_DATE": "2031-03-04T05:06:07Z",
    }
    for args in (["init", "-q"], ["add", "issues"], ["commit", "-q", "-m", "the correction"]):
        subprocess.run(["git", *args], cwd=workspace, env=env, check=True)
    updated = []
    for checkout in (1990000000, 2000000000):  # two checkouts, two mtimes
        os.utime(issue, (checkout, checkout))
        page, feed = site(workspace)
        assert corrected_on(page).startswith("Corrected on 4 March 2031.")
        updated.append(feed.entries[0].updated)
    assert updated[0] == updated[1] and updated[0].startswith("2031-03-04T05:06:07")
    # Edited since its last commit: the file's own time again.
    edit(issue, "Mixtral of Many Experts", "Mixtral of Very Many Experts")
    assert corrected_on(site(workspace)[0]).startswith("Corrected on 1 January 2030.")


def test_a_change_no_reader_sees_is_no_correction(workspace: Path) -> None:
    enable_archive(workspace)
    send(workspace)
    issue = workspace / "issues" / f"{ISSUE}.yaml"
    issue.write_text("# a comment the editor added\n" + issue.read_text(encoding="utf-8"), encoding="utf-8")
    page, feed = site(workspace)
    assert "Corrected" not in page
    assert feed.entries[0].updated == feed.entries[0].published


def test_an_issue_sent_before_messages_were_kept_shows_no_correction(workspace: Path) -> None:
    enable_archive(workspace)
    send(workspace)
    with Store.open(load_workspace(workspace)) as store, store._write() as conn:
        conn.execute("DELETE FROM dispatch_messages")
    edit(workspace / "issues" / f"{ISSUE}.yaml", "Mixtral of Experts", "Mixtral of Many Experts")
    page, _feed = site(workspace)
    assert "Corrected" not in page
