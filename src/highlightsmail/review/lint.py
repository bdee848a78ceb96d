"""`highlights check`: validation, then lint of what the reader will get.

Validation (yamlfile.py) refuses a file that cannot be an issue. Lint looks at a valid
issue and its rendering for what an editor would want to fix before sending: an email
Gmail will clip, links that are not https, images without alt text, a subject that
inboxes cut short, a template that lost its unsubscribe link, a date far from today,
and text or links that could deceive a reader (see deception.py). Each finding names
the place in the issue file (or the template) as `FILE:LINE:COL:`.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markupsafe import escape

from highlightsmail.authoring.issue import Issue, load_issue
from highlightsmail.authoring.sourcemap import Severity, SourceMap, dotted
from highlightsmail.authoring.workspace import ISSUE_SLUG, Workspace
from highlightsmail.authoring.yamlfile import read_document
from highlightsmail.errors import HighlightsError, Problem, display_path
from highlightsmail.rendering.render import render_issue
from highlightsmail.rendering.rendered import UNSUBSCRIBE_PLACEHOLDER, RenderedIssue
from highlightsmail.review import deception
from highlightsmail.templating import package_template
from highlightsmail.text import url_problem
from highlightsmail.urls import urls

KB = 1000
# Gmail shows "[Message clipped]" and hides the rest (the footer with the unsubscribe
# link among it) when the HTML is over 102 KB. Counted in bytes of 1000 to stay on the
# safe side of either reading of "KB".
GMAIL_CLIP_BYTES = 102 * KB
SIZE_WARNING_BYTES = 90 * KB
# RFC 5322 asks for lines of at most 78 characters; inboxes cut subjects sooner still.
SUBJECT_MAX = 78
# An issue dated further than this from today (either way) is probably a mistake: a
# copied file whose date was not changed, or a typo in the year.
DATE_DRIFT_DAYS = 14
# The longest token tokens.Signer makes: kind, 13 base-36 digits, '.', 22 characters.
_TOKEN_SHAPE = "u" + "z" * 13 + "." + "A" * 22
_PREFERENCES_SHAPE = "p" + "z" * 13 + "." + "z" * 7 + "." + "A" * 22

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
        for j, tag in enumerate(item.tags):
            yield _Text(("items", i, "tags", j), tag, False)
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
    label: str | None = None  # what the reader sees as the link, when it is text
    label_loc: Loc | None = None  # where the label is, when it is a value of its own


@functools.cache
def _markdown() -> Any:

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
    tokens = list(_markdown_inline(text or ""))
    for i, token in enumerate(tokens):
        if token.type == "link_open":
            yield _Link(loc, str(token.attrs.get("href", "")), item, True, label=_link_text(tokens, i + 1))
        elif token.type == "image":
            yield _Link(loc, str(token.attrs.get("src", "")), item, True, is_image=True)


def _link_text(tokens: list[Any], start: int) -> str:
    """The text of a Markdown link, from the token after its link_open to its link_close."""
    parts = []
    for token in tokens[start:]:
        if token.type == "link_close":
            break
        if token.type in ("text", "code_inline"):
            parts.append(token.content)
        elif token.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts)


def _links(issue: Issue) -> Iterator[_Link]:
    """Every URL of the issue in reading order: intro, then each item's summary, link
    buttons and image, then the outro."""
    yield from _markdown_links(("intro",), issue.intro, None)
    for i, item in enumerate(issue.items):
        yield from _markdown_links(("items", i, "summary"), item.summary, i)
        for j, link in enumerate(item.links):
            button: Loc = ("items", i, "links", j)
            yield _Link((*button, "url"), link.url, i, False, label=link.label, label_loc=(*button, "label"))
        if item.image is not None:
            yield _Link(("items", i, "image", "url"), item.image.url, i, False, is_image=True)
    yield from _markdown_links(("outro",), issue.outro, None)


def _places(issue: Issue) -> SourceMap:
    """Where each value is in the issue's file, as loaded; everything at 1:1 for an
    issue without one."""

    if issue.source_map is not None:
        return issue.source_map
    return SourceMap(display_path(issue.source) if issue.source is not None else "<issue>")


def _template_file(ws: Workspace, name: str) -> str:
    """The template in use: the workspace's own, else the package's default."""
    own = ws.templates_dir / name
    if own.is_file():
        return display_path(own)

    return display_path(package_template(name))


def _check_url(link: _Link) -> tuple[Severity, str] | None:
    """(severity, message) for a URL that is not a plain https one, else None."""

    parts = urlsplit(link.url)
    scheme = parts.scheme.lower()
    what = "image" if link.is_image else "link"
    too_long = url_problem(link.url)
    if too_long:
        shown_as = "; the email shows it as plain text" if link.in_markdown and not link.is_image else ""
        return "error", f"{what} {link.url[:60]}… {too_long}{shown_as}"
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


def lint_issue(ws: Workspace, issue: Issue, rendered: RenderedIssue, *, today: dt.date | None = None) -> list[Problem]:
    """Every lint finding for a valid issue and its rendering, sorted by place.

    Errors (severity "error") make `check` fail; warnings are advice. `today` is the
    date the issue's date is compared with (default: the local date).
    """
    pos = _places(issue)
    texts = list(_texts(issue))
    links = list(_links(issue))  # parses the Markdown once for every check
    found = [
        *_size_findings(pos, ws, rendered),
        *_subject_findings(pos, issue),
        *_link_findings(pos, links),
        *_alt_findings(pos, texts),
        *_todo_findings(pos, issue, texts),
        *_date_findings(pos, issue, today or _today()),
        *_deception_findings(pos, texts, links),
        *_template_findings(ws, rendered),
        *_settings_problems(ws),
    ]
    return sorted(set(found), key=lambda p: (p.file != pos.file, p.file, p.line, p.col, p.message))


def _today() -> dt.date:
    return dt.date.today()


def _size_findings(pos: SourceMap, ws: Workspace, rendered: RenderedIssue) -> Iterator[Problem]:
    """Measured as sent, with an unsubscribe URL as long as a real one."""
    html, _ = _as_sent(ws, rendered)
    size = len(html.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        yield pos.problem(
            ("items",),
            f"the HTML is {size / KB:.1f} KB: Gmail clips emails over "
            f"{GMAIL_CLIP_BYTES // KB} KB and hides the rest, footer and unsubscribe link "
            "included; shorten the issue or split it",
            key=True,
        )
    elif size > SIZE_WARNING_BYTES:
        yield pos.problem(
            ("items",),
            f"the HTML is {size / KB:.1f} KB, close to the {GMAIL_CLIP_BYTES // KB} KB where Gmail clips emails",
            "warning",
            key=True,
        )


def _subject_findings(pos: SourceMap, issue: Issue) -> Iterator[Problem]:
    subject = issue.effective_subject
    if len(subject) > SUBJECT_MAX:
        where = "subject" if issue.subject else "title"
        yield pos.problem(
            (where,),
            f"the subject is {len(subject)} characters; inboxes cut it after about "
            f"{SUBJECT_MAX}" + ("" if issue.subject else " (add a shorter `subject:`)"),
            "warning",
            key=True,
        )
    if not issue.preheader:
        line, col = pos.where(())
        yield Problem(
            pos.file,
            line,
            col,
            "no preheader: inboxes will preview the first words of the email "
            "instead; add `preheader:` (up to 150 characters)",
            "warning",
        )


def _link_findings(pos: SourceMap, links: list[_Link]) -> Iterator[Problem]:
    """Links that are not plain https, and the same link in two items."""

    seen: dict[str, _Link] = {}
    for link in links:
        verdict = _check_url(link)
        if verdict is not None:
            severity, message = verdict
            yield pos.problem(link.loc, message, severity, needle=_needle(link))
        if link.is_image or link.item is None or urlsplit(link.url).scheme.lower() not in ("http", "https"):
            continue
        first = seen.setdefault(_same_link(link.url), link)
        if first is not link and first.item is not None and first.item != link.item:
            yield pos.problem(
                link.loc,
                f"{link.url} is also linked from item {first.item + 1} ({dotted(first.loc)})",
                "warning",
                needle=_needle(link),
            )


def _needle(link: _Link) -> str | None:
    """What to look for in the file to place a finding about a link: its URL inside a
    Markdown block (a link button's URL is a value of its own)."""
    return link.url if link.in_markdown else None


def _alt_findings(pos: SourceMap, texts: list[_Text]) -> Iterator[Problem]:
    for field in texts:
        if not field.markdown:
            continue
        for token in _markdown_inline(field.value):
            if token.type == "image" and not token.content.strip():
                yield pos.problem(
                    field.loc,
                    f"image {token.attrs.get('src')} has no alt text: describe it "
                    "for readers who can't see it, as ![what it shows](url)",
                    needle=str(token.attrs.get("src") or "") or None,
                )


def _todo_findings(pos: SourceMap, issue: Issue, texts: list[_Text]) -> Iterator[Problem]:
    """Text the skeleton left for the editor, and the intro a draft from feeds begins with."""
    from highlightsmail.authoring.scaffold import FEED_INTRO

    if issue.intro and issue.intro.strip() == FEED_INTRO:
        yield pos.problem(("intro",), "is still the placeholder of a draft from feeds: write the intro", "warning")
    for field in texts:
        if _TODO.search(field.value):
            yield pos.problem(field.loc, "still has a TODO from the skeleton", "warning", needle="TODO")
    for i, item in enumerate(issue.items):
        for j, button in enumerate(item.links):
            if _TODO.search(button.url):
                yield pos.problem(("items", i, "links", j, "url"), "still has a TODO from the skeleton", "warning")


def _date_findings(pos: SourceMap, issue: Issue, today: dt.date) -> Iterator[Problem]:
    """The date against the file's week, and against today."""

    match = ISSUE_SLUG.match(issue.slug or "")
    if match:
        year, week, _ = issue.date.isocalendar()
        if (year, week) != (int(match[1]), int(match[2])):
            yield pos.problem(
                ("date",),
                f"{issue.date.isoformat()} is in week {year}-w{week:02d}, but the file is named {issue.slug}",
                "warning",
            )
    days = (issue.date - today).days
    if abs(days) > DATE_DRIFT_DAYS:
        when = f"{-days} days ago" if days < 0 else f"{days} days from now"
        yield pos.problem(
            ("date",),
            f"the issue is dated {issue.date.isoformat()}, {when} (today is {today.isoformat()}): is the date right?",
            "warning",
        )


def _deception_findings(pos: SourceMap, texts: list[_Text], links: list[_Link]) -> Iterator[Problem]:
    """Text and links that can show a reader something other than what they are."""

    values = [(field.loc, field.value) for field in texts]
    values += [(link.loc, link.url) for link in links if not link.in_markdown]
    for loc, value in values:
        for ch, message in deception.hidden_characters(value):
            line, col = pos.find(loc, ch, *deception.yaml_escapes(ch))
            yield _at(pos, loc, line, col, message)
    for link in links:
        for about_url in (deception.userinfo(link.url), deception.mixed_scripts(link.url)):
            if about_url:
                yield pos.problem(link.loc, about_url, "warning", needle=_needle(link))
        mismatch = deception.label_mismatch(link.label, link.url) if link.label else None
        if mismatch:
            yield pos.problem(link.label_loc or link.loc, mismatch, "warning", needle=_needle(link))


def _at(pos: SourceMap, loc: Loc, line: int, col: int, message: str) -> Problem:

    return Problem(pos.file, line, col, f"{dotted(loc)}: {message}", "warning")


def _template_findings(ws: Workspace, rendered: RenderedIssue) -> Iterator[Problem]:
    """The footer the templates must keep (RFC 8058 and anti-spam laws)."""

    html, text = _as_sent(ws, rendered)
    mjml = _template_file(ws, "issue.mjml.j2")
    txt = _template_file(ws, "issue.txt.j2")
    if UNSUBSCRIBE_PLACEHOLDER not in rendered.html:
        yield Problem(
            mjml, 1, 1, "the HTML has no unsubscribe link: the template must keep the unsubscribe URL in its footer"
        )
    if UNSUBSCRIBE_PLACEHOLDER not in rendered.text:
        yield Problem(
            txt,
            1,
            1,
            "the plain text has no unsubscribe link: the template must keep the unsubscribe URL in its footer",
        )
    address = " ".join(ws.settings.postal_address.split())
    if address not in " ".join(text.split()):
        yield Problem(txt, 1, 1, "the plain text does not show the postal address from highlights.yaml", "warning")
    if _html_text(address) not in " ".join(html.split()):
        yield Problem(mjml, 1, 1, "the HTML does not show the postal address from highlights.yaml", "warning")


def _settings_problems(ws: Workspace) -> list[Problem]:
    """Findings in highlights.yaml that concern every issue."""
    settings = ws.settings
    findings: list[tuple[tuple[str, ...], str, Severity]] = []
    if settings.archive.enabled and not settings.base_url.lower().startswith("https://"):
        findings.append(
            (
                ("base_url",),
                "base_url: the archive is enabled but base_url is not https: the "
                '"View in browser" link and the archive\'s pages would travel unencrypted',
                "warning",
            )
        )
    if settings.delivery.sendgrid.webhook_public_key:
        # Only `serve` reads it, and refuses to start without a key it can load: say so now.
        # Here, not at the top: `check` loads feedback's code only for this setting.
        from highlightsmail.feedback.signature import ENV_PUBLIC_KEY, public_key_problem

        problem = public_key_problem(settings.delivery.sendgrid.webhook_public_key)
        if problem and not os.environ.get(ENV_PUBLIC_KEY, "").strip():
            findings.append(
                (
                    ("delivery", "sendgrid", "webhook_public_key"),
                    f"delivery.sendgrid.webhook_public_key: {problem}",
                    "error",
                )
            )
    if not findings:
        return []

    doc: SourceMap | None
    try:
        doc = read_document(ws.settings_path)
    except (HighlightsError, OSError):  # changed on disk since it was loaded
        doc = None
    file = doc.file if doc else display_path(ws.settings_path)
    return [
        Problem(file, *(doc.where(loc) if doc else (1, 1)), message, severity) for loc, message, severity in findings
    ]


def _as_sent(ws: Workspace, rendered: RenderedIssue) -> tuple[str, str]:
    """(html, text) with an unsubscribe URL as long as any real one."""

    addresses = urls(ws.settings)
    return rendered.personalize(addresses.unsubscribe(_TOKEN_SHAPE), addresses.preferences(_PREFERENCES_SHAPE))


def _html_text(value: str) -> str:
    """`value` as it appears in HTML once Jinja escapes it."""

    return str(escape(value))


@dataclass(frozen=True)
class HtmlRoom:
    """The HTML as sent beside Gmail's clipping size, and what one more item adds."""

    html_bytes: int
    item_bytes: int | None  # one more item of the issue's average size; None if unknown

    @property
    def more_items(self) -> int | None:
        """How many more items of this size fit under the clip; negative: how many
        too many there are. None when an item's size is not known."""
        if self.item_bytes is None or self.item_bytes <= 0:
            return None
        # Floor division: the whole items that fit, or (negative) every item it takes to fit.
        return (GMAIL_CLIP_BYTES - self.html_bytes) // self.item_bytes

    def describe(self) -> str:
        """`42 KB of 102 KB; about 20 more items of this size fit`."""
        # Near the clip a whole number would round up to it (101.6 KB as "102 KB of 102 KB").
        digits = 1 if abs(GMAIL_CLIP_BYTES - self.html_bytes) < KB else 0
        shown = f"{self.html_bytes / KB:.{digits}f} KB of {GMAIL_CLIP_BYTES // KB} KB"
        more = self.more_items
        if more is None:
            return shown
        if more < 0:
            return f"{shown}; about {-more} item{'' if more == -1 else 's'} too many"
        if more == 0:
            return f"{shown}; no more items of this size fit"
        return f"{shown}; about {more} more item{'' if more == 1 else 's'} of this size fit"


def html_room(ws: Workspace, issue: Issue, rendered: RenderedIssue) -> HtmlRoom:
    """The HTML's size as sent and, from a second rendering with one item (or, for an
    issue of one item, two), about how much an item of this issue's size adds."""

    size = len(_as_sent(ws, rendered)[0].encode("utf-8"))
    count = len(issue.items)
    items = issue.items[:1] if count > 1 else issue.items * 2
    other = len(_as_sent(ws, render_issue(issue.model_copy(update={"items": items}), ws))[0].encode("utf-8"))
    item_bytes = round((size - other) / (count - 1)) if count > 1 else other - size
    return HtmlRoom(size, item_bytes if item_bytes > 0 else None)


@dataclass(frozen=True)
class CheckReport:
    """What `highlights check` found: the problems, then a one-line summary."""

    file: str
    problems: list[Problem]
    items: int
    room: HtmlRoom  # the HTML as sent, with an unsubscribe URL as long as a real one
    audience: str | None = None  # whom a send would reach now (sending.plan.audience_line)

    @property
    def html_bytes(self) -> int:
        return self.room.html_bytes

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    @property
    def ok(self) -> bool:
        """No errors (warnings are advice)."""
        return not self.errors

    @property
    def summary(self) -> str:
        """`FILE: OK (2 items, HTML 12 KB of 102 KB; about 40 more items of this size
        fit)`, `FILE: OK with 1 warning (...)` or `FILE: 2 errors, 1 warning`, with
        how many items are too many when Gmail would clip the email."""
        counts = ", ".join(
            f"{n} {word}{'' if n == 1 else 's'}"
            for n, word in ((len(self.errors), "error"), (len(self.warnings), "warning"))
            if n
        )
        if not self.ok:
            over = self.html_bytes > GMAIL_CLIP_BYTES
            return f"{self.file}: {counts}" + (f" (HTML {self.room.describe()})" if over else "")
        status = f"OK with {counts}" if self.warnings else "OK"
        items = f"{self.items} item{'' if self.items == 1 else 's'}"
        return f"{self.file}: {status} ({items}, HTML {self.room.describe()})"


def check_command(ws: Workspace, issue_path: Path) -> CheckReport:
    """`highlights check ISSUE`: validate (raising ValidationFailed with every problem
    of an invalid file), render, and lint."""

    issue = load_issue(issue_path)
    rendered = render_issue(issue, ws)
    return CheckReport(
        file=display_path(issue_path),
        problems=lint_issue(ws, issue, rendered),
        items=len(issue.items),
        room=html_room(ws, issue, rendered),
        audience=_audience(ws, issue),
    )


def _audience(ws: Workspace, issue: Issue) -> str | None:
    """Whom a send would reach now; None (and the store not even loaded: `check` starts
    fast) for a workspace without topics whose issue names no audience."""
    if not ws.settings.topics and issue.audience is None:
        return None
    from highlightsmail.sending.plan import audience_line  # here: see above

    return audience_line(ws, issue)


__all__ = [
    "DATE_DRIFT_DAYS",
    "GMAIL_CLIP_BYTES",
    "SIZE_WARNING_BYTES",
    "SUBJECT_MAX",
    "CheckReport",
    "HtmlRoom",
    "check_command",
    "html_room",
    "lint_issue",
]
