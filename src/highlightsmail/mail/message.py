"""A rendered issue and one recipient -> an outgoing message.

Only the per-recipient parts change here (To, the unsubscribe URL, the List-* headers,
Message-ID, Date); the HTML and text were rendered once for the whole issue.

Every header built from text someone typed goes through `header_value` (settings and the
issue: refused) or `display_name` (a subscriber's name: left out), so no such text can
bring a line break or an RFC 2047 encoded word into a header, whatever the email
package of the running Python would make of it.
"""

from __future__ import annotations

import functools
import hashlib
import time
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from typing import TYPE_CHECKING, NamedTuple

from highlightsmail.addresses import ascii_address
from highlightsmail.authoring.fields import split_address
from highlightsmail.errors import HighlightsError
from highlightsmail.rendering.rendered import RenderedIssue
from highlightsmail.text import header_problem
from highlightsmail.urls import Urls, urls

if TYPE_CHECKING:
    from collections.abc import Callable

    from highlightsmail.authoring.workspace import Settings
    from highlightsmail.tokens import Signer

TEST_PREFIX = "[TEST] "
SETTINGS_FILE = "highlights.yaml"
#: Stand-ins for what differs per recipient, in the fingerprint's message.
_FINGERPRINT_RECIPIENT = "recipient@example.invalid"
_FINGERPRINT_TOKEN = "TOKEN"
_FINGERPRINT_MESSAGE_ID = "<message-id@example.invalid>"


class UnsafeHeader(HighlightsError):
    """Text for a header that could break out of it (it got past validation somehow)."""


#: Names the issue in every message, so bounce mail (which returns the original
#: headers) can be matched to it without the recipient's address.
ISSUE_HEADER = "X-Highlights-Issue"


#: List-Unsubscribe-Post's one value (RFC 8058).
ONE_CLICK = "List-Unsubscribe=One-Click"


class Recipient(NamedTuple):
    """Someone a message goes to. Editors on a test send have no subscriber id. (A named
    tuple, as the envelope types are: a send makes one per recipient, and a frozen
    dataclass costs several times as much to make.)"""

    email: str
    name: str = ""
    subscriber_id: int | None = None


class RecipientLinks(NamedTuple):
    """The unsubscribe URL of one recipient and the headers carrying it (RFC 2369, RFC 8058)."""

    unsubscribe_url: str
    headers: dict[str, str]
    preferences_url: str = ""  # the reader's preference page ("Manage preferences")


def header_value(field: str, value: str) -> str:
    """`value` unchanged if it may go into a header as typed; UnsafeHeader naming
    `field` if it holds a line break, a control character or an RFC 2047 encoded word
    (a decoder would turn `=?utf-8?q?=0D=0A?=` into a line break, and so a header)."""
    problem = header_problem(value)
    if problem:
        raise UnsafeHeader(f"{field}: {problem}")
    return value


def display_name(recipient: Recipient) -> str:
    """The recipient's name for their To header, or "" when it could not go there
    safely: an old stored name is left out rather than failing that recipient."""
    name = (recipient.name or "").strip()
    if name.isascii() and name.isprintable() and "=?" not in name:
        return name  # the usual case, with no need for the full check
    return "" if not name or header_problem(name) else name


def from_header(settings: Settings) -> str:
    return _sender(f"{SETTINGS_FILE}: from", settings.from_)


def reply_to_header(settings: Settings) -> str | None:
    return _sender(f"{SETTINGS_FILE}: reply_to", settings.reply_to) if settings.reply_to else None


@functools.lru_cache(maxsize=16)
def _sender(field: str, value: str) -> str:
    """A sender's "Name <address>" as its header carries it: the domain in ASCII (IDNA),
    since an address header without SMTPUTF8 has no other way to hold `bücher.example`."""
    value = header_value(field, value)
    try:
        _, addr = split_address(value)
        ascii_form = ascii_address(addr)
    except ValueError as exc:
        raise UnsafeHeader(f"{field}: {exc}") from None
    if ascii_form is None:
        raise UnsafeHeader(f"{field}: the part before the @ of an address mail is sent from must be ASCII")
    if ascii_form == addr:
        return value
    head, _, tail = value.rpartition(addr)
    return head + ascii_form + tail


