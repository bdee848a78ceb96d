"""`highlights check`: validation, then lint of what the reader will get.

Validation (yamlfile.py) refuses a file that cannot be an issue. Lint looks at a valid
issue and its rendering for what an editor would want to fix before sending: an email
Gmail will clip, links that are not https, images without alt text, a subject that
inboxes cut short, a template that lost its unsubscribe link. Each finding names the
place in the issue file (or the template) as `FILE:LINE:COL:`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from highlightsmail.errors import HighlightsError, Problem, display_path

if TYPE_CHECKING:
    from highlightsmail.issue import Issue
    from highlightsmail.render import RenderedIssue
    from highlightsmail.workspace import Workspace
    from highlightsmail.yamlfile import YamlDocument

KB = 1000
# Gmail shows "[Message clipped]" and hides the rest (the footer with the unsubscribe
# link among it) when the HTML is over 102 KB. Counted in bytes of 1000 to stay on the
# safe side of either reading of "KB".
GMAIL_CLIP_BYTES = 102 * KB
SIZE_WARNING_BYTES = 90 * KB
# RFC 5322 asks for lines of at most 78 characters; inboxes cut subjects sooner still.
SUBJECT_MAX = 78
# The longest token tokens.Signer makes: kind, 13 base-36 digits, '.', 22 characters.
_TOKEN_SHAPE = "u" + "z" * 13 + "." + "A" * 22

_TODO = re.compile(r"\bTODO\b")

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class _Text:
    """A text field of the issue: where it is, its value, whether it is Markdown."""

    loc: Loc
    value: str
    markdown: bool


def _texts(issue: Issue) -> Iterator[_Text]:
    for key in ("title", "subject", "preheader"):
        value = getattr(issue, key)
        if value:
            yield _Text((key,), value, False)
    if issue.intro:
        yield _Text(("intro",), issue.intro, True)
    for i, item in enumerate(issue.items):
        yield _Text(("items", i, "title"), item.title, False)
        yield _Text(("items", i, "summary"), item.summary, True)
        for j, link in enumerate(item.links):
            yield _Text(("items", i, "links", j, "label"), link.label, False)
        if item.image is not None:
            yield _Text(("items", i, "image", "alt"), item.image.alt, False)
    if issue.outro:
        yield _Text(("outro",), issue.outro, True)


@dataclass(frozen=True)
class _Link:
    """A URL in the issue: a link button, an image, or a link inside Markdown."""

    loc: Loc
    url: str
    item: int | None  # the item it belongs to, for duplicate detection
    in_markdown: bool
    is_image: bool = False


@functools.cache
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    class _SeeEveryLink(MarkdownIt):
        # The renderer shows a link it refuses (relative, javascript:) as plain text;
        # lint must see it to say so.
        def validateLink(self, url: str) -> bool:
            return True

    return _SeeEveryLink("commonmark", {"html": False})


def _markdown_inline(text: str) -> Iterator[Any]:
    for block in _markdown().parse(text):
        yield from block.children or ()


def _markdown_links(loc: Loc, text: str | None, item: int | None) -> Iterator[_Link]:
    for token in _markdown_inline(text or ""):
        if token.type == "link_open":
            yield _Link(loc, str(token.attrs.get("href", "")), item, True)
        elif token.type == "image":
            yield _Link(loc, str(token.attrs.get("src", "")), item, True, is_image=True)


def _links(issue: Issue) -> Iterator[_Link]:
    """Every URL of the issue in reading order: intro, then each item's summary, link
    buttons and image, then the outro."""
    yield from _markdown_links(("intro",), issue.intro, None)
    for i, item in enumerate(issue.items):
        yield from _markdown_links(("items", i, "summary"), item.summary, i)
        for j, link in enumerate(item.links):
            yield _Link(("items", i, "links", j, "url"), link.url, i, False)
        if item.image is not None:
            yield _Link(("items", i, "image", "url"), item.image.url, i, False, is_image=True)
    yield from _markdown_links(("outro",), issue.outro, None)


class _Positions:
    """Where things are in the issue file, from yamlfile's document (key paths to
    line and column) and the file's text (to find a URL inside a Markdown block)."""

    def __init__(self, file: str, doc: YamlDocument | None, text: str) -> None:
        self.file = file
        self.doc = doc
        self.text = text
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def at(self, loc: Sequence[Any], *, key: bool = False) -> tuple[int, int]:
        if self.doc is None:
            return (1, 1)
        return self.doc.where(loc, key=key)

    def find(self, loc: Sequence[Any], needle: str) -> tuple[int, int]:
        """The position of `needle` inside the value at `loc` (a URL in a summary), or
        of the value itself when it is not found there as written."""
        line, col = self.at(loc)
        if self.doc is None or not needle or line > len(self._line_starts):
            return (line, col)
        start = self._line_starts[line - 1] + col - 1
        # The value ends before the next key or value the file holds.
        later = [
            self._line_starts[ln - 1] + c - 1
            for ln, c in (*self.doc.positions.values(), *self.doc.key_positions.values())
            if (ln, c) > (line, col) and ln <= len(self._line_starts)
        ]
        end = min(later, default=len(self.text))
        index = self.text.find(needle, start, end)
        if index < 0:
            return (line, col)
        found_line = self.text.count("\n", 0, index) + 1
        return (found_line, index - self._line_starts[found_line - 1] + 1)

    def problem(
        self, loc: Sequence[Any], message: str, severity: str = "error", *, key: bool = False, needle: str | None = None
    ) -> Problem:
        line, col = self.find(loc, needle) if needle else self.at(loc, key=key)
        from highlightsmail.yamlfile import dotted

        prefix = dotted(tuple(loc))
        text = f"{prefix}: {message}" if prefix else message
        return Problem(self.file, line, col, text, severity)  # type: ignore[arg-type]


