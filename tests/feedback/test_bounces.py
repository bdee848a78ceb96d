"""`highlights bounces scan` on mbox files and Maildirs of bounce mail built in the tests
around messages highlightsmail really sent: RFC 3464 from Postfix, Exim and Gmail, qmail,
Exchange, temporary failures, and an auto-reply that must be ignored.

A bounce changes someone only when it proves we sent them that message (its Message-ID,
its signed link, its VERP return address): forged ones of every kind change nothing.
Mail that cannot be parsed, and Maildir entries that are no mail, never stop a scan."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.feedback.dsn import read_bounce
from highlightsmail.feedback.mailboxes import parse_mailbox
from highlightsmail.store import Store
from highlightsmail.tokens import Signer, load_signer
from support.bounce_mail import (
    BOUNCES_TO,
    ISSUE,
    Sent,
    bare,
    db_of,
    email,
    exchange,
    exim,
    failed_recipients,
    gmail,
    huge,
    kinds,
    many_parts,
    nested_messages,
    nested_multiparts,
    postfix,
    qmail,
    replace_header,
    vacation,
    without,
    write_maildir,
    write_mbox,
)
from support.events import add_readers, dump, statuses
from support.smtp import SinkHandler, smtp_server

SHAPES = {"postfix": postfix, "exim": exim, "qmail": qmail, "exchange": exchange, "gmail": gmail}


def scan(*args: str):
    return CliRunner().invoke(main, ["bounces", "scan", *args], catch_exceptions=False)


def accept(root: Path, value: str) -> None:
    """Set delivery.bounces.accept in the workspace's settings."""
    path = root / "highlights.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["delivery"].setdefault("bounces", {})["accept"] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def unchanged(before: dict, after: dict) -> bool:
    """Nothing changed but the record of which mail was read."""
    return {k: v for k, v in after.items() if k != "scanned_mail"} == {
        k: v for k, v in before.items() if k != "scanned_mail"
    }


