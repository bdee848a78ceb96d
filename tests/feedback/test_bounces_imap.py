"""`highlights bounces scan imaps://...` against a real Dovecot on loopback, over TLS
with a certificate the test's own CA signed."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner

from highlightsmail.cli import main
from support.bounce_mail import (
    ISSUE,
    Sent,
    db_of,
    email,
    exim,
    gmail,
    huge,
    kinds,
    nested_messages,
    nested_multiparts,
    postfix,
    vacation,
)
from support.dovecot import PASSWORD, UNICODE_PASSWORD, UNICODE_USER, USER, Dovecot, dovecot, lying_imap
from support.events import dump, statuses


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch):
    with dovecot() as server:
        monkeypatch.setenv("HIGHLIGHTS_IMAP_PASSWORD", PASSWORD)
        monkeypatch.setenv("HIGHLIGHTS_IMAP_CAFILE", str(server.ca_file))
        yield server


def scan(*args: str):
    return CliRunner().invoke(main, ["bounces", "scan", *args])


def test_bounces_in_an_imap_folder_are_read_once_and_left_unseen(workspace: Path, imap: Dovecot) -> None:
    sent = Sent(workspace, 4)
    imap.deliver([gmail(email(1), sent.message(1)), vacation(email(2), sent.message(2))])
    imap.deliver([exim(email(3), sent.message(3))], folder="Bounces")
    result = scan(imap.url)
    assert result.exit_code == 0, result.output
    assert "2 mail(s), 0 read before, 1 bounce(s), 1 not bounces" in result.output
    assert statuses(db_of(workspace))[email(1)] == "bounced"
    assert statuses(db_of(workspace))[email(2)] == "active"

    # Another folder of the same mailbox.
    result = scan(imap.url.replace("/INBOX", "/Bounces"))
    assert result.exit_code == 0, result.output
    assert statuses(db_of(workspace))[email(3)] == "bounced"

    once = dump(db_of(workspace))
    again = scan(imap.url)
    assert "2 mail(s), 2 read before, 0 bounce(s)" in again.output
    assert dump(db_of(workspace)) == once

    # New mail since: only it is read. A temporary failure is a soft bounce.
    imap.deliver([postfix(email(4), sent.message(4), action="delayed", status="4.4.1")])
    later = scan(imap.url)
    assert "3 mail(s), 2 read before, 1 bounce(s)" in later.output
    assert statuses(db_of(workspace))[email(4)] == "active"
    assert (email(4), ISSUE, "dsn-temporary") in kinds(workspace)

    # Read-only and BODY.PEEK: nothing was marked as seen in the mailbox.
    from imapclient import IMAPClient

    with IMAPClient(
        "127.0.0.1", port=imap.port, ssl=True, ssl_context=ssl.create_default_context(cafile=str(imap.ca_file))
    ) as client:
        client.login(USER, PASSWORD)
        client.select_folder("INBOX", readonly=True)
        assert client.search("SEEN") == []
        assert len(client.search("ALL")) == 3


def test_a_wrong_password_or_an_untrusted_certificate_is_one_clear_line(
    workspace: Path, imap: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    Sent(workspace, 1)
    monkeypatch.setenv("HIGHLIGHTS_IMAP_PASSWORD", "not-the-password")
    result = scan(imap.url)
    assert result.exit_code == 1
    assert "the server refused the login of 'bounces@example.org'" in result.output
    assert "not-the-password" not in result.output

    monkeypatch.setenv("HIGHLIGHTS_IMAP_PASSWORD", PASSWORD)
    monkeypatch.delenv("HIGHLIGHTS_IMAP_CAFILE")
    result = scan(imap.url)
    assert result.exit_code == 1
    assert "certificate is not trusted" in result.output and "HIGHLIGHTS_IMAP_CAFILE" in result.output
    assert "Traceback" not in result.output

    monkeypatch.setenv("HIGHLIGHTS_IMAP_CAFILE", str(imap.ca_file))
    result = scan(imap.url.replace("/INBOX", "/NoSuchFolder"))
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_a_password_beyond_ascii_logs_in(workspace: Path, imap: Dovecot, monkeypatch: pytest.MonkeyPatch) -> None:
    """IMAP LOGIN goes out as ASCII: such a password was a UnicodeEncodeError traceback.
    AUTHENTICATE PLAIN carries UTF-8 (RFC 4616)."""
    Sent(workspace, 1)
    monkeypatch.setenv("HIGHLIGHTS_IMAP_PASSWORD", UNICODE_PASSWORD)
    url = imap.url.replace(USER.replace("@", "%40"), UNICODE_USER.replace("@", "%40"))
    result = scan(url)
    assert result.exit_code == 0, result.output
    assert "0 mail(s)" in result.output

    monkeypatch.setenv("HIGHLIGHTS_IMAP_PASSWORD", "wröng-pässword")
    result = scan(url)
    assert result.exit_code == 1
    assert f"the server refused the login of {UNICODE_USER!r}" in result.output
    assert "Traceback" not in result.output and "wröng" not in result.output


def test_a_poison_mail_in_the_folder_is_unreadable_and_the_bounce_behind_it_is_read(
    workspace: Path, imap: Dovecot
) -> None:
    """Only the first 10 MB of a mail are fetched (a partial FETCH): enough to know it is
    too large."""
    sent = Sent(workspace, 2)
    imap.deliver([nested_messages(3000), nested_multiparts(2000), huge(11), postfix(email(1), sent.message(1))])
    result = scan(imap.url)
    assert result.exit_code == 0, result.output
    assert "4 mail(s), 0 read before, 1 bounce(s), 0 not bounces, 3 unreadable" in result.output
    lines = [line for line in result.output.splitlines() if "unreadable (recorded as read, skipped)" in line]
    assert lines == [
        "  unreadable (recorded as read, skipped): UID 1: parts nested more than 30 deep",
        "  unreadable (recorded as read, skipped): UID 2: parts nested more than 30 deep",
        "  unreadable (recorded as read, skipped): UID 3: larger than 10 MB, the most one mail may take",
    ]
    assert statuses(db_of(workspace)) == {email(1): "bounced", email(2): "active"}
    again = scan(imap.url)
    assert "4 mail(s), 4 read before, 0 bounce(s)" in again.output and "unreadable" not in again.output


@pytest.mark.parametrize("at", ["headers", "body"])
def test_a_server_announcing_a_huge_literal_gets_one_line_not_a_memory_error(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    """`{99999999999}`: imaplib would try to read (and first allocate) 100 GB."""
    Sent(workspace, 1)
    with lying_imap(tmp_path, at=at) as server:
        monkeypatch.setenv("HIGHLIGHTS_IMAP_PASSWORD", PASSWORD)
        monkeypatch.setenv("HIGHLIGHTS_IMAP_CAFILE", str(server.ca_file))
        result = scan(server.url)
    assert any("FETCH" in c.upper() for c in server.commands)  # it got as far as the lie
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0, result.output
    assert "announced 99,999,999,999 octets in one piece, more than a mail may take (10 MB)" in result.output
    assert "Traceback" not in result.output and "MemoryError" not in result.output
