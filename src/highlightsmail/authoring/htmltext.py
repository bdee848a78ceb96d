"""HTML from a feed (an entry's summary or content) as the Markdown an issue holds.

Only what a reader of an email should see survives: no script, no style, no hidden
element, no tracking pixel (an image of 1 by 1 or 0 pixels, or one from a host that only
counts readers), no link that is not http(s) or mailto (`javascript:`, `data:`), and
relative links resolved against the entry's own link, since a relative link leads
nowhere from an inbox. Text is escaped, so a feed's `*`, `[1]` or `<b>` written as text
stays text. Headings become bold paragraphs: an item's summary has no sections.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

from highlightsmail.text import FORBIDDEN_IN_TEXT, url_problem

__all__ = ["MAX_HTML_CHARS", "clean_text", "html_to_markdown", "html_to_text", "shorten", "text_to_markdown"]

#: An entry's HTML is cut here before it is read: a summary needs a fraction of it, and
#: a hostile feed could send megabytes of nested tags.
MAX_HTML_CHARS = 200_000

# Elements whose content is never text for a reader of an email.
_DROPPED = frozenset(
    [
        "script",
        "style",
        "noscript",
        "template",
        "iframe",
        "object",
        "embed",
        "applet",
        "svg",
        "math",
        "head",
        "title",
        "form",
        "button",
        "select",
        "textarea",
        "video",
        "audio",
        "canvas",
        "map",
        "frame",
        "frameset",
        "dialog",
    ]
)
_VOID = frozenset(
    ["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"]
)
_BLOCKS = frozenset(
    [
        "p",
        "div",
        "section",
        "article",
        "header",
        "footer",
        "main",
        "aside",
        "nav",
        "figure",
        "figcaption",
        "address",
        "center",
        "details",
        "summary",
        "dl",
        "dt",
        "dd",
        "table",
        "thead",
        "tbody",
        "tfoot",
        "tr",
        "caption",
        "fieldset",
        "ul",
        "ol",
        "li",
        "blockquote",
        "pre",
        "hr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
    ]
)
_HEADINGS = frozenset(["h1", "h2", "h3", "h4", "h5", "h6"])
_EMPHASIS = {"em": "*", "i": "*", "cite": "*", "dfn": "*", "var": "*", "strong": "**", "b": "**"}
_CODE = frozenset(["code", "kbd", "samp", "tt"])

#: Hosts whose images only count who opened a page (or an email); any image from them
#: is a tracking pixel whatever its size. A host matches itself and its subdomains.
TRACKER_HOSTS = (
    "feedburner.com",
    "feedproxy.google.com",
    "pixel.wp.com",
    "stats.wordpress.com",
    "google-analytics.com",
    "googletagmanager.com",
    "doubleclick.net",
    "scorecardresearch.com",
    "quantserve.com",
    "mc.yandex.ru",
    "bat.bing.com",
    "px.ads.linkedin.com",
    "analytics.twitter.com",
    "ct.pinterest.com",
    "pixel.mathtag.com",
    "api.mixpanel.com",
    "list-manage.com",
    "eotrx.substackcdn.com",
    "track.hubspot.com",
)

# What YAML cannot hold (its printable set, as PyYAML reads it) besides what no text of
# an email may: lone surrogates, which a broken encoding can leave.
_UNPRINTABLE = re.compile("[\ud800-\udfff]")
_ASCII_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")
_ESCAPED = re.compile(r"([\\`*\[\]<>])")
_LONE_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_ENTITY_LIKE = re.compile(r"&(?=#?\w+;)")
_LINE_START = re.compile(r"^([#>+\-=|~])|^(\d+)([.)])")
_BREAK = "\x00"  # a <br> inside a paragraph until the paragraph is finished


def clean_text(value: str) -> str:
    """`value` with nothing an email or a YAML file cannot carry: control characters,
    noncharacters and lone surrogates go, every kind of line break becomes a newline."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    value = value.replace("\u2028", "\n").replace("\u2029", "\n\n").replace("\x85", "\n")
    value = value.replace("\x0b", " ").replace("\x0c", " ")  # tabs stay: a browser drops them from a URL
    if value.isascii():  # most feeds: the short pattern, several times faster than the whole one
        return _ASCII_CONTROLS.sub("", value)
    return _UNPRINTABLE.sub("", FORBIDDEN_IN_TEXT.sub("", value))


