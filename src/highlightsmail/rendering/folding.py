"""Every line of an email's parts within RFC 5322's limit of 998 octets (2.1.1), by line
breaks that change nothing a reader sees.

MJML and premailer write a whole section of the email on one line, and a line grows with
the archive's link, long titles, many tags or long URLs. A mail server or provider that
meets a line over 998 octets breaks it where it likes (inside a tag, an entity, a link)
or sends the part quoted-printable; so the rendered parts are folded here, once per
email, before either can happen:

- HTML breaks where a line break is the same as what it replaces: the space between a
  tag's attributes (also in tags only Outlook reads, inside its conditional comments),
  after a `;` in a style attribute or a <style> block, a space in text outside <pre>, a
  space in a class or alt text. Where text has no space for a whole line (a long word,
  code, a script written without spaces), an empty comment holds the break (`<!--`
  line break `-->`): it renders as nothing, <pre> included, and lays out the same.
  Alt text and the <title> with no space take a line break between two characters,
  a space to a reader of either (no mail client shows them unless an image fails).
  A URL is never broken: `text.MAX_URL_OCTETS` keeps each short enough for a line.
- Plain text breaks at a space, as it is already wrapped; a run without one that cannot
  fit on a line is cut.

A line holding the per-recipient placeholder counts it as the longest URL it may become
(`room`), so no recipient's message has a longer line than the one checked here.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FOLD_AT", "LINE_LIMIT", "fold_html", "fold_text"]

#: RFC 5322 2.1.1: at most 998 octets on a line, CRLF excluded.
LINE_LIMIT = 998
#: Where folding aims, below the limit: room for what a provider may still add to a
#: line (a click-tracking link in place of a short one).
FOLD_AT = 800

# One token of HTML: a comment, a start or end tag (its quoted values may hold '>'), a
# doctype or other declaration, or text.
_TOKEN = re.compile(
    r"(?P<comment><!--.*?-->)"
    r"|(?P<tag></?[A-Za-z][^\s/>]*(?:\s+[^\s=/>\"']+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'=<>`]+))?)*\s*/?>)"
    r"|(?P<other><[!?][^>]*>)"
    r"|(?P<text>[^<]+)"
    # A '<' that starts none of these (HTML that is not well formed): never broken up.
    r"|(?P<stray><[^<]*)",
    re.S,
)
# The whitespace before each attribute of a tag, the attribute's name and its value.
_ATTRIBUTE = re.compile(r"(\s+)([^\s=/>\"']+)(?:\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s\"'=<>`]+))?")
_TAG_NAME = re.compile(r"</?([A-Za-z][^\s/>]*)")
# A tag inside a conditional comment, which Outlook reads as HTML.
_TAG_IN_COMMENT = re.compile(r"<[A-Za-z][^<>]*>")
_ENTITY = re.compile(r"&(?:#[0-9]+|#[xX][0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);?")
# Elements whose text is not HTML, and elements (with <pre>'s own CSS) that keep spaces.
_RAW = {"style", "script", "title", "textarea", "xmp"}
_KEEPS_SPACES = {"pre", "textarea", "listing", "plaintext"}
# Values whose white space collapses: lists of words, and text read aloud, which may
# also take a line break between two characters when it has no space to break at.
_WORDS = {"class"}
_READ_ALOUD = {"alt", "title", "aria-label"}
# In a style value: what to step over whole (a quoted string, a url(...)), or a ';'.
_STYLE_PARTS = re.compile(r"\"[^\"]*\"|'[^']*'|\([^)]*\)|;")
_SPACES = re.compile(r"[ \t]+")
# In a stylesheet: what to step over whole (a quoted string, a url(...)), or a place
# after which a line may break.
_CSS_BREAKS = re.compile(r"\"[^\"]*\"|'[^']*'|url\([^)]*\)|(?P<mark>[;{}])[ \t]*", re.I)

#: A last-resort span of text: (low, high, before, after).
_Spare = tuple[int, int, str, str]


@dataclass
class _Breaks:
    """Where one line may break, counted from its start. `good`: (start, end) spans that
    a line break replaces (white space) or goes into (start == end). `spare`: the last
    resort, (low, high, before, after) spans of text in which a line break may go
    between any two characters, with `before` and `after` around it."""

    good: list[tuple[int, int]] = field(default_factory=list)
    spare: list[_Spare] = field(default_factory=list)


def fold_html(html: str, *, placeholder: str | tuple[str, ...] = "", room: int = 0) -> str:
    """`html` with every line within FOLD_AT octets where it can be, and none over
    LINE_LIMIT unless one URL alone is longer; a `placeholder` (or each of several of one
    length) counts as `room` octets."""
    return _fold(html, placeholder, room, _html_breaks, html=True)


def fold_text(text: str, *, placeholder: str | tuple[str, ...] = "", room: int = 0) -> str:
    """Plain text with every line within LINE_LIMIT octets: a line over FOLD_AT is broken
    at a space, and a run without one is cut only where it would pass the limit."""
    return _fold(text, placeholder, room, _text_breaks, html=False)


# --------------------------------------------------------------------------- the folding


def _fold(
    document: str,
    placeholders: str | tuple[str, ...],
    room: int,
    breaks_of: Callable[[str, list[tuple[int, int]]], dict[int, _Breaks]],
    *,
    html: bool,
) -> str:
    holders = tuple(h for h in ((placeholders,) if isinstance(placeholders, str) else placeholders) if h)
    assert len({len(h) for h in holders}) <= 1, "placeholders of one length"
    placeholder = re.compile("|".join(map(re.escape, holders))) if holders else None
    extra = max(room - len(holders[0].encode("utf-8")), 0) if holders else 0
    lines = document.split("\n")
    # Most lines are short: only those whose octets could pass FOLD_AT are measured.
    long = [
        i
        for i, line in enumerate(lines)
        if len(line) * 4 > FOLD_AT
        and len(line.encode("utf-8")) + (len(placeholder.findall(line)) * extra if placeholder else 0) > FOLD_AT
    ]
    if not long:
        return document
    offsets, at = [], 0
    for line in lines:
        offsets.append(at)
        at += len(line) + 1
    found = breaks_of(document, [(offsets[i], offsets[i] + len(lines[i])) for i in long])
    for i in long:
        lines[i] = _Line(lines[i], placeholder, len(holders[0]) if holders else 0, extra).fold(
            found[offsets[i]], html=html
        )
    return "\n".join(lines)


class _Line:
    """One line being folded, and where its placeholders are."""

    def __init__(self, line: str, placeholder: re.Pattern[str] | None, size: int, extra: int) -> None:
        self.text = line
        self._ascii = line.isascii()
        self._size = size
        self._extra = extra
        self._holders = [m.start() for m in placeholder.finditer(line)] if placeholder else []

    def cost(self, start: int, end: int, added: str = "") -> int:
        """Octets of line[start:end] with `added` (text put around it), each whole
        placeholder counted as the URL it becomes."""
        octets = end - start if self._ascii else len(self.text[start:end].encode("utf-8"))
        octets += len(added)  # ASCII: an empty comment's marks
        if self._holders and self._extra:
            whole = bisect_right(self._holders, end - self._size) - bisect_left(self._holders, start)
            octets += max(whole, 0) * self._extra
        return octets

    def reach(self, start: int, limit: int, added: str = "") -> int:
        """The furthest end of a piece from `start` that stays within `limit` octets."""
        low, high = start, len(self.text)
        while low < high:
            mid = (low + high + 1) // 2
            if self.cost(start, mid, added) <= limit:
                low = mid
            else:
                high = mid - 1
        return low

    def splits_placeholder(self, at: int) -> bool:
        i = bisect_right(self._holders, at) - 1
        return i >= 0 and self._holders[i] < at < self._holders[i] + self._size

    def fold(self, breaks: _Breaks, *, html: bool) -> str:
        """Greedy, left to right: each piece ends at the last good break that keeps it
        within FOLD_AT. Failing that, in HTML, the last spare break within it, else the
        first break of any kind; in plain text, the first space within LINE_LIMIT, else
        (only when the rest is over LINE_LIMIT) a cut within FOLD_AT."""
        line = self.text
        good = sorted(b for b in breaks.good if not self.splits_placeholder(b[0]))
        starts = [b[0] for b in good]
        spare = sorted(breaks.spare)
        pieces: list[str] = []
        carry, pos = "", 0
        while self.cost(pos, len(line), carry) > FOLD_AT:
            end = self.reach(pos, FOLD_AT, carry)
            i = bisect_right(starts, end) - 1
            chosen = good[i] + ("", "") if i >= 0 and starts[i] > pos else None
            if chosen is None and html:
                chosen = self._last_spare(spare, pos, carry)
                if chosen is None:
                    j = bisect_right(starts, pos)
                    options = [
                        b for b in (good[j] + ("", "") if j < len(good) else None, self._next_spare(spare, pos)) if b
                    ]
                    chosen = min(options) if options else None
            elif chosen is None:
                j = bisect_right(starts, pos)
                if j < len(good) and self.cost(pos, starts[j], carry) <= LINE_LIMIT:
                    chosen = good[j] + ("", "")
                elif self.cost(pos, len(line), carry) > LINE_LIMIT:
                    chosen = self._last_spare(spare, pos, carry)
            if chosen is None:
                break
            start, stop, before, after = chosen
            pieces.append(carry + line[pos:start] + before)
            carry, pos = after, stop
        pieces.append(carry + line[pos:])
        return "\n".join(pieces)

    def _fits(self, at: int) -> bool:
        return _may_split(self.text, at) and not _inside_entity(self.text, at) and not self.splits_placeholder(at)

    def _last_spare(self, spare: list[_Spare], pos: int, carry: str) -> tuple[int, int, str, str] | None:
        """The last place in a spare span where a piece from `pos` may end within FOLD_AT."""
        for low, high, before, after in reversed(spare):
            if high <= pos:
                return None
            at = min(high, self.reach(pos, FOLD_AT, carry + before))
            while at > max(low, pos) and not self._fits(at):
                at -= 1
            if at > pos and at >= low and self._fits(at):
                return at, at, before, after
        return None

    def _next_spare(self, spare: list[_Spare], pos: int) -> tuple[int, int, str, str] | None:
        for low, high, before, after in spare:
            at = max(low, pos + 1)
            while at <= high and not self._fits(at):
                at += 1
            if at <= high:
                return at, at, before, after
        return None


def _inside_entity(text: str, at: int) -> bool:
    """Whether `at` falls inside a character reference such as `&amp;`."""
    amp = text.rfind("&", max(0, at - 32), at)
    if amp < 0:
        return False
    match = _ENTITY.match(text, amp)
    return bool(match) and match.end() > at  # type: ignore[union-attr]


def _may_split(text: str, i: int) -> bool:
    """Whether text may be split here: not between a character and its combining marks,
    inside an emoji sequence (joiners, variation selectors, skin tones) or a flag."""
    if i <= 0 or i >= len(text):
        return True
    before, after = unicodedata.category(text[i - 1]), unicodedata.category(text[i])
    if after[0] == "M" or after in ("Cf", "Sk") or before == "Cf":
        return False
    return not (_REGIONAL.match(text[i - 1]) and _REGIONAL.match(text[i]))


_REGIONAL = re.compile("[\U0001f1e6-\U0001f1ff]")


# --------------------------------------------------------------------------- HTML


def _html_breaks(html: str, spans: list[tuple[int, int]]) -> dict[int, _Breaks]:
    """The breaks inside each span (a long line), keyed by the span's start and counted
    from it. Each line is read from the start of the token it begins in (a comment or a
    tag over several lines), knowing whether that is inside <style> or <pre>."""
    regions = _Regions(html)
    out = {}
    for start, end in spans:
        out[start] = _span_breaks(html, regions, start, end)
    return out


def _span_breaks(html: str, regions: _Regions, start: int, end: int) -> _Breaks:
    """The breaks of one long line, html[start:end]."""
    into = _Breaks()
    at = _token_start(html, start)
    raw, keep = regions.at(at)
    for token in _TOKEN.finditer(html, at):
        t_start, t_end = token.span()
        if t_start >= end:
            break
        kind, value = token.lastgroup, token.group()
        if kind == "tag":
            kind, raw, keep = _enter_tag(value, raw, keep)
        if kind == "tag":
            _tag_breaks(value, t_start - start, into)
        elif kind == "comment" and value.startswith("<!--[if"):
            for tag in _TAG_IN_COMMENT.finditer(value):
                _tag_breaks(tag.group(), t_start + tag.start() - start, into)
        elif kind == "text":
            low, high = max(start, t_start), min(end, t_end)
            _text_node_breaks(html[low:high], low - start, raw, keep > 0, into)
    # What a token reaching past the line's ends offered there is not this line's.
    size = end - start
    into.good = [b for b in into.good if b[0] >= 0 and b[1] <= size]
    into.spare = [
        (max(low, 0), min(high, size), before, after)
        for low, high, before, after in into.spare
        if high >= 0 and low <= size
    ]
    return into


def _enter_tag(tag: str, raw: str | None, keep: int) -> tuple[str, str | None, int]:
    """A tag read: ("tag" or, for a '<' inside <style> and the like, "text"; the
    raw-text element it leaves the reader in; how many <pre>-like elements)."""
    name = _TAG_NAME.match(tag).group(1).lower()  # type: ignore[union-attr]
    closing = tag.startswith("</")
    if raw is not None:
        if closing and name == raw:
            return "tag", None, keep
        return "text", raw, keep  # a '<' inside <style> and the like is its text
    if name in _RAW and not closing:
        return "tag", name, keep
    if name in _KEEPS_SPACES:
        keep = max(keep - 1, 0) if closing else keep + 1
    return "tag", raw, keep


def _token_start(html: str, at: int) -> int:
    """Where the token holding position `at` begins: a comment or a tag that started on
    an earlier line, else `at` itself (text; the HTML writer escapes '<' and '>' in
    text and attribute values, so the last '<' before `at` tells)."""
    comment = html.rfind("<!--", 0, at)
    if comment >= 0 and html.find("-->", comment + 4) + 3 > at:
        return comment
    lt = html.rfind("<", 0, at)
    return lt if lt > html.rfind(">", 0, at) else at


class _Regions:
    """Where <style> and the like (text that is not HTML) and <pre> and the like (text
    that keeps its spaces) are, to know what a line starts inside of."""

    _TAGS = re.compile(r"<(/?)(style|script|title|textarea|xmp|pre|listing|plaintext)\b[^>]*>", re.I)

    def __init__(self, html: str) -> None:
        self._marks = [(m.start(), m.group(1) == "/", m.group(2).lower()) for m in self._TAGS.finditer(html)]

    def at(self, pos: int) -> tuple[str | None, int]:
        """(the raw-text element `pos` is in, how many <pre>-like elements it is in)."""
        raw: str | None = None
        keep = 0
        for start, closing, name in self._marks:
            if start >= pos:
                break
            if raw is not None:
                raw = None if closing and name == raw else raw
            elif name in _RAW and not closing:
                raw = name
            elif name in _KEEPS_SPACES:
                keep = max(keep - 1, 0) if closing else keep + 1
        return raw, keep


def _tag_breaks(tag: str, offset: int, into: _Breaks) -> None:
    """Between attributes; after a `;` in a style value; at a space in a class list or
    alt text (where a line break between two characters is the last resort)."""
    for attr in _ATTRIBUTE.finditer(tag):
        start, end = attr.span(1)
        into.good.append((offset + start, offset + end))
        name, value = attr.group(2).lower(), attr.group(3)
        if not value or value[0] not in "\"'":
            continue
        first = offset + attr.start(3) + 1
        body = value[1:-1]
        if name == "style":
            for part in _STYLE_PARTS.finditer(body):
                at = part.end()
                if part.group() == ";" and at < len(body):
                    into.good.append((first + at, first + at + (body[at] == " ")))
        elif name in _WORDS or name in _READ_ALOUD:
            into.good.extend((first + m.start(), first + m.end()) for m in _SPACES.finditer(body))
            if name in _READ_ALOUD:
                into.spare.append((first, first + len(body), "", ""))


def _text_node_breaks(text: str, offset: int, raw: str | None, keep_spaces: bool, into: _Breaks) -> None:
    if raw == "style":
        # Between CSS declarations and rules, in place of the white space after a ';',
        # '{' or '}' or where a stylesheet written without any has none; never inside
        # a value (a font's quoted name, a url(...)).
        into.good.extend(
            (offset + m.end("mark"), offset + m.end()) for m in _CSS_BREAKS.finditer(text) if m.group("mark")
        )
    elif raw == "title":  # white space collapses, and no mail client shows it
        into.good.extend((offset + m.start(), offset + m.end()) for m in _SPACES.finditer(text))
        into.spare.append((offset, offset + len(text), "", ""))
    elif raw is None:
        if not keep_spaces:
            into.good.extend((offset + m.start(), offset + m.end()) for m in _SPACES.finditer(text))
        into.spare.append((offset, offset + len(text), "<!--", "-->"))


# --------------------------------------------------------------------------- plain text


def _text_breaks(text: str, spans: list[tuple[int, int]]) -> dict[int, _Breaks]:
    out = {}
    for start, end in spans:
        line = text[start:end]
        out[start] = _Breaks([(m.start(), m.end()) for m in re.finditer(r" +", line)], [(1, len(line) - 1, "", "")])
    return out
