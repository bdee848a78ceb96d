"""A rendered issue and one recipient -> an outgoing message.

Only the per-recipient parts change here (To, the unsubscribe URL, the List-* headers,
Message-ID); the HTML and text were rendered once for the whole issue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from highlightsmail.render import RenderedIssue
    from highlightsmail.tokens import Signer
    from highlightsmail.workspace import Settings

TEST_PREFIX = "[TEST] "
#: Names the issue in every message, so bounce mail (which returns the original
#: headers) can be matched to it without the recipient's address.
ISSUE_HEADER = "X-Highlights-Issue"
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Recipient:
    """Someone a message goes to. Editors on a test send have no subscriber id."""

    email: str
    name: str = ""
    subscriber_id: int | None = None


@dataclass(frozen=True)
class RecipientLinks:
    """The unsubscribe URL of one recipient and the headers carrying it (RFC 2369, RFC 8058)."""

    unsubscribe_url: str
    headers: dict[str, str]


def list_id(settings: Settings) -> str:
    """The List-Id header value (RFC 2919): `"Name" <list.id>`, always ASCII.

    A non-ASCII name becomes RFC 2047 encoded-words: the email package would otherwise
    encode the opening quote with the name and leave the closing one bare, and SendGrid
    takes custom headers exactly as given, raw UTF-8 included.
    """
    name = _CONTROL_RE.sub(" ", settings.name).replace('"', "'")
    if not name.isascii():
        from email.header import Header

        # Header folds a long name into several encoded-words (each at most 75
        # characters, RFC 2047); on one line they read back as the one name.
        return " ".join(Header(name, "utf-8").encode().split()) + f" <{settings.list_id}>"
    return f'"{name}" <{settings.list_id}>'


def recipient_links(settings: Settings, signer: Signer, subscriber_id: int, *, test: bool = False) -> RecipientLinks:
    """The footer's unsubscribe URL and the List-* headers, all from one token.

    RFC 8058 asks for List-Unsubscribe-Post only with an https URL, since the POST
    itself is the unsubscribe and must not travel in clear text.
    """
    token = signer.make(subscriber_id, "test" if test else "unsubscribe")
    url = f"{settings.base_url.rstrip('/')}/u/{token}"
    headers = {"List-Unsubscribe": f"<{url}>", "List-Id": list_id(settings)}
    if url.startswith("https://"):
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return RecipientLinks(unsubscribe_url=url, headers=headers)


def subject_for(rendered: RenderedIssue, *, test: bool = False) -> str:
    return (TEST_PREFIX if test else "") + rendered.subject


def format_recipient(recipient: Recipient) -> str:
    """`Name <address>` with the name cleaned of anything that could break the header."""
    name = _CONTROL_RE.sub(" ", recipient.name or "").strip()
    if name and not recipient.email.isascii():
        # formataddr refuses internationalised addresses (RFC 6532), which subscribers
        # may have; the header's own folding quotes and encodes the name then.
        local, _, domain = recipient.email.rpartition("@")
        return str(Address(display_name=name, username=local, domain=domain))
    return formataddr((name, recipient.email)) if name else recipient.email


def build_message(
    rendered: RenderedIssue,
    settings: Settings,
    recipient: Recipient,
    links: RecipientLinks,
    *,
    test: bool = False,
    date: float | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    """One multipart/alternative message: text/plain first, then text/html (RFC 2046:
    the last part is the preferred one)."""
    html, text = rendered.personalize(links.unsubscribe_url)
    msg = EmailMessage()
    msg["From"] = settings.from_
    msg["To"] = format_recipient(recipient)
    msg["Subject"] = subject_for(rendered, test=test)
    msg["Date"] = formatdate(date, localtime=False, usegmt=True)
    msg["Message-ID"] = message_id or make_msgid(domain=sender_domain(settings))
    if settings.reply_to:
        msg["Reply-To"] = settings.reply_to
    msg[ISSUE_HEADER] = rendered.slug
    for name, value in links.headers.items():
        msg[name] = value
    msg.set_content(text, subtype="plain", charset="utf-8")
    msg.add_alternative(html, subtype="html", charset="utf-8")
    return msg


def sender_domain(settings: Settings) -> str:
    """The domain of the From address, for Message-IDs."""
    return parseaddr(settings.from_)[1].rpartition("@")[2] or "localhost"


__all__ = [
    "ISSUE_HEADER",
    "TEST_PREFIX",
    "Recipient",
    "RecipientLinks",
    "build_message",
    "format_recipient",
    "list_id",
    "recipient_links",
    "sender_domain",
    "subject_for",
]