def history(root: Path) -> list[tuple]:
    conn = sqlite3.connect(db_of(root))
    try:
        return conn.execute(
            "SELECT s.email, e.to_status, e.source FROM events e JOIN subscribers s ON s.id = e.subscriber_id WHERE e.source = 'bounce-mail'"
        ).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("returned", ["headers", "message-id", "link"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_shape_marks_exactly_the_address_that_bounced(
    workspace: Path, tmp_path: Path, shape: str, returned: str
) -> None:
    """With all the headers returned, with only the Message-ID of ours (the signed link
    left out), or only the signed link (the Message-ID rewritten by a relay)."""
    sent = Sent(workspace, 3)
    message = sent.message(2)
    if returned == "message-id":
        message = without(message, "List-Unsubscribe", "List-Unsubscribe-Post")
    elif returned == "link":
        message = replace_header(message, "Message-ID", "<20240112103000.4711@relay.example.net>")
    box = write_mbox(tmp_path / "bounces.mbox", [SHAPES[shape](email(2), message)])
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


@pytest.mark.parametrize("shape", ["postfix", "exim"])
def test_an_issue_named_with_spaces_and_accents_is_matched_by_its_message_id(
    workspace: Path, tmp_path: Path, shape: str
) -> None:
    """Its X-Highlights-Issue header is folded and RFC 2047-encoded on the way out; read
    back whole, it names the issue the Message-ID is of."""
    slug = "Ausgabe 3 – März, eine sehr lange Bezeichnung die über die Zeile hinausgeht"
    sent = Sent(workspace, 2, issues=(slug,))
    message = without(sent.message(1, issue=slug), "List-Unsubscribe", "List-Unsubscribe-Post")
    assert b"=?utf-8?" in message  # encoded on the way out
    result = scan(str(write_mbox(tmp_path / "b.mbox", [SHAPES[shape](email(1), message)])), "--verbose")
    assert result.exit_code == 0, result.output
    assert statuses(db_of(workspace)) == {email(1): "bounced", email(2): "active"}
    assert kinds(workspace) == [(email(1), slug, "dsn-permanent")]


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
    assert "unmatched 1" in result.output and "list them with --verbose" in result.output
    assert "stranger" not in result.output
    once = dump(db_of(workspace))
    again = scan(str(box), "--verbose")
    assert again.exit_code == 0
    assert f"{len(mails)} mail(s), {len(mails)} read before, 0 bounce(s)" in again.output
    assert dump(db_of(workspace)) == once


def test_verbose_names_each_unmatched_failure_and_why(workspace: Path, tmp_path: Path) -> None:
    sent = Sent(workspace, 2)
    box = write_mbox(
        tmp_path / "b.mbox",
        [postfix(email(1), sent.message(1)), bare("stranger@example.net"), bare("reader2@example.org\x1b[31m")],
    )
    result = scan(str(box), "--verbose")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "unmatched:" in line]
    why = ": no Message-ID, signed link or return address of ours in it"
    assert lines[0] == "  unmatched: mail 2: stranger@example.net" + why
    # What a mail says is shown with no control characters (a terminal would obey them).
    assert lines[1].startswith("  unmatched: mail 3: reader2@example.org?[31m") and lines[1].endswith(why)
    assert len(lines) == 2 and "\x1b" not in result.output
    assert statuses(db_of(workspace)) == {email(1): "bounced", email(2): "active"}


def test_a_bounce_without_the_returned_headers_is_matched_by_address_only_with_accept_any(
    workspace: Path, tmp_path: Path
) -> None:
    """A mailbox only the mail server writes to may take every bounce at its word."""
    Sent(workspace, 2, issues=("2024-w01", ISSUE))
    mail = bare(email(2))
    bounce = read_bounce(mail)
    assert bounce is not None and bounce.issue is None and bounce.token is None and bounce.messages == ()
    before = dump(db_of(workspace))
    result = scan(str(write_mbox(tmp_path / "b.mbox", [mail])))
    assert result.exit_code == 0 and "unmatched 1" in result.output
    assert unchanged(before, dump(db_of(workspace)))

    accept(workspace, "any")
    again = bare(email(2))  # another mail (a Message-ID of its own), not one read before
    assert scan(str(write_mbox(tmp_path / "again.mbox", [again]))).exit_code == 0
    assert statuses(db_of(workspace))[email(2)] == "bounced"
    assert kinds(workspace) == [(email(2), ISSUE, "dsn-permanent")]  # the last issue they were sent


# ---------------------------------------------------------------- bounces that prove nothing


def _forged(sent: Sent, case: str) -> tuple[bytes, str]:
    """A bounce of one kind that proves nothing about mail we sent, and why it is refused."""
    no_proof = "no Message-ID, signed link or return address of ours in it"
    if case == "made up, nothing returned":
        return bare(email(1)), no_proof
    if case == "made up, someone@example.org":
        return bare("someone@example.org"), no_proof
    if case == "never sent anything":
        # reader 4 joined after the dispatch; even their genuine signed link proves no issue went to them
        with Store(db_of(sent.root)) as store:
            (late,) = add_readers(store, 1, start=4)
        link = f"<https://highlights.example.org/u/{sent.signer.make(late)}>"
        return postfix(
            email(4),
            replace_header(sent.message(1), "List-Unsubscribe", link).replace(b"Message-ID: <", b"Message-ID: <x"),
        ), "issue 2024-w02 was not sent to them"
    if case == "another newsletter's headers":
        other = Signer(b"another-newsletter-secret-0123456789")  # same slug, same tag, their secret
        foreign = sent.message(1, signer=other)
        foreign = replace_header(foreign, "From", "Other News <news@other.example>")
        return gmail(email(1), foreign), no_proof
    if case == "X-Failed-Recipients from anyone":
        return failed_recipients(email(1)), no_proof
    if case == "another subscriber's message":
        return exim(email(1), sent.message(2)), "what it returns was sent to another subscriber"
    if case == "a Message-ID of another issue":
        w01 = without(sent.message(1, issue="2024-w01"), "List-Unsubscribe", "List-Unsubscribe-Post")
        return gmail(email(1), replace_header(w01, "X-Highlights-Issue", ISSUE)), (
            "it names issue 2024-w02, but its Message-ID or return address is of issue 2024-w01"
        )
    if case == "a return address of another issue":
        w02_headers = without(sent.message(1), "List-Unsubscribe", "List-Unsubscribe-Post", "Message-ID")
        to = f"bounces+{sent.token(1, '2024-w01')}@example.org"
        dsn = postfix(email(1), w02_headers).replace(f"To: {BOUNCES_TO}\n".encode(), f"To: {to}\n".encode(), 1)
        return dsn, "it names issue 2024-w02, but its Message-ID or return address is of issue 2024-w01"
    raise AssertionError(case)


FORGED = (
    "made up, nothing returned",
    "made up, someone@example.org",
    "never sent anything",
    "another newsletter's headers",
    "X-Failed-Recipients from anyone",
    "another subscriber's message",
    "a Message-ID of another issue",
    "a return address of another issue",
)


@pytest.mark.parametrize("case", FORGED)
def test_a_bounce_that_proves_nothing_changes_no_one(workspace: Path, tmp_path: Path, case: str) -> None:
    sent = Sent(workspace, 3, issues=("2024-w01", ISSUE))
    with Store(db_of(workspace)) as store:
        add_readers(store, 1, start=99)  # someone@... is not on the list; reader99 never got anything
    mail, why = _forged(sent, case)
    before = dump(db_of(workspace))
    result = scan(str(write_mbox(tmp_path / "forged.mbox", [mail])), "--verbose")
    assert result.exit_code == 0, result.output
    assert "1 bounce(s)" in result.output and "status changes 0, unmatched 1" in result.output
    assert "  unmatched: mail 1: " in result.output and why in result.output
    assert unchanged(before, dump(db_of(workspace)))
    assert all(status == "active" for status in statuses(db_of(workspace)).values())


@pytest.mark.parametrize("case", ["made up, nothing returned", "X-Failed-Recipients from anyone"])
def test_accept_any_takes_a_bounce_naming_a_subscriber_at_its_word(workspace: Path, tmp_path: Path, case: str) -> None:
    """Today's rule, kept for a mailbox that only the mail server writes to."""
    sent = Sent(workspace, 3)
    accept(workspace, "any")
    mail, _why = _forged(sent, case)
    result = scan(str(write_mbox(tmp_path / "b.mbox", [mail])))
    assert result.exit_code == 0, result.output
    assert statuses(db_of(workspace))[email(1)] == "bounced"


def test_a_message_sent_before_the_secret_was_rotated_still_proves_its_bounce(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = Sent(workspace, 2)
    mails = [gmail(email(i), without(sent.message(i), "List-Unsubscribe", "List-Unsubscribe-Post")) for i in (1, 2)]
    old = sent.signer.secret.decode()
    monkeypatch.setenv("HIGHLIGHTS_SECRET", "the-new-secret-after-rotation-0123456789")
    result = scan(str(write_mbox(tmp_path / "one.mbox", mails[:1])), "--verbose")
    assert "unmatched 1" in result.output  # without the old secret: no proof
    monkeypatch.setenv("HIGHLIGHTS_SECRET_PREVIOUS", old)
    result = scan(str(write_mbox(tmp_path / "two.mbox", mails[1:])))
    assert result.exit_code == 0, result.output
    assert statuses(db_of(workspace)) == {email(1): "active", email(2): "bounced"}


def test_a_real_smtp_send_with_verp_is_matched_by_its_return_address_or_message_id(
    workspace: Path, tmp_path: Path
) -> None:
    """Sent for real over SMTP with delivery.bounces.verp: each message's return address
    and Message-ID carry its token. A bounce to the return address proves its message
    with nothing returned; one returning only the Message-ID too; one with neither, no."""
    with Store(db_of(workspace)) as store:
        ids = add_readers(store, 4)
    handler = SinkHandler()
    with smtp_server(handler) as server:
        path = workspace / "highlights.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["delivery"].update(backend="smtp", smtp={"host": server.hostname, "port": server.port, "security": "none"})
        data["delivery"].setdefault("bounces", {})["verp"] = BOUNCES_TO
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        runner = CliRunner()
        assert runner.invoke(main, ["send", ISSUE, "--test"]).exit_code == 0
        result = runner.invoke(main, ["send", ISSUE, "--yes"])
        assert result.exit_code == 0, result.output
    tests, real = handler.received[:2], handler.received[2:]
    assert {r.mail_from for r in tests} == {"highlights@example.org"}  # a test send has no token
    ws = load_workspace(workspace)
    signer = load_signer(ws.secret_path)
    with Store(db_of(workspace)) as store:
        tag = store.dispatch_info(ISSUE).tag
    by_rcpt = {r.rcpt_tos[0]: r for r in real}
    for i, sid in enumerate(ids, start=1):
        token = signer.make_message(ISSUE, tag, sid)
        assert by_rcpt[email(i)].mail_from == f"bounces+{token}@example.org"
        assert by_rcpt[email(i)].message()["Message-ID"] == f"<{token}@example.org>"
        assert len(by_rcpt[email(i)].mail_from.partition("@")[0]) <= 64
    returned = without(by_rcpt[email(2)].data.replace(b"\r\n", b"\n"), "List-Unsubscribe", "List-Unsubscribe-Post")
    mails = [
        bare(email(1), to=by_rcpt[email(1)].mail_from.upper()),  # a relay that shouts
        gmail(email(2), returned),
        bare(email(3)),
    ]
    result = scan(str(write_mbox(tmp_path / "b.mbox", mails)), "--verbose")
    assert result.exit_code == 0, result.output
    assert statuses(db_of(workspace)) == {
        email(1): "bounced",
        email(2): "bounced",
        email(3): "active",
        email(4): "active",
    }
    assert "unmatched: mail 3: reader3@example.org: no Message-ID" in result.output


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
    ("setting", "message"),
    [
        (
            "verp: list-bounces-of-the-newsletter@example.org",
            "may have at most 24 characters, so that it and +TOKEN fit",
        ),
        ("verp: bounces+news@example.org", "(no + or quotes): each message adds +TOKEN to it"),
        ("verp: Bounces <bounces@example.org>", "write the bare address"),
        ("verp: bounces@", "not an email address"),
        ("accept: some", "must be one of 'matched' or 'any'"),
    ],
)
def test_a_bounce_setting_that_cannot_work_is_named_where_it_stands(
    workspace: Path, setting: str, message: str
) -> None:
    path = workspace / "highlights.yaml"
    key = setting.split(":")[0]
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    (number,) = [n for n, line in enumerate(lines, start=1) if line.startswith(f"    {key}: ")]
    lines[number - 1] = f"    {setting}\n"
    path.write_text("".join(lines), encoding="utf-8")
    result = CliRunner().invoke(main, ["bounces", "scan", "x.mbox"])
    assert result.exit_code == 1
    assert f"highlights.yaml:{number}:" in result.output and f"delivery.bounces.{key}" in result.output
    assert message in result.output and "Traceback" not in result.output


def test_the_longest_verp_address_fits_in_64_octets(workspace: Path) -> None:
    from highlightsmail.mail.message import return_path
    from highlightsmail.tokens import Signer

    path = workspace / "highlights.yaml"
    local = "b" * 24
    path.write_text(
        path.read_text(encoding="utf-8").replace("    verp: null", f"    verp: {local}@example.org"), "utf-8"
    )
    token = Signer(b"0123456789abcdef0123").make_message("2024-w02", "abcdefgh", 2**63 - 1)
    address = return_path(load_workspace(workspace).settings, token)
    assert address is not None and len(address.rpartition("@")[0]) == 64


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


# ---------------------------------------------------------------- mail that cannot be read


POISON = {
    "message/rfc822 3,000 deep": (lambda: nested_messages(3000), "parts nested more than 30 deep"),
    "multipart 2,000 deep": (lambda: nested_multiparts(2000), "parts nested more than 30 deep"),
    "multipart 31 deep": (lambda: nested_multiparts(31), "parts nested more than 30 deep"),
    "1,001 parts": (lambda: many_parts(1001), "more than 1,000 parts"),
    "11 MB": (lambda: huge(11), "larger than 10 MB, the most one mail may take"),
}


def scanned_outcomes(root: Path) -> list[str]:
    conn = sqlite3.connect(db_of(root))
    try:
        return sorted(r[0] for r in conn.execute("SELECT outcome FROM scanned_mail"))
    finally:
        conn.close()


@pytest.mark.parametrize("layout", ["mbox", "maildir"])
@pytest.mark.parametrize("poison", sorted(POISON))
def test_a_mail_that_cannot_be_read_is_named_recorded_and_the_scan_goes_on(
    workspace: Path, tmp_path: Path, layout: str, poison: str
) -> None:
    """The poison mail first, a genuine bounce behind it: one line for the poison, the
    bounce read, and the next scan reads neither again."""
    sent = Sent(workspace, 2)
    make, why = POISON[poison]
    write = write_mbox if layout == "mbox" else write_maildir
    box = write(tmp_path / f"bounces.{layout}", [make(), postfix(email(1), sent.message(1))])
    result = scan(str(box))
    assert result.exit_code == 0, result.output
    assert "2 mail(s), 0 read before, 1 bounce(s), 0 not bounces, 1 unreadable" in result.output
    first = "mail 1" if layout == "mbox" else "new/"
    lines = [line for line in result.output.splitlines() if "unreadable (recorded as read, skipped)" in line]
    assert len(lines) == 1 and f"skipped): {first}" in lines[0] and lines[0].endswith(why)
    assert "Traceback" not in result.output and "RecursionError" not in result.output
    assert statuses(db_of(workspace)) == {email(1): "bounced", email(2): "active"}
    assert scanned_outcomes(workspace) == ["bounce", "unreadable"]
    again = scan(str(box))
    assert "2 mail(s), 2 read before, 0 bounce(s)" in again.output and "unreadable" not in again.output


def _scan_with_a_watchdog(*args: str):
    """Scan in a thread, so that a scan hanging forever (a FIFO opened for reading) fails
    the test instead of stopping the run; the time allowed is far beyond any real scan."""
    import threading

    box: list = []
    thread = threading.Thread(target=lambda: box.append(scan(*args)), daemon=True)
    thread.start()
    thread.join(300)
    assert box, "the scan never ended"
    return box[0]


def _odd_entry(box: Path, kind: str) -> str:
    """Put an entry that is no mail file into the Maildir; returns its name there."""
    entry = box / ("cur" if kind == "/dev/null" else "new") / f"x.{kind.strip('/').replace('/', '-')}"
    if kind == "broken link":
        entry.symlink_to(box / "nowhere")
    elif kind == "link loop":
        entry.symlink_to(entry)
    elif kind == "FIFO":
        os.mkfifo(entry)  # opening it for reading waits for a writer: forever
    elif kind.startswith("/dev/"):
        entry.symlink_to(kind)  # a device; /dev/zero never ends
    elif kind == "folder":
        entry.mkdir()
    return f"{entry.parent.name}/{entry.name}"


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("broken link", "a broken link"),
        ("link loop", "a link loop"),
        ("FIFO", "a FIFO, not a mail file"),
        ("/dev/zero", "a device, not a mail file"),
        ("/dev/null", "a device, not a mail file"),
        ("folder", "a folder, not a mail file"),
    ],
)
def test_a_maildir_entry_that_is_no_mail_is_skipped_with_one_line(
    workspace: Path, tmp_path: Path, kind: str, why: str
) -> None:
    sent = Sent(workspace, 2)
    box = write_maildir(tmp_path / "Maildir", [postfix(email(1), sent.message(1))])
    (genuine,) = (box / "new").iterdir()
    (box / "new" / "x.link-to-a-mail").symlink_to(genuine)  # a link to a mail is read: the same mail again
    name = _odd_entry(box, kind)
    result = _scan_with_a_watchdog(str(box))
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("  skipped")]
    assert skipped == [f"  skipped, not a mail: {name}: {why}"]
    assert "2 mail(s), 1 read before, 1 bounce(s)" in result.output
    assert statuses(db_of(workspace)) == {email(1): "bounced", email(2): "active"}
    again = _scan_with_a_watchdog(str(box))
    assert "2 mail(s), 2 read before" in again.output and again.output.count("skipped, not a mail") == 1


def test_a_mailbox_that_is_a_fifo_is_one_line(workspace: Path, tmp_path: Path) -> None:
    Sent(workspace, 1)
    os.mkfifo(tmp_path / "bounces.mbox")
    result = CliRunner().invoke(main, ["bounces", "scan", str(tmp_path / "bounces.mbox")])
    assert result.exit_code == 1 and "neither an mbox file nor a Maildir" in result.output
