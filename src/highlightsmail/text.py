"""What text a user typed may hold, in one place: the characters no part of an email may
carry, and the rules for text that ends up in a header.

Imported by the models (issue and settings fields), the CSV import, the web forms and
the message builder, so each of them refuses the same things for the same reasons.
"""

from __future__ import annotations

import re

# Unicode noncharacters: U+FDD0..U+FDEF and the last two code points of every plane.
_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(f"{chr(p + 0xFFFE)}{chr(p + 0xFFFF)}" for p in range(0, 0x110000, 0x10000))

#: Anywhere in a single line (a title, a subject, a name, a setting): control characters
#: (C0, DEL, C1, which includes U+0085 NEXT LINE), the Unicode line and paragraph
#: separators U+2028/U+2029 (Python's str.splitlines() and the email package break
#: lines there), and noncharacters. YAML escapes ("\x1b", "\u2028") put them in files.
FORBIDDEN_IN_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_NONCHARACTERS}]")
#: Anywhere in text of several lines (Markdown): the same, but tab, LF and CR are text.
FORBIDDEN_IN_TEXT = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_NONCHARACTERS}]")

#: An RFC 2047 encoded word, `=?charset?B|Q?text?=`. A header decoder turns it back into
#: any characters at all, CR and LF included, so no text a user typed may carry one into
#: a header: it would be a way to smuggle a line break (and so a header) past every
#: other check, on the Python versions whose email package decodes before folding.
ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")

#: Line breaks of every kind, for the message builder's last check.
LINE_BREAK = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")

#: The longest URL an email may carry, in octets as its HTML writes it (see url_octets).
#: A line of mail holds at most 998 octets (RFC 5322 2.1.1) and a link cannot be broken
#: across lines, so each must fit on one with `href="` around it; every link a recipient
#: gets (base_url and a token) must too.
MAX_URL_OCTETS = 900
# What the HTML writer percent-encodes in a URL, besides every byte beyond ASCII.
_URL_ESCAPED = frozenset(b' "<>\\^`{|}')


def url_octets(url: str) -> int:
    """How many octets `url` takes in an email's HTML: a byte beyond ASCII, a space and
    the like are written as %XX, and & as &amp;."""
    return sum(3 if b > 0x7E or b < 0x21 or b in _URL_ESCAPED else 5 if b == 0x26 else 1 for b in url.encode("utf-8"))


def url_problem(url: str) -> str | None:
    """Why `url` is too long for an email (None when it fits)."""
    size = url_octets(url)
    if size <= MAX_URL_OCTETS:
        return None
    return (
        f"is too long for a line of mail: {size} octets as the email writes it, at most "
        f"{MAX_URL_OCTETS} fit (RFC 5322 caps a line at 998); shorten it"
    )


def describe_forbidden(ch: str) -> str:
    """The sentence for a character that FORBIDDEN_IN_LINE or FORBIDDEN_IN_TEXT found."""
    if ch in "\r\n\x85\u2028\u2029":
        return f"must be a single line (it holds a line break, U+{ord(ch):04X})"
    if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:
        return f"must not contain control characters (U+{ord(ch):04X})"
    return f"character U+{ord(ch):04X} is not allowed (a Unicode noncharacter)"


def line_problem(value: str) -> str | None:
    """Why `value` cannot be a single line of text (None when it can)."""
    bad = FORBIDDEN_IN_LINE.search(value)
    return describe_forbidden(bad.group()) if bad else None


def text_problem(value: str) -> str | None:
    """Why `value` cannot be text of several lines (None when it can)."""
    bad = FORBIDDEN_IN_TEXT.search(value)
    if bad is None:
        return None
    if bad.group() == "\x85":  # a line break to some readers, a control character to others
        return "must not contain U+0085 (NEXT LINE): break the line with an ordinary line break"
    return describe_forbidden(bad.group())


def header_problem(value: str) -> str | None:
    """Why `value` cannot go into a header as the user typed it (None when it can):
    a line break or control character, or an RFC 2047 encoded word."""
    problem = line_problem(value)
    if problem:
        return problem
    if ENCODED_WORD.search(value):
        return "must not contain an RFC 2047 encoded word (=?charset?Q?...?=): write the text itself"
    return None


def is_utf8(value: str) -> bool:
    """Whether `value` is text that UTF-8 can carry: no lone surrogate, which is what
    bytes that were not UTF-8 become when read with `surrogateescape` (forms.py), and
    what a JSON `\\udcff` escape makes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: The largest whole number the databases store (SQLite's INTEGER, PostgreSQL's BIGINT).
MAX_INT64 = 2**63 - 1
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_DIGITS_OF = {base: frozenset(_DIGITS[:base]) for base in range(2, len(_DIGITS) + 1)}


def parse_number(value: str | bytes | None, *, base: int = 10, low: int = 0, high: int = MAX_INT64) -> int | None:
    """A whole number that came from outside (a header, a token, a posted field), or None.

    ASCII digits of `base` only (lower-case letters above 9), within [low, high]: int()
    also takes a sign, spaces, underscores and other scripts' digits (`\u0661\u0662` is
    12), and fails on some of what str.isdigit() calls digits (`\u00b2\u00b3`), so a
    number read with it either means something else or is an error no one handled.
    The bounds keep what is read inside the database's integers and datetime's years."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    # No number up to `high` has more digits than in base 2: longer text is refused unread.
    if not value or len(value) > max(1, high.bit_length()) or not _DIGITS_OF[base].issuperset(value):
        return None
    number = int(value, base)
    return number if low <= number <= high else None


__all__ = [
    "ENCODED_WORD",
    "FORBIDDEN_IN_LINE",
    "FORBIDDEN_IN_TEXT",
    "LINE_BREAK",
    "MAX_INT64",
    "MAX_URL_OCTETS",
    "describe_forbidden",
    "header_problem",
    "is_utf8",
    "line_problem",
    "parse_number",
    "text_problem",
    "url_octets",
    "url_problem",
]
