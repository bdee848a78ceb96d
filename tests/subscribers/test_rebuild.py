"""`subscribers show EMAIL --issue ISSUE --eml FILE`: the message a subscriber got,
rebuilt from the message the dispatch kept, equals the outbox's copy (what the SMTP path
hands over: same bytes) header for header and part for part, also after the issue
file was edited; an address the ledger has no delivery for gets one line and no file.
Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.store import ImportRow, Store

pytestmark = pytest.mark.usefixtures("engine")
ISSUE = "2024-w02"


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def add(root: Path, n: int, start: int = 1) -> list[str]:
    emails = [f"reader{i}@example.org" for i in range(start, start + n)]
    with Store.open(load_workspace(root)) as store:
        store.import_rows(ImportRow(e, f"Reader {i}") for i, e in enumerate(emails, start=start))
    return emails


def parse(data: bytes) -> EmailMessage:
    msg = message_from_bytes(data, policy=default_policy)
    assert isinstance(msg, EmailMessage)
    return msg


def shape(msg: EmailMessage) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Its headers (but the multipart's, whose boundary may differ) with their values as
    read, and each part's type and decoded content (line ends alike)."""
    headers = [(k, str(v)) for k, v in msg.items() if k.lower() != "content-type"]
    headers.append(("content-type", msg.get_content_type()))
    parts = [(p.get_content_type(), p.get_content().replace("\r\n", "\n")) for p in msg.iter_parts()]
    return headers, parts


def send(root: Path) -> dict[str, Path]:
    """Test-send and send the issue; its outbox copies by address."""
    assert run("send", ISSUE, "--test").exit_code == 0
    sent = run("send", ISSUE, "--yes")
    assert sent.exit_code == 0, sent.output
    files = {}
    for path in (root / "outbox" / ISSUE).glob("*.eml"):
        files[path.name.split("-", 1)[1].removesuffix(".eml")] = path
    return files


def test_the_rebuilt_message_is_the_outbox_copy_also_after_an_edit(workspace: Path, tmp_path: Path) -> None:
    emails = add(workspace, 3)
    outbox = send(workspace)
    assert sorted(outbox) == emails
    with Store.open(load_workspace(workspace)) as store:
        kept = store.kept_message(ISSUE)
        assert kept is not None and store.kept_count() == 1
    assert kept.digest == hashlib.sha256(kept.message.encode()).hexdigest()
    assert "Reader" not in kept.message  # nothing of a recipient in the kept message
    assert kept.source == (workspace / "issues" / f"{ISSUE}.yaml").read_text(encoding="utf-8")

    issue = workspace / "issues" / f"{ISSUE}.yaml"
    for edited in (False, True):
        if edited:
            issue.write_text(
                issue.read_text(encoding="utf-8").replace("Mixtral of Experts", "Mixtral of Many Experts"),
                encoding="utf-8",
            )
        for email in emails:
            out = tmp_path / f"{email}-{edited}.eml"
            shown = run("subscribers", "show", email, "--issue", ISSUE, "--eml", str(out))
            assert shown.exit_code == 0, shown.output
            assert shown.output.startswith(f"wrote {out}: {ISSUE} as {email} got it (sent; message ")
            ours, theirs = parse(out.read_bytes()), parse(outbox[email].read_bytes())
            assert shape(ours) == shape(theirs)
            assert ours["Message-ID"] == theirs["Message-ID"] and ours["Date"] == theirs["Date"]
            assert "Mixtral of Many Experts" not in out.read_text(encoding="utf-8")
            assert out.stat().st_mode & 0o777 == 0o600


def test_no_delivery_no_file(workspace: Path, tmp_path: Path) -> None:
    """A later subscriber, an unknown address, an issue not sent: one line, no file."""
    add(workspace, 2)
    send(workspace)
    later = add(workspace, 1, start=9)[0]
    out = tmp_path / "m.eml"
    for address, issue in ((later, ISSUE), ("nobody@example.org", ISSUE), ("reader1@example.org", "2099-w01")):
        said = CliRunner().invoke(main, ["subscribers", "show", address, "--issue", issue, "--eml", str(out)])
        assert said.exit_code != 0
        assert len(said.output.strip().splitlines()) == 1, said.output
        assert not out.exists()
    said = CliRunner().invoke(main, ["subscribers", "show", later, "--issue", ISSUE, "--eml", str(out)])
    assert said.output == f"Error: {ISSUE}: the ledger holds no delivery to {later}; nothing was written\n"


