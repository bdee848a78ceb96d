"""Per-recipient messages as bytes, fast: one template per issue, filled in per recipient.

`message.build_message` is the reference for what a message holds. Here the same
message comes out as SMTP-ready bytes (CRLF line ends) at a small fraction of its cost;
the SMTP backend sends these bytes and the outbox backend writes them to files.
"""

from __future__ import annotations

import binascii
import email
import email.policy
import re
import secrets
import threading
from dataclasses import dataclass, replace
from email.message import EmailMessage
from typing import TYPE_CHECKING

from highlightsmail.mail.message import (
    Recipient,
    RecipientLinks,
    build_message,
    format_recipient,
    mail_date,
    make_message_id,
    sender_domain,
)
from highlightsmail.rendering.rendered import PREFERENCES_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER, RenderedIssue

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Settings

_MAX_LINE = 998  # RFC 5322 2.1.1: the hard limit on a line, CRLF excluded
_PROBE = Recipient(email="probe@example.invalid", name="Probe")


@dataclass(frozen=True)
class Outgoing:
    """One recipient's message, and what the SMTP server must support to take it."""

    data: bytes
    smtputf8: bool = False  # a non-ASCII address (RFC 6531)
    eight_bit: bool = False  # an 8bit body (RFC 6152: BODY=8BITMIME)


class MessageTemplate:
    """Every recipient's message as SMTP-ready bytes (CRLF), from one template per issue.

    `build_message` is the reference, but the email package encodes each body in pure
    Python (quoted-printable, since the HTML has long lines): 5 to 10 ms per message.
    Here the first recipient's message from `build_message` fixes the headers and their
    order; headers that are the same for everyone are folded once, and per recipient
    only To, Date, Message-ID and the List-* headers are made. Each body is prepared
    once, in pieces around the unsubscribe placeholder, and joined per recipient with
    their URL, so nothing can split the link:
      - as it is (7bit, or 8bit where the server takes 8BITMIME) when every line stays
        within RFC 5322's 998 octets: fewer, longer lines, which is what makes a
        receiving server quick;
      - otherwise quoted-printable (C `binascii`), the URL between soft line breaks.
    The first recipient's result is checked against `build_message`'s: any difference,
    or a message of another shape, and every message is built fully instead.

    `links` is any recipient's links: only the names of their headers are used. `date`
    is every message's Date (a dispatch's: when its run kept it, so the message can be told
    again from the ledger); None: the time each is built.
    """

    _PER_RECIPIENT = ("to", "date", "message-id")

    def __init__(
        self,
        rendered: RenderedIssue,
        settings: Settings,
        links: RecipientLinks,
        *,
        test: bool = False,
        date: float | None = None,
    ) -> None:
        self.rendered = rendered
        self.settings = settings
        self.test = test
        self.date = date
        self._domain = sender_domain(settings)
        self._link_names = {name.lower() for name in links.headers}
        # The layout comes from a plain ASCII stand-in, so no odd first address can spoil it.
        reference = build_message(rendered, settings, _PROBE, links, test=test)
        self.fast = self._compile(reference) and all(self._agrees(reference, links, flag) for flag in (True, False))

    def message_id(self, token: str | None) -> str:
        """The Message-ID of the message with this token (message.make_message_id)."""
        return make_message_id(token, self._domain)

    def _compile(self, msg: EmailMessage) -> bool:
        parts = list(msg.iter_parts()) if msg.get_content_type() == "multipart/alternative" else []
        if [p.get_content_type() for p in parts] != ["text/plain", "text/html"]:
            return False  # not the shape this fast path knows
        policy = email.policy.SMTP
        head: list[bytes | str] = []
        try:
            for name, value in msg.items():
                lname = name.lower()
                if lname in self._PER_RECIPIENT:
                    head.append(lname)
                elif lname in self._link_names:
                    if "links" not in head:
                        head.append("links")
                elif lname in ("content-type", "content-transfer-encoding"):
                    continue  # the multipart header below carries our own boundary
                else:
                    head.append(policy.fold_binary(name, value))
            part_heads = []
            for part in parts:
                lines = [policy.fold_binary(n, v) for n, v in part.items() if n.lower() != "content-transfer-encoding"]
                part_heads.append(b"".join(lines))
            # The same substitution as RenderedIssue.personalize, applied to the placeholder
            # alone: gives what each part shows in its place (HTML-escaped or not).
            self._bare = replace(self.rendered, html=_BOTH, text=_BOTH)
        except (UnicodeError, ValueError, TypeError):
            return False
        # A boundary no body line can hold: "=_" never occurs in quoted-printable text
        # ("=" is always followed by hex or a line break), and 96 random bits elsewhere.
        boundary = ("=_hl_" + secrets.token_hex(12)).encode("ascii")
        self._text = _SplitBody(self.rendered.text, b"--" + boundary, part_heads[0])
        self._html = _SplitBody(self.rendered.html, b"\r\n--" + boundary, part_heads[1])
        self._head = head
        self._mime = b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n'
        self._end = b"\r\n--" + boundary + b"--\r\n"
        return True

    def _agrees(self, reference: EmailMessage, links: RecipientLinks, eight_bit: bool) -> bool:
        """Whether the fast path gives the stand-in the same message as build_message."""
        ours = email.message_from_bytes(
            self._render_fast(_PROBE, links, eight_bit, None).data, policy=email.policy.default
        )
        theirs = email.message_from_bytes(reference.as_bytes(policy=email.policy.SMTP), policy=email.policy.default)
        if _headers(ours) != _headers(theirs):
            return False
        mine, others = list(ours.iter_parts()), list(theirs.iter_parts())
        # Line ends compare alike: base64 keeps LF inside, quoted-printable gives CRLF.
        return len(mine) == len(others) and all(
            a.get_content_type() == b.get_content_type()
            and a.get_content().replace("\r\n", "\n") == b.get_content().replace("\r\n", "\n")
            for a, b in zip(mine, others, strict=False)
        )

    def render(
        self, recipient: Recipient, links: RecipientLinks, *, eight_bit: bool = True, message_id: str | None = None
    ) -> Outgoing:
        """This recipient's message; `eight_bit` says whether the receiver takes 8bit
        bodies (8BITMIME; a file does)."""
        if not self.fast:
            return full_message(
                self.rendered,
                self.settings,
                recipient,
                links,
                test=self.test,
                eight_bit=eight_bit,
                message_id=message_id,
                date=self.date,
            )
        return self._render_fast(recipient, links, eight_bit, message_id)

    def _render_fast(
        self, recipient: Recipient, links: RecipientLinks, eight_bit: bool, message_id: str | None
    ) -> Outgoing:
        html_urls, text_urls = self._bare.personalize(links.unsubscribe_url, links.preferences_url)
        utf8 = False
        out: list[bytes] = []
        for item in self._head:
            if isinstance(item, bytes):
                out.append(item)
            elif item == "to":
                line, wide = _header("To", format_recipient(recipient))
                out.append(line)
                utf8 |= wide
            elif item == "date":
                out.append(_header("Date", mail_date(self.date))[0])
            elif item == "message-id":
                out.append(_header("Message-ID", message_id or self.message_id(None))[0])
            else:  # "links": List-Unsubscribe, List-Unsubscribe-Post, List-Id
                for name, value in links.headers.items():
                    out.append(_header(name, value)[0])
        out.append(self._mime)
        text, text_8bit = self._text.fill(text_urls.split(_SEPARATOR), eight_bit)
        html, html_8bit = self._html.fill(html_urls.split(_SEPARATOR), eight_bit)
        out += [text, html, self._end]
        return Outgoing(b"".join(out), smtputf8=utf8, eight_bit=text_8bit or html_8bit)


