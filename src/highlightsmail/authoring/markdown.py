"""Markdown (CommonMark) as the email shows it: HTML for the HTML part, readable
wrapped text for the plain-text part.

Raw HTML is never passed through (an editor's `<script>` or `<img onerror>` is shown
as text, never markup), links go only to http(s) and mailto, and words the caller reserves (the
unsubscribe placeholder) can't be produced by anything an editor writes, however it
is spelled (entities, backslash escapes, emphasis split across the word).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from markdown_it import MarkdownIt
from markdown_it.token import Token
from markdown_it.tree import SyntaxTreeNode

from highlightsmail.text import url_problem

__all__ = ["LinkRefs", "Ref", "convert", "defuse_text", "defuse_url", "text_width", "to_html", "to_text", "wrap"]

_SAFE_SCHEMES = ("http://", "https://", "mailto:")
_ZWSP = "\u200b"
_NBSP = "\u00a0"


# --------------------------------------------------------------------------- reserved words


def defuse_text(text: str, reserved: Iterable[str]) -> str:
    """`text` with every reserved word broken by an invisible zero-width space, so it
    reads the same but no longer matches when the placeholder is replaced."""
    for word in reserved:
        if word in text:
            text = text.replace(word, word[0] + _ZWSP + word[1:])
    return text


def defuse_url(url: str, reserved: Iterable[str]) -> str:
    """`url` with the first character of every reserved word percent-encoded: the same
    address to a server (RFC 3986, 6.2.2.2), but no longer the placeholder, so no
    recipient's unsubscribe link can be leaked to a third-party site."""
    for word in reserved:
        if word in url:
            first = "".join(f"%{b:02X}" for b in word[0].encode("utf-8"))
            url = url.replace(word, first + word[1:])
    return url


# --------------------------------------------------------------------------- parser


class _EmailMarkdown(MarkdownIt):
    """CommonMark without raw HTML, and links only to places a mail client may open."""

    def validateLink(self, url: str) -> bool:
        # Relative links lead nowhere from an inbox; javascript:/data:/file: must never
        # reach an href; a URL too long for a line of mail cannot be a link in one (lint
        # says so). Refused links stay visible as their Markdown text.
        return url.strip().lower().startswith(_SAFE_SCHEMES) and url_problem(url) is None


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    return _EmailMarkdown("commonmark", {"html": False, "typographer": False})


def _parse(source: str, reserved: Sequence[str]) -> list[Token]:
    tokens = _parser().parse(source)
    _prepare(tokens, reserved)
    return tokens


def _prepare(tokens: list[Token], reserved: Sequence[str]) -> None:
    """Defuse reserved words in every piece of text and every URL; let paragraphs
    and headings pick their own direction, so Arabic or Hebrew reads right to left."""
    for tok in tokens:
        if tok.type in ("paragraph_open", "heading_open", "list_item_open"):
            tok.attrSet("dir", "auto")
        if reserved:
            if tok.content:
                tok.content = defuse_text(tok.content, reserved)
            for name in ("href", "src"):
                value = tok.attrGet(name)
                if isinstance(value, str):
                    tok.attrSet(name, defuse_url(value, reserved))
        if tok.children:
            _prepare(tok.children, reserved)


# --------------------------------------------------------------------------- HTML


def to_html(source: str, *, reserved: Sequence[str] = ()) -> str:
    """Markdown -> an HTML fragment (raw HTML escaped, unsafe links left as text)."""
    return _render_html(_parse(source, reserved))


def _render_html(tokens: list[Token]) -> str:
    md = _parser()
    html: str = md.renderer.render(tokens, md.options, {})
    return html.strip()


# --------------------------------------------------------------------------- plain text


@dataclass(frozen=True)
class Ref:
    """A numbered link reference of the plain-text part: `[n] url`."""

    number: int
    url: str
    label: str | None = None


@dataclass
class LinkRefs:
    """Numbers the links of one plain-text document, in reading order, from 1."""

    refs: list[Ref] = field(default_factory=list)
    _taken: int = 0

    def add(self, url: str, label: str | None = None) -> int:
        ref = Ref(len(self.refs) + 1, url, label)
        self.refs.append(ref)
        return ref.number

    def take(self) -> list[Ref]:
        """The references added since the last call."""
        new = self.refs[self._taken :]
        self._taken = len(self.refs)
        return new


def to_text(source: str, *, width: int = 72, refs: LinkRefs | None = None, reserved: Sequence[str] = ()) -> str:
    """Markdown -> plain text wrapped at `width`: paragraphs, `- ` lists, links as
    `text [n]`. Without `refs`, the numbered references follow the text."""
    own = refs is None
    refs = LinkRefs() if refs is None else refs
    text = _render_text(_parse(source, reserved), width, refs, reserved)
    if own and refs.refs:
        text += "\n\n" + "\n".join(format_ref(r) for r in refs.take())
    return text


def convert(source: str, *, width: int, refs: LinkRefs, reserved: Sequence[str] = ()) -> tuple[str, str]:
    """Markdown -> (HTML, plain text), parsing once."""
    tokens = _parse(source, reserved)
    return _render_html(tokens), _render_text(tokens, width, refs, reserved)


def format_ref(ref: Ref) -> str:
    return f"[{ref.number}] {ref.label}: {ref.url}" if ref.label else f"[{ref.number}] {ref.url}"


