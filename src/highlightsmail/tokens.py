"""Signing and checking the tokens in unsubscribe and confirmation links.

A token is `<kind><id>.<mac>`: the kind (`u` unsubscribe, `t` test send) and the
subscriber's id in base 36, then 128 bits of HMAC-SHA256 over both, URL-safe base64.
It names the subscriber by id, never by address, and cannot be moved to another
subscriber or another purpose without the secret.

A confirmation token (signup with double opt-in) is `c<id>.<made>.<mac>`: also the time
it was made (unix seconds, base 36), so that a link can expire. Its kind is part of what
is signed, and each route reads only its own kinds: a confirmation token opens nothing
on `/u/`, an unsubscribe token nothing on `/confirm/`. A preference page's token
(`p<id>.<made>.<mac>`) is made the same way and opens only `/p/`.

A message token names one message of a dispatch: `<tag>.<id>.<mac>`, where `tag` is the
dispatch's own random value (8 base32 characters, recorded once when it begins), `id`
the subscriber's id in base 36, and `mac` 64 bits of HMAC-SHA256 over the issue, the tag
and the id, in hex (a forger gets one guess per mail written to the bounce mailbox). It
is the part before the @ of the message's Message-ID, and is added to the return
address (VERP, `bounces+TOKEN@domain`) when that is set, so a bounce that returns either
proves which message it is about without a table of Message-IDs: the tag finds the
dispatch (and so the issue), the MAC proves the secret made it for that issue and
subscriber, and the ledger says whether they were a recipient. Lowercase letters, digits
and dots only: a dot-atom (RFC 5322) that survives a mail system lowering the case of an
address, and at most 39 characters, so that `bounces+TOKEN` stays within RFC 5321's 64
octets for the part before the @.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from highlightsmail.errors import HighlightsError, HighlightsWarning, InvalidToken, display_path
from highlightsmail.files import write_file
from highlightsmail.text import parse_number

KINDS = {"unsubscribe": "u", "test": "t"}
_KIND_NAMES = {v: k for k, v in KINDS.items()}
_MAC_BYTES = 16  # 128 bits: far beyond guessing, and keeps the link tidy
_TOKEN_RE = re.compile(r"^([ut])([0-9a-z]{1,13})\.([A-Za-z0-9_-]{22})$")
CONFIRM_KIND = "c"
_CONFIRM_RE = re.compile(r"c([0-9a-z]{1,13})\.([0-9a-z]{1,13})\.([A-Za-z0-9_-]{22})")
PREFERENCES_KIND = "p"
_PREFERENCES_RE = re.compile(r"p([0-9a-z]{1,13})\.([0-9a-z]{1,13})\.([A-Za-z0-9_-]{22})")
_DOMAIN = b"highlightsmail/token/v1"
#: The shortest secret accepted, current or previous: an HMAC key is only as strong as
#: it is hard to guess, and a previous secret still signs working links.
MIN_SECRET_LENGTH = 16
MESSAGE_KIND = "m"
_MESSAGE_MAC_BYTES = 8  # 64 bits: 16 hex characters
_TAG_RE = re.compile(r"[a-z2-7]{8}")
_MESSAGE_RE = re.compile(r"([a-z2-7]{8})\.([0-9a-z]{1,13})\.([0-9a-f]{16})")
# The same, standing in a mail before an @ (not the tail of a longer dotted word).
_FIND_MESSAGE_RE = re.compile(rb"(?<![0-9A-Za-z.])([a-z2-7]{8}\.[0-9a-z]{1,13}\.[0-9a-f]{16})@", re.I)
#: The longest message token: tag, a 64-bit id in base 36, the MAC, two dots.
MESSAGE_TOKEN_MAX = 8 + 1 + 13 + 1 + 16


class SecretWarning(HighlightsWarning):
    """The signing secret was generated because HIGHLIGHTS_SECRET is unset."""


@dataclass(frozen=True)
class Signer:
    """Makes tokens with the current secret; accepts the current and any previous one."""

    secret: bytes
    previous: tuple[bytes, ...] = field(default=())

    def _mac(self, key: bytes, kind: str, ident: str) -> bytes:
        # HMAC-SHA256 over `domain|kind|ident`, spelt out over hashlib: a dispatch signs a
        # token per recipient, and copying two hashes that have taken the key and the
        # shared prefix already costs a fraction of hmac's own copy and update.
        return _signed(*_prefixed(key, kind), ident)

    def key_id(self) -> str:
        """A name of the current secret that does not tell it: kept with the message a
        dispatch sends, so that a message rebuilt after a rotation carries the links it
        was sent with (`signing_with`)."""
        return _key_id(self.secret)

    def signing_with(self, key: str) -> Signer | None:
        """This signer, making tokens with the secret `key` names (the current one or a
        previous one), or None when neither is it."""
        every = (self.secret, *self.previous)
        for secret in every:
            if hmac.compare_digest(_key_id(secret), key):
                return Signer(secret, tuple(other for other in every if other != secret))
        return None

    def make(self, subscriber_id: int, purpose: str = "unsubscribe") -> str:
        """A token for this subscriber and purpose (`unsubscribe` or `test`)."""
        kind = KINDS[purpose]
        if subscriber_id < 0:
            raise ValueError("subscriber ids are not negative")
        ident = _base36(subscriber_id)
        mac = _b64(self._mac(self.secret, kind, ident)).decode()
        return f"{kind}{ident}.{mac}"

    def read(self, token: str) -> tuple[str, int]:
        """(purpose, subscriber id) of a valid token; InvalidToken for anything else."""
        # fullmatch: `$` alone would also accept the token followed by a newline.
        match = _TOKEN_RE.fullmatch(token or "")
        if not match:
            raise InvalidToken("this link is not valid")
        kind, ident, mac_text = match.groups()
        subscriber_id = _number(ident)
        self._verify(kind, ident, mac_text)
        return _KIND_NAMES[kind], subscriber_id

    def _verify(self, kind: str, ident: str, mac_text: str) -> None:
        # Compare the text, not the decoded bytes: the last base64 character carries four
        # unused bits, so sixteen spellings would decode to the same MAC.
        # Check every key, always, so timing does not tell which secret matched.
        ok = False
        for key in (self.secret, *self.previous):
            ok |= hmac.compare_digest(mac_text.encode(), _b64(self._mac(key, kind, ident)))
        if not ok:
            raise InvalidToken("this link is not valid")

    def make_confirm(self, subscriber_id: int, made: int) -> str:
        """A confirmation link's token: the subscriber who asked to join, and when the
        link was made (unix seconds)."""
        if subscriber_id < 0 or made < 0:
            raise ValueError("subscriber ids and times are not negative")
        ident = f"{_base36(subscriber_id)}.{_base36(made)}"
        mac = _b64(self._mac(self.secret, CONFIRM_KIND, ident)).decode()
        return f"{CONFIRM_KIND}{ident}.{mac}"

    def read_confirm(self, token: str) -> tuple[int, int]:
        """(subscriber id, unix time made) of a valid confirmation token; InvalidToken
        for anything else, an unsubscribe or test token included."""
        match = _CONFIRM_RE.fullmatch(token or "")
        if not match:
            raise InvalidToken("this link is not valid")
        sid, made, mac_text = match.groups()
        subscriber_id, made_at = _number(sid), _number(made)
        self._verify(CONFIRM_KIND, f"{sid}.{made}", mac_text)
        return subscriber_id, made_at

    def make_preferences(self, subscriber_id: int, made: int) -> str:
        """A preference page's token (`p<id>.<made>.<mac>`): the subscriber, and when the
        link was made (unix seconds), so that it can expire."""
        if subscriber_id < 0 or made < 0:
            raise ValueError("subscriber ids and times are not negative")
        ident = f"{_base36(subscriber_id)}.{_base36(made)}"
        return f"{PREFERENCES_KIND}{ident}.{_b64(self._mac(self.secret, PREFERENCES_KIND, ident)).decode()}"

    def link_tokens(self, made: int) -> Callable[[int], tuple[str, str]]:
        """For the links of many subscribers: a function of a subscriber's id giving the
        tokens `make` (unsubscribe) and `make_preferences` (made at `made`) give, the
        same ones, with what they share worked out once (a dispatch makes both for every
        recipient, and that was most of its cost per recipient)."""
        if made < 0:
            raise ValueError("times are not negative")
        u_kind = KINDS["unsubscribe"]
        u_inner, u_outer = _prefixed(self.secret, u_kind)
        p_inner, p_outer = _prefixed(self.secret, PREFERENCES_KIND)
        made_part = "." + _base36(made)

        def tokens(subscriber_id: int) -> tuple[str, str]:
            if subscriber_id < 0:
                raise ValueError("subscriber ids are not negative")
            ident = _base36(subscriber_id)
            both = ident + made_part
            unsubscribe = _b64(_signed(u_inner, u_outer, ident)).decode()
            preferences = _b64(_signed(p_inner, p_outer, both)).decode()
            return f"{u_kind}{ident}.{unsubscribe}", f"{PREFERENCES_KIND}{both}.{preferences}"

        return tokens

    def read_preferences(self, token: str) -> tuple[int, int]:
        """(subscriber id, unix time made) of a valid preference token; InvalidToken for
        anything else, other kinds of token included."""
        match = _PREFERENCES_RE.fullmatch(token or "")
        if not match:
            raise InvalidToken("this link is not valid")
        sid, made, mac_text = match.groups()
        self._verify(PREFERENCES_KIND, f"{sid}.{made}", mac_text)
        return _number(sid), _number(made)

    def address_hash(self, key: str) -> str:
        """The keyed hash of an address (its `address_key`) kept after it is erased: the
        address cannot be read back from it without the secret."""
        return hmac.new(self.secret, b"|".join((_DOMAIN, b"erased", key.encode())), hashlib.sha256).hexdigest()

    def make_message(self, issue: str, tag: str, subscriber_id: int) -> str:
        """The token of the message of `issue`'s dispatch (tagged `tag`) to this subscriber:
        the same every time it is made, so a retry is the same message."""
        if subscriber_id < 0 or not _TAG_RE.fullmatch(tag):
            raise ValueError("a message token needs a dispatch tag and a subscriber id")
        ident = _base36(subscriber_id)
        return f"{tag}.{ident}.{self._message_mac(self.secret, issue, tag, ident)}"

    def is_message(self, token: str, issue: str) -> bool:
        """Whether `token` is one this secret (or a previous one) made for a message of
        `issue`; `read_message_token` tells the tag and subscriber it names."""
        match = _MESSAGE_RE.fullmatch(token or "")
        if not match or read_message_token(token) is None:
            return False
        tag, ident, mac_text = match.groups()
        ok = False
        for key in (self.secret, *self.previous):  # every key, always (timing)
            ok |= hmac.compare_digest(mac_text, self._message_mac(key, issue, tag, ident))
        return ok

    @staticmethod
    def _message_mac(key: bytes, issue: str, tag: str, ident: str) -> str:
        mac = _message_keyed(key, issue, tag).copy()  # a dispatch makes one per recipient
        mac.update(ident.encode("ascii"))
        return mac.digest()[:_MESSAGE_MAC_BYTES].hex()


def _number(digits: str) -> int:
    """A number in a token: base 36 in its one spelling (no leading zeros), and no more
    than the database's integers hold; a well-signed id beyond them (the signature says
    nothing about the number) would otherwise reach the database and fail there."""
    number = parse_number(digits, base=36)
    if number is None or _base36(number) != digits:
        raise InvalidToken("this link is not valid")
    return number


def read_message_token(token: str) -> tuple[str, int] | None:
    """(dispatch tag, subscriber id) of something shaped like a message token, or None;
    only `Signer.is_message` says whether it is genuine."""
    match = _MESSAGE_RE.fullmatch(token or "")
    if not match:
        return None
    tag, ident, _mac = match.groups()
    try:
        return tag, _number(ident)
    except InvalidToken:
        return None


def find_message_tokens(text: bytes, limit: int = 20) -> list[str]:
    """Message tokens in a mail, wherever they stand: `<TOKEN@` in a Message-ID (or
    In-Reply-To, References), `+TOKEN@` in a return address; lowercased, as some mail
    systems change the case of addresses. At most `limit`, each once."""
    found: dict[str, None] = {}
    for match in _FIND_MESSAGE_RE.finditer(text):
        found[match.group(1).decode("ascii").lower()] = None
        if len(found) >= limit:
            break
    return list(found)


def new_dispatch_tag() -> str:
    """A dispatch's random tag, recorded once when it begins: 40 bits in base32."""
    return base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()