def _headers(msg: EmailMessage) -> list[tuple[str, str]]:
    """Headers that must be alike, their values unfolded (the email package folds long
    ones where this path keeps one line, as RFC 5322 allows up to 998 characters)."""
    skip = ("date", "message-id", "content-type", "content-transfer-encoding")
    return [(k, " ".join(str(v).split())) for k, v in msg.items() if k.lower() not in skip]


#: Both placeholders, as `_bare` personalizes them: what each becomes, in a part, split
#: apart again by a separator no URL holds.
_SEPARATOR = "\x00"
_BOTH = UNSUBSCRIBE_PLACEHOLDER + _SEPARATOR + PREFERENCES_PLACEHOLDER
_HOLDERS = re.compile("(" + re.escape(UNSUBSCRIBE_PLACEHOLDER) + "|" + re.escape(PREFERENCES_PLACEHOLDER) + ")")
_HOLDER_BYTES = re.compile(_HOLDERS.pattern.encode("ascii"))


class _SplitBody:
    """One part (boundary line, headers, body), prepared once in pieces around the
    placeholders; a recipient's copy is the pieces joined by their URLs (each gap the
    unsubscribe URL, 0, or the preference page, 1)."""

    def __init__(self, body: str, delimiter: bytes, headers: bytes) -> None:
        split = _HOLDERS.split(body)
        pieces = split[0::2]
        self._gaps = [0 if holder == UNSUBSCRIBE_PLACEHOLDER else 1 for holder in split[1::2]]
        start = delimiter + b"\r\n" + headers + b"Content-Transfer-Encoding: "
        self._qp_start = start + b"quoted-printable\r\n\r\n"
        self._qp = [_qp(p, last=i == len(pieces) - 1) for i, p in enumerate(pieces)]
        self._ascii = body.isascii()
        self._7bit_start = start + b"7bit\r\n\r\n"
        self._8bit_start = start + b"8bit\r\n\r\n"
        self._raw = [_crlf(p) for p in pieces]
        if not self._raw[-1].endswith(b"\r\n"):
            self._raw[-1] += b"\r\n"
        # As it is only if no line can outgrow 998 octets once the URLs are in (a line's
        # length without its placeholders, and how many it holds), and no NUL (RFC 6152).
        lines = [
            (len(_HOLDER_BYTES.sub(b"", line)), len(_HOLDER_BYTES.findall(line))) for line in _crlf(body).split(b"\r\n")
        ]
        self._raw_ok = "\x00" not in body and all(n or size <= _MAX_LINE for size, n in lines)
        self._holders = [(size, n) for size, n in lines if n]

    def _join(self, parts: list[bytes], inserts: list[bytes]) -> bytes:
        out = [parts[0]]
        for gap, part in zip(self._gaps, parts[1:], strict=True):
            out += (inserts[gap], part)
        return b"".join(out)

    def fill(self, inserts: list[str], eight_bit: bool) -> tuple[bytes, bool]:
        """(the part's bytes, whether they are 8bit), with `inserts` (the unsubscribe URL,
        the preference page) where their placeholders were."""
        datas = [insert.encode("utf-8") for insert in inserts]
        plain = self._ascii and all(data.isascii() for data in datas)
        longest = max(map(len, datas))
        if (
            self._raw_ok
            and (plain or eight_bit)
            and not any(b"\r" in data or b"\n" in data for data in datas)
            and all(size + n * longest <= _MAX_LINE for size, n in self._holders)
        ):
            return (self._7bit_start if plain else self._8bit_start) + self._join(self._raw, datas), not plain
        if len(self._qp) == 1:
            return self._qp_start + self._qp[0], False
        return self._qp_start + self._join(self._qp, [_qp(insert, last=False) for insert in inserts]), False


