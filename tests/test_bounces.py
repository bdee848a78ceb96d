"""`highlights bounces scan` on mbox files and Maildirs of bounce mail built in the tests
around messages highlightsmail really sent: RFC 3464 from Postfix, Exim and Gmail, qmail,
Exchange, temporary failures, and an auto-reply that must be ignored."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers_bounces import exchange, exim, gmail, original, postfix, qmail, vacation, write_maildir, write_mbox
from helpers_events import add_readers, dump, sent_to_everyone, statuses
from highlightsmail.bounces import parse_mailbox, read_bounce
from highlightsmail.cli import main
from highlightsmail.issue import load_issue
from highlightsmail.render import render_issue
from highlightsmail.store import Store
from highlightsmail.tokens import load_signer
from highlightsmail.workspace import load_workspace

ISSUE = "2024-w02"
SHAPES = {"postfix": postfix, "exim": exim, "qmail": qmail, "exchange": exchange, "gmail": gmail}


def db_of(root: Path) -> Path:
    return root / "subscribers" / "highlights.db"


def email(i: int) -> str:
    return f"reader{i}@example.org"


class Sent:
    """A workspace whose readers were sent issues over SMTP, and the mail they got."""

    def __init__(self, root: Path, readers: int, issues: tuple[str, ...] = (ISSUE,)) -> None:
        self.root = root
        self.ws = load_workspace(root)
        self.signer = load_signer(self.ws.secret_path)
        self.rendered = render_issue(load_issue(self.ws.issue_path(ISSUE)), self.ws)
        with Store(db_of(root)) as store:
            self.ids = add_readers(store, readers)
            for issue in issues:
                sent_to_everyone(store, issue, backend="smtp")

    def message(self, i: int, *, test: bool = False, issue: str = ISSUE) -> bytes:
        rendered = self.rendered if issue == ISSUE else _with_slug(self.rendered, issue)
        return original(rendered, self.ws.settings, self.signer, self.ids[i - 1], email(i), test=test)


def _with_slug(rendered, slug: str):
    from dataclasses import replace

    return replace(rendered, slug=slug)


def scan(*args: str):
    return CliRunner().invoke(main, ["bounces", "scan", *args], catch_exceptions=False)


def history(root: Path) -> list[tuple]:
    conn = sqlite3.connect(db_of(root))
    try:
        return conn.execute(
            "SELECT s.email, e.to_status, e.source FROM events e JOIN subscribers s ON s.id = e.subscriber_id WHERE e.source = 'bounce-mail'"
        ).fetchall()
    finally:
        conn.close()


def kinds(root: Path) -> list[tuple]:
    conn = sqlite3.connect(db_of(root))
    try:
        return conn.execute(
            "SELECT s.email, d.issue, d.kind FROM delivery_events d JOIN subscribers s ON s.id = d.subscriber_id ORDER BY 1"
        ).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_shape_marks_exactly_the_address_that_bounced(workspace: Path, tmp_path: Path, shape: str) -> None:
    sent = Sent(workspace, 3)
    box = write_mbox(tmp_path / "bounces.mbox", [SHAPES[shape](email(2), sent.message(2))])
    result = scan(str(box))
    assert result.exit_code == 0, result.output
    assert "1 bounce(s)" in result.output
    assert statuses(db_of(workspace)) == {email(1): "active", email(2): "bounced", email(3): "active"}
    assert history(workspace) == [(email(2), "bounced", "bounce-mail")]
    assert kinds(workspace) == [(email(2), ISSUE, "dsn-permanent")]


def test_an_auto_reply_is_not_a_bounce(workspace: Path, tmp_path: Path) -> None:
    sent = Sent(workspace, 2)
    assert read_bounce(vacation(email(1), sent.message(1))) is None
    before = dump(db_of(workspace))
    box = write_mbox(tmp_path / "bounces.mbox", [vacation(email(1), sent.message(1))])
    result = scan(str(box))
    assert result.exit_code == 0 and "0 bounce(s), 1 not bounces" in result.output
    after = dump(db_of(workspace))
    assert {k: v for k, v in after.items() if k != "scanned_mail"} == {
        k: v for k, v in before.items() if k != "scanned_mail"
    }


@pytest.mark.parametrize(("action", "status"), [("delayed", "4.4.1"), ("failed", "4.2.2")])
def test_a_temporary_failure_is_a_soft_bounce_not_a_bounce(
    workspace: Path, tmp_path: Path, action: str, status: str
) -> None:
    sent = Sent(workspace, 2)
    box = write_mbox(tmp_path / "b.mbox", [postfix(email(1), sent.message(1), action=action, status=status)])
    assert scan(str(box)).exit_code == 0
    assert statuses(db_of(workspace))[email(1)] == "active"
    assert kinds(workspace) == [(email(1), ISSUE, "dsn-temporary")]


def test_temporary_failures_in_three_issues_in_a_row_make_the_address_bounced(workspace: Path, tmp_path: Path) -> None:
    weeks = ("2024-w01", "2024-w02", "2024-w03")
    sent = Sent(workspace, 2, issues=weeks)
    mails = [postfix(email(1), sent.message(1, issue=w), action="delayed", status="4.4.1") for w in weeks[:2]]
    assert scan(str(write_mbox(tmp_path / "two.mbox", mails))).exit_code == 0
    assert statuses(db_of(workspace))[email(1)] == "active"
    third = [postfix(email(1), sent.message(1, issue=weeks[2]), action="failed", status="4.2.2")]
    assert scan(str(write_mbox(tmp_path / "three.mbox", third))).exit_code == 0
    assert statuses(db_of(workspace))[email(1)] == "bounced"
    assert [k[1] for k in kinds(workspace)] == list(weeks)


@pytest.mark.parametrize("layout", ["mbox", "maildir"])
def test_a_mailbox_of_every_shape_then_scanned_again_changes_nothing_more(
    workspace: Path, tmp_path: Path, layout: str
) -> None:
    sent = Sent(workspace, 10)
    forwarded = postfix("reader9@forwarded.example.net", sent.message(9))  # only the returned link names reader 9
    mails = [
        postfix(email(1), sent.message(1)),
        exim(email(2), sent.message(2)),
        qmail(email(3), sent.message(3)),
        exchange(email(4), sent.message(4)),
        gmail(email(5), sent.message(5)),
        postfix(email(6), sent.message(6), action="delayed", status="4.4.1"),
        vacation(email(7), sent.message(7)),
        gmail(email(8), sent.message(8, test=True)),  # a test send bounced: nobody's status changes
        forwarded,
        postfix("stranger@example.net", b"From: someone@example.net\nSubject: hello\n\nNot ours.\n"),
    ]
    mails.append(mails[0])  # the same mail twice is read once
    write = write_mbox if layout == "mbox" else write_maildir
    box = write(tmp_path / f"bounces.{layout}", mails)
    result = scan(str(box))
    assert result.exit_code == 0, result.output
    assert f"{len(mails)} mail(s), 1 read before, 9 bounce(s), 1 not bounces" in result.output
    assert statuses(db_of(workspace)) == {
        email(1): "bounced",
        email(2): "bounced",
        email(3): "bounced",
        email(4): "bounced",
        email(5): "bounced",
        email(6): "active",
        email(7): "active",
        email(8): "active",
        email(9): "bounced",
        email(10): "active",
    }
    assert "bounces of test sends 1" in result.output
    assert "1 address(es) not on the list: stranger@example.net" in result.output
    once = dump(db_of(workspace))
    again = scan(str(box))
    assert again.exit_code == 0
    assert f"{len(mails)} mail(s), {len(mails)} read before, 0 bounce(s)" in again.output
    assert dump(db_of(workspace)) == once


def test_a_bounce_without_the_returned_headers_is_matched_by_address(workspace: Path, tmp_path: Path) -> None:
    sent = Sent(workspace, 2, issues=("2024-w01", ISSUE))
    bare = postfix(email(2), sent.message(2)).split(
        b"--7C1A02E4.1705055400/relay.example.net\nContent-Description: Undelivered"
    )[0]
    bare += b"--7C1A02E4.1705055400/relay.example.net--\n"
    bounce = read_bounce(bare)
    assert bounce is not None and bounce.issue is None and bounce.token is None
    assert scan(str(write_mbox(tmp_path / "b.mbox", [bare]))).exit_code == 0
    assert statuses(db_of(workspace))[email(2)] == "bounced"
    assert kinds(workspace) == [(email(2), ISSUE, "dsn-permanent")]  # the last issue they were sent


def test_the_mailbox_setting_is_used_when_no_argument_is_given(workspace: Path) -> None:
    sent = Sent(workspace, 2)
    write_maildir(workspace / "bounce-mail", [gmail(email(1), sent.message(1))])
    text = (workspace / "highlights.yaml").read_text(encoding="utf-8")
    text = text.replace("    mailbox: null ", "    mailbox: bounce-mail ")
    (workspace / "highlights.yaml").write_text(text, encoding="utf-8")
    result = scan()
    assert result.exit_code == 0, result.output
    assert statuses(db_of(workspace))[email(1)] == "bounced"


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (None, "name the mailbox to scan"),
        ("nowhere.mbox", "nowhere.mbox: no such mbox file or Maildir"),
        ("imap://bounces@mail.example.org/INBOX", "only imaps:// (IMAP over TLS)"),
        ("imaps://mail.example.org/INBOX", "write it as imaps://user@host[:port]/FOLDER"),
        ("imaps://u:secret@mail.example.org/INBOX", "the password comes only from HIGHLIGHTS_IMAP_PASSWORD"),
        ("imaps://bounces@127.0.0.1:9/INBOX", "set HIGHLIGHTS_IMAP_PASSWORD"),
        ("subscribers", "not a Maildir"),
    ],
)
def test_a_mailbox_that_cannot_be_read_is_one_clear_line(workspace: Path, argument: str | None, message: str) -> None:
    Sent(workspace, 1)
    result = CliRunner().invoke(main, ["bounces", "scan", *([argument] if argument else [])])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert "secret" not in result.output  # not even a password typed into the address


def test_parse_mailbox_reads_imaps_addresses(tmp_path: Path) -> None:
    where = parse_mailbox("imaps://bounces%40example.org@mail.example.org:1993/Bounces/2024", tmp_path)
    assert (where.user, where.host, where.port, where.folder) == (  # type: ignore[union-attr]
        "bounces@example.org",
        "mail.example.org",
        1993,
        "Bounces/2024",
    )
    assert parse_mailbox("imaps://b@mail.example.org", tmp_path).folder == "INBOX"  # type: ignore[union-attr]
    assert parse_mailbox("mail/bounces.mbox", tmp_path) == tmp_path / "mail" / "bounces.mbox"