@functools.lru_cache(maxsize=64)
def _message_keyed(key: bytes, issue: str, tag: str) -> hmac.HMAC:
    """HMAC-SHA256 with this key over what a dispatch's message tokens share: the kind,
    the issue (its length first, so no slug can run into the tag) and the tag."""
    mac = _keyed(key).copy()
    mac.update(b"|".join((_DOMAIN, MESSAGE_KIND.encode(), f"{len(issue)}:{issue}".encode(), tag.encode(), b"")))
    return mac


def _signed(inner: hashlib._Hash, outer: hashlib._Hash, ident: str) -> bytes:
    """The MAC of `ident` from `_prefixed`'s two hashes (copied, so they serve again)."""
    digest = inner.copy()
    digest.update(ident.encode())
    mac = outer.copy()
    mac.update(digest.digest())
    out: bytes = mac.digest()
    return out[:_MAC_BYTES]


@functools.lru_cache(maxsize=16)
def _prefixed(key: bytes, kind: str) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256's inner and outer hashes for this key (RFC 2104), the inner one having
    taken `domain|kind|` too: copied for each token of that kind."""
    block = hashlib.sha256().block_size
    padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
    inner.update(b"|".join((_DOMAIN, kind.encode(), b"")))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))
    return inner, outer


def _key_id(secret: bytes) -> str:
    return hmac.new(secret, b"|".join((_DOMAIN, b"key-id")), hashlib.sha256).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    """HMAC-SHA256 with this key and nothing hashed yet, to copy for each token."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _b64(mac: bytes) -> bytes:
    return base64.urlsafe_b64encode(mac).rstrip(b"=")


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
#: Every pair of base-36 digits, "00" to "zz": two digits a step (a token per recipient).
_PAIRS = [a + b for a in _DIGITS for b in _DIGITS]