def _lf(text: str) -> bytes:
    """UTF-8 with every line break (CRLF, CR or LF, as the email package counts them) as LF."""
    data = text.encode("utf-8")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data


def _crlf(text: str) -> bytes:
    return _lf(text).replace(b"\n", b"\r\n")


def _header(name: str, value: str) -> tuple[bytes, bool]:
    """One header line; short ASCII values as they are, anything else folded and
    encoded by the email package (SMTPUTF8 for a non-ASCII address)."""
    if value.isascii() and "\r" not in value and "\n" not in value and len(name) + len(value) + 2 <= _MAX_LINE:
        return f"{name}: {value}\r\n".encode("ascii"), False
    wide = not value.isascii()
    policy = email.policy.SMTPUTF8 if wide else email.policy.SMTP
    return policy.header_factory(name, value).fold(policy=policy).encode("utf-8"), wide


def _qp(text: str, *, last: bool = True) -> bytes:
    """Quoted-printable with CRLF line breaks. The `last` piece of a body ends with a
    line break (as the email package's own encoding does); any other piece ends with
    a soft line break, so the next piece continues the same decoded line."""
    data = _lf(text)
    if last and not data.endswith(b"\n"):
        data += b"\n"
    out = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).replace(b"\n", b"\r\n")
    if last:
        return out
    # Room for the "=" of the soft break: RFC 2045 caps encoded lines at 76 characters.
    start = out.rfind(b"\n") + 1
    if len(out) - start > 75:
        cut = start + 75
        if out[cut - 1 : cut] == b"=":
            cut -= 1  # never inside an =XX escape
        elif out[cut - 2 : cut - 1] == b"=":
            cut -= 2
        out = out[:cut] + b"=\r\n" + out[cut:]
    return out + b"=\r\n"


def full_message(
    rendered: RenderedIssue,
    settings: Settings,
    recipient: Recipient,
    links: RecipientLinks,
    *,
    test: bool,
    eight_bit: bool,
    message_id: str | None,
    date: float | None = None,
) -> Outgoing:
    """The slow, general path: the email package does everything."""
    msg = build_message(rendered, settings, recipient, links, test=test, message_id=message_id, date=date)
    policy = email.policy.SMTP if eight_bit else email.policy.SMTP.clone(cte_type="7bit")
    try:
        data = msg.as_bytes(policy=policy)
        return Outgoing(data, smtputf8=False, eight_bit=not data.isascii())
    except UnicodeError:
        return Outgoing(msg.as_bytes(policy=email.policy.SMTPUTF8), smtputf8=True, eight_bit=True)


class TemplateCache:
    """One MessageTemplate per (rendered issue, settings, test flag, date): a dispatch reuses
    it for every batch instead of building the reference message again."""

    def __init__(self) -> None:
        self._template: MessageTemplate | None = None
        self._lock = threading.Lock()

    def get(
        self,
        rendered: RenderedIssue,
        settings: Settings,
        links: RecipientLinks,
        *,
        test: bool = False,
        date: float | None = None,
    ) -> MessageTemplate:
        with self._lock:
            template = self._template
            known = (template.rendered, template.settings, template.test, template.date) if template else None
            if template is None or known != (rendered, settings, test, date):
                template = self._template = MessageTemplate(rendered, settings, links, test=test, date=date)
            return template


__all__ = ["MessageTemplate", "Outgoing", "TemplateCache", "full_message"]
