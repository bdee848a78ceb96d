"""Issue -> MJML (Jinja2) -> HTML (mjml-python) -> CSS inlined (premailer); and the
plain-text part from its own template. Done once per issue, never per recipient: the
only per-recipient difference is the unsubscribe URL, filled in by `personalize`.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from mjml import mjml2html

from highlightsmail import templating
from highlightsmail.authoring import markdown
from highlightsmail.authoring.issue import Issue, Item
from highlightsmail.authoring.workspace import Workspace
from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.rendering import folding
from highlightsmail.rendering.inlining import compact, inline_css_kept, keep_head_styles
from highlightsmail.rendering.rendered import PREFERENCES_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER, RenderedIssue
from highlightsmail.urls import has_page, urls

__all__ = [
    "HTML_TEMPLATE",
    "TEXT_TEMPLATE",
    "TEXT_WIDTH",
    "effective_preheader",
    "issue_context",
    "long_date",
    "markdown_to_text",
    "mjml_source",
    "render_email",
    "render_issue",
    "render_markdown",
    "render_template",
]

_RESERVED = (UNSUBSCRIBE_PLACEHOLDER, PREFERENCES_PLACEHOLDER)
#: What becomes each recipient's own links (one length: folding counts each as `room`).
_PLACEHOLDERS = (UNSUBSCRIBE_PLACEHOLDER, PREFERENCES_PLACEHOLDER)

#: What follows base_url in the longest link one recipient gets: urls.CONFIRM with a
#: confirmation token of at most 51 characters, with room to spare.
_RECIPIENT_LINK_TAIL = 64

HTML_TEMPLATE = "issue.mjml.j2"
TEXT_TEMPLATE = "issue.txt.j2"
#: Plain-text lines stay within this many columns; only a URL too long to break goes past.
TEXT_WIDTH = 72
PREHEADER_MAX = 150

# Keeps mail clients from filling the preview line with the start of the body after
# a short preheader: invisible joiners and spaces.
_PREHEADER_SPACER = "&#847;&zwnj;&nbsp;" * 40
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def long_date(day: date) -> str:
    """A date as the issue and its page write it: `12 January 2024`, in English whatever the locale."""
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"


# Dark-mode support is announced in <head> (MJML has no element for this meta).
_HEAD_META = '<meta name="color-scheme" content="light dark">'


# --------------------------------------------------------------------------- Markdown


def render_markdown(text: str) -> str:
    """Markdown as the HTML part shows it (raw HTML as text; no placeholder forgery)."""
    return markdown.to_html(text, reserved=_RESERVED)


def markdown_to_text(text: str, width: int = TEXT_WIDTH) -> str:
    """Markdown as the plain-text part shows it, links as `text [n]` with the
    numbered references after it."""
    return markdown.to_text(text, width=width, reserved=_RESERVED)


# --------------------------------------------------------------------------- views

# What the templates see. Every string an editor wrote arrives here already defused
# (it can't contain the placeholder); HTML fragments arrive as Markup.


@dataclass(frozen=True)
class LinkView:
    label: str
    url: str
    ref: int


@dataclass(frozen=True)
class ImageView:
    url: str
    alt: str


@dataclass(frozen=True)
class ItemView:
    number: int
    anchor: str
    title: str
    url: str | None
    summary_html: Any
    summary_text: str
    links: list[LinkView]
    image: ImageView | None
    tags: list[str]
    refs: list[markdown.Ref]


def _text(value: str) -> str:
    return markdown.defuse_text(value, _RESERVED)


def _url(value: str) -> str:
    return markdown.defuse_url(value, _RESERVED)


def _context(issue: Issue, ws: Workspace) -> dict[str, Any]:
    settings = ws.settings
    refs = markdown.LinkRefs()

    def block(source: str | None) -> tuple[Any, str, list[markdown.Ref]]:
        if not source:
            return None, "", []
        html, text = markdown.convert(source, width=TEXT_WIDTH, refs=refs, reserved=_RESERVED)
        return Markup(html), text, refs.take()

    intro_html, intro_text, intro_refs = block(issue.intro)
    items = [_item_view(number, item, block, refs) for number, item in enumerate(issue.items, start=1)]
    outro_html, outro_text, outro_refs = block(issue.outro)

    name = _text(settings.name)
    web_url = None
    if settings.archive.enabled and has_page(issue.slug):
        web_url = urls(settings).issue_page(issue.slug)
    return {
        "newsletter": {
            "name": name,
            "base_url": _url(settings.base_url),
            "postal_address": _text(settings.postal_address),
        },
        "issue": _issue_view(issue, name),
        "preheader_spacer": Markup(_PREHEADER_SPACER),
        "intro_html": intro_html,
        "intro_text": intro_text,
        "intro_refs": intro_refs,
        "items": items,
        "outro_html": outro_html,
        "outro_text": outro_text,
        "outro_refs": outro_refs,
        "unsubscribe_url": UNSUBSCRIBE_PLACEHOLDER,
        # The reader's preference page (topics, a pause, their data), beside unsubscribe.
        "preferences_url": PREFERENCES_PLACEHOLDER,
        # The issue's page in the web archive ("View in browser"), or None when there is none.
        "web_url": _url(web_url) if web_url else None,
        "text_width": TEXT_WIDTH,
    }


def _item_view(
    number: int, item: Item, block: Callable[[str | None], tuple[Any, str, list[markdown.Ref]]], refs: markdown.LinkRefs
) -> ItemView:
    """One item as the templates see it; its summary's links are numbered before its own."""
    summary_html, summary_text, _ = block(item.summary)
    links = [
        LinkView(_text(link.label), _url(link.url), refs.add(_url(link.url), _text(link.label))) for link in item.links
    ]
    return ItemView(
        number=number,
        anchor=f"item-{number}",
        title=_text(item.title),
        url=links[0].url if links else None,
        summary_html=summary_html,
        summary_text=summary_text,
        links=links,
        image=ImageView(_url(item.image.url), _text(item.image.alt)) if item.image else None,
        tags=[_text(tag) for tag in item.tags],
        refs=refs.take(),
    )


