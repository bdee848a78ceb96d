"""Mailboxes of bounce mail: an mbox file, a Maildir, or an IMAP folder over TLS, read
as (handle, key) pairs and then the bytes of the mail wanted.

In a Maildir, an entry that is not a file (a broken link, a link loop, a FIFO, a
device) is skipped with one line, without being opened for reading where that could
block. An IMAP server that announces more than a mail may take in one piece ends the
scan with one line.

Each mail is remembered by its Message-ID (or a hash of the whole mail: `mail_key`),
so that over IMAP only new mail is downloaded. The mailbox itself is only read (IMAP:
the folder is opened read-only, and mail is fetched with BODY.PEEK so nothing is marked
as seen).
"""

from __future__ import annotations

import email
import email.policy
import errno
import hashlib
import imaplib
import mailbox
import os
import re
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.feedback.dsn import MAX_MAIL_BYTES
from highlightsmail.tls import client_context

ENV_IMAP_PASSWORD = "HIGHLIGHTS_IMAP_PASSWORD"
ENV_IMAP_CAFILE = "HIGHLIGHTS_IMAP_CAFILE"
IMAPS_PORT = 993
_FETCH_CHUNK = 50  # messages per IMAP FETCH of whole mail...
_FETCH_BYTES = 32 * 1024 * 1024  # ...and at most this much of them at once


def mail_key(data: bytes) -> str:
    """How a scanned mail is remembered: its Message-ID, else a hash of the whole mail."""
    headers = email.message_from_bytes(data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0], policy=email.policy.compat32)
    return _key_from_message_id(headers.get("Message-ID")) or "sha256:" + hashlib.sha256(data).hexdigest()


def _key_from_message_id(value: Any) -> str | None:
    text = " ".join(str(value or "").split())
    return f"mid:{text}" if text and len(text) <= 900 else None


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
        try:
            uids = sorted(self._client.search("ALL"))
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                found = self._client.fetch(chunk, ["RFC822.SIZE", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
                for uid in chunk:
                    item = found.get(uid, {})
                    size = item.get(b"RFC822.SIZE")
                    self._sizes[uid] = size if isinstance(size, int) else MAX_MAIL_BYTES
                    raw = _bytes(next((v for k, v in item.items() if k.startswith(b"BODY[HEADER")), None))
                    headers = email.message_from_bytes(raw, policy=email.policy.compat32)
                    yield uid, _key_from_message_id(headers.get("Message-ID"))
        except (OSError, IMAPClientError) as exc:
            raise HighlightsError(f"{self.name}: {exc}") from None

    def fetch(self, handles: list[Any]) -> Iterator[tuple[Any, bytes | Skipped]]:
        # Only the first MAX_MAIL_BYTES + 1 octets of each (a partial FETCH, RFC 3501 6.4.5).
        item = f"BODY.PEEK[]<0.{MAX_MAIL_BYTES + 1}>"
        try:
            for chunk in self._chunks(handles):
                found = self._client.fetch(chunk, [item])
                for uid in chunk:
                    parts = found.get(uid, {})
                    yield uid, _bytes(next((v for k, v in parts.items() if k.startswith(b"BODY[]")), None))
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
    conn = client._imap
    read = conn.read

    def capped(size: int) -> bytes:
        if size > MAX_MAIL_BYTES + 1:
            raise imaplib.IMAP4.abort(
                f"the server announced {size:,} octets in one piece, more than a mail may take "
                f"({MAX_MAIL_BYTES // (1024 * 1024)} MB); stopped reading"
            )
        data: bytes = read(size)
        return data

    conn.read = capped


def _bytes(value: object) -> bytes:
    """A fetched item's bytes; nothing (b"") for an item the server left out."""
    return value if isinstance(value, bytes) else b""


def _ssl_context() -> ssl.SSLContext:
    """The system's trust store, plus the PEM file named by HIGHLIGHTS_IMAP_CAFILE."""
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


__all__ = [
    "ENV_IMAP_CAFILE",
    "ENV_IMAP_PASSWORD",
    "ImapAddress",
    "Skipped",
    "mail_key",
    "open_mailbox",
    "parse_mailbox",
]
