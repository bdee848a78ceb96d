"""Bounce mail: delivery status notifications read from an mbox file, a Maildir, or an
IMAP folder over TLS, for mail sent over SMTP.

flufl.bounce (GNU Mailman's bounce detectors) finds the failed addresses in RFC 3464
DSNs and in the common non-standard shapes (qmail, Exim, Exchange, ...); an auto-reply
that is not a bounce yields none and is ignored. Where the DSN gives a status code, a
failure with a 4.x.x status (the server gave up on a temporary error) counts as
temporary, like a `delayed` report. Permanent failures make the address `bounced`;
temporary ones are soft bounces (see events.py).

Proof that a bounce is about mail we sent. The bounce mailbox is a public address, so
anyone can write a DSN to it. With `delivery.bounces.accept: matched` (the default) a
failure changes a subscriber only when the mail holds one of these, and it names that
subscriber (and the issue was sent to them, as the ledger says):
- the Message-ID of their message: `<TOKEN@domain>`, where TOKEN is the message token
  of tokens.py (the dispatch's tag, the subscriber id, and a MAC over the issue, the tag
  and the id). Nothing per recipient is stored at send time: the tag finds the
  dispatch, the MAC proves the message, the ledger that they were a recipient;
- their signed unsubscribe link (`List-Unsubscribe`), in the returned headers;
- the VERP return address the message went out with (`bounces+TOKEN@domain`, with
  `delivery.bounces.verp`), which the bounce is addressed to.
The failed address must be that subscriber's, or (a single failure of an address that
is no subscriber) one their mail was forwarded to. A Message-ID or return address of
another issue than the one the returned headers name proves nothing. Everything else is
`unmatched`: counted, listed on request, and changes nothing. `accept: any` keeps the
older rule for a mailbox only the mail server writes to: the failed address is looked up
on the list, and a bounce naming no issue is put on the last issue sent to them.

Caps, so that no one mail can stop a scan: a mail may take at most 10 MB
(MAX_MAIL_BYTES, and no more of it is ever held in memory), parts nested at most 30 deep
and 1,000 parts in all; a mail beyond them, or that cannot be parsed, is recorded as
read with the outcome `unreadable` and named in one line. In a Maildir, an entry that
is not a file (a broken link, a link loop, a FIFO, a device) is skipped with one line,
without being opened for reading where that could block. An IMAP server that announces
more than a mail may take in one piece ends the scan with one line.

Each mail is remembered by its Message-ID (or a hash of the whole mail) in the database,
so scanning the same mailbox again changes nothing and, over IMAP, downloads only new
mail. The mailbox itself is only read (IMAP: the folder is opened read-only, and mail is
fetched with BODY.PEEK so nothing is marked as seen).
"""

from __future__ import annotations

import email
import email.policy
import errno
import hashlib
import logging
import os
import re
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from highlightsmail.errors import HighlightsError, InvalidToken, display_path

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace
    from highlightsmail.store import DeliveryEventRow, Store
    from highlightsmail.tokens import Signer

ENV_IMAP_PASSWORD = "HIGHLIGHTS_IMAP_PASSWORD"
ENV_IMAP_CAFILE = "HIGHLIGHTS_IMAP_CAFILE"
IMAPS_PORT = 993
#: The most of one mail that is read; a larger one is `unreadable`.
MAX_MAIL_BYTES = 10 * 1024 * 1024
#: How deep parts may be nested, and how many there may be, in a mail that is read.
MAX_DEPTH = 30
MAX_PARTS = 1000
_FETCH_CHUNK = 50  # messages per IMAP FETCH of whole mail...
_FETCH_BYTES = 32 * 1024 * 1024  # ...and at most this much of them at once
_MAX_DETAIL = 500
_MAX_SHOWN = 200

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


# ---------------------------------------------------------------------------- reading one mail


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
    from flufl.bounce import all_failures

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
    from highlightsmail.tokens import find_message_tokens

    temporary = {_text(a): "" for a in temporary_raw if _text(a)}
    permanent = {_text(a): "" for a in permanent_raw if _text(a)}
    if not temporary and not permanent:
        return None
    # The DSN's own words per recipient: its status code, and whether a failure was
    # only temporary (RFC 3464 2.3.4: a 4.x.x status is a persistent transient failure).
    for address, (action, status, diagnostic) in _dsn_fields(msg).items():
        detail = " ".join(x for x in (status, diagnostic) if x)[:_MAX_DETAIL]
        for group in (temporary, permanent):
            for known in list(group):
                if known.casefold() == address.casefold():
                    group[known] = detail
        if action.startswith("fail") and status.startswith("4."):
            for known in [a for a in permanent if a.casefold() == address.casefold()]:
                temporary[known] = permanent.pop(known)
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


