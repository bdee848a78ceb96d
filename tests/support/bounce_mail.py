"""Bounce mail of the shapes found in the wild, built around a real message highlightsmail
sent (so the returned headers are the ones it writes), and mailboxes to put them in.

Shapes: RFC 3464 reports from Postfix (failed, delayed, and given up on a 4.x.x status),
Exim and Gmail ("address not found"); qmail's QSBMF text; Exchange's older
"did not reach the following recipient(s)" notice; and an out-of-office auto-reply,
which is no bounce at all.
"""

from __future__ import annotations

import mailbox
import sqlite3
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid
from pathlib import Path

from highlightsmail.authoring.issue import load_issue
from highlightsmail.authoring.workspace import Settings, load_workspace
from highlightsmail.mail.message import Recipient, build_message, make_message_id, recipient_links, sender_domain
from highlightsmail.rendering.render import render_issue
from highlightsmail.rendering.rendered import RenderedIssue
from highlightsmail.store import Store
from highlightsmail.tokens import Signer, load_signer
from support.events import add_readers, sent_to_everyone

BOUNCES_TO = "bounces@example.org"
WHEN = datetime(2024, 1, 12, 10, 30, tzinfo=UTC)


def original(
    rendered: RenderedIssue,
    settings: Settings,
    signer: Signer,
    sid: int,
    email: str,
    *,
    test: bool = False,
    tag: str | None = None,
) -> bytes:
    """The message as highlightsmail sent it to this subscriber: with the Message-ID the
    dispatch derives from its tag (a random one on a test send)."""
    links = recipient_links(settings, signer, sid, test=test)
    token = None if test or tag is None else signer.make_message(rendered.slug, tag, sid)
    msg = build_message(
        rendered,
        settings,
        Recipient(email=email, name="", subscriber_id=sid),
        links,
        test=test,
        message_id=make_message_id(token, sender_domain(settings)),
    )
    return msg.as_bytes()


def without(message: bytes, *names: str) -> bytes:
    """The message with these headers left out (as a DSN that returns only some)."""
    head, _, body = message.partition(b"\n\n")
    kept, skipping = [], False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.split(b":", 1)[0].decode().lower() in {n.lower() for n in names}
        if not skipping:
            kept.append(line)
    return b"\n".join(kept) + b"\n\n" + body


def replace_header(message: bytes, name: str, value: str) -> bytes:
    """The message with one header's value replaced (as a forger would)."""
    return without(message, name).replace(b"\n\n", f"\n{name}: {value}\n\n".encode(), 1)


def bare(address: str, *, to: str = BOUNCES_TO) -> bytes:
    """A Postfix report naming `address` and returning nothing of the message: as a
    forger can write one, and as some servers send theirs. `to`: the address it came to."""
    dsn = postfix(address, b"Subject: x\n\n").replace(f"To: {BOUNCES_TO}\n".encode(), f"To: {to}\n".encode(), 1)
    return dsn.split(b"--7C1A02E4.1705055400/relay.example.net\nContent-Description: Undelivered")[0] + (
        b"--7C1A02E4.1705055400/relay.example.net--\n"
    )


def failed_recipients(address: str) -> bytes:
    """A plain mail from anyone with an X-Failed-Recipients header (Exim's), and nothing else."""
    return (
        f"Date: {format_datetime(WHEN)}\n"
        "From: Anyone <anyone@elsewhere.example>\n"
        f"To: {BOUNCES_TO}\n"
        "Subject: hello\n"
        f"Message-ID: {make_msgid(domain='elsewhere.example')}\n"
        f"X-Failed-Recipients: {address}\n\n"
        "Nothing of yours here.\n"
    ).encode()


def headers_of(message: bytes) -> str:
    return message.split(b"\n\n", 1)[0].decode("utf-8")


def _envelope(sender: str, subject: str, content_type: str, extra: str = "") -> str:
    return (
        f"Return-Path: <>\n"
        f"Date: {format_datetime(WHEN)}\n"
        f"From: {sender}\n"
        f"To: {BOUNCES_TO}\n"
        f"Subject: {subject}\n"
        f"Message-ID: {make_msgid(domain='mx.example.net')}\n"
        f"Auto-Submitted: auto-replied\n"
        f"MIME-Version: 1.0\n"
        f"{extra}"
        f"Content-Type: {content_type}\n"
    )