def _positions_for(issue: Issue) -> _Positions:
    """Positions in the issue's file; none (everything at 1:1) when it has no file."""
    if issue.source is None:
        return _Positions("<issue>", None, "")
    from highlightsmail.issue import Issue as IssueModel
    from highlightsmail.yamlfile import read_document

    path = Path(issue.source)
    try:
        doc = read_document(path, IssueModel)
        text = path.read_text(encoding="utf-8-sig")
    except (HighlightsError, OSError, UnicodeDecodeError):
        # Changed on disk since it was loaded: the findings still count, at 1:1.
        return _Positions(display_path(path), None, "")
    return _Positions(doc.file, doc, text)


def _template_file(ws: Workspace, name: str) -> str:
    """The template in use: the workspace's own, else the package's default."""
    own = ws.templates_dir / name
    if own.is_file():
        return display_path(own)
    return display_path(Path(__file__).parent / "templates" / name)


def _check_url(link: _Link) -> tuple[str, str] | None:
    """(severity, message) for a URL that is not a plain https one, else None."""
    parts = urlsplit(link.url)
    scheme = parts.scheme.lower()
    what = "image" if link.is_image else "link"
    if scheme == "https" and parts.hostname:
        return None
    if scheme == "http" and parts.hostname:
        why = (
            "mail clients block or warn about images over http"
            if link.is_image
            else "readers' browsers may warn, and the click can be read or changed on the way"
        )
        return "warning", f"{what} {link.url} is not https: {why}"
    if scheme == "mailto" and not link.is_image:
        return None
    if scheme in ("http", "https"):
        return "error", f"{what} {link.url!r} has no host; write it like https://example.org/page"
    shown = f"'{scheme}:'" if scheme else "a relative URL"
    shown_as = "; the email shows it as plain text" if link.in_markdown and not link.is_image else ""
    return "error", f"{what} {link.url!r}: links must be absolute http(s) URLs, not {shown}{shown_as}"