def _issue_view(issue: Issue, name: str) -> dict[str, Any]:
    """The issue's own facts: title, headline, subject, preheader, dates."""
    return {
        "slug": issue.slug,
        "title": _text(issue.title),
        "headline": _headline(_text(issue.title), name),
        "subject": _text(issue.effective_subject),
        "preheader": _text(effective_preheader(issue)),
        "date_iso": issue.date.isoformat(),
        "date_long": long_date(issue.date),
    }


def issue_context(issue: Issue, ws: Workspace) -> dict[str, Any]:
    """What the issue templates see: the issue's text defused and its Markdown rendered,
    for the email and for any other page built from the same content."""
    return _context(issue, ws)


def effective_preheader(issue: Issue) -> str:
    """The preheader, or the first item titles that fit in 150 characters."""
    if issue.preheader:
        return issue.preheader
    text = ""
    for item in issue.items:
        joined = f"{text} · {item.title}" if text else item.title
        if len(joined) > PREHEADER_MAX:
            break
        text = joined
    return text or issue.items[0].title[: PREHEADER_MAX - 1].rstrip() + "…"


def _headline(title: str, name: str) -> str:
    """The title without the newsletter's name in front ("Week 2, 2024"), since the
    masthead already shows the name."""
    if title.casefold().startswith(name.casefold()):
        rest = title[len(name) :].lstrip(" |:-–—·").strip()
        if rest:
            return rest
    return title


# --------------------------------------------------------------------------- Jinja


@lru_cache(maxsize=16)
def _environment(templates_dir: str) -> jinja2.Environment:
    """One Environment per templates folder, so compiled templates are reused; Jinja
    still notices an edited template file (auto_reload) for the preview server."""
    env = templating.environment(templating.workspace_loader(templates_dir))
    env.filters["wrap"] = _wrap_filter
    env.filters["hanging"] = _hanging_filter
    return env


def _wrap_filter(text: str, width: int = TEXT_WIDTH, first: str = "", rest: str = "") -> str:
    return markdown.wrap(str(text), width, first, rest)


def _hanging_filter(text: str, prefix: str, width: int = TEXT_WIDTH) -> str:
    """`1. A long title` wrapped so continuation lines start under the title."""
    prefix = str(prefix)
    return markdown.wrap(str(text), width, prefix, " " * len(prefix))


def _render_template(
    env: jinja2.Environment, name: str, context: dict[str, Any], templates_dir: str
) -> tuple[str, str]:
    """The template's output and the file it came from (the workspace's or the package's)."""
    try:
        template = env.get_template(name)
    except jinja2.TemplateSyntaxError as exc:
        raise HighlightsError(f"{display_path(exc.filename or name)}:{exc.lineno}: {exc.message}") from None
    except jinja2.TemplateNotFound:
        raise HighlightsError(f"template {name} not found in templates/ or the package defaults") from None
    except (UnicodeDecodeError, OSError) as exc:
        # Only the workspace's own copy can be unreadable: the package's are UTF-8.
        file = display_path(Path(templates_dir) / name)
        if isinstance(exc, UnicodeDecodeError):
            raise HighlightsError(
                f"{file}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                f"{exc.start}); save the template as UTF-8"
            ) from None
        raise HighlightsError(f"{file}: cannot read the template ({exc.strerror or exc})") from None
    try:
        return template.render(context), template.filename or name
    except HighlightsError:
        raise
    except Exception as exc:  # an edited template may fail in any way; say where
        where = _template_position(exc, template)
        detail = (
            exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else f"{type(exc).__name__}: {exc}"
        )
        raise HighlightsError(f"{where}: {detail}") from None