def list_id(settings: Settings) -> str:
    """The List-Id header value (RFC 2919): `"Name" <list.id>`, always ASCII.

    A non-ASCII name becomes RFC 2047 encoded-words: the email package would otherwise
    encode the opening quote with the name and leave the closing one bare, and SendGrid
    takes custom headers exactly as given, raw UTF-8 included.
    """
    return _list_id(settings.name, settings.list_id)


@functools.lru_cache(maxsize=16)
def _list_id(name: str, ident: str) -> str:
    # Cached: a dispatch asks once per recipient, with the same settings every time.
    name = header_value(f"{SETTINGS_FILE}: name", name).replace('"', "'")
    ident = header_value(f"{SETTINGS_FILE}: list_id", ident)
    if not name.isascii():
        from email.header import Header

        # Header folds a long name into several encoded-words (each at most 75
        # characters, RFC 2047); on one line they read back as the one name.
        return " ".join(Header(name, "utf-8").encode().split()) + f" <{ident}>"
    return f'"{name}" <{ident}>'


def unsubscribe_url(settings: Settings, token: str) -> str:
    return _checked_urls(settings).unsubscribe(token)


def _checked_urls(settings: Settings) -> Urls:
    """The addresses, once base_url is known to be fit for the List-Unsubscribe header."""
    _check_base_url(settings.base_url)
    return urls(settings)


@functools.lru_cache(maxsize=16)
def _check_base_url(base_url: str) -> None:
    header_value(f"{SETTINGS_FILE}: base_url", base_url)


def links_for(settings: Settings, url: str, preferences_url: str = "") -> RecipientLinks:
    """The footer's unsubscribe URL and the List-* headers for it.

    RFC 8058 asks for List-Unsubscribe-Post only with an https URL, since the POST
    itself is the unsubscribe and must not travel in clear text.
    """
    headers = {"List-Unsubscribe": f"<{url}>", "List-Id": list_id(settings)}
    if url.startswith("https://"):
        headers["List-Unsubscribe-Post"] = ONE_CLICK
    return RecipientLinks(unsubscribe_url=url, headers=headers, preferences_url=preferences_url)


def recipient_links(settings: Settings, signer: Signer, subscriber_id: int, *, test: bool = False) -> RecipientLinks:
    """The links of one recipient (a test token changes nothing, on either page)."""
    token = signer.make(subscriber_id, "test" if test else "unsubscribe")
    preferences = token if test else signer.make_preferences(subscriber_id, int(time.time()))
    return links_for(settings, unsubscribe_url(settings, token), _checked_urls(settings).preferences(preferences))


def links_maker(settings: Settings, signer: Signer, made: float | None = None) -> Callable[[int], RecipientLinks]:
    """`recipient_links` for many subscribers of one dispatch: what depends only on the
    settings (the checked base URL, List-Id, whether the URL is https) is worked out once."""
    checked = _checked_urls(settings)
    base, preferences = checked.unsubscribe_prefix, checked.preferences_prefix
    ident = list_id(settings)
    post = base.startswith("https://")
    # One time for the run's preference links: the date its messages carry (so a kept
    # message is rebuilt with the same link), else now.
    tokens = signer.link_tokens(int(time.time() if made is None else made))

    def links(subscriber_id: int) -> RecipientLinks:
        unsubscribe, prefs = tokens(subscriber_id)
        url = base + unsubscribe
        if post:
            headers = {"List-Unsubscribe": f"<{url}>", "List-Id": ident, "List-Unsubscribe-Post": ONE_CLICK}
        else:
            headers = {"List-Unsubscribe": f"<{url}>", "List-Id": ident}
        return RecipientLinks(url, headers, preferences + prefs)

    return links


def subject_for(rendered: RenderedIssue, *, test: bool = False) -> str:
    return (TEST_PREFIX if test else "") + header_value(f"{rendered.slug}: subject", rendered.subject)


def check_headers(rendered: RenderedIssue, settings: Settings) -> None:
    """Raise UnsafeHeader now for any header text from the settings or the issue, so a
    send stops before anything goes out rather than failing batch after batch."""
    subject_for(rendered)
    from_header(settings)
    reply_to_header(settings)
    unsubscribe_url(settings, _FINGERPRINT_TOKEN)
    list_id(settings)