def _same_link(url: str) -> str:
    """What makes two links the same for the duplicate check: case of scheme and host,
    and a trailing slash, do not count."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{(parts.netloc or '').lower()}{path}?{parts.query}#{parts.fragment}"


def lint_issue(ws: Workspace, issue: Issue, rendered: RenderedIssue) -> list[Problem]:
    """Every lint finding for a valid issue and its rendering, sorted by place.

    Errors (severity "error") make `check` fail; warnings are advice.
    """
    from highlightsmail.render import UNSUBSCRIBE_PLACEHOLDER
    from highlightsmail.yamlfile import dotted

    pos = _positions_for(issue)
    found: list[Problem] = []

    # -- size: measured as sent, with an unsubscribe URL as long as a real one
    html, text = _as_sent(ws, rendered)
    size = len(html.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        found.append(
            pos.problem(
                ("items",),
                f"the HTML is {size / KB:.1f} KB: Gmail clips emails over "
                f"{GMAIL_CLIP_BYTES // KB} KB and hides the rest, footer and unsubscribe link "
                "included; shorten the issue or split it",
                key=True,
            )
        )
    elif size > SIZE_WARNING_BYTES:
        found.append(
            pos.problem(
                ("items",),
                f"the HTML is {size / KB:.1f} KB, close to the {GMAIL_CLIP_BYTES // KB} KB where Gmail clips emails",
                "warning",
                key=True,
            )
        )

    # -- subject and preheader
    subject = issue.effective_subject
    if len(subject) > SUBJECT_MAX:
        where = "subject" if issue.subject else "title"
        found.append(
            pos.problem(
                (where,),
                f"the subject is {len(subject)} characters; inboxes cut it after about "
                f"{SUBJECT_MAX}" + ("" if issue.subject else " (add a shorter `subject:`)"),
                "warning",
                key=True,
            )
        )
    if not issue.preheader:
        line, col = pos.at(())
        found.append(
            Problem(
                pos.file,
                line,
                col,
                "no preheader: inboxes will preview the first words of the email "
                "instead; add `preheader:` (up to 150 characters)",
                "warning",
            )
        )

    # -- links and images
    seen: dict[str, _Link] = {}
    for link in _links(issue):
        verdict = _check_url(link)
        if verdict is not None:
            severity, message = verdict
            found.append(pos.problem(link.loc, message, severity, needle=link.url if link.in_markdown else None))
        if link.is_image or link.item is None or urlsplit(link.url).scheme.lower() not in ("http", "https"):
            continue
        same = _same_link(link.url)
        first = seen.setdefault(same, link)
        if first is not link and first.item != link.item:
            found.append(
                pos.problem(
                    link.loc,
                    f"{link.url} is also linked from item {first.item + 1} "  # type: ignore[operator]
                    f"({dotted(first.loc)})",
                    "warning",
                    needle=link.url if link.in_markdown else None,
                )
            )
    for field in _texts(issue):
        if not field.markdown:
            continue
        for token in _markdown_inline(field.value):
            if token.type == "image" and not token.content.strip():
                found.append(
                    pos.problem(
                        field.loc,
                        f"image {token.attrs.get('src')} has no alt text: describe it "
                        "for readers who can't see it, as ![what it shows](url)",
                        needle=str(token.attrs.get("src") or "") or None,
                    )
                )

    # -- text the skeleton left for the editor
    for field in _texts(issue):
        if _TODO.search(field.value):
            found.append(pos.problem(field.loc, "still has a TODO from the skeleton", "warning", needle="TODO"))
    for i, item in enumerate(issue.items):
        for j, button in enumerate(item.links):
            if _TODO.search(button.url):
                found.append(
                    pos.problem(("items", i, "links", j, "url"), "still has a TODO from the skeleton", "warning")
                )

    # -- the date and the file's week
    from highlightsmail.workspace import ISSUE_SLUG

    match = ISSUE_SLUG.match(issue.slug or "")
    if match:
        year, week, _ = issue.date.isocalendar()
        if (year, week) != (int(match[1]), int(match[2])):
            found.append(
                pos.problem(
                    ("date",),
                    f"{issue.date.isoformat()} is in week {year}-w{week:02d}, but the file is named {issue.slug}",
                    "warning",
                )
            )

    # -- the footer the templates must keep (RFC 8058 and anti-spam laws)
    mjml = _template_file(ws, "issue.mjml.j2")
    txt = _template_file(ws, "issue.txt.j2")
    if UNSUBSCRIBE_PLACEHOLDER not in rendered.html:
        found.append(
            Problem(
                mjml, 1, 1, "the HTML has no unsubscribe link: the template must keep the unsubscribe URL in its footer"
            )
        )
    if UNSUBSCRIBE_PLACEHOLDER not in rendered.text:
        found.append(
            Problem(
                txt,
                1,
                1,
                "the plain text has no unsubscribe link: the template must keep the unsubscribe URL in its footer",
            )
        )
    address = " ".join(ws.settings.postal_address.split())
    if address not in " ".join(text.split()):
        found.append(
            Problem(txt, 1, 1, "the plain text does not show the postal address from highlights.yaml", "warning")
        )
    if _html_text(address) not in " ".join(html.split()):
        found.append(Problem(mjml, 1, 1, "the HTML does not show the postal address from highlights.yaml", "warning"))

    found.extend(_settings_problems(ws))
    return sorted(set(found), key=lambda p: (p.file != pos.file, p.file, p.line, p.col, p.message))


def _settings_problems(ws: Workspace) -> list[Problem]:
    """Findings in highlights.yaml that concern every issue."""
    settings = ws.settings
    if not settings.archive.enabled or settings.base_url.lower().startswith("https://"):
        return []
    from highlightsmail.yamlfile import read_document

    try:
        doc = read_document(ws.settings_path)
        file, (line, col) = doc.file, doc.where(("base_url",))
    except (HighlightsError, OSError):  # changed on disk since it was loaded
        file, line, col = display_path(ws.settings_path), 1, 1
    return [
        Problem(
            file,
            line,
            col,
            "base_url: the archive is enabled but base_url is not https: the "
            '"View in browser" link and the archive\'s pages would travel unencrypted',
            "warning",
        )
    ]


def _as_sent(ws: Workspace, rendered: RenderedIssue) -> tuple[str, str]:
    """(html, text) with an unsubscribe URL as long as any real one."""
    return rendered.personalize(f"{ws.settings.base_url.rstrip('/')}/u/{_TOKEN_SHAPE}")


def _html_text(value: str) -> str:
    """`value` as it appears in HTML once Jinja escapes it."""
    from markupsafe import escape

    return str(escape(value))


def check_command(ws: Workspace, issue_path: Path) -> None:
    """`highlights check ISSUE`: validation errors or lint findings on stderr as
    FILE:LINE:COL lines; exit 1 on any error, else a one-line summary on stdout."""
    from highlightsmail.issue import load_issue

    file = display_path(issue_path)
    issue = load_issue(issue_path)  # ValidationFailed prints its FILE:LINE:COL lines itself

    from highlightsmail.render import render_issue

    rendered = render_issue(issue, ws)
    problems = lint_issue(ws, issue, rendered)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity != "error"]
    for problem in problems:
        click.echo(str(problem), err=True)
    counts = ", ".join(
        f"{n} {word}{'' if n == 1 else 's'}" for n, word in ((len(errors), "error"), (len(warnings), "warning")) if n
    )
    if errors:
        raise HighlightsError(f"{file}: {counts}")
    size = len(_as_sent(ws, rendered)[0].encode("utf-8"))
    items = len(issue.items)
    status = f"OK with {counts}" if warnings else "OK"
    click.echo(f"{file}: {status} ({items} item{'' if items == 1 else 's'}, HTML {size / KB:.0f} KB)")


__all__ = ["GMAIL_CLIP_BYTES", "SIZE_WARNING_BYTES", "SUBJECT_MAX", "check_command", "lint_issue"]
