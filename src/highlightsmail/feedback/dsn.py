"""One bounce mail read into what it says: the failed addresses, and what the returned
headers name (the issue, a signed link, message tokens).

flufl.bounce (GNU Mailman's bounce detectors) finds the failed addresses in RFC 3464
DSNs and in the common non-standard shapes (qmail, Exim, Exchange, ...); an auto-reply
that is not a bounce yields none and is ignored. Where the DSN gives a status code, a
failure with a 4.x.x status (the server gave up on a temporary error) counts as
temporary, like a `delayed` report.

Caps, so that no one mail can stop a scan: a mail may take at most 10 MB
(MAX_MAIL_BYTES, and no more of it is ever held in memory), parts nested at most 30 deep
and 1,000 parts in all; a mail beyond them, or that cannot be parsed, is Unreadable.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any

from flufl.bounce import all_failures

from highlightsmail.errors import HighlightsError
from highlightsmail.store import format_time
from highlightsmail.tokens import find_message_tokens

#: The most of one mail that is read; a larger one is `unreadable`.
MAX_MAIL_BYTES = 10 * 1024 * 1024
#: How deep parts may be nested, and how many there may be, in a mail that is read.
MAX_DEPTH = 30
MAX_PARTS = 1000
_MAX_DETAIL = 500

# The returned original headers, wherever the DSN puts them (a message/rfc822 or
# text/rfc822-headers part, or a copy pasted under the text by qmail and Exim).
# The issue header's whole value, folded lines and all (a slug may hold spaces, and
# non-ASCII ones arrive as RFC 2047 encoded words).
_ISSUE_RE = re.compile(rb"^X-Highlights-Issue:([^\r\n]{0,1000}(?:\r?\n[ \t][^\r\n]{0,1000}){0,20})", re.M | re.I)
_TOKEN_RE = re.compile(
    rb"^List-Unsubscribe:[ \t]*(?:\r?\n[ \t]+)?<[^<>\s]*/u/([ut][0-9a-z]{1,13}\.[A-Za-z0-9_-]{22})>", re.M | re.I
)


_STATUS_RE = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}")


class Unreadable(HighlightsError):
    """A mail that cannot be parsed, or is beyond what one mail may take."""


@dataclass(frozen=True)
class Bounce:
    """What a bounce says: failed addresses (with the reason given) and what the returned
    headers name."""

    permanent: dict[str, str]
    temporary: dict[str, str]
    issue: str | None = None  # X-Highlights-Issue of the returned headers
    token: str | None = None  # the unsubscribe (or test) token of their List-Unsubscribe
    at: str | None = None  # the bounce's Date, in the stored format
    messages: tuple[str, ...] = ()  # message tokens: in a Message-ID, or the VERP address


def parse_mail(data: bytes) -> Message:
    """The mail parsed, within the caps; Unreadable saying why not."""
    if len(data) > MAX_MAIL_BYTES:
        raise Unreadable(f"larger than {MAX_MAIL_BYTES // (1024 * 1024)} MB, the most one mail may take")
    try:
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
    except RecursionError:
        raise Unreadable(f"parts nested more than {MAX_DEPTH} deep") from None
    except Exception as exc:  # the parser is lenient; anything it still trips over
        raise Unreadable(f"cannot be parsed ({type(exc).__name__})") from None
    # Counted without recursion: the detectors and msg.walk() recurse once per level.
    parts, stack = 0, [(msg, 1)]
    while stack:
        part, depth = stack.pop()
        parts += 1
        if depth > MAX_DEPTH:
            raise Unreadable(f"parts nested more than {MAX_DEPTH} deep")
        if parts > MAX_PARTS:
            raise Unreadable(f"more than {MAX_PARTS:,} parts")
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend((p, depth + 1) for p in payload if isinstance(p, Message))
    return msg


def read_bounce(data: bytes) -> Bounce | None:
    """The bounce in a mail, or None when it is not one (an auto-reply, a stray message).
    Unreadable when the mail cannot be parsed or is beyond the caps."""
    # flufl.bounce logs a detector's exception with its traceback before raising it;
    # a mail it cannot read is "not a bounce" here, never a traceback on the screen.
    logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

    msg = parse_mail(data)
    try:
        temporary_raw, permanent_raw = all_failures(msg)
    except Exception:  # a detector tripping over a malformed mail: treat it as no bounce
        return None
    try:
        return _bounce(msg, data, temporary_raw, permanent_raw)
    except Exception as exc:  # whatever else a hostile mail holds: one line, and the scan goes on
        raise Unreadable(f"cannot be read ({type(exc).__name__})") from None


def _bounce(msg: Message, data: bytes, temporary_raw: Any, permanent_raw: Any) -> Bounce | None:
    temporary = {_text(a): "" for a in temporary_raw if _text(a)}
    permanent = {_text(a): "" for a in permanent_raw if _text(a)}
    if not temporary and not permanent:
        return None
    _apply_dsn(msg, temporary, permanent)
    subject = " ".join(str(msg.get("Subject", "")).split())[:200]
    for group in (temporary, permanent):
        for address, detail in group.items():
            group[address] = detail or subject or "delivery failed"
    returned = _returned_text(msg, data)
    issue = _ISSUE_RE.search(returned)
    token = _TOKEN_RE.search(returned)
    return Bounce(
        permanent=permanent,
        temporary=temporary,
        issue=_header_text(issue.group(1)) if issue else None,
        token=token.group(1).decode("ascii") if token else None,
        at=_date(msg.get("Date")),
        messages=tuple(find_message_tokens(returned)),
    )


def _apply_dsn(msg: Message, temporary: dict[str, str], permanent: dict[str, str]) -> None:
    """The DSN's own words per recipient put to the failed addresses: its status code,
    and whether a failure was only temporary (RFC 3464 2.3.4: a 4.x.x status is a
    persistent transient failure), which moves it from `permanent` to `temporary`."""
    for address, (action, status, diagnostic) in _dsn_fields(msg).items():
        detail = " ".join(x for x in (status, diagnostic) if x)[:_MAX_DETAIL]
        for group in (temporary, permanent):
            for known in list(group):
                if known.casefold() == address.casefold():
                    group[known] = detail
        if action.startswith("fail") and status.startswith("4."):
            for known in [a for a in permanent if a.casefold() == address.casefold()]:
                temporary[known] = permanent.pop(known)


def _header_text(raw: bytes) -> str | None:
    """A header's value as text: unfolded (RFC 5322 2.2.3), encoded words decoded."""
    text = re.sub(r"\r?\n(?=[ \t])", "", raw.decode("utf-8", "replace")).strip()
    try:
        text = str(make_header(decode_header(text)))
    except (ValueError, LookupError):  # a malformed or unknown encoding: the text as it came
        pass
    return text or None


