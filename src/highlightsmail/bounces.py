"""Bounce mail: delivery status notifications read from an mbox file, a Maildir, or an
IMAP folder over TLS, for mail sent over SMTP.

flufl.bounce (GNU Mailman's bounce detectors) finds the failed addresses in RFC 3464
DSNs and in the common non-standard shapes (qmail, Exim, Exchange, ...); an auto-reply
that is not a bounce yields none and is ignored. Where the DSN gives a status code, a
failure with a 4.x.x status (the server gave up on a temporary error) counts as
temporary, like a `delayed` report. Permanent failures make the address `bounced`;
temporary ones are soft bounces (see events.py).

Matching a bounce to an issue and a subscriber: every message carries
`X-Highlights-Issue: <slug>` and the subscriber's signed unsubscribe link in
`List-Unsubscribe`, and DSNs return the original headers, so neither needs the address.
The failed address found by the detectors is looked up first; the signed link covers a
bounce from an address the mail was forwarded to. A bounce naming no issue is put on
the last issue sent to that subscriber.

Each mail is remembered by its Message-ID (or a hash of the whole mail) in the database,
so scanning the same mailbox again changes nothing and, over IMAP, downloads only new
mail. The mailbox itself is only read (IMAP: the folder is opened read-only, and mail is
fetched with BODY.PEEK so nothing is marked as seen).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from highlightsmail.errors import HighlightsError, InvalidToken, display_path

if TYPE_CHECKING:
    from highlightsmail.store import DeliveryEventRow, Store
    from highlightsmail.tokens import Signer
    from highlightsmail.workspace import Workspace

ENV_IMAP_PASSWORD = "HIGHLIGHTS_IMAP_PASSWORD"
ENV_IMAP_CAFILE = "HIGHLIGHTS_IMAP_CAFILE"
IMAPS_PORT = 993
_FETCH_CHUNK = 50  # messages per IMAP FETCH of whole mail
_MAX_DETAIL = 500

# The returned original headers, wherever the DSN puts them (a message/rfc822 or
# text/rfc822-headers part, or a copy pasted under the text by qmail and Exim).
_ISSUE_RE = re.compile(rb"^X-Highlights-Issue:[ \t]*(?:\r?\n[ \t]+)?([0-9A-Za-z][0-9A-Za-z._-]{0,199})", re.M | re.I)
_TOKEN_RE = re.compile(
    rb"^List-Unsubscribe:[ \t]*(?:\r?\n[ \t]+)?<[^<>\s]*/u/([ut][0-9a-z]{1,13}\.[A-Za-z0-9_-]{22})>", re.M | re.I
)
_STATUS_RE = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}")


# ---------------------------------------------------------------------------- reading one mail


@dataclass(frozen=True)
class Bounce:
    """What a bounce says: failed addresses (with the reason given) and what the returned
    headers name."""

    permanent: dict[str, str]
    temporary: dict[str, str]
    issue: str | None = None
    token: str | None = None
    at: str | None = None  # the bounce's Date, in the stored format


def read_bounce(data: bytes) -> Bounce | None:
    """The bounce in a mail, or None when it is not one (an auto-reply, a stray message)."""
    from flufl.bounce import all_failures

    # flufl.bounce logs a detector's exception with its traceback before raising it;
    # a mail it cannot read is "not a bounce" here, never a traceback on the screen.
    logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    try:
        temporary_raw, permanent_raw = all_failures(msg)
    except Exception:  # a detector tripping over a malformed mail: treat it as no bounce
        return None
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
        issue=issue.group(1).decode("ascii") if issue else None,
        token=token.group(1).decode("ascii") if token else None,
        at=_date(msg.get("Date")),
    )


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


class _Source:
    """A mailbox read as (handle, key) pairs, then the bytes of the mail wanted."""

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

    def fetch(self, handles: list[Any]) -> Iterator[tuple[Any, bytes]]:
        raise NotImplementedError


class _LocalSource(_Source):
    """An mbox file or a Maildir, through the standard library's `mailbox`."""

    def __init__(self, path: Path) -> None:
        import mailbox

        self.name = display_path(path)
        self._box: mailbox.Mailbox
        if path.is_dir():
            if not all((path / sub).is_dir() for sub in ("cur", "new")):
                raise HighlightsError(f"{self.name}: a folder, but not a Maildir (no cur/ and new/ in it)")
            self._box = mailbox.Maildir(str(path), factory=None, create=False)
        elif path.is_file():
            self._box = mailbox.mbox(str(path), factory=None, create=False)
        else:
            raise HighlightsError(f"{self.name}: no such mbox file or Maildir")

    def keys(self) -> Iterator[tuple[Any, str | None]]:
        # Read here only for the key; fetch reads the wanted mail again, so a large
        # mailbox is never held in memory whole.
        for handle in sorted(self._box.keys(), key=str):
            yield handle, mail_key(self._read(handle))

    def fetch(self, handles: list[Any]) -> Iterator[tuple[Any, bytes]]:
        for handle in handles:
            yield handle, self._read(handle)

    def _read(self, handle: Any) -> bytes:
        try:
            return self._box.get_bytes(handle)
        except (OSError, KeyError) as exc:
            raise HighlightsError(f"{self.name}: cannot read the mailbox: {exc}") from None

    def close(self) -> None:
        self._box.close()


