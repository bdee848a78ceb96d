"""What a web form posted, read from its body in memory: urlencoded or multipart, each
name and value exactly as its bytes say, for every route that takes a form.

Browsers send a form in the page's encoding, UTF-8 here. Bytes that are not UTF-8 are
not guessed at (Starlette's own parser reads them as U+FFFD, or the whole value as
Latin-1): each becomes a lone surrogate (Python's `surrogateescape`), which
`text.is_utf8` finds, so the route can refuse that field by name instead of storing a
changed value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from highlightsmail.errors import HighlightsError

if TYPE_CHECKING:  # the library defines it for type checkers only
    from python_multipart.multipart import MultipartCallbacks

#: More fields than any of the endpoint's forms has, by far.
MAX_FIELDS = 20


class FormError(HighlightsError):
    """A body that cannot be read as the form its Content-Type says."""


def read_fields(content_type: str, body: bytes, *, max_fields: int = MAX_FIELDS) -> list[tuple[str, str]]:
    """The (name, value) pairs of a posted form, in order: multipart/form-data, else
    urlencoded (also for a sender that forgot the Content-Type). FormError for a body
    that is not one, holds a file, or more than `max_fields` fields."""
    kind, params = parse_options_header(content_type)
    if kind == b"multipart/form-data":
        return _multipart(params.get(b"boundary", b""), body, max_fields)
    return _urlencoded(body, max_fields)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _urlencoded(body: bytes, max_fields: int) -> list[tuple[str, str]]:
    fields = []
    for pair in body.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.replace(b"+", b" ").partition(b"=")
        fields.append((_text(unquote_to_bytes(name)), _text(unquote_to_bytes(value))))
        if len(fields) > max_fields:
            raise FormError(f"more than {max_fields} fields")
    return fields


def _multipart(boundary: bytes, body: bytes, max_fields: int) -> list[tuple[str, str]]:
    if not boundary:
        raise FormError("a multipart form without a boundary")
    reader = _Parts(max_fields)
    try:
        parser = MultipartParser(boundary, reader.callbacks())  # refuses a boundary too long
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise FormError("a multipart form that does not parse") from None
    return reader.fields


class _Parts:
    """python-multipart's callbacks, keeping each part's name and bytes."""

    def __init__(self, max_fields: int) -> None:
        self.max_fields = max_fields
        self.fields: list[tuple[str, str]] = []
        self._header_name = self._header_value = b""
        self._name: bytes | None = None
        self._data = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.begin,
            "on_header_field": self.header_name,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_part_data": self.data,
            "on_part_end": self.end,
        }

    def begin(self) -> None:
        self._name, self._data = None, bytearray()

    def header_name(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            _, options = parse_options_header(self._header_value)
            if b"filename" in options:
                raise FormError("a file, where only text fields are taken")
            self._name = options.get(b"name")
        self._header_name = self._header_value = b""

    def data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]

    def end(self) -> None:
        if self._name is None:
            raise FormError("a part of the form without a name")
        self.fields.append((_text(self._name), _text(bytes(self._data))))
        if len(self.fields) > self.max_fields:
            raise FormError(f"more than {self.max_fields} fields")


__all__ = ["MAX_FIELDS", "FormError", "read_fields"]
