"""Field types shared by the issue and settings models: URLs, single-line text, text that
goes into a header, addresses.

What text may hold is decided in `highlightsmail.text` and what an address is in
`highlightsmail.addresses`; these types only apply those rules to a model's fields.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator

from highlightsmail import __version__, addresses, text
from highlightsmail.addresses import BadAddress, ascii_address, normalize_address
from highlightsmail.files import own_cache_folder, write_cache_json


def _http_url(value: str) -> str:
    """An absolute http(s) URL with a host; nothing that a mail client would run."""
    if not isinstance(value, str):
        raise ValueError("must be a URL string")
    value = value.strip()
    if text.FORBIDDEN_IN_LINE.search(value) or any(ch.isspace() for ch in value):
        raise ValueError("a URL must not contain spaces or control characters")
    if "\\" in value:
        # Browsers read a backslash as `/` in http(s) URLs; other readers do not.
        raise ValueError("a URL must not contain a backslash (write / or %5C)")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        shown = f"'{parts.scheme}:'" if parts.scheme else "a relative URL"
        raise ValueError(f"links must be absolute http(s) URLs, not {shown}")
    if not parts.hostname:
        raise ValueError("a URL needs a host, like https://example.org/")
    try:
        _ = parts.port  # reading it checks it
    except ValueError:
        raise ValueError("a URL's port must be a number from 0 to 65535") from None
    too_long = text.url_problem(value)
    if too_long:
        raise ValueError(f"the URL {too_long}")
    return value


def is_loopback_host(host: str) -> bool:
    """Whether `host` names this machine: `localhost`, 127.0.0.0/8 or ::1."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_url_problem(url: str) -> str | None:
    """Why `url` must not carry a secret (an API key in a request header): http to a
    host other than this machine's loopback, where anyone on the way can read it.
    None for https, and for http to localhost, 127.0.0.0/8 or ::1."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        return None  # not a URL at all: the URL check says so
    if parts.scheme.lower() == "http" and not is_loopback_host(host):
        return (
            f"must be https, not http: the API key goes with every request "
            f"(http only for a server on this machine: localhost, 127.0.0.1, [::1]), not {host!r}"
        )
    return None


def _secure_url(value: str) -> str:
    problem = plaintext_url_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _single_line(value: str) -> str:
    """Text that ends up in a title, a header or a setting: one line, nothing an email
    cannot carry."""
    if not isinstance(value, str):
        raise ValueError("must be text")
    problem = text.line_problem(value)
    if problem:
        raise ValueError(problem)
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _header_text(value: str) -> str:
    """Single-line text that a header will carry as typed (a subject, a sender name)."""
    problem = text.header_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# "Display Name <addr>" or '"Display, Name" <addr>' (RFC 5322 name-addr); a plain name
# must not hold the characters that would end or split it there, so every reader of the
# header, ours included, finds the same address.
_NAME_ADDR = re.compile(r'(?:"(?P<quoted>[^"\\]*)"|(?P<plain>[^"<>]*?))\s*<(?P<addr>[^<>]*)>')
_SPECIALS_IN_NAME = re.compile(r"[()<>\[\]:;@\\,\"]")


def split_address(value: str) -> tuple[str, str]:
    """(display name, address) of "Name <addr>", '"Name" <addr>' or a bare address;
    raise ValueError when it is none of them."""
    if "<" not in value and ">" not in value:
        return "", value
    match = _NAME_ADDR.fullmatch(value)
    if match is None:
        raise ValueError(f"'{value}' is not an email address; write it as Name <address@example.org>")
    name = (match["quoted"] if match["quoted"] is not None else match["plain"]).strip()
    if match["plain"] is not None and _SPECIALS_IN_NAME.search(name):
        raise ValueError(f'put the name in double quotes: "{name}" <{match["addr"].strip()}>')
    return name, match["addr"].strip()


def _address(value: str) -> str:
    """An address, bare or with a display name ("Name <a@b.org>"), checked as every
    address is (highlightsmail.addresses); kept as written."""
    value = _header_text(_single_line(value))
    _, addr = split_address(value)
    if "@" not in addr:
        raise ValueError(f"'{value}' is not an email address")
    if addr not in _known_addresses():
        try:
            normalize_address(addr)
        except BadAddress as exc:
            raise ValueError(f"'{value}' is not an email address: {exc}") from None
        _known_addresses().add(addr)
    return value


class _KnownAddresses:
    """The settings' addresses found good before, kept in the user's cache folder under
    a name made of the files that judged them (email-validator, idna, addresses.py), so
    `check` and `build` need not import email-validator to judge the same few again.
    Only good verdicts are kept; a damaged file means judging again."""

    def __init__(self) -> None:
        self.path = _known_addresses_file()
        self.good: set[str] = set()
        if self.path is not None:
            try:
                kept = json.loads(self.path.read_bytes())
                self.good = {a for a in kept if isinstance(a, str)} if isinstance(kept, list) else set()
            except (OSError, ValueError):
                pass

    def __contains__(self, addr: str) -> bool:
        return addr in self.good

    def add(self, addr: str) -> None:
        self.good.add(addr)
        if self.path is not None and len(self.good) <= _KNOWN_ADDRESSES_KEPT:
            write_cache_json(self.path, sorted(self.good))


_KNOWN_ADDRESSES_KEPT = 256
# email-validator's files that judge an address (its version among them).
_JUDGES = ("version.py", "syntax.py", "validate_email.py", "rfc_constants.py")


@functools.cache
def _known_addresses() -> _KnownAddresses:
    return _KnownAddresses()


def _known_addresses_file() -> Path | None:
    from importlib.util import find_spec

    folder = own_cache_folder()
    if folder is None:
        return None
    try:
        shaping = [addresses.__file__]
        for package, names in (("email_validator", _JUDGES), ("idna", ("package_data.py", "core.py"))):
            spec = find_spec(package)
            places = list(spec.submodule_search_locations or ()) if spec else []
            if not places:
                return None
            shaping.extend(os.path.join(places[0], name) for name in names)
        stamp = repr([(__version__, name, os.stat(name).st_size, os.stat(name).st_mtime_ns) for name in shaping])
    except (OSError, ImportError, ValueError):
        return None
    return folder / f"addresses-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}.json"


def _sender_address(value: str) -> str:
    """An address mail comes from (`from`, `reply_to`). Its header and the SMTP envelope
    carry the domain in ASCII (IDNA), but the part before the @ has no ASCII form: it
    would need SMTPUTF8 on every server on the way (RFC 6531), which SendGrid and most
    relays do not offer."""
    _, addr = split_address(value)
    if ascii_address(addr) is None:
        raise ValueError(f"'{value}': the part before the @ of an address mail is sent from must be ASCII")
    return value


def _markdown_text(value: str) -> str:
    """Text of several lines: not empty, nothing an email cannot carry."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must not be empty")
    problem = text.text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _coerce_scalar_text(value: object) -> object:
    """YAML turns `title: 2024` into an int; a title is still text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _whole_number(value: object) -> object:
    """YAML reads `true` and `yes` as booleans, which Python would take as the number 1."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number, not true or false")
    return value