def _template_position(exc: BaseException, template: jinja2.Template) -> str:
    """`file:line` of the template line that failed. Jinja rewrites tracebacks so
    template frames carry the template's own file name and line number."""
    templates = {template.filename} if template.filename else set()
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename in templates or frame.filename.endswith(".j2"):
            return f"{display_path(frame.filename)}:{frame.lineno}"
    return display_path(template.filename or template.name or "template")


def render_template(ws: Workspace, name: str, context: dict[str, Any]) -> str:
    """Template `name` (the workspace's, else the package's) rendered with `context`;
    a broken template raises HighlightsError naming its file and line."""
    templates_dir = str(ws.templates_dir)
    return _render_template(_environment(templates_dir), name, context, templates_dir)[0]


# --------------------------------------------------------------------------- HTML


def _compile_mjml(source: str, template_path: str) -> str:
    try:
        # fonts={}: no web-font <link>, nothing fetched when the mail is opened.
        html = mjml2html(source, disable_comments=True, fonts={})
    except ValueError as exc:
        raise HighlightsError(f"{display_path(template_path)}: the MJML it produced is invalid: {exc}") from None
    # premailer keeps the doctype only when lxml spells it the same way.
    html = re.sub(r"^<!doctype html>", "<!DOCTYPE html>", html, count=1, flags=re.I)
    # mjml-python writes buttons' vertical-align as an HTML attribute, which no mail
    # client reads and HTML does not have (MJML itself leaves it out).
    html = _VERTICAL_ALIGN_ATTR.sub(r"\1", html)
    return html.replace("</head>", _HEAD_META + "</head>", 1)


_VERTICAL_ALIGN_ATTR = re.compile(r'(<td\b[^>]*?)\svertical-align="[^"<>]*"')


# --------------------------------------------------------------------------- text

_BLANKS = re.compile(r"\n{3,}")


def _tidy_text(text: str) -> str:
    """No trailing spaces, at most one empty line in a row, one final newline."""
    lines = "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))
    return _BLANKS.sub("\n\n", lines) + "\n"


# --------------------------------------------------------------------------- entry points


def _email_context(context: dict[str, Any]) -> dict[str, Any]:
    """What every email's templates see besides `context`."""
    return {"preheader_spacer": Markup(_PREHEADER_SPACER), **context}


def mjml_source(ws: Workspace, context: dict[str, Any], html_template: str = HTML_TEMPLATE) -> str:
    """The MJML `html_template` makes of `context`, before it is compiled to HTML (for
    comparing with other MJML compilers: benchmarks/render.py)."""
    templates_dir = str(ws.templates_dir)
    return _render_template(_environment(templates_dir), html_template, _email_context(context), templates_dir)[0]


def render_email(ws: Workspace, html_template: str, text_template: str, context: dict[str, Any]) -> tuple[str, str]:
    """Another email from its own pair of templates (the workspace's, else the package's),
    through the same steps as an issue: (HTML with its CSS inlined, plain text). Every
    email's templates also see `preheader_spacer`."""
    context = _email_context(context)
    templates_dir = str(ws.templates_dir)
    env = _environment(templates_dir)
    mjml_source, mjml_file = _render_template(env, html_template, context, templates_dir)
    html = compact(inline_css_kept(keep_head_styles(_compile_mjml(mjml_source, mjml_file), mjml_source)))
    text = _tidy_text(_render_template(env, text_template, context, templates_dir)[0])
    # Every line within RFC 5322's 998 octets, for every recipient's own link too.
    room = len(urls(ws.settings).base) + _RECIPIENT_LINK_TAIL
    return (
        folding.fold_html(html, placeholder=_PLACEHOLDERS, room=room),
        folding.fold_text(text, placeholder=_PLACEHOLDERS, room=room),
    )


def render_issue(issue: Issue, ws: Workspace) -> RenderedIssue:
    """Render an issue into its subject, preheader, HTML and plain text, once."""
    context = _context(issue, ws)
    html, text = render_email(ws, HTML_TEMPLATE, TEXT_TEMPLATE, context)
    return RenderedIssue(
        slug=issue.slug,
        subject=context["issue"]["subject"],
        preheader=context["issue"]["preheader"],
        html=html,
        text=text,
    )