def _render_text(tokens: list[Token], width: int, refs: LinkRefs, reserved: Sequence[str]) -> str:
    blocks = _text_blocks(SyntaxTreeNode(tokens), max(width, 20), refs)
    # Emphasis markers are dropped, which could join the pieces of a reserved word.
    return defuse_text("\n\n".join(blocks), reserved)


def _text_blocks(node: SyntaxTreeNode, width: int, refs: LinkRefs) -> list[str]:
    out: list[str] = []
    for child in node.children:
        kind = child.type
        if kind in ("paragraph", "heading"):
            out.append(wrap(_inline_text(child.children[0], refs) if child.children else "", width))
        elif kind in ("bullet_list", "ordered_list"):
            out.append(_list_text(child, width, refs))
        elif kind == "blockquote":
            inner = "\n\n".join(_text_blocks(child, width - 2, refs))
            out.append("\n".join(("> " + line).rstrip() for line in inner.split("\n")))
        elif kind in ("code_block", "fence"):
            # Code keeps its lines: wrapping would change its meaning.
            out.append("\n".join(("    " + line).rstrip() for line in child.content.rstrip("\n").split("\n")))
        elif kind == "hr":
            out.append("* * *")
        elif child.children:
            out.extend(_text_blocks(child, width, refs))
    return [b for b in out if b.strip()]


def _list_text(node: SyntaxTreeNode, width: int, refs: LinkRefs) -> str:
    ordered = node.type == "ordered_list"
    start = int(node.attrs.get("start", 1)) if ordered else 1
    tight = any(p.hidden for li in node.children for p in li.children if p.type == "paragraph")
    items = []
    for i, li in enumerate(node.children):
        marker = f"{start + i}. " if ordered else "- "
        pad = " " * len(marker)
        body = ("\n" if tight else "\n\n").join(_text_blocks(li, width - len(marker), refs))
        lines = body.split("\n") if body else [""]
        items.append("\n".join([marker + lines[0]] + [(pad + line).rstrip() for line in lines[1:]]))
    return ("\n" if tight else "\n\n").join(items)


def _inline_text(node: SyntaxTreeNode, refs: LinkRefs) -> str:
    parts: list[str] = []
    for child in node.children:
        kind = child.type
        if kind in ("text", "code_inline"):
            parts.append(child.content)
        elif kind == "softbreak":
            parts.append(" ")
        elif kind == "hardbreak":
            parts.append("\n")
        elif kind == "strong":
            parts.append("*" + _inline_text(child, refs) + "*")
        elif kind == "em":
            parts.append(_inline_text(child, refs))
        elif kind == "link":
            href = str(child.attrs.get("href", ""))
            label = _inline_text(child, refs)
            if _same_address(label, href):
                parts.append(label)  # an autolink already shows its address
            else:
                # The non-breaking space keeps "[n]" on the line of the words it marks.
                parts.append(f"{label}{_NBSP}[{refs.add(href)}]")
        elif kind == "image":
            alt = _inline_text(child, refs) or "image"
            parts.append(f"[{alt}]{_NBSP}[{refs.add(str(child.attrs.get('src', '')))}]")
        elif child.children:
            parts.append(_inline_text(child, refs))
    return "".join(parts)


def _same_address(label: str, href: str) -> bool:
    bare = re.sub(r"^(https?://|mailto:)", "", href)
    return label in (href, bare)


# --------------------------------------------------------------------------- wrapping

_WORD = re.compile(r"[^ \t]+")
_URLISH = re.compile(r"(https?://|mailto:|www\.)", re.IGNORECASE)


def text_width(text: str) -> int:
    """Columns `text` takes in a monospace terminal: East Asian wide characters take two."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def wrap(text: str, width: int = 72, first: str = "", rest: str = "") -> str:
    """Greedy wrapping at `width` columns, line breaks in `text` kept; the first line
    starts with `first`, the others with `rest`.

    A URL is never broken (it would stop working), so a line holding one may be
    longer; any other word wider than the line is cut. Non-breaking spaces bind words
    and come out as plain spaces.
    """
    out: list[str] = []
    rest_width = text_width(rest)
    room = max(width - rest_width, 10)
    prefix = first
    for raw in text.split("\n"):
        parts, used, has_word = [prefix], text_width(prefix), False
        for word in _WORD.findall(raw):
            size = text_width(word)
            pieces = [(word, size)] if size <= room or _URLISH.search(word) else _cut(word, room)
            for piece, size in pieces:
                if has_word and used + 1 + size > width:
                    out.append("".join(parts))
                    parts, used, has_word = [rest], rest_width, False
                if has_word:
                    parts.append(" ")
                    used += 1
                parts.append(piece)
                used += size
                has_word = True
        line = "".join(parts)
        out.append(line if has_word else line.rstrip())
        prefix = rest
    return "\n".join(out).replace(_NBSP, " ")


def _cut(word: str, room: int) -> list[tuple[str, int]]:
    """A word too wide for a line, in pieces that fit, each with its width."""
    pieces, current, used = [], "", 0
    for ch in word:
        w = text_width(ch)
        if used + w > room:
            pieces.append((current, used))
            current, used = "", 0
        current += ch
        used += w
    if current:
        pieces.append((current, used))
    return pieces