def test_rows_the_ledger_no_longer_holds_rebuild_nothing(workspace: Path, tmp_path: Path) -> None:
    """After an erasure deleted the ledger's rows for an address, nothing is rebuilt."""
    emails = add(workspace, 2)
    send(workspace)
    with Store.open(load_workspace(workspace)) as store:
        sub = store.find(emails[0])
        assert sub is not None and store.delivery_state(ISSUE, sub.id) == ("sent", 1)
        with store._write() as conn:  # what an erasure does to the ledger
            conn.execute("DELETE FROM ledger_batches WHERE issue = ?", (ISSUE,))
            conn.execute("DELETE FROM ledger_recipients WHERE issue = ?", (ISSUE,))
        assert store.delivery_state(ISSUE, sub.id) is None
    out = tmp_path / "m.eml"
    said = CliRunner().invoke(main, ["subscribers", "show", emails[0], "--issue", ISSUE, "--eml", str(out)])
    assert said.exit_code == 1 and "holds no delivery" in said.output and not out.exists()


def test_show_alone_and_its_options(workspace: Path) -> None:
    add(workspace, 1)
    shown = run("subscribers", "show", "READER1@example.org")
    assert shown.output == f"reader1@example.org (Reader 1): active, on the list since {shown.output.split()[-1]}\n"
    half = CliRunner().invoke(main, ["subscribers", "show", "reader1@example.org", "--issue", ISSUE])
    assert half.exit_code == 2 and "--issue and --eml go together" in half.output
    missing = CliRunner().invoke(main, ["subscribers", "show", "nobody@example.org"])
    assert missing.exit_code == 1 and missing.output == "Error: nobody@example.org: not on the list\n"


def test_no_database_no_database_made(workspace: Path, tmp_path: Path) -> None:
    ws = load_workspace(workspace)
    if ws.database_url:
        pytest.skip("a PostgreSQL database is there from the start")
    said = CliRunner().invoke(main, ["subscribers", "show", "a@example.org", "--issue", ISSUE, "--eml", "x.eml"])
    assert said.output == (
        f"Error: {ISSUE}: the ledger holds no delivery to a@example.org; nothing was written (there is no database yet)\n"
    )
    assert not ws.database_exists() and not (workspace / "x.eml").exists()


def test_a_dispatch_resumed_with_an_edited_issue_rebuilds_what_each_got(workspace: Path, tmp_path: Path) -> None:
    """The first batch went before the edit, the rest after it (test-sent again): each
    reader's rebuilt message is the version their batch carried."""
    emails = add(workspace, 3)
    assert run("send", ISSUE, "--test").exit_code == 0
    assert run("send", ISSUE, "--yes", "--limit", "1").exit_code == 0
    issue = workspace / "issues" / f"{ISSUE}.yaml"
    issue.write_text(
        issue.read_text(encoding="utf-8").replace("Mixtral of Experts", "Mixtral of Many Experts"), encoding="utf-8"
    )
    assert run("send", ISSUE, "--test").exit_code == 0
    assert run("send", ISSUE, "--yes").exit_code == 0
    outbox = {p.name.split("-", 1)[1].removesuffix(".eml"): p for p in (workspace / "outbox" / ISSUE).glob("*.eml")}
    with Store.open(load_workspace(workspace)) as store:
        assert store.kept_count() == 2
        first = store.kept_message(ISSUE)
        assert first is not None and first.first_batch == 1 and "Many" not in (first.source or "")
    for email, many in zip(emails, (False, True, True), strict=True):
        out = tmp_path / f"{email}.eml"
        assert run("subscribers", "show", email, "--issue", ISSUE, "--eml", str(out)).exit_code == 0
        ours, theirs = parse(out.read_bytes()), parse(outbox[email].read_bytes())
        assert shape(ours) == shape(theirs)
        assert ("Mixtral of Many Experts" in shape(ours)[1][0][1]) is many