def _text(value: bytes | str) -> str:
    raw = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return raw.strip().strip("<>").strip()


def _dsn_fields(msg: Message) -> dict[str, tuple[str, str, str]]:
    """address -> (action, status, diagnostic) from each message/delivery-status part."""
    out: dict[str, tuple[str, str, str]] = {}
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status" or not part.is_multipart():
            continue
        payload = part.get_payload()
        if not isinstance(payload, list):
            continue
        for block in payload:
            if not isinstance(block, Message):
                continue
            recipient = block.get("original-recipient") or block.get("final-recipient") or ""
            address = _text(str(recipient).partition(";")[2] or str(recipient))
            if "@" not in address:
                continue
            status = _STATUS_RE.match(str(block.get("status", "")).strip())
            diagnostic = " ".join(str(block.get("diagnostic-code", "")).partition(";")[2].split())
            out[address] = (str(block.get("action", "")).strip().lower(), status.group(0) if status else "", diagnostic)
    return out


def _returned_text(msg: Message, data: bytes) -> bytes:
    """Every place the original headers may be: the raw mail, decoded text parts, and
    the headers of attached messages."""
    pieces = [data]
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                pieces.append(b"".join(f"{k}: {v}\n".encode("utf-8", "replace") for k, v in inner[0].items()))
        elif not part.is_multipart() and part.get_content_maintype() == "text":
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                pieces.append(body)
    return b"\n".join(pieces)


def _date(value: Any) -> str | None:
    if not value:
        return None
    try:
        return format_time(parsedate_to_datetime(str(value)))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


__all__ = ["MAX_DEPTH", "MAX_MAIL_BYTES", "MAX_PARTS", "Bounce", "Unreadable", "parse_mail", "read_bounce"]