def postfix(address: str, message: bytes, *, action: str = "failed", status: str = "5.1.1") -> bytes:
    """Postfix's RFC 3464 report with the returned headers as text/rfc822-headers."""
    delayed = action == "delayed"
    subject = "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    reply = f"{status[0]}{'21' if delayed else '50'} {status} <{address}>: " + (
        "Mailbox temporarily unavailable" if status.startswith("4") else "Recipient address rejected: User unknown"
    )
    intro = (
        "This is the mail system at host relay.example.net.\n\n"
        + (
            "####################################################################\n"
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
            "####################################################################\n\n"
            "Your message could not be delivered for more than 4 hour(s).\n"
            "It will be retried until it is 5 day(s) old.\n"
            if delayed
            else "I'm sorry to have to inform you that your message could not\n"
            "be delivered to one or more recipients. It's attached below.\n"
        )
        + f"\n                   The mail system\n\n<{address}>: host mx.example.org[192.0.2.25] said: {reply}\n"
        "    (in reply to RCPT TO command)\n"
    )
    return (
        _envelope(
            "MAILER-DAEMON@relay.example.net (Mail Delivery System)",
            subject,
            'multipart/report; report-type=delivery-status;\n\tboundary="7C1A02E4.1705055400/relay.example.net"',
        )
        + "\nThis is a MIME-encapsulated message.\n\n"
        "--7C1A02E4.1705055400/relay.example.net\n"
        "Content-Description: Notification\n"
        "Content-Type: text/plain; charset=us-ascii\n\n"
        f"{intro}\n"
        "--7C1A02E4.1705055400/relay.example.net\n"
        "Content-Description: Delivery report\n"
        "Content-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; relay.example.net\n"
        "X-Postfix-Queue-ID: 7C1A02E4\n"
        f"X-Postfix-Sender: rfc822; {BOUNCES_TO}\n"
        "Arrival-Date: Fri, 12 Jan 2024 06:10:00 +0000 (UTC)\n\n"
        f"Final-Recipient: rfc822; {address}\n"
        f"Original-Recipient: rfc822;{address}\n"
        f"Action: {action}\n"
        f"Status: {status}\n"
        "Remote-MTA: dns; mx.example.org\n"
        f"Diagnostic-Code: smtp; {reply}\n"
        + ("Will-Retry-Until: Wed, 17 Jan 2024 06:10:00 +0000 (UTC)\n" if delayed else "")
        + "\n--7C1A02E4.1705055400/relay.example.net\n"
        "Content-Description: Undelivered Message Headers\n"
        "Content-Type: text/rfc822-headers\n\n"
        f"{headers_of(message)}\n\n"
        "--7C1A02E4.1705055400/relay.example.net--\n"
    ).encode("utf-8")


def exim(address: str, message: bytes) -> bytes:
    """Exim's RFC 3464 report: X-Failed-Recipients, and the whole message returned."""
    return (
        _envelope(
            "Mail Delivery System <Mailer-Daemon@mail.example.net>",
            "Mail delivery failed: returning message to sender",
            "multipart/report; report-type=delivery-status; boundary=1705055400-eximdsn-1804289383",
            extra=f"X-Failed-Recipients: {address}\n",
        )
        + "\n--1705055400-eximdsn-1804289383\n"
        "Content-type: text/plain; charset=us-ascii\n\n"
        "This message was created automatically by mail delivery software.\n\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n\n"
        f"  {address}\n"
        "    host mx.example.org [192.0.2.25]\n"
        "    SMTP error from remote mail server after RCPT TO:<" + address + ">:\n"
        "    550 5.1.1 No such user here\n\n"
        "--1705055400-eximdsn-1804289383\n"
        "Content-type: message/delivery-status\n\n"
        "Reporting-MTA: dns; mail.example.net\n\n"
        "Action: failed\n"
        f"Final-Recipient: rfc822;{address}\n"
        "Status: 5.0.0\n"
        "Remote-MTA: dns; mx.example.org\n"
        "Diagnostic-Code: smtp; 550 5.1.1 No such user here\n\n"
        "--1705055400-eximdsn-1804289383\n"
        "Content-type: message/rfc822\n\n"
        f"{message.decode('utf-8')}\n"
        "--1705055400-eximdsn-1804289383--\n"
    ).encode("utf-8")