def _header_text(raw: bytes) -> str | None:
    """A header's value as text: unfolded (RFC 5322 2.2.3), encoded words decoded."""
    from email.header import decode_header, make_header

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
    from highlightsmail.store import format_time

    if not value:
        return None
    try:
        return format_time(parsedate_to_datetime(str(value)))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def mail_key(data: bytes) -> str:
    """How a scanned mail is remembered: its Message-ID, else a hash of the whole mail."""
    headers = email.message_from_bytes(data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0], policy=email.policy.compat32)
    return _key_from_message_id(headers.get("Message-ID")) or "sha256:" + hashlib.sha256(data).hexdigest()


def _key_from_message_id(value: Any) -> str | None:
    text = " ".join(str(value or "").split())
    return f"mid:{text}" if text and len(text) <= 900 else None


def _shown(text: str) -> str:
    """Text from a mail, fit for one line on a terminal: no control characters."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:_MAX_SHOWN])


# ---------------------------------------------------------------------------- mailboxes


@dataclass(frozen=True)
class ImapAddress:
    """imaps://user@host[:port]/FOLDER."""

    user: str
    host: str
    port: int
    folder: str

    def __str__(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == IMAPS_PORT else f":{self.port}"
        return f"imaps://{quote(self.user, safe='')}@{shown}{port}/{self.folder}"


def parse_mailbox(spec: str, base: Path) -> ImapAddress | Path:
    """A mailbox setting or argument: an imaps:// URL, or a path (relative to `base`)."""
    text = spec.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", text, re.I):
        try:
            parts = urlsplit(text)
            port = parts.port or IMAPS_PORT
        except ValueError as exc:
            raise HighlightsError(f"{spec}: not a mailbox address ({exc})") from None
        if parts.scheme.lower() != "imaps":
            raise HighlightsError(f"{spec}: only imaps:// (IMAP over TLS), an mbox file or a Maildir can be read")
        user = unquote(parts.username or "")
        if not user or not parts.hostname:
            raise HighlightsError(f"{spec}: write it as imaps://user@host[:port]/FOLDER")
        if parts.password is not None:
            shown = text.replace(f":{parts.password}@", ":***@", 1)
            raise HighlightsError(f"{shown}: the password comes only from {ENV_IMAP_PASSWORD}, not the address")
        folder = unquote(parts.path.lstrip("/")) or "INBOX"
        return ImapAddress(user=user, host=parts.hostname, port=port, folder=folder)
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


@dataclass(frozen=True)
class Skipped:
    """A mailbox entry that is no mail to read (a FIFO, a broken link, ...): named in one
    line and left alone, and not remembered, so it is named again until it is gone."""

    why: str


class _Source:
    """A mailbox read as (handle, key) pairs, then the bytes of the mail wanted (at most
    MAX_MAIL_BYTES + 1 of each: enough to tell that one is too large)."""

    name: str

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def keys(self) -> Iterator[tuple[Any, str | None]]:
        """Each mail's handle and key (None when the key needs the whole mail)."""
        raise NotImplementedError

    def fetch(self, handles: list[Any]) -> Iterator[tuple[Any, bytes | Skipped]]:
        raise NotImplementedError

    def label(self, handle: Any) -> str:
        """How a line names one mail of the mailbox."""
        raise NotImplementedError


class _MboxSource(_Source):
    """An mbox file, through the standard library's `mailbox`."""

    def __init__(self, path: Path) -> None:
        import mailbox

        self.name = display_path(path)
        self._box = mailbox.mbox(str(path), factory=None, create=False)

    def keys(self) -> Iterator[tuple[Any, str | None]]:
        # Read here only for the key; fetch reads the wanted mail again, so a large
        # mailbox is never held in memory whole.
        for handle in sorted(self._box.keys()):
            yield handle, mail_key(self._read(handle))

    def fetch(self, handles: list[Any]) -> Iterator[tuple[Any, bytes | Skipped]]:
        for handle in handles:
            yield handle, self._read(handle)

    def label(self, handle: Any) -> str:
        return f"mail {handle + 1}"

    def _read(self, handle: Any) -> bytes:
        try:
            with self._box.get_file(handle) as fh:
                return fh.read(MAX_MAIL_BYTES + 1)
        except (OSError, KeyError) as exc:
            raise HighlightsError(f"{self.name}: cannot read the mailbox: {exc}") from None

    def close(self) -> None:
        self._box.close()


class _MaildirSource(_Source):
    """A Maildir: each file in new/ and cur/ is one mail. Read here rather than through
    `mailbox.Maildir`, which opens whatever it finds there: a FIFO would block it for
    good, and /dev/zero would never end."""

    def __init__(self, path: Path) -> None:
        self.name = display_path(path)
        self._path = path

    def keys(self) -> Iterator[tuple[Any, str | None]]:
        handles = []
        for sub in ("new", "cur"):
            try:
                names = os.listdir(self._path / sub)
            except OSError as exc:
                raise HighlightsError(f"{self.name}/{sub}: cannot read the folder: {exc.strerror or exc}") from None
            handles += [f"{sub}/{name}" for name in names if not name.startswith(".")]
        for handle in sorted(handles, key=lambda h: (h.partition("/")[2], h)):
            data = self._read(handle)
            yield handle, None if isinstance(data, Skipped) else mail_key(data)

    def fetch(self, handles: list[Any]) -> Iterator[tuple[Any, bytes | Skipped]]:
        for handle in handles:
            yield handle, self._read(handle)

    def label(self, handle: Any) -> str:
        return str(handle)

    def _read(self, handle: str) -> bytes | Skipped:
        path = self._path / handle
        try:
            kind = _not_a_file(os.stat(path).st_mode)  # follows a link: a link to a mail is read
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return Skipped("a link loop")
            if exc.errno == errno.ENOENT:
                return Skipped("a broken link" if os.path.islink(path) else "gone while the scan ran")
            return Skipped(f"cannot be read: {exc.strerror or exc}")
        if kind:
            return Skipped(f"{kind}, not a mail file")
        try:
            # O_NONBLOCK: should it have become a FIFO since the check, opening returns at once.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as exc:
            return Skipped(f"cannot be read: {exc.strerror or exc}")
        with os.fdopen(fd, "rb") as fh:
            kind = _not_a_file(os.fstat(fd).st_mode)
            if kind:
                return Skipped(f"{kind}, not a mail file")
            try:
                return fh.read(MAX_MAIL_BYTES + 1)
            except OSError as exc:
                return Skipped(f"cannot be read: {exc.strerror or exc}")


def _not_a_file(mode: int) -> str | None:
    """What a file system entry is when it is not a regular file; None when it is one."""
    if stat.S_ISREG(mode):
        return None
    for test, what in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return what
    return "not a regular file"


class _ImapSource(_Source):
    """An IMAP folder over TLS, read-only, with imapclient."""

    def __init__(self, address: ImapAddress, timeout: float = 60.0) -> None:
        from imapclient import IMAPClient
        from imapclient.exceptions import IMAPClientError, LoginError

        self.name = str(address)
        self._sizes: dict[int, int] = {}
        password = os.environ.get(ENV_IMAP_PASSWORD)
        if not password:
            raise HighlightsError(
                f"set {ENV_IMAP_PASSWORD}: the password of {self.name} comes only from the environment"
            )
        try:
            self._client = IMAPClient(
                address.host, port=address.port, ssl=True, ssl_context=_ssl_context(), timeout=timeout
            )
        except ssl.SSLCertVerificationError as exc:
            raise HighlightsError(
                f"{self.name}: the server's certificate is not trusted ({exc.verify_message}); "
                f"for a private CA set {ENV_IMAP_CAFILE} to its PEM file"
            ) from None
        except (OSError, IMAPClientError) as exc:
            raise HighlightsError(f"{self.name}: cannot connect: {exc}") from None
        _cap_literals(self._client)
        try:
            if (address.user + password).isascii():
                self._client.login(address.user, password)
            else:
                # LOGIN goes out as ASCII; AUTHENTICATE PLAIN carries UTF-8 (RFC 4616).
                self._client.plain_login(address.user, password)
            self._client.select_folder(address.folder, readonly=True)
        except LoginError:
            self.close()
            raise HighlightsError(f"{self.name}: the server refused the login of {address.user!r}") from None
        except (OSError, IMAPClientError) as exc:
            self.close()
            raise HighlightsError(f"{self.name}: {exc}") from None

    def keys(self) -> Iterator[tuple[Any, str | None]]:
        from imapclient.exceptions import IMAPClientError

        try:
            uids = sorted(self._client.search("ALL"))
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                found = self._client.fetch(chunk, ["RFC822.SIZE", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
                for uid in chunk:
                    item = found.get(uid, {})
                    size = item.get(b"RFC822.SIZE")
                    self._sizes[uid] = size if isinstance(size, int) else MAX_MAIL_BYTES
                    raw = next((v for k, v in item.items() if k.startswith(b"BODY[HEADER")), b"") or b""
                    headers = email.message_from_bytes(raw, policy=email.policy.compat32)
                    yield uid, _key_from_message_id(headers.get("Message-ID"))
        except (OSError, IMAPClientError) as exc:
            raise HighlightsError(f"{self.name}: {exc}") from None

    def fetch(self, handles: list[Any]) -> Iterator[tuple[Any, bytes | Skipped]]:
        from imapclient.exceptions import IMAPClientError

        # Only the first MAX_MAIL_BYTES + 1 octets of each (a partial FETCH, RFC 3501 6.4.5).
        item = f"BODY.PEEK[]<0.{MAX_MAIL_BYTES + 1}>"
        try:
            for chunk in self._chunks(handles):
                found = self._client.fetch(chunk, [item])
                for uid in chunk:
                    parts = found.get(uid, {})
                    yield uid, next((v for k, v in parts.items() if k.startswith(b"BODY[]")), b"") or b""
        except (OSError, IMAPClientError) as exc:
            raise HighlightsError(f"{self.name}: {exc}") from None

    def _chunks(self, handles: list[Any]) -> Iterator[list[Any]]:
        """Handles in chunks of at most _FETCH_CHUNK mails and (by their sizes) _FETCH_BYTES."""
        chunk: list[Any] = []
        total = 0
        for uid in handles:
            size = min(self._sizes.get(uid, MAX_MAIL_BYTES), MAX_MAIL_BYTES + 1)
            if chunk and (len(chunk) >= _FETCH_CHUNK or total + size > _FETCH_BYTES):
                yield chunk
                chunk, total = [], 0
            chunk.append(uid)
            total += size
        if chunk:
            yield chunk

    def label(self, handle: Any) -> str:
        return f"UID {handle}"

    def close(self) -> None:
        try:
            self._client.logout()
        except Exception:  # closing a broken connection is not worth an error
            try:
                self._client.shutdown()
            except Exception:
                pass


def _cap_literals(client: Any) -> None:
    """Refuse a literal (`{N}` and N octets) larger than a mail may be before reading it:
    imaplib would allocate whatever N a server announces (a MemoryError, or all of the
    machine's memory). The connection cannot go on after that, so the scan ends with
    one line. (imapclient has no setting for it; its imaplib connection is `_imap`.)"""
    import imaplib

    conn = client._imap
    read = conn.read

    def capped(size: int) -> bytes:
        if size > MAX_MAIL_BYTES + 1:
            raise imaplib.IMAP4.abort(
                f"the server announced {size:,} octets in one piece, more than a mail may take "
                f"({MAX_MAIL_BYTES // (1024 * 1024)} MB); stopped reading"
            )
        return read(size)

    conn.read = capped


def _ssl_context() -> ssl.SSLContext:
    """The system's trust store, plus the PEM file named by HIGHLIGHTS_IMAP_CAFILE."""
    from highlightsmail.tls import client_context

    try:
        return client_context(ENV_IMAP_CAFILE)
    except ValueError as err:
        raise HighlightsError(str(err)) from None


def open_mailbox(where: ImapAddress | Path) -> _Source:
    if isinstance(where, ImapAddress):
        return _ImapSource(where)
    name = display_path(where)
    if where.is_dir():
        if not all((where / sub).is_dir() for sub in ("cur", "new")):
            raise HighlightsError(f"{name}: a folder, but not a Maildir (no cur/ and new/ in it)")
        return _MaildirSource(where)
    if where.is_file():
        return _MboxSource(where)
    if os.path.lexists(where):
        raise HighlightsError(f"{name}: neither an mbox file nor a Maildir (a FIFO, a device, or a broken link?)")
    raise HighlightsError(f"{name}: no such mbox file or Maildir")


# ---------------------------------------------------------------------------- the scan


@dataclass
class ScanResult:
    """What a scan found and did. The lists hold one line each: the mail (or mailbox
    entry) and why."""

    mailbox: str
    mails: int = 0
    already_scanned: int = 0
    not_bounces: int = 0
    bounces: int = 0
    permanent: int = 0  # failed addresses matched to a subscriber
    temporary: int = 0
    status_changes: int = 0
    test_sends: int = 0  # bounces of test sends: nobody's status changes
    unmatched: list[str] = field(default_factory=list)  # failures that proved nothing: changed nothing
    unreadable: list[str] = field(default_factory=list)  # mail that could not be parsed: recorded, skipped
    skipped: list[str] = field(default_factory=list)  # mailbox entries that are no mail


@dataclass(frozen=True)
class _Proof:
    """What a bounce proves we sent: a message to this subscriber (of this issue; None
    for the unsubscribe link, which names no issue)."""

    subscriber_id: int
    issue: str | None


def scan(ws: Workspace, mailbox: str | None = None, *, store: Store, signer: Signer) -> ScanResult:
    """Read every bounce in the mailbox (the argument, else `delivery.bounces.mailbox`)
    not read before, and record what it says."""
    if mailbox:
        where = parse_mailbox(mailbox, Path.cwd())
    elif ws.settings.delivery.bounces.mailbox:
        where = parse_mailbox(ws.settings.delivery.bounces.mailbox, ws.root)
    else:
        raise HighlightsError(
            "name the mailbox to scan (highlights bounces scan MAILBOX) or set delivery.bounces.mailbox"
        )
    settings = ws.settings.delivery.bounces
    with open_mailbox(where) as source:
        result = ScanResult(mailbox=source.name)
        listed = list(source.keys())
        seen = store.scanned_mail(k for _h, k in listed if k is not None)
        wanted = [h for h, k in listed if k is None or k not in seen]
        result.mails = len(listed)
        result.already_scanned = result.mails - len(wanted)
        keys = dict(listed)
        done: set[str] = set()  # a mailbox may hold the same mail twice
        for handle, data in source.fetch(wanted):
            label = source.label(handle)
            if isinstance(data, Skipped):
                result.mails -= 1
                result.skipped.append(f"{_shown(label)}: {data.why}")
                continue
            key = keys[handle] or mail_key(data)
            if key in done or (keys[handle] is None and store.scanned_mail([key])):
                result.already_scanned += 1
                continue
            done.add(key)
            try:
                bounce = read_bounce(data)
            except Unreadable as err:
                result.unreadable.append(f"{_shown(label)}: {err}")
                outcome = "unreadable"
            else:
                outcome = _record(bounce, label, key, store, signer, settings.accept, settings.soft_limit, result)
            store.mark_scanned(key, outcome)
    return result


def _record(
    bounce: Bounce | None,
    label: str,
    key: str,
    store: Store,
    signer: Signer,
    accept: str,
    soft_limit: int,
    result: ScanResult,
) -> str:
    """Record one bounce; returns the mail's outcome."""
    from highlightsmail.feedback.events import record

    if bounce is None:
        result.not_bounces += 1
        return "not a bounce"
    result.bounces += 1
    named: int | None = None  # the subscriber its unsubscribe link names
    if bounce.token:
        try:
            purpose, named = signer.read(bounce.token)
        except InvalidToken:
            named = None
        else:
            if purpose == "test":
                result.test_sends += 1
                return "a test send"
    proofs = _proofs(bounce, named, store, signer)
    rows: list[DeliveryEventRow] = []
    failures = [(a, d, True) for a, d in bounce.permanent.items()] + [
        (a, d, False) for a, d in bounce.temporary.items()
    ]
    for address, detail, permanent in failures:
        found: tuple[int, str | None] | str = _match(store, address, len(failures), proofs, bounce.issue)
        if isinstance(found, str) and accept == "any":
            found = _by_address(store, address, len(failures), named, bounce.issue, permanent)
        if isinstance(found, str):
            result.unmatched.append(f"{_shown(label)}: {_shown(address)}: {found}")
            continue
        sid, issue = found
        rows.append(_row(store, key, sid, issue, bounce, detail, permanent))
        if permanent:
            result.permanent += 1
        else:
            result.temporary += 1
    if rows:
        done = record(store, rows, source="bounce-mail", soft_limit=soft_limit, check_address=False)
        result.status_changes += done.changed
    return "bounce" if rows else "unmatched"


def _proofs(bounce: Bounce, named: int | None, store: Store, signer: Signer) -> list[_Proof]:
    """The messages of ours a bounce proves it is about: each message token whose MAC
    holds for the issue its tag names, and the signed unsubscribe link."""
    from highlightsmail.tokens import read_message_token

    proofs = []
    for token in bounce.messages:
        parsed = read_message_token(token)
        if parsed is None:
            continue
        tag, sid = parsed
        proofs += [_Proof(sid, issue) for issue in store.issues_tagged(tag) if signer.is_message(token, issue)]
    if named is not None:
        proofs.append(_Proof(named, None))
    return proofs


def _match(store: Store, address: str, failures: int, proofs: list[_Proof], named: str | None) -> tuple[int, str] | str:
    """(subscriber id, issue) a failed address is proven to be about, or why it is not."""
    from highlightsmail.feedback.events import same_address

    if not proofs:
        return "no Message-ID, signed link or return address of ours in it"
    sid = _subscriber(store, address)
    mine = [
        p
        for p in proofs
        if p.subscriber_id == sid
        # a row merged into another since (store migration 2) has its own id
        or (p.issue and same_address(store.sent_address(p.issue, p.subscriber_id) or "", address))
    ]
    if not mine:
        if sid is not None:
            return "what it returns was sent to another subscriber"
        if failures > 1 or len({p.subscriber_id for p in proofs}) > 1:
            return "not on the list"
        mine = proofs  # forwarded: the one failed address is not the one we sent to
    subject = mine[0].subscriber_id
    if any(p.subscriber_id != subject for p in mine):
        return "what it returns was sent to more than one subscriber"
    issues = sorted({p.issue for p in mine if p.issue})
    if len(issues) > 1:
        return f"its Message-IDs are of different issues ({', '.join(issues)})"
    if issues:
        issue = issues[0]
        if named and named != issue:
            return f"it names issue {named}, but its Message-ID or return address is of issue {issue}"
    else:
        found = named or store.latest_issue_sent(subject)
        if found is None:
            return "no issue was sent to them"
        issue = found
    if store.sent_address(issue, subject) is None:
        return f"issue {issue} was not sent to them"
    return subject, issue


def _by_address(
    store: Store, address: str, failures: int, named: int | None, issue: str | None, permanent: bool
) -> tuple[int, str | None] | str:
    """`accept: any`: the subscriber with the failed address (or, for a single failure,
    the one the returned unsubscribe link names), and the issue named if it went to
    them, else the last one that did."""
    sid = _subscriber(store, address)
    if sid is None and named is not None and failures == 1:
        sid = named  # forwarded: the failed address is not the one we sent to
    if sid is None:
        return "not on the list"
    sent = store.latest_issue_sent(sid, prefer=issue)
    if sent is None and not permanent:
        return "a temporary failure, and no issue was sent to them"
    return sid, sent


def _subscriber(store: Store, address: str) -> int | None:
    from highlightsmail.addresses import BadAddress, normalize_address

    try:
        sub = store.find(normalize_address(address))
    except BadAddress:
        return None
    return sub.id if sub else None


def _row(
    store: Store, key: str, sid: int, issue: str | None, bounce: Bounce, detail: str, permanent: bool
) -> DeliveryEventRow:
    from highlightsmail.store import DeliveryEventRow

    return DeliveryEventRow(
        key=f"mail:{key}:{sid}",
        issue=issue,
        subscriber_id=sid,
        kind="dsn-permanent" if permanent else "dsn-temporary",
        at=bounce.at or store.now(),
        detail=detail,
        status="bounced" if permanent else None,
        soft=not permanent,
    )


__all__ = [
    "ENV_IMAP_CAFILE",
    "ENV_IMAP_PASSWORD",
    "MAX_DEPTH",
    "MAX_MAIL_BYTES",
    "MAX_PARTS",
    "Bounce",
    "ImapAddress",
    "ScanResult",
    "Unreadable",
    "mail_key",
    "parse_mail",
    "parse_mailbox",
    "read_bounce",
    "scan",
]