class _ImapSource(_Source):
    """An IMAP folder over TLS, read-only, with imapclient."""

    def __init__(self, address: ImapAddress, timeout: float = 60.0) -> None:
        from imapclient import IMAPClient
        from imapclient.exceptions import IMAPClientError, LoginError

        self.name = str(address)
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
                found = self._client.fetch(chunk, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
                for uid in chunk:
                    item = found.get(uid, {})
                    raw = next((v for k, v in item.items() if k.startswith(b"BODY[HEADER")), b"") or b""
                    headers = email.message_from_bytes(raw, policy=email.policy.compat32)
                    yield uid, _key_from_message_id(headers.get("Message-ID"))
        except (OSError, IMAPClientError) as exc:
            raise HighlightsError(f"{self.name}: {exc}") from None

    def fetch(self, handles: list[Any]) -> Iterator[tuple[Any, bytes]]:
        from imapclient.exceptions import IMAPClientError

        try:
            for start in range(0, len(handles), _FETCH_CHUNK):
                chunk = handles[start : start + _FETCH_CHUNK]
                found = self._client.fetch(chunk, ["BODY.PEEK[]"])
                for uid in chunk:
                    yield uid, found.get(uid, {}).get(b"BODY[]", b"") or b""
        except (OSError, IMAPClientError) as exc:
            raise HighlightsError(f"{self.name}: {exc}") from None

    def close(self) -> None:
        try:
            self._client.logout()
        except Exception:  # closing a broken connection is not worth an error
            try:
                self._client.shutdown()
            except Exception:
                pass


def _ssl_context() -> ssl.SSLContext:
    """The system's trust store, plus the PEM file named by HIGHLIGHTS_IMAP_CAFILE."""
    from highlightsmail.tls import client_context

    try:
        return client_context(ENV_IMAP_CAFILE)
    except ValueError as err:
        raise HighlightsError(str(err)) from None


def open_mailbox(where: ImapAddress | Path) -> _Source:
    return _ImapSource(where) if isinstance(where, ImapAddress) else _LocalSource(where)


# ---------------------------------------------------------------------------- the scan


@dataclass
class ScanResult:
    """What a scan found and did."""

    mailbox: str
    mails: int = 0
    already_scanned: int = 0
    not_bounces: int = 0
    bounces: int = 0
    permanent: int = 0  # failed addresses matched to a subscriber
    temporary: int = 0
    status_changes: int = 0
    test_sends: int = 0  # bounces of test sends: nobody's status changes
    unknown: list[str] = field(default_factory=list)  # failed addresses matching no subscriber


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
    soft_limit = ws.settings.delivery.bounces.soft_limit
    with open_mailbox(where) as source:
        result = ScanResult(mailbox=source.name)
        listed = list(source.keys())
        result.mails = len(listed)
        seen = store.scanned_mail(k for _h, k in listed if k is not None)
        wanted = [h for h, k in listed if k is None or k not in seen]
        result.already_scanned = result.mails - len(wanted)
        keys = dict(listed)
        done: set[str] = set()  # a mailbox may hold the same mail twice
        for handle, data in source.fetch(wanted):
            key = keys[handle] or mail_key(data)
            if key in done or (keys[handle] is None and store.scanned_mail([key])):
                result.already_scanned += 1
                continue
            done.add(key)
            outcome = _record(data, key, store, signer, soft_limit, result)
            store.mark_scanned(key, outcome)
    return result


def _record(data: bytes, key: str, store: Store, signer: Signer, soft_limit: int, result: ScanResult) -> str:
    from highlightsmail.events import record

    bounce = read_bounce(data)
    if bounce is None:
        result.not_bounces += 1
        return "not a bounce"
    result.bounces += 1
    named: int | None = None
    if bounce.token:
        try:
            purpose, named = signer.read(bounce.token)
        except InvalidToken:
            named = None
        else:
            if purpose == "test":
                result.test_sends += 1
                return "a test send"
    rows: list[DeliveryEventRow] = []
    failures = [(a, d, True) for a, d in bounce.permanent.items()] + [
        (a, d, False) for a, d in bounce.temporary.items()
    ]
    for address, detail, permanent in failures:
        sid = _subscriber(store, address)
        if sid is None and named is not None and len(failures) == 1:
            sid = named  # forwarded: the failed address is not the one we sent to
        if sid is None:
            result.unknown.append(address)
            continue
        row = _row(store, key, sid, bounce, detail, permanent)
        if row is None:
            result.unknown.append(address)  # a soft bounce of someone we never sent an issue
            continue
        rows.append(row)
        if permanent:
            result.permanent += 1
        else:
            result.temporary += 1
    if rows:
        done = record(store, rows, source="bounce-mail", soft_limit=soft_limit, check_address=False)
        result.status_changes += done.changed
    return "bounce"


def _subscriber(store: Store, address: str) -> int | None:
    from highlightsmail.addresses import BadAddress, normalize_address

    try:
        sub = store.find(normalize_address(address))
    except BadAddress:
        return None
    return sub.id if sub else None


def _row(store: Store, key: str, sid: int, bounce: Bounce, detail: str, permanent: bool) -> DeliveryEventRow | None:
    from highlightsmail.store import DeliveryEventRow

    issue = store.latest_issue_sent(sid, prefer=bounce.issue)
    if issue is None and not permanent:
        return None
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
    "Bounce",
    "ImapAddress",
    "ScanResult",
    "mail_key",
    "parse_mailbox",
    "read_bounce",
    "scan",
]