def format_recipient(recipient: Recipient) -> str:
    """`Name <address>`, or the bare address when there is no name fit for a header."""
    name = display_name(recipient)
    if name and not recipient.email.isascii():
        # formataddr refuses internationalised addresses (RFC 6532), which subscribers
        # may have; the header's own folding quotes and encodes the name then.
        local, _, domain = recipient.email.rpartition("@")
        return str(Address(display_name=name, username=local, domain=domain))
    return formataddr((name, recipient.email)) if name else recipient.email


def mail_date(when: float | None = None) -> str:
    """A Date header value with the numeric zone `+0000` (RFC 5322 3.3; the zone
    names such as `GMT` are obsolete syntax)."""
    moment = datetime.now(UTC) if when is None else datetime.fromtimestamp(when, UTC)
    return format_datetime(moment)


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
    html, text = rendered.personalize(links.unsubscribe_url, links.preferences_url)
    msg = EmailMessage()
    msg["From"] = from_header(settings)
    msg["To"] = format_recipient(recipient)
    msg["Subject"] = subject_for(rendered, test=test)
    msg["Date"] = mail_date(date)
    msg["Message-ID"] = message_id or make_msgid(domain=sender_domain(settings))
    reply_to = reply_to_header(settings)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg[ISSUE_HEADER] = rendered.slug
    for name, value in links.headers.items():
        msg[name] = value
    msg.set_content(text, subtype="plain", charset="utf-8")
    msg.add_alternative(html, subtype="html", charset="utf-8")
    return msg


def fingerprint(rendered: RenderedIssue, settings: Settings) -> str:
    """sha256 of the whole message a subscriber gets, as bytes: every header from the
    settings and the issue, and both parts, with what differs per recipient (To, Date,
    Message-ID, the token in the unsubscribe links, the MIME boundary) as fixed
    stand-ins. A test send and the real send of the same message agree; any change a
    reader could see does not."""
    import email.policy

    links = links_for(
        settings, unsubscribe_url(settings, _FINGERPRINT_TOKEN), _checked_urls(settings).preferences(_FINGERPRINT_TOKEN)
    )
    msg = build_message(
        rendered,
        settings,
        Recipient(email=_FINGERPRINT_RECIPIENT),
        links,
        date=0.0,
        message_id=_FINGERPRINT_MESSAGE_ID,
    )
    msg.set_boundary("fingerprint")
    # SMTPUTF8: the same bytes for any From, ASCII or not.
    return hashlib.sha256(msg.as_bytes(policy=email.policy.SMTPUTF8)).hexdigest()


def sender_domain(settings: Settings) -> str:
    """The domain of the From address, for Message-IDs."""
    return parseaddr(from_header(settings))[1].rpartition("@")[2] or "localhost"


def make_message_id(token: str | None, domain: str) -> str:
    """A message's Message-ID: `<TOKEN@domain>` from its message token (tokens.py), so a
    bounce returning it can be matched; a random one for mail without a token (test sends)."""
    return f"<{token}@{domain}>" if token else make_msgid(domain=domain)


def return_path(settings: Settings, token: str | None) -> str | None:
    """The SMTP return address of a message when `delivery.bounces.verp` is set: the
    token added to its part before the @ (`bounces+TOKEN@example.org`, the domain in
    ASCII); None without the setting or a token, and the From address is used."""
    verp = settings.delivery.bounces.verp
    if not verp or not token:
        return None
    local, _, domain = (ascii_address(verp) or verp).rpartition("@")
    return f"{local}+{token}@{domain}"


__all__ = [
    "ISSUE_HEADER",
    "SETTINGS_FILE",
    "TEST_PREFIX",
    "Recipient",
    "RecipientLinks",
    "UnsafeHeader",
    "build_message",
    "check_headers",
    "display_name",
    "fingerprint",
    "format_recipient",
    "from_header",
    "header_value",
    "links_for",
    "links_maker",
    "list_id",
    "mail_date",
    "make_message_id",
    "recipient_links",
    "reply_to_header",
    "return_path",
    "sender_domain",
    "subject_for",
    "unsubscribe_url",
]