def _base36(n: int) -> str:
    """`n` (not negative) in base 36, lowercase, without leading zeros."""
    out = ""
    while n >= 1296:
        n, r = divmod(n, 1296)
        out = _PAIRS[r] + out
    return (_DIGITS[n] if n < 36 else _PAIRS[n]) + out


def _previous_secrets() -> tuple[bytes, ...]:
    """HIGHLIGHTS_SECRET_PREVIOUS, comma-separated (empty entries ignored); each one as
    long as a current secret must be, since it still makes links work."""
    entries = [p.strip() for p in os.environ.get("HIGHLIGHTS_SECRET_PREVIOUS", "").split(",")]
    entries = [p for p in entries if p]
    for number, entry in enumerate(entries, start=1):
        if len(entry) < MIN_SECRET_LENGTH:
            raise HighlightsError(
                f"HIGHLIGHTS_SECRET_PREVIOUS: secret {number} of {len(entries)} is too short: "
                f"use at least {MIN_SECRET_LENGTH} characters, or drop it from the list"
            )
    return tuple(p.encode() for p in entries)


class _UnusableSecretFile(Exception):
    """What is wrong with the secret file; `remake`: deleting it is the remedy."""

    def __init__(self, reason: str, *, remake: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.remake = remake


def _read_secret_file(path: Path) -> str:
    """The secret kept in the file at `path`. Anything but a readable file of ASCII text
    long enough is _UnusableSecretFile, a sentence, not a traceback."""
    try:
        value = path.read_text(encoding="ascii").strip()
    except UnicodeDecodeError:
        raise _UnusableSecretFile("the secret is not ASCII text", remake=True) from None
    except OSError as exc:
        raise _UnusableSecretFile(f"cannot read the secret: {exc.strerror or exc}") from None
    if len(value) < MIN_SECRET_LENGTH:
        raise _UnusableSecretFile("the secret is too short", remake=True)
    return value


def _with_file_secret(current: bytes, previous: tuple[bytes, ...], secret_path: Path) -> tuple[bytes, ...]:
    """The previous secrets, with the file's when HIGHLIGHTS_SECRET is set and the file
    holds another one: the secret that signed the links in mail sent before the variable
    was set. It keeps those links working, and one warning line says so and how to end it
    (set the variable to the file's secret, or move it to HIGHLIGHTS_SECRET_PREVIOUS)."""
    if not os.path.lexists(secret_path):
        return previous
    shown = display_path(secret_path)
    try:
        kept = _read_secret_file(secret_path).encode()
    except _UnusableSecretFile as exc:
        warnings.warn(
            f"{shown}: {exc.reason}, so links signed with it (mail sent before HIGHLIGHTS_SECRET was set) "
            "are not accepted",
            SecretWarning,
            stacklevel=3,
        )
        return previous
    if kept == current or kept in previous:
        return previous
    warnings.warn(
        f"{shown} holds another secret than HIGHLIGHTS_SECRET: it signed the links in mail sent before, so "
        "they are still accepted; to end this, set HIGHLIGHTS_SECRET to it, or add it to "
        "HIGHLIGHTS_SECRET_PREVIOUS and delete the file",
        SecretWarning,
        stacklevel=3,
    )
    return (*previous, kept)


def load_signer(secret_path: Path) -> Signer:
    """The signer from HIGHLIGHTS_SECRET (and HIGHLIGHTS_SECRET_PREVIOUS, comma-separated,
    for links in mail sent before a rotation), else from secret_path, created once with
    mode 0600 and a warning. With both the variable and the file, a different secret in
    the file is accepted as a previous one (see _with_file_secret)."""
    previous = _previous_secrets()
    env = os.environ.get("HIGHLIGHTS_SECRET", "").strip()
    if env:
        if len(env) < MIN_SECRET_LENGTH:
            raise HighlightsError(
                f"HIGHLIGHTS_SECRET is too short: use at least {MIN_SECRET_LENGTH} characters (32 random bytes is best)"
            )
        return Signer(env.encode(), _with_file_secret(env.encode(), previous, secret_path))
    if os.path.lexists(secret_path):  # a dangling link too: reading it names the problem
        # (A folder in its place must not send the O_EXCL retry below round in circles.)
        try:
            value = _read_secret_file(secret_path)
        except _UnusableSecretFile as exc:
            remedy = "; delete the file to make a new one" if exc.remake else ""
            raise HighlightsError(f"{display_path(secret_path)}: {exc.reason}{remedy}") from None
        return Signer(value.encode(), previous)
    value = secrets.token_urlsafe(32)
    # Written whole under another name, then linked to its own: two processes starting
    # at once end up with one secret, and neither ever reads a file still being written.
    try:
        secret_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_file(secret_path, (value + "\n").encode("ascii"), mode=0o600, overwrite=False, durable=True)
        except FileExistsError:
            return load_signer(secret_path)
    except OSError as exc:
        raise HighlightsError(
            f"{display_path(secret_path)}: cannot create the signing secret: {exc.strerror or exc}; "
            "or set HIGHLIGHTS_SECRET"
        ) from None
    warnings.warn(
        f"HIGHLIGHTS_SECRET is not set: created a random signing secret in {secret_path} "
        "(keep it: unsubscribe links in sent mail depend on it)",
        SecretWarning,
        stacklevel=2,
    )
    return Signer(value.encode(), previous)