def shorten(value: str, limit: int) -> str:
    """`value` cut to at most `limit` characters at a word's end, with `…` when cut."""
    if len(value) <= limit:
        return value
    cut = value[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


def _escape(text: str) -> str:
    """Text that Markdown shows as it is: its markup characters escaped."""
    text = _ESCAPED.sub(r"\\\1", text)
    text = _LONE_UNDERSCORE.sub(r"\\_", text)
    return _ENTITY_LIKE.sub(r"\\&", text)


def _escape_line_start(line: str) -> str:
    """A line that must not open a heading, a quote, a list or a rule."""
    return _LINE_START.sub(lambda m: f"\\{m[1]}" if m[1] else f"{m[2]}\\{m[3]}", line, count=1)


# --------------------------------------------------------------------------- the tree


@dataclass
class _Node:
    tag: str
    attrs: dict[str, str]
    children: list[_Node | str] = field(default_factory=list)


def _hidden(attrs: dict[str, str]) -> bool:
    style = attrs.get("style", "").replace(" ", "").lower()
    return "hidden" in attrs or "display:none" in style or "visibility:hidden" in style


class _TreeBuilder(HTMLParser):
    """HTML into a tree of `_Node`s, forgiving as a browser: an end tag with no open
    element is ignored, and one closes whatever was left open inside it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("", {})
        self.stack = [self.root]
        self.skip: tuple[str, int] | None = None  # the element being dropped, how deep

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if self.skip is not None:
            if tag == self.skip[0]:
                self.skip = (tag, self.skip[1] + 1)
            return
        if tag in _DROPPED or _hidden(values):
            if tag == "math" and values.get("alttext"):
                self.stack[-1].children.append(values["alttext"])
            if tag not in _VOID:
                self.skip = (tag, 1)
            return
        self._close_implied(tag)
        node = _Node(tag, values)
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def _close_implied(self, tag: str) -> None:
        """A block closes an open paragraph; a list item closes the item before it."""
        if tag in _BLOCKS and self.stack[-1].tag == "p":
            self.stack.pop()
        if tag == "li":
            for depth in range(len(self.stack) - 1, 0, -1):
                if self.stack[depth].tag in ("ul", "ol"):
                    break
                if self.stack[depth].tag == "li":
                    del self.stack[depth:]
                    break

    def handle_endtag(self, tag: str) -> None:
        if self.skip is not None:
            if tag == self.skip[0]:
                depth = self.skip[1] - 1
                self.skip = (tag, depth) if depth else None
            return
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        if self.skip is None:
            self.stack[-1].children.append(data)


def _parse(html: str) -> _Node:
    builder = _TreeBuilder()
    builder.feed(clean_text(html[:MAX_HTML_CHARS]))
    builder.close()
    return builder.root


# --------------------------------------------------------------------------- URLs and images


def safe_url(href: str, base: str | None, *, images: bool = False) -> str | None:
    """`href` resolved against `base`, as a Markdown link destination; None when it is
    not http(s) (or, for a link, mailto), has no host, or is too long for a line of mail."""
    href = re.sub(r"[\t\n\r]", "", href).strip()
    if not href:
        return None  # an empty href (a sanitizer's leftover) would resolve to the page itself
    try:
        url = urljoin(base, href) if base else href
        parts = urlsplit(url)
    except ValueError:
        return None
    schemes = ("http", "https") if images else ("http", "https", "mailto")
    if parts.scheme.lower() not in schemes or (parts.scheme.lower() != "mailto" and not parts.hostname):
        return None
    for ch, code in ((" ", "%20"), ("(", "%28"), (")", "%29"), ("<", "%3C"), (">", "%3E"), ("\\", "%5C")):
        url = url.replace(ch, code)
    return url if url_problem(url) is None and not any(ch.isspace() for ch in url) else None


def _size(value: str) -> float | None:
    match = re.match(r"\s*(\d+(?:\.\d+)?)\s*(?:px)?\s*$", value)
    return float(match[1]) if match else None


def is_tracking_pixel(attrs: dict[str, str], url: str) -> bool:
    """An image that only tells someone the text was opened: 0 or 1 pixel wide or high
    (by attribute or style), or from a host that does nothing else."""
    style = attrs.get("style", "").replace(" ", "").lower()
    sizes = [attrs.get("width", ""), attrs.get("height", "")]
    sizes += re.findall(r"(?:^|;)(?:max-)?(?:width|height):([\d.]+)px", style)
    if any((size := _size(value)) is not None and size <= 1 for value in sizes):
        return True
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    return any(host == known or host.endswith("." + known) for known in TRACKER_HOSTS)


# --------------------------------------------------------------------------- rendering


@dataclass
class _Renderer:
    base: str | None

    def inline(self, node: _Node) -> str:
        return "".join(self._piece(child) for child in node.children)

    def _piece(self, child: _Node | str) -> str:
        if isinstance(child, str):
            return _escape(_SPACES.sub(" ", child))
        tag = child.tag
        if tag == "br":
            return _BREAK
        if tag == "img":
            return self._image(child)
        if tag == "a":
            return self._link(child)
        if tag in _CODE:
            return _code_span(_SPACES.sub(" ", _plain(child)))
        inner = self.inline(child)
        if tag in _EMPHASIS:
            return _wrap(inner, _EMPHASIS[tag])
        if tag in ("td", "th", "dt", "dd"):
            return f" {inner} "
        return inner

    def _image(self, node: _Node) -> str:
        url = safe_url(node.attrs.get("src", ""), self.base, images=True)
        alt = _escape(_SPACES.sub(" ", node.attrs.get("alt", "")).strip())
        if url is None or not alt or is_tracking_pixel(node.attrs, url):
            return ""  # an image without alt text would fail `check`; nothing to describe it with
        return f"![{alt}]({url})"

    def _link(self, node: _Node) -> str:
        inner = self.inline(node)
        url = safe_url(node.attrs.get("href", ""), self.base)
        if url is None or not inner.replace(_BREAK, "").strip():
            return inner
        return _wrap(inner, "[", f"]({url})")

    def blocks(self, node: _Node) -> Iterator[str]:
        """The Markdown blocks of `node`'s children, in order."""
        run: list[_Node | str] = []
        for child in node.children:
            if isinstance(child, _Node) and child.tag in _BLOCKS:
                yield from self._paragraph(run)
                run = []
                yield from self._block(child)
            else:
                run.append(child)
        yield from self._paragraph(run)

    def _paragraph(self, run: list[_Node | str]) -> Iterator[str]:
        text = self.inline(_Node("", {}, run))
        lines = [" ".join(line.split()) for line in text.split(_BREAK)]
        lines = [_escape_line_start(line) for line in lines if line]
        if lines:
            yield "\\\n".join(lines)

    def _block(self, node: _Node) -> Iterator[str]:
        tag = node.tag
        if tag in _HEADINGS:
            for paragraph in self._paragraph(node.children):
                yield _wrap(paragraph, "**")
        elif tag in ("ul", "ol"):
            yield from self._list(node)
        elif tag == "blockquote":
            inner = "\n\n".join(self.blocks(node))
            if inner:
                yield "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))
        elif tag == "pre":
            yield from _fenced(_plain(node))
        elif tag == "tr":
            yield from self._paragraph(node.children)
        else:
            yield from self.blocks(node)

    def _list(self, node: _Node) -> Iterator[str]:
        items = []
        number = 1
        for child in node.children:
            if isinstance(child, str) and not child.strip():
                continue
            content = "\n\n".join(self.blocks(child if isinstance(child, _Node) else _Node("li", {}, [child])))
            if not content:
                continue
            marker = f"{number}. " if node.tag == "ol" else "- "
            number += 1
            indent = " " * len(marker)
            lines = content.split("\n")
            items.append(marker + lines[0] + "".join(f"\n{indent}{line}" if line else "\n" for line in lines[1:]))
        if items:
            yield "\n".join(items)


def _plain(node: _Node | str) -> str:
    """The text of a node as it is, for code (no escaping, no Markdown)."""
    if isinstance(node, str):
        return node
    if node.tag == "br":
        return "\n"
    return "".join(_plain(child) for child in node.children)


def _wrap(inner: str, left: str, right: str | None = None) -> str:
    """`inner` between markers, with its outer spaces outside them (emphasis does not
    open next to a space)."""
    core = inner.strip(" ")
    if not core.replace(_BREAK, "").strip():
        return inner
    lead = " " if inner.startswith(" ") else ""
    trail = " " if inner.endswith(" ") else ""
    return f"{lead}{left}{core}{left if right is None else right}{trail}"


def _code_span(text: str) -> str:
    if not text.strip():
        return text
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _fenced(text: str) -> Iterator[str]:
    lines = [line.rstrip() for line in text.strip("\n").split("\n")]
    if any(lines):
        fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
        yield "\n".join([fence, *lines, fence])


def _budget(blocks: Iterator[str], limit: int, plain: Callable[[], str]) -> str:
    """Whole blocks up to `limit` characters, with `…` after the last when some are
    left out; when even the first is longer, the plain text cut at a word's end."""
    kept: list[str] = []
    size = 0
    for block in blocks:
        if size + len(block) > limit:
            if not kept:
                return _escape_line_start(_escape(shorten(" ".join(plain().split()), limit)))
            kept.append("…")
            break
        kept.append(block)
        size += len(block) + 2
    return "\n\n".join(kept)


def html_to_markdown(html: str, base: str | None = None, *, limit: int = 1500) -> str:
    """Markdown of at most about `limit` characters for the HTML `html`, its relative
    links resolved against `base`; "" when nothing readable is in it."""
    root = _parse(html)
    renderer = _Renderer(base)
    return _budget(renderer.blocks(root), limit, lambda: " ".join(_visible(root).split()))


def html_to_text(html: str) -> str:
    """The readable text of `html` on one line (for a title): no markup, no escapes."""
    root = _parse(html)
    return " ".join(_visible(root).split())


def _visible(node: _Node | str) -> str:
    if isinstance(node, str):
        return node
    if node.tag == "img":
        return ""
    separator = " " if node.tag in _BLOCKS or node.tag in ("br", "td", "th") else ""
    return separator + "".join(_visible(child) for child in node.children) + separator


def text_to_markdown(text: str, *, limit: int = 1500) -> str:
    """Plain text (a JSON Feed's `content_text`) as Markdown: its paragraphs kept, every
    character shown as it is."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", clean_text(text))]
    blocks = (_escape_line_start(_escape(p)) for p in paragraphs if p)
    return _budget(blocks, limit, lambda: text)