def qmail(address: str, message: bytes) -> bytes:
    """qmail's QSBMF: plain text, the original message pasted under a dashed line."""
    return (
        "Return-Path: <>\n"
        f"Date: {format_datetime(WHEN)}\n"
        "From: MAILER-DAEMON@qmail.example.net\n"
        f"To: {BOUNCES_TO}\n"
        "Subject: failure notice\n"
        f"Message-ID: {make_msgid(domain='qmail.example.net')}\n\n"
        "Hi. This is the qmail-send program at qmail.example.net.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        f"<{address}>:\n"
        "192.0.2.7 does not like recipient.\n"
        "Remote host said: 550 5.1.1 Sorry, no mailbox here by that name.\n"
        "Giving up on 192.0.2.7.\n\n"
        "--- Below this line is a copy of the message.\n\n"
        f"{message.decode('utf-8')}"
    ).encode()


def exchange(address: str, message: bytes) -> bytes:
    """Exchange's older non-delivery notice (not RFC 3464), the original attached."""
    return (
        _envelope(
            "System Administrator <postmaster@corp.example.net>",
            "Undeliverable: AI Research Highlights | Week 2, 2024",
            'multipart/mixed; boundary="----_=_NextPart_001_01C4F1E2.8D3E4F50"',
        )
        + "\n------_=_NextPart_001_01C4F1E2.8D3E4F50\n"
        'Content-Type: text/plain; charset="iso-8859-1"\n\n'
        "Your message\n\n"
        f"  To:      {address}\n"
        "  Subject: AI Research Highlights | Week 2, 2024\n"
        "  Sent:    Fri, 12 Jan 2024 10:00:00 +0000\n\n"
        "did not reach the following recipient(s):\n\n"
        f"{address} on Fri, 12 Jan 2024 10:00:05 +0000\n"
        "    The recipient name is not recognized\n"
        "    The MTS-ID of the original message is: c=US;a= ;p=Example;l=EX010401121000\n"
        "    MSEXCH:IMS:Example:Corp:EX01 0 (000C05A6) Unknown Recipient\n\n"
        "------_=_NextPart_001_01C4F1E2.8D3E4F50\n"
        "Content-Type: message/rfc822\n\n"
        f"{message.decode('utf-8')}\n"
        "------_=_NextPart_001_01C4F1E2.8D3E4F50--\n"
    ).encode("utf-8")


def gmail(address: str, message: bytes) -> bytes:
    """Gmail's "Address not found": an RFC 3464 report with the headers returned."""
    return (
        _envelope(
            "Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
            "Delivery Status Notification (Failure)",
            'multipart/report; boundary="000000000000a1b2c3d4e5f6"; report-type=delivery-status',
        )
        + "\n--000000000000a1b2c3d4e5f6\n"
        'Content-Type: multipart/related; boundary="000000000000a1b2c3d4e5f7"\n\n'
        "--000000000000a1b2c3d4e5f7\n"
        'Content-Type: multipart/alternative; boundary="000000000000a1b2c3d4e5f8"\n\n'
        "--000000000000a1b2c3d4e5f8\n"
        'Content-Type: text/plain; charset="UTF-8"\n\n'
        "** Address not found **\n\n"
        f"Your message wasn't delivered to {address} because the address couldn't be found,\n"
        "or is unable to receive mail.\n\n"
        "The response from the remote server was:\n"
        "550 5.1.1 The email account that you tried to reach does not exist.\n\n"
        "--000000000000a1b2c3d4e5f8--\n"
        "--000000000000a1b2c3d4e5f7--\n"
        "--000000000000a1b2c3d4e5f6\n"
        "Content-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; googlemail.com\n"
        "Arrival-Date: Fri, 12 Jan 2024 02:00:01 -0800 (PST)\n\n"
        f"Final-Recipient: rfc822; {address}\n"
        "Action: failed\n"
        "Status: 5.1.1\n"
        "Remote-MTA: dns; mx.example.org. (192.0.2.25, the server for the domain example.org.)\n"
        "Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist.\n"
        "Last-Attempt-Date: Fri, 12 Jan 2024 02:00:02 -0800 (PST)\n\n"
        "--000000000000a1b2c3d4e5f6\n"
        "Content-Type: text/rfc822-headers\n\n"
        f"{headers_of(message)}\n\n"
        "--000000000000a1b2c3d4e5f6--\n"
    ).encode("utf-8")