def _number(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true or false")
    return value


#: A number setting: true, false, yes or no are refused, not read as 1 or 0.
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
Number = Annotated[float, BeforeValidator(_number)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
#: An http(s) URL that a secret is sent to: https, or http on loopback only.
SecretUrl = Annotated[str, AfterValidator(_http_url), AfterValidator(_secure_url)]
SingleLine = Annotated[str, BeforeValidator(_coerce_scalar_text), AfterValidator(_single_line)]
#: Single-line text that reaches a header as typed: no RFC 2047 encoded word either.
HeaderText = Annotated[
    str, BeforeValidator(_coerce_scalar_text), AfterValidator(_single_line), AfterValidator(_header_text)
]
Address = Annotated[str, AfterValidator(_address)]
#: The address of `from` or `reply_to`: as Address, with an ASCII part before the @.
SenderAddress = Annotated[str, AfterValidator(_address), AfterValidator(_sender_address)]
Markdown = Annotated[str, BeforeValidator(_coerce_scalar_text), AfterValidator(_markdown_text)]

__all__ = [
    "Address",
    "HeaderText",
    "HttpUrl",
    "Markdown",
    "Number",
    "SecretUrl",
    "SenderAddress",
    "SingleLine",
    "WholeNumber",
    "is_loopback_host",
    "plaintext_url_problem",
    "split_address",
]
