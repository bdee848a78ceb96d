"""Where each value of a YAML file is: key paths such as ("items", 3, "links", 0, "url")
mapped to a 1-based (line, column), and the file's text to find a word inside a value.

Validation and lint both name places this way; a loaded issue carries its map, so
lint needs no second reading of the file. A YamlDocument is the map with the data read
(yamlfile.py reads it; modelerrors.py names the places of what the models refuse).
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from highlightsmail.errors import Problem

KeyPath = tuple[str | int, ...]
Severity = Literal["error", "warning"]

# The line breaks YAML counts (YAML 1.1, as PyYAML and libyaml read it), so that the
# lines of the text are the lines of the parser's marks.
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def dotted(path: Sequence[Any]) -> str:
    """("items", 3, "links", 0, "url") -> "items[3].links[0].url"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class SourceMap:
    """The places of a file's keys and values. A map without positions (an issue made
    in code) puts everything at 1:1."""

    file: str
    text: str = field(default="", repr=False)
    positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict, repr=False)
    key_positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict, repr=False)

    def resolve(self, loc: Sequence[Any]) -> KeyPath:
        """The longest part of a (pydantic) location that is a path in the file; entries
        that are not keys (a union member's name, 'function-after[...]') are skipped."""
        path: KeyPath = ()
        for part in loc:
            candidate = (*path, part)
            if candidate in self.positions or candidate in self.key_positions:
                path = candidate
        return path

    def where(self, loc: Sequence[Any], *, key: bool = False) -> tuple[int, int]:
        """(line, column) of the value at `loc` (or of its key, with key=True); for a
        location that is not in the file, its nearest enclosing value."""
        path = self.resolve(loc)
        if key and path in self.key_positions:
            return self.key_positions[path]
        return self.positions.get(path, (1, 1))

    @functools.cached_property
    def _line_starts(self) -> list[int]:
        return [0] + [m.end() for m in _LINE_BREAK.finditer(self.text)]

    def find(self, loc: Sequence[Any], needle: str, *also: str) -> tuple[int, int]:
        """The position of `needle` (or else of the first of `also` found: the same text
        as a YAML escape) inside the value at `loc`, or of the value itself when it is
        not found there as written."""
        line, col = self.where(loc)
        starts = self._line_starts
        if not self.text or not needle or line > len(starts):
            return (line, col)
        start = starts[line - 1] + col - 1
        # The value ends before the next key or value the file holds.
        later = [
            starts[ln - 1] + c - 1
            for ln, c in (*self.positions.values(), *self.key_positions.values())
            if (ln, c) > (line, col) and ln <= len(starts)
        ]
        end = min(later, default=len(self.text))
        for candidate in (needle, *also):
            index = self.text.find(candidate, start, end) if candidate else -1
            if index >= 0:
                found_line = bisect.bisect_right(starts, index)
                return (found_line, index - starts[found_line - 1] + 1)
        return (line, col)

    def problem(
        self,
        loc: Sequence[Any],
        message: str,
        severity: Severity = "error",
        *,
        key: bool = False,
        needle: str | None = None,
    ) -> Problem:
        """A Problem at `loc` (at `needle` inside its value, when given), its message
        prefixed with the dotted key path."""
        line, col = self.find(loc, needle) if needle else self.where(loc, key=key)
        prefix = dotted(tuple(loc)) if loc else ""
        text = f"{prefix}: {message}" if prefix else message
        return Problem(self.file, line, col, text, severity)


@dataclass
class YamlDocument(SourceMap):
    """A YAML file read into plain data, with the position of every key and value.

    `positions` and `key_positions` (see SourceMap) map a key path such as
    ("items", 3, "links", 0, "url") to a 1-based (line, column): of the value, and of the
    key for mapping entries. `problems` holds what was wrong but did not stop the
    reading (duplicate keys, tags that are not plain YAML); `validate_document` reports
    them with the model's.
    """

    data: dict[str, Any] = field(default_factory=dict)
    raw: dict[KeyPath, str] = field(default_factory=dict)  # plain scalars YAML typed (yes, 12, ~)
    problems: list[Problem] = field(default_factory=list)
    unreadable: set[KeyPath] = field(default_factory=set)  # values replaced by None, with a problem

    def source_map(self) -> SourceMap:
        """The places alone, without the data (what a loaded model keeps)."""
        return SourceMap(self.file, self.text, self.positions, self.key_positions)


__all__ = ["KeyPath", "Severity", "SourceMap", "YamlDocument", "dotted"]