def vacation(address: str, message: bytes) -> bytes:
    """An out-of-office reply (RFC 3834): mail from the reader, not a bounce."""
    original_id = headers_of(message).split("Message-ID: ", 1)[1].split("\n", 1)[0]
    return (
        f"Date: {format_datetime(WHEN)}\n"
        f"From: Reader <{address}>\n"
        f"To: {BOUNCES_TO}\n"
        "Subject: Out of office: AI Research Highlights | Week 2, 2024\n"
        f"Message-ID: {make_msgid(domain='example.org')}\n"
        f"In-Reply-To: {original_id}\n"
        "Auto-Submitted: auto-replied\n"
        "X-Autoreply: yes\n"
        "Precedence: bulk\n"
        "Content-Type: text/plain; charset=utf-8\n\n"
        "Thank you for your message. I am away until 22 January with no access to email.\n"
        "Your message will not be forwarded; I will read it when I am back.\n"
    ).encode()


def write_mbox(path: Path, mails: list[bytes]) -> Path:
    box = mailbox.mbox(str(path))
    try:
        for data in mails:
            box.add(data)
        box.flush()
    finally:
        box.close()
    return path


def write_maildir(path: Path, mails: list[bytes]) -> Path:
    box = mailbox.Maildir(str(path), create=True)
    for data in mails:
        box.add(data)
    return path


# ---------------------------------------------------------------- mail that cannot be read


def _poison_head(kind: str, content_type: str) -> bytes:
    return (
        f"Date: {format_datetime(WHEN)}\n"
        "From: Mail Delivery System <MAILER-DAEMON@relay.example.net>\n"
        f"To: {BOUNCES_TO}\n"
        f"Subject: Undelivered Mail Returned to Sender ({kind})\n"
        f"Message-ID: <poison-{kind}@relay.example.net>\n"
        f"Content-Type: {content_type}\n\n"
    ).encode()


def nested_messages(depth: int) -> bytes:
    """message/rfc822 inside message/rfc822, `depth` deep (3,000: about 90 KB)."""
    inner = b"Content-Type: text/plain\n\nthe bottom\n"
    return _poison_head(f"rfc822-{depth}", "message/rfc822") + b"Content-Type: message/rfc822\n\n" * depth + inner


def nested_multiparts(depth: int) -> bytes:
    """multipart/mixed inside multipart/mixed, `depth` deep."""
    opening = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(depth))
    closing = b"".join(b"\n--b%d--\n" % i for i in reversed(range(depth + 1)))
    body = opening + b"--b%d\nContent-Type: text/plain\n\nthe bottom\n" % depth + closing
    return _poison_head(f"multipart-{depth}", "multipart/mixed; boundary=b0") + body


def many_parts(count: int) -> bytes:
    """One multipart/mixed of `count` small text parts."""
    parts = b"".join(b"--p\nContent-Type: text/plain\n\npart %d\n" % i for i in range(count))
    return _poison_head(f"parts-{count}", "multipart/mixed; boundary=p") + parts + b"--p--\n"


def huge(megabytes: int) -> bytes:
    """A plain mail of that many megabytes (lines of 100 characters)."""
    line = b"x" * 99 + b"\n"
    return _poison_head(f"huge-{megabytes}", "text/plain") + line * (megabytes * 1024 * 1024 // 100 + 1)


# ---------------------------------------------------------------- a workspace that sent mail

ISSUE = "2024-w02"


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
            self.tags = {issue: store.dispatch_info(issue).tag for issue in issues}

    def message(self, i: int, *, test: bool = False, issue: str = ISSUE, signer: Signer | None = None) -> bytes:
        rendered = self.rendered if issue == ISSUE else _with_slug(self.rendered, issue)
        return original(
            rendered,
            self.ws.settings,
            signer or self.signer,
            self.ids[i - 1],
            email(i),
            test=test,
            tag=self.tags.get(issue),
        )

    def token(self, i: int, issue: str = ISSUE) -> str:
        """The message token of reader i's message of the issue."""
        return self.signer.make_message(issue, self.tags[issue], self.ids[i - 1])


def _with_slug(rendered, slug: str):
    from dataclasses import replace

    return replace(rendered, slug=slug)


def kinds(root: Path) -> list[tuple]:
    conn = sqlite3.connect(db_of(root))
    try:
        return conn.execute(
            "SELECT s.email, d.issue, d.kind FROM delivery_events d JOIN subscribers s ON s.id = d.subscriber_id ORDER BY 1"
        ).fetchall()
    finally:
        conn.close()
