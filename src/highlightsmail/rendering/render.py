"""Issue -> MJML (Jinja2) -> HTML (mjml-python) -> CSS inlined (premailer); and the
plain-text part from its own template. Done once per issue, never per recipient: the
only per-recipient difference is the unsubscribe URL, filled in by `personalize`.
"""

from __future__ import annotations

import logging
import re
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from highlightsmail.authoring import markdown
from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.rendering.rendered import UNSUBSCRIBE_PLACEHOLDER, RenderedIssue
from highlightsmail.urls import has_page, urls

if TYPE_CHECKING:
    import jinja2

    from highlightsmail.authoring.issue import Issue
    from highlightsmail.authoring.workspace import Workspace

__all__ = [
    "HTML_TEMPLATE",
    "TEXT_TEMPLATE",
    "TEXT_WIDTH",
    "effective_preheader",
    "issue_context",
    "markdown_to_text",
    "render_email",
    "render_issue",
    "render_markdown",
    "render_template",
]

_RESERVED = (UNSUBSCRIBE_PLACEHOLDER,)

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
    from markupsafe import Markup

    settings = ws.settings
    refs = markdown.LinkRefs()

    def block(source: str | None) -> tuple[Any, str, list[markdown.Ref]]:
        if not source:
            return None, "", []
        html, text = markdown.convert(source, width=TEXT_WIDTH, refs=refs, reserved=_RESERVED)
        return Markup(html), text, refs.take()

    intro_html, intro_text, intro_refs = block(issue.intro)
    items = []
    for number, item in enumerate(issue.items, start=1):
        summary_html, summary_text, _ = block(item.summary)
        links = [
            LinkView(_text(link.label), _url(link.url), refs.add(_url(link.url), _text(link.label)))
            for link in item.links
        ]
        items.append(
            ItemView(
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
        )
    outro_html, outro_text, outro_refs = block(issue.outro)

    name = _text(settings.name)
    subject = _text(issue.effective_subject)
    web_url = None
    if settings.archive.enabled and has_page(issue.slug):
        web_url = urls(settings).issue_page(issue.slug)
    return {
        "newsletter": {
            "name": name,
            "base_url": _url(settings.base_url),
            "postal_address": _text(settings.postal_address),
        },
        "issue": {
            "slug": issue.slug,
            "title": _text(issue.title),
            "headline": _headline(_text(issue.title), name),
            "subject": subject,
            "preheader": _text(effective_preheader(issue)),
            "date_iso": issue.date.isoformat(),
            "date_long": f"{issue.date.day} {_MONTHS[issue.date.month - 1]} {issue.date.year}",
        },
        "preheader_spacer": Markup(_PREHEADER_SPACER),
        "intro_html": intro_html,
        "intro_text": intro_text,
        "intro_refs": intro_refs,
        "items": items,
        "outro_html": outro_html,
        "outro_text": outro_text,
        "outro_refs": outro_refs,
        "unsubscribe_url": UNSUBSCRIBE_PLACEHOLDER,
        # The issue's page in the web archive ("View in browser"), or None when there is none.
        "web_url": _url(web_url) if web_url else None,
        "text_width": TEXT_WIDTH,
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
    from highlightsmail import templating

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
    import jinja2

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
    from mjml import mjml2html

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
_MJ_INLINE_STYLE = re.compile(r"<mj-style\b[^>]*\binline\s*=\s*[\"']inline[\"'][^>]*>(.*?)</mj-style>", re.S | re.I)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_STYLE_TAG = re.compile(r"<style\b([^>]*)>(.*?)</style>", re.S | re.I)


def _keep_head_styles(html: str, mjml_source: str) -> str:
    """Mark every <style> block except those of `<mj-style inline="inline">` for
    premailer to leave alone.

    MJML inlines only `mj-style inline="inline"` and keeps the rest in <head> (its
    resets, column widths, media queries for phones and dark mode); mjml-python leaves
    inlining out, so premailer does it, told which blocks are which. Blocks inside
    Outlook's conditional comments are left as they are.
    """
    inline_css = {m.group(1).strip() for m in _MJ_INLINE_STYLE.finditer(mjml_source)}

    def mark(match: re.Match[str]) -> str:
        attrs, body = match.groups()
        if body.strip() in inline_css or "data-premailer" in attrs:
            return match.group(0)
        return f'<style{attrs} data-premailer="ignore">{body}</style>'

    out, pos = [], 0
    for comment in _COMMENT.finditer(html):
        out.append(_STYLE_TAG.sub(mark, html[pos : comment.start()]))
        out.append(comment.group(0))
        pos = comment.end()
    out.append(_STYLE_TAG.sub(mark, html[pos:]))
    return "".join(out)


def _import_premailer() -> None:
    """Import premailer without importing `requests`.

    premailer imports requests at its top only to fetch external stylesheets, which
    allow_network=False forbids, and requests with urllib3 and its charset detectors is
    about a tenth of a build's time. A stand-in module answers premailer's import and
    loads the real requests on first use; it is gone from sys.modules right after, so
    any other `import requests` in the process gets the real module."""
    import sys

    if "premailer.premailer" in sys.modules or "requests" in sys.modules:
        return
    import types

    stand_in = types.ModuleType("requests")

    def load_on_use(name: str) -> Any:
        import importlib

        if sys.modules.get("requests") is stand_in:
            del sys.modules["requests"]
        return getattr(importlib.import_module("requests"), name)

    stand_in.__dict__["__getattr__"] = load_on_use  # a module's own __getattr__ (PEP 562)
    sys.modules["requests"] = stand_in
    try:
        import premailer.premailer  # noqa: F401
    finally:
        if sys.modules.get("requests") is stand_in:
            del sys.modules["requests"]


@lru_cache(maxsize=1)
def _inliner_class() -> type:
    _import_premailer()
    from premailer import Premailer

    class _Inliner(Premailer):
        """premailer, remembering the rules it read from a stylesheet.

        premailer caches parsing but turns every rule back into text on each run,
        which is most of a warm render's time; the stylesheet is the same each time.
        """

        _rules: ClassVar[dict[tuple[str, int], tuple[list[Any], list[Any]]]] = {}

        def _parse_style_rules(self, css_body: str, ruleset_index: int) -> tuple[list[Any], list[Any]]:
            key = (css_body, ruleset_index)
            if key in self._rules:
                return self._rules[key]
            rules, leftover = super()._parse_style_rules(css_body, ruleset_index)
            # Leftover rules are mutable cssutils objects that premailer edits; only
            # stylesheets without any are kept.
            if not leftover and len(self._rules) < 64:
                self._rules[key] = (rules, leftover)
            return rules, leftover

    return _Inliner


def _inline_css(html: str) -> str:
    """Copy the inline stylesheet onto each element's style attribute (Gmail and
    others ignore <style> in places); the <head> blocks marked by _keep_head_styles,
    @media rules among them, stay as they are."""
    inlined = _inliner_class()(
        html,
        keep_style_tags=False,
        strip_important=False,
        # Pixel widths from MJML are what Outlook lays out with: don't rewrite them;
        # and no bgcolor= on spans and divs, where it means nothing.
        disable_basic_attributes=["width", "height", "bgcolor"],
        disable_link_rewrites=True,
        allow_network=False,
        allow_loading_external_files=False,
        # Email CSS is full of vendor properties (mso-*) cssutils would complain
        # about, on stderr: a clean issue must render silently.
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
    ).transform()
    # premailer drops its marker only from the blocks it looked at.
    return inlined.replace(' data-premailer="ignore"', "")


# --------------------------------------------------------------------------- bytes
#
# Gmail clips an email's HTML after 102 KB, and every item of an issue repeats the same
# markup: what is said twice or said for nothing is left out here, once the CSS is
# inlined, in ways no mail client can tell apart from the long form (the pixels are the
# same; tests/rendering/test_email_looks.py compares them).

# A start tag, also inside Outlook's conditional comments. lxml writes '<' and '>' in
# attribute values and text as entities, so this matches tags and nothing else.
_START_TAG = re.compile(r"<[A-Za-z][^<>]*>")
_STYLE_ATTR = re.compile(r'(\sstyle=")([^"]*)"')
_CLASS_ATTR = re.compile(r'\sclass="([^"]*)"')
# A class named in a stylesheet (a digit after the dot is a number: 0.08em).
_CSS_CLASS = re.compile(r"\.(-?[A-Za-z_][\w-]*)")
# A declaration's separators, the quoted strings and brackets to step over whole.
_DECLARATION_PARTS = re.compile(r"\"[^\"]*\"|'[^']*'|&quot;.*?&quot;|\([^)]*\)|;|,\s+")
# Outlook's conditional comments back to back, said as one: MJML's own compiler does
# the same (mergeOutlookConditionnals); mjml-python does not.
_ADJACENT_MSO = re.compile(r"<!\[endif\]-->\s*<!--\[if mso \| IE\]>")


def _short_style(style: str) -> str:
    """Declarations with no white space around their `:` and `;` or after a comma (in a
    font list), outside quoted names and brackets; no empty declaration, no final `;`."""
    declarations: list[str] = []
    current: list[str] = []
    pos = 0
    for part in _DECLARATION_PARTS.finditer(style):
        if part.group() == ";":
            declarations.append("".join(current) + style[pos : part.start()])
            current = []
        elif part.group().startswith(","):
            current.append(style[pos : part.start()] + ",")
        else:
            continue  # a quoted name or brackets: kept as they are
        pos = part.end()
    declarations.append("".join(current) + style[pos:])
    short = []
    for declaration in declarations:
        name, colon, value = declaration.partition(":")
        if colon and name.strip() and value.strip():
            short.append(f"{name.strip()}:{value.strip()}")
    return ";".join(short)


_CSS_SPACE = re.compile(r"\s+")
# White space next to these is not needed: braces, `;`, `,` and, in a declaration, `:`.
# A space before `(` or after `)` is kept (`and (max-width...)` needs it), and so is
# the space before `:` in a selector (`a :hover` is not `a:hover`).
_CSS_AROUND = re.compile(r" ?([{};,]) ?|: ")
_DECLARATION_COLON = re.compile(r"(?<=[{;])([\w-]+) :")
_CSS_STRING_OR_COMMENT = re.compile(r"\"[^\"]*\"|'[^']*'|/\*.*?\*/", re.S)


def _short_css(css: str) -> str:
    """A <style> block's CSS without comments and the white space it needs none of;
    quoted strings are kept as they are."""
    out, pos = [], 0
    for token in _CSS_STRING_OR_COMMENT.finditer(css):
        out.append(_CSS_AROUND.sub(lambda m: m.group(1) or ":", _CSS_SPACE.sub(" ", css[pos : token.start()])))
        out.append("" if token.group().startswith("/*") else token.group())
        pos = token.end()
    out.append(_CSS_AROUND.sub(lambda m: m.group(1) or ":", _CSS_SPACE.sub(" ", css[pos:])))
    # Inside a declaration block a space before `:` means nothing either.
    return _DECLARATION_COLON.sub(r"\1:", "".join(out)).strip()


def _classes_styled(html: str) -> set[str] | None:
    """Every class some <style> block of the email names (in <head>, or in Outlook's
    conditional comments); None when a block matches classes by attribute
    ([class^=...]), which can name any of them."""
    css = " ".join(m.group(2) for m in _STYLE_TAG.finditer(html))
    if re.search(r"\[\s*class\b", css):
        return None
    return set(_CSS_CLASS.findall(css))


def _compact(html: str) -> str:
    """The email in fewer bytes, the same to every mail client: style attributes
    without white space between declarations; class names kept only where a <style>
    block names them (the rest served premailer, which has inlined them); MJML's
    <tbody> tags, which every HTML parser puts back by itself; Outlook's back-to-back
    conditional comments said as one."""
    styled = _classes_styled(html)

    def compact_tag(match: re.Match[str]) -> str:
        tag = _STYLE_ATTR.sub(lambda m: f'{m.group(1)}{_short_style(m.group(2))}"', match.group())
        if styled is None:
            return tag

        def keep_styled(m: re.Match[str]) -> str:
            kept = " ".join(name for name in m.group(1).split() if name in styled)
            return f' class="{kept}"' if kept else ""

        return _CLASS_ATTR.sub(keep_styled, tag)

    html = _START_TAG.sub(compact_tag, html)
    html = _STYLE_TAG.sub(lambda m: f"<style{m.group(1)}>{_short_css(m.group(2))}</style>", html)
    html = _ADJACENT_MSO.sub("", html)
    return html.replace("<tbody>", "").replace("</tbody>", "")


# --------------------------------------------------------------------------- text

_BLANKS = re.compile(r"\n{3,}")


def _tidy_text(text: str) -> str:
    """No trailing spaces, at most one empty line in a row, one final newline."""
    lines = "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))
    return _BLANKS.sub("\n\n", lines) + "\n"


# --------------------------------------------------------------------------- entry points


def render_email(ws: Workspace, html_template: str, text_template: str, context: dict[str, Any]) -> tuple[str, str]:
    """Another email from its own pair of templates (the workspace's, else the package's),
    through the same steps as an issue: (HTML with its CSS inlined, plain text). Every
    email's templates also see `preheader_spacer`."""
    from markupsafe import Markup

    from highlightsmail.rendering.folding import fold_html, fold_text

    context = {"preheader_spacer": Markup(_PREHEADER_SPACER), **context}
    templates_dir = str(ws.templates_dir)
    env = _environment(templates_dir)
    mjml_source, mjml_file = _render_template(env, html_template, context, templates_dir)
    html = _compact(_inline_css(_keep_head_styles(_compile_mjml(mjml_source, mjml_file), mjml_source)))
    text = _tidy_text(_render_template(env, text_template, context, templates_dir)[0])
    # Every line within RFC 5322's 998 octets, for every recipient's own link too.
    room = len(urls(ws.settings).base) + _RECIPIENT_LINK_TAIL
    return (
        fold_html(html, placeholder=UNSUBSCRIBE_PLACEHOLDER, room=room),
        fold_text(text, placeholder=UNSUBSCRIBE_PLACEHOLDER, room=room),
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
