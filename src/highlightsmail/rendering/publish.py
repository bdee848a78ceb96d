"""`highlights publish`: the issues as a web site any static host can serve, and an Atom feed.

OUT/index.html lists the published issues, newest first; OUT/<slug>/index.html is each
issue as a web page, built from the same views as the email (render.issue_context) by the
templates in `templates/site/` (the workspace's first, then the package's); OUT/feed.xml is
an Atom 1.0 feed (RFC 4287) with each issue's full content; OUT/404.html is the page for a
missing address. Links between the pages are relative, so the folder works at any path;
canonical, Open Graph and feed URLs are absolute, from base_url + archive.path.
OUT/.highlights-publish.json lists what `publish` wrote, so that the next run replaces
those files and nothing else in the folder (see "writing" below).

Published means: the issue's dispatch has started (the send ledger has it); `--all` adds
every issue file. Nothing personal reaches these pages: no unsubscribe link, no token, no
address, no test mark.

`Archive` also serves the same pages one by one (web/archive.py): it remembers what it
rendered, keyed by the files' sizes and modification times, so a request renders only
what changed since the last one.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from feedgen.feed import FeedGenerator
from markupsafe import Markup

from highlightsmail import __version__
from highlightsmail.authoring.issue import Issue, load_issue
from highlightsmail.authoring.workspace import Settings, Workspace
from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.rendering.changes import Changes, changes, issue_from_text, last_changed
from highlightsmail.rendering.render import issue_context, long_date, render_template
from highlightsmail.rendering.site import write_site
from highlightsmail.store import Store
from highlightsmail.urls import FEED_FILE, NOT_FOUND_FILE, has_page, urls

log = logging.getLogger("highlightsmail.publish")

__all__ = [
    "Archive",
    "Entry",
    "Published",
    "publish",
]

INDEX_TEMPLATE = "site/index.html.j2"
ISSUE_TEMPLATE = "site/issue.html.j2"
ENTRY_TEMPLATE = "site/entry.html.j2"
NOT_FOUND_TEMPLATE = "site/404.html.j2"
_HEADING_TAG = re.compile(r"<(/?)h([1-6])\b")

T = TypeVar("T")


def _signup(settings: Settings) -> dict[str, Any]:
    """Whether the pages show the signup form, and where it posts. Off until the
    settings have a `signup` section that enables it."""
    signup = getattr(settings, "signup", None)
    return {
        "enabled": bool(getattr(signup, "enabled", False)),
        "action": urls(settings).subscribe(),
    }


# --------------------------------------------------------------------------- the issues


@dataclass(frozen=True, eq=False)
class Entry:
    """An issue in the archive."""

    slug: str
    path: Path
    issue: Issue
    #: When its dispatch started; for an issue not sent (`--all`), its date at midnight UTC.
    published: datetime
    sent: bool
    #: The file's (mtime, size) when it was read.
    stamp: tuple[int, int]
    #: When the file was changed after it was sent (its last change), and what changed.
    corrected: datetime | None = None
    changes: Changes | None = None

    @property
    def key(self) -> tuple[str, tuple[int, int], datetime, datetime | None]:
        """What a page built from this entry depends on."""
        return (self.slug, self.stamp, self.published, self.corrected)

    @property
    def updated(self) -> datetime:
        """When it last changed for a reader: its correction, else its publication."""
        return self.corrected or self.published


def _started(value: str) -> datetime:
    """A time as the store writes it (`2024-01-12T08:00:00Z`), timezone-aware."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=UTC)


def _nest_headings(html: str, top: int) -> str:
    """Headings written in Markdown, renumbered to sit under the heading of the part
    they belong to: the first becomes `top`, each later one at most one level below the
    one before, so the page's outline never skips a level (at most h6)."""
    if "<h" not in html:
        return html
    stack: list[tuple[int, int]] = []  # (level as written, level on the page)
    current = [top]

    def renumber(match: re.Match[str]) -> str:
        closing, written = match.group(1), int(match.group(2))
        if not closing:
            while stack and stack[-1][0] >= written:
                stack.pop()
            level = min(stack[-1][1] + 1 if stack else top, 6)
            stack.append((written, level))
            current[0] = level
        return f"<{closing}h{current[0]}"

    return _HEADING_TAG.sub(renumber, html)