def test_a_run_days_later_dates_its_messages_anew_and_each_is_rebuilt(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message is dated when its run kept its message: a run two days after the first
    does not send mail dated two days ago (spam filters count that), and each reader's
    rebuilt message carries the Date they got."""
    from datetime import timedelta

    from highlightsmail.store import facade, records

    emails = add(workspace, 3)
    assert run("send", ISSUE, "--test").exit_code == 0
    assert run("send", ISSUE, "--yes", "--limit", "1").exit_code == 0
    monkeypatch.setattr(facade, "utc_now", lambda: records.utc_now() + timedelta(days=2))
    assert run("send", ISSUE, "--yes").exit_code == 0
    outbox = {p.name.split("-", 1)[1].removesuffix(".eml"): p for p in (workspace / "outbox" / ISSUE).glob("*.eml")}
    dates = [parse(outbox[e].read_bytes())["Date"].datetime for e in emails]
    assert dates[1] == dates[2] and timedelta(days=2) <= dates[1] - dates[0] < timedelta(days=2, minutes=5)
    with Store.open(load_workspace(workspace)) as store:
        assert store.kept_count() == 1  # the same message, kept once
    for email in emails:
        out = tmp_path / f"{email}.eml"
        assert run("subscribers", "show", email, "--issue", ISSUE, "--eml", str(out)).exit_code == 0
        assert shape(parse(out.read_bytes())) == shape(parse(outbox[email].read_bytes()))


def test_after_a_rotation_each_message_is_rebuilt_with_the_secret_that_signed_it(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch went before the secret was rotated, the rest after: each rebuilt
    message carries the links its reader got. Without the old secret in
    HIGHLIGHTS_SECRET_PREVIOUS, the first cannot be rebuilt: one line, no file."""
    old, new = "old-secret-0123456789abcdef", "new-secret-0123456789abcdef"
    monkeypatch.setenv("HIGHLIGHTS_SECRET", old)
    emails = add(workspace, 3)
    assert run("send", ISSUE, "--test").exit_code == 0
    assert run("send", ISSUE, "--yes", "--limit", "1").exit_code == 0
    monkeypatch.setenv("HIGHLIGHTS_SECRET", new)
    monkeypatch.setenv("HIGHLIGHTS_SECRET_PREVIOUS", old)
    assert run("send", ISSUE, "--yes").exit_code == 0
    outbox = {p.name.split("-", 1)[1].removesuffix(".eml"): p for p in (workspace / "outbox" / ISSUE).glob("*.eml")}
    with Store.open(load_workspace(workspace)) as store:
        assert store.kept_count() == 2  # the same message but for the secret its links are signed with
    links = []
    for email in emails:
        out = tmp_path / f"{email}.eml"
        assert run("subscribers", "show", email, "--issue", ISSUE, "--eml", str(out)).exit_code == 0
        ours, theirs = parse(out.read_bytes()), parse(outbox[email].read_bytes())
        assert shape(ours) == shape(theirs)
        assert ours["Message-ID"] == theirs["Message-ID"]
        links.append(str(ours["List-Unsubscribe"]))
    assert len(set(links)) == 3

    monkeypatch.delenv("HIGHLIGHTS_SECRET_PREVIOUS")
    out = tmp_path / "first.eml"
    said = CliRunner().invoke(main, ["subscribers", "show", emails[0], "--issue", ISSUE, "--eml", str(out)])
    assert said.exit_code == 1 and not out.exists()
    assert said.output.startswith(f"Error: {ISSUE}: its links were signed with a secret that is neither")
    assert old not in said.output and new not in said.output
    assert run("subscribers", "show", emails[1], "--issue", ISSUE, "--eml", str(out)).exit_code == 0
