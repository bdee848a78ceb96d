"""Field types shared by the issue and settings models: URLs, single-line text, addresses."""

from __future__ import annotations

import re
from email.utils import parseaddr
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator

_CONTROL = {chr(c) for c in range(0x20)} | {"\x7f"}
# What no part of an email may carry, though YAML's escapes ("\x1b", "\uffff") put it
# in a file of printable text: control characters (C0, DEL, C1) and Unicode
# noncharacters. MJML refuses them, and a plain-text reader's terminal may act on them.
_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(f"{chr(p + 0xFFFE)}{chr(p + 0xFFFF)}" for p in range(0, 0x110000, 0x10000))
_FORBIDDEN_IN_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f{_NONCHARACTERS}]")
_FORBIDDEN_IN_TEXT = re.compile(
    f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_NONCHARACTERS}]"
)  # tab and line breaks are text


def _http_url(value: str) -> str:
    """An absolute http(s) URL with a host; nothing that a mail client would run."""
    if not isinstance(value, str):
        raise ValueError("must be a URL string")
    value = value.strip()
    if _FORBIDDEN_IN_LINE.search(value) or any(ch.isspace() for ch in value):
        raise ValueError("a URL must not contain spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        shown = f"'{parts.scheme}:'" if parts.scheme else "a relative URL"
        raise ValueError(f"links must be absolute http(s) URLs, not {shown}")
    if not parts.hostname:
        raise ValueError("a URL needs a host, like https://example.org/")
    return value


def _single_line(value: str) -> str:
    """Text that ends up in a header or a title: no line breaks or control characters."""
    if not isinstance(value, str):
        raise ValueError("must be text")
    bad = _FORBIDDEN_IN_LINE.search(value)
    if bad:
        if bad.group() in _CONTROL:
            raise ValueError("must be a single line without control characters")
        raise ValueError(_forbidden(bad.group()))
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _address(value: str) -> str:
    """An address, bare or with a display name ("Name <a@b.org>")."""
    value = _single_line(value)
    _, addr = parseaddr(value)
    if not addr or "@" not in addr or addr.startswith("@") or addr.endswith("@"):
        raise ValueError(f"'{value}' is not an email address")
    return value


def _forbidden(ch: str) -> str:
    return f"character U+{ord(ch):04X} is not allowed (a control character or a noncharacter)"


def _markdown_text(value: str) -> str:
    """Text of several lines: not empty, nothing an email cannot carry."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must not be empty")
    bad = _FORBIDDEN_IN_TEXT.search(value)
    if bad:
        raise ValueError(_forbidden(bad.group()))
    return value


def _coerce_scalar_text(value: object) -> object:
    """YAML turns `title: 2024` into an int; a title is still text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
SingleLine = Annotated[str, BeforeValidator(_coerce_scalar_text), AfterValidator(_single_line)]
Address = Annotated[str, AfterValidator(_address)]
Markdown = Annotated[str, BeforeValidator(_coerce_scalar_text), AfterValidator(_markdown_text)]