@dataclass(frozen=True)
class Published:
    """What `publish` wrote."""

    out_dir: Path
    entries: list[Entry]
    files: list[Path]
    #: Issue files left out, each with the reason.
    skipped: list[str]


class Archive:
    """The archive of one workspace: which issues it lists, and each page and the feed
    as text. Thread-safe; results are remembered until a file they came from changes."""

    def __init__(self, ws: Workspace, *, include_all: bool = False) -> None:
        self.ws = ws
        self.include_all = include_all
        self._lock = threading.RLock()
        self._memo: dict[Hashable, Any] = {}

    # -- plumbing

    def _remember(self, key: Hashable, make: Callable[[], T]) -> T:
        with self._lock:
            if key in self._memo:
                found: T = self._memo[key]
                return found
            value = make()
            if len(self._memo) > 2000:  # old keys of edited files: start afresh
                self._memo.clear()
            self._memo[key] = value
            return value

    def _templates_stamp(self) -> tuple[tuple[str, int, int], ...]:
        """The workspace's own site templates, as (name, mtime, size): a change to any
        of them changes every page."""
        folder = self.ws.templates_dir / "site"
        if not folder.is_dir():
            return ()
        stamp = []
        for path in sorted(folder.rglob("*")):
            try:
                st = path.stat()
            except OSError:
                continue
            stamp.append((str(path.relative_to(folder)), st.st_mtime_ns, st.st_size))
        return tuple(stamp)

    def _load(self, path: Path, stamp: tuple[int, int]) -> Issue:
        return self._remember(("issue", path, stamp), lambda: load_issue(path))

    # -- which issues

    def _sent(self, slugs: list[str]) -> dict[str, tuple[datetime, str | None]]:
        """When each issue's dispatch started, for those that have one, and the issue
        file's text it kept then (None if it kept none). No database yet means nothing
        was sent (and none is created here)."""
        if not slugs or not self.ws.database_exists():
            return {}
        started: dict[str, tuple[datetime, str | None]] = {}
        with Store.open(self.ws) as store:
            for slug in slugs:
                info = store.dispatch_info(slug)
                if info is not None:
                    kept = store.kept_message(slug)
                    started[slug] = (_started(info.started), kept.source if kept else None)
        return started

    def _correction(
        self, path: Path, stamp: tuple[int, int], issue: Issue, sent: tuple[datetime, str | None]
    ) -> tuple[datetime | None, Changes | None]:
        """When the sent issue at `path` was corrected and what changed, or (None, None)."""
        published, text = sent
        if text is None:
            return None, None

        def make() -> tuple[datetime | None, Changes | None]:
            try:
                if path.read_text(encoding="utf-8") == text:
                    return None, None
            except (OSError, UnicodeError):
                return None, None
            before = issue_from_text(text)
            found = changes(before, issue) if before is not None else None
            if found is not None and not found:
                return None, None  # only its layout or comments changed: nothing a reader sees
            edited = last_changed(path, stamp[0])
            return max(edited, published), found

        return self._remember(("correction", path, stamp, published), make)

    def entries(self, *, strict: bool = True) -> tuple[list[Entry], list[str]]:
        """The issues the archive lists, newest first, and the files left out with why.

        A listed issue file that is not valid raises ValidationFailed; with
        `strict=False` (a server, which must keep answering) it is left out and logged.
        """
        files: list[tuple[str, Path, tuple[int, int]]] = []
        skipped: list[str] = []
        folder = self.ws.issues_dir
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            slug = path.stem
            if slug.startswith("."):
                continue  # an editor's hidden file
            try:
                st = path.stat()
            except OSError:
                continue  # removed meanwhile
            if not path.is_file():
                continue
            if not has_page(slug):
                skipped.append(
                    f"{display_path(path)}: left out, its name can't be a web address "
                    "(use letters, digits, '.', '_' and '-', like 2024-w02.yaml)"
                )
                continue
            files.append((slug, path, (st.st_mtime_ns, st.st_size)))
        sent = self._sent([slug for slug, _, _ in files])
        entries = []
        for slug, path, stamp in files:
            if slug not in sent and not self.include_all:
                continue
            try:
                issue = self._load(path, stamp)
            except HighlightsError as exc:
                if strict:
                    raise
                log.error(
                    "%s: left out of the archive until it is fixed:\n%s", display_path(path), exc.format_message()
                )
                skipped.append(f"{display_path(path)}: left out, it is not valid")
                continue
            if slug in sent:
                corrected, changed = self._correction(path, stamp, issue, sent[slug])
                entries.append(Entry(slug, path, issue, sent[slug][0], True, stamp, corrected, changed))
            else:
                entries.append(Entry(slug, path, issue, _midnight(issue.date), False, stamp))
        entries.sort(key=lambda e: (e.issue.date, e.published, e.slug), reverse=True)
        return entries, skipped

    # -- pages

    def _common(self, root: str) -> dict[str, Any]:
        settings = self.ws.settings
        return {
            "newsletter": {"name": settings.name, "base_url": settings.base_url},
            "archive": {"url": urls(settings).archive(), "feed_url": urls(settings).feed()},
            "signup": _signup(settings),
            "root": root,
        }

    def _view(self, entry: Entry) -> dict[str, Any]:
        """The issue's views as the email's templates get them, with Markdown headings
        nested under the page's own (intro and outro under the h1, summaries under
        their item's h2)."""

        def make() -> dict[str, Any]:
            context = issue_context(entry.issue, self.ws)
            # Only the email has these: a page must not carry an unsubscribe link.
            for key in ("unsubscribe_url", "preheader_spacer", "web_url"):
                context.pop(key, None)
            for key in ("intro_html", "outro_html"):
                if context[key]:
                    context[key] = Markup(_nest_headings(str(context[key]), 2))
            context["items"] = [
                replace(item, summary_html=Markup(_nest_headings(str(item.summary_html), 3)))
                if item.summary_html
                else item
                for item in context["items"]
            ]
            return context

        return self._remember(("view", entry.key), make)

    def _page(self, entry: Entry, view: dict[str, Any]) -> dict[str, Any]:
        """The page's own facts: title, description, canonical URL, preview image."""
        image = next((item.image for item in view["items"] if item.image), None)
        return {
            "title": view["issue"]["title"],
            "description": view["issue"]["preheader"],
            "url": urls(self.ws.settings).issue_page(entry.slug),
            "type": "article",
            "image": image,
            "published": entry.published.isoformat().replace("+00:00", "Z"),
            "modified": entry.corrected.isoformat().replace("+00:00", "Z") if entry.corrected else None,
        }

    @staticmethod
    def _corrections(entry: Entry) -> dict[str, Any]:
        """What the page says of a correction: when, and each changed part's diff."""
        if entry.corrected is None:
            return {"correction": None, "corrected_items": frozenset()}
        day = entry.corrected.date()
        found = entry.changes
        return {
            "correction": {
                "date_iso": day.isoformat(),
                "date_long": long_date(day),
                "parts": found.parts if found else [],
            },
            "corrected_items": found.items if found else frozenset(),
        }

    def issue_page(self, entry: Entry, newer: Entry | None = None, older: Entry | None = None) -> str:
        """`<slug>/index.html`: the issue as a web page."""

        def neighbour(other: Entry | None) -> dict[str, str] | None:
            if other is None:
                return None
            return {"title": self._view(other)["issue"]["headline"], "url": f"../{quote(other.slug, safe='')}/"}

        def make() -> str:
            view = self._view(entry)
            context = {
                **view,
                **self._common("../"),
                "page": self._page(entry, view),
                **self._corrections(entry),
                "newer": neighbour(newer),
                "older": neighbour(older),
            }
            return render_template(self.ws, ISSUE_TEMPLATE, context)

        key = ("page", entry.key, newer and newer.key, older and older.key, self._templates_stamp())
        return self._remember(key, make)

    def index_page(self, entries: list[Entry]) -> str:
        """`index.html`: every listed issue, newest first."""

        def make() -> str:
            settings = self.ws.settings
            issues = []
            for entry in entries:
                view = self._view(entry)["issue"]
                issues.append({**view, "url": f"{quote(entry.slug, safe='')}/"})
            page = {
                "title": f"{settings.name}: every issue",
                "description": f"Every issue of {settings.name}, newest first.",
                "url": urls(settings).archive(),
                "type": "website",
                "image": None,
                "published": None,
            }
            context = {**self._common("./"), "page": page, "issues": issues}
            return render_template(self.ws, INDEX_TEMPLATE, context)

        return self._remember(("index", tuple(e.key for e in entries), self._templates_stamp()), make)

    def not_found_page(self) -> str:
        """The page for an address that holds nothing; its links are absolute."""

        def make() -> str:
            settings = self.ws.settings
            page = {
                "title": f"Page not found · {settings.name}",
                "description": f"Every issue of {settings.name}.",
                "url": urls(settings).archive(),
                "type": "website",
                "image": None,
                "published": None,
            }
            return render_template(
                self.ws, NOT_FOUND_TEMPLATE, {**self._common(urls(settings).archive()), "page": page}
            )

        return self._remember(("404", self._templates_stamp()), make)

    def _entry_content(self, entry: Entry) -> str:
        def make() -> str:
            view = self._view(entry)
            context = {**view, **self._common("../"), "page": self._page(entry, view), **self._corrections(entry)}
            return render_template(self.ws, ENTRY_TEMPLATE, context).strip()

        return self._remember(("entry", entry.key, self._templates_stamp()), make)

    def feed(self, entries: list[Entry]) -> bytes:
        """`feed.xml`: Atom 1.0 (RFC 4287), one entry per listed issue, newest first,
        each with its full content. An entry's id is its page's URL, which never
        changes; it is updated when it was published (the start of its dispatch), or
        when it was corrected after that."""

        def make() -> bytes:
            settings = self.ws.settings
            fg = FeedGenerator()
            fg.id(urls(settings).archive())
            fg.title(settings.name)
            fg.author({"name": settings.name})
            fg.link(href=urls(settings).archive(), rel="alternate", type="text/html")
            fg.link(href=urls(settings).feed(), rel="self", type="application/atom+xml")
            fg.language("en")
            fg.generator("highlightsmail", version=__version__)
            # An empty feed is as new as the moment it was made; otherwise as its newest entry.
            fg.updated(max((e.updated for e in entries), default=datetime.now(UTC).replace(microsecond=0)))
            for entry in entries:
                view = self._view(entry)
                url = urls(settings).issue_page(entry.slug)
                fe = fg.add_entry(order="append")
                fe.id(url)
                fe.title(view["issue"]["title"])
                fe.link(href=url, rel="alternate", type="text/html")
                fe.published(entry.published)
                fe.updated(entry.updated)
                fe.summary(view["issue"]["preheader"])
                fe.content(self._entry_content(entry), type="html")
            atom: bytes = fg.atom_str(pretty=True)
            return atom

        if not entries:
            return make()
        return self._remember(("feed", tuple(e.key for e in entries), self._templates_stamp()), make)

    # -- the whole site

    def build(self) -> tuple[dict[str, bytes], list[Entry], list[str]]:
        """Every file of the site as {relative path: bytes}, the entries and the skipped files."""
        entries, skipped = self.entries()
        files: dict[str, bytes] = {
            "index.html": self.index_page(entries).encode("utf-8"),
            FEED_FILE: self.feed(entries),
            NOT_FOUND_FILE: self.not_found_page().encode("utf-8"),
        }
        for i, entry in enumerate(entries):
            newer = entries[i - 1] if i > 0 else None
            older = entries[i + 1] if i + 1 < len(entries) else None
            files[f"{entry.slug}/index.html"] = self.issue_page(entry, newer, older).encode("utf-8")
        return files, entries, skipped


def publish(ws: Workspace, out_dir: Path, *, include_all: bool = False) -> Published:
    """Build the archive (index, one page per issue, feed) and write it to `out_dir`,
    replacing what a previous run wrote there and nothing else."""
    files, entries, skipped = Archive(ws, include_all=include_all).build()
    written = write_site(files, Path(out_dir))
    return Published(Path(out_dir), entries, written, skipped)
