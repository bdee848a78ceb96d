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

import json
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.urls import FEED_FILE, NOT_FOUND_FILE, PLAIN_NAME, has_page, urls

log = logging.getLogger("highlightsmail.publish")

if TYPE_CHECKING:
    from highlightsmail.authoring.issue import Issue
    from highlightsmail.authoring.workspace import Settings, Workspace

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

    @property
    def key(self) -> tuple[str, tuple[int, int], datetime]:
        """What a page built from this entry depends on."""
        return (self.slug, self.stamp, self.published)


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
                return self._memo[key]
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
        from highlightsmail.authoring.issue import load_issue

        return self._remember(("issue", path, stamp), lambda: load_issue(path))

    # -- which issues

    def _sent(self, slugs: list[str]) -> dict[str, datetime]:
        """When each issue's dispatch started, for those that have one. No database
        yet means nothing was sent (and none is created here)."""
        if not slugs or not self.ws.database_exists():
            return {}
        from highlightsmail.store import Store

        started: dict[str, datetime] = {}
        with Store.open(self.ws) as store:
            for slug in slugs:
                info = store.dispatch_info(slug)
                if info is not None:
                    started[slug] = _started(info.started)
        return started

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
            published = sent.get(slug) or _midnight(issue.date)
            entries.append(Entry(slug, path, issue, published, slug in sent, stamp))
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
        from markupsafe import Markup

        from highlightsmail.rendering.render import issue_context

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
        }

    def issue_page(self, entry: Entry, newer: Entry | None = None, older: Entry | None = None) -> str:
        """`<slug>/index.html`: the issue as a web page."""
        from highlightsmail.rendering.render import render_template

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
                "newer": neighbour(newer),
                "older": neighbour(older),
            }
            return render_template(self.ws, ISSUE_TEMPLATE, context)

        key = ("page", entry.key, newer and newer.key, older and older.key, self._templates_stamp())
        return self._remember(key, make)

    def index_page(self, entries: list[Entry]) -> str:
        """`index.html`: every listed issue, newest first."""
        from highlightsmail.rendering.render import render_template

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
        from highlightsmail.rendering.render import render_template

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
        from highlightsmail.rendering.render import render_template

        def make() -> str:
            view = self._view(entry)
            context = {**view, **self._common("../"), "page": self._page(entry, view)}
            return render_template(self.ws, ENTRY_TEMPLATE, context).strip()

        return self._remember(("entry", entry.key, self._templates_stamp()), make)

    def feed(self, entries: list[Entry]) -> bytes:
        """`feed.xml`: Atom 1.0 (RFC 4287), one entry per listed issue, newest first,
        each with its full content. An entry's id is its page's URL, which never
        changes; it is updated when it was published (the start of its dispatch)."""

        def make() -> bytes:
            from feedgen.feed import FeedGenerator

            from highlightsmail import __version__

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
            fg.updated(max((e.published for e in entries), default=datetime.now(UTC).replace(microsecond=0)))
            for entry in entries:
                view = self._view(entry)
                url = urls(settings).issue_page(entry.slug)
                fe = fg.add_entry(order="append")
                fe.id(url)
                fe.title(view["issue"]["title"])
                fe.link(href=url, rel="alternate", type="text/html")
                fe.published(entry.published)
                fe.updated(entry.published)
                fe.summary(view["issue"]["preheader"])
                fe.content(self._entry_content(entry), type="html")
            return fg.atom_str(pretty=True)

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


# --------------------------------------------------------------------------- writing
#
# `publish` may write into a folder that holds other things (a web root with its own
# pages), so it keeps a record of what it wrote there (MANIFEST) and touches nothing
# else: it replaces the files it wrote before, adds the new ones, removes those no
# longer published (a draft published once with --all must not stay public) and the
# folders it made for them once they are empty. A folder with files but no record is
# refused. Nothing read from the record can reach outside the folder: each entry must
# be a plain relative path of plain names, and nothing is written, replaced or removed
# under a symbolic link.

#: The record of what `publish` wrote into its folder (a hidden JSON file there).
MANIFEST = ".highlights-publish.json"
_MANIFEST_FORMAT = 1
_MANIFEST_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Record:
    """What `publish` wrote into a folder: files, and the folders it made for them
    (relative paths with `/`)."""

    files: frozenset[str] = frozenset()
    folders: frozenset[str] = frozenset()

    def dump(self) -> bytes:
        data = {
            "written_by": "highlights publish",
            "format": _MANIFEST_FORMAT,
            "files": sorted(self.files),
            "folders": sorted(self.folders),
        }
        return (json.dumps(data, indent=1) + "\n").encode("utf-8")


def _plain(rel: str) -> bool:
    """A relative path of plain names (`2024-w02/index.html`): no `..`, no `.`, not
    absolute, no empty part, no backslash; so it stays inside the folder it is read in."""
    return bool(rel) and all(PLAIN_NAME.fullmatch(part) for part in rel.split("/"))


def _ancestors(rel: str) -> list[str]:
    """`a/b/c.html` -> ["a", "a/b"]."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: n + 1]) for n in range(len(parts))]


def _parent(rel: str) -> str:
    """`a/b/c.html` -> "a/b"; `index.html` -> "" (the folder itself)."""
    return rel.rpartition("/")[0]


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _real_folder(out_dir: Path, folder: str) -> bool:
    """Whether `folder` (relative; "" is `out_dir` itself) and each folder on the way
    to it are real folders now, not links to somewhere else."""
    for part in _ancestors(f"{folder}/") if folder else []:
        st = _lstat(out_dir / part)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return False
    return True


def _read_record(out_dir: Path) -> _Record | None:
    """The record in `out_dir`, or None when there is none."""
    path = out_dir / MANIFEST

    def bad(why: str) -> HighlightsError:
        return HighlightsError(
            f"{display_path(path)}: {why}; it is the list of what `publish` wrote in this folder, "
            "so publish into an empty folder instead"
        )

    st = _lstat(path)
    if st is None:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise bad("not a plain file")
    if st.st_size > _MANIFEST_MAX_BYTES:
        raise bad("far too large")
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise HighlightsError(f"cannot read {display_path(path)}: {exc.strerror or exc}") from None
    except ValueError:  # JSON or UTF-8
        raise bad("not JSON") from None
    if not isinstance(data, dict) or data.get("format") != _MANIFEST_FORMAT:
        raise bad(f"not a record of format {_MANIFEST_FORMAT}")
    lists: dict[str, frozenset[str]] = {}
    for key in ("files", "folders"):
        entries = data.get(key)
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise bad(f"`{key}` is not a list of paths")
        for entry in entries:
            if not _plain(entry):
                raise bad(f"`{key}` names {json.dumps(entry)}, which is not a path inside the folder")
        lists[key] = frozenset(entries)
    return _Record(lists["files"], lists["folders"])


def _write_record(out_dir: Path, record: _Record | None) -> None:
    """Put `record` in place (None: remove it)."""
    from highlightsmail.files import write_file

    if record is None:
        (out_dir / MANIFEST).unlink(missing_ok=True)
    else:
        write_file(out_dir / MANIFEST, record.dump())


def _previous(out_dir: Path) -> tuple[_Record | None, bool]:
    """The record of the last publish into `out_dir` (None: none, the folder is empty
    or new), and whether the folder was made now."""
    try:
        if _lstat(out_dir) is None:
            out_dir.mkdir(parents=True)
            return None, True
        if not out_dir.is_dir():
            raise HighlightsError(f"{display_path(out_dir)}: exists and is not a folder")
        record = _read_record(out_dir)
        if record is None and next(out_dir.iterdir(), None) is not None:
            raise HighlightsError(
                f"{display_path(out_dir)}: holds files that `publish` did not write (there is no {MANIFEST}, "
                "its list of what it wrote); choose another --out or empty it"
            )
    except OSError as exc:
        raise HighlightsError(f"cannot use {display_path(out_dir)}: {exc.strerror or exc}") from None
    return record, False


def _folders_to_make(out_dir: Path, files: Collection[str], old: _Record) -> list[str]:
    """The folders the pages need that are not there yet, parents first; refuses (and
    so changes nothing) when a page would replace something `publish` did not write
    or go where a link or a file is in the way."""

    def refuse(rel: str, what: str) -> HighlightsError:
        return HighlightsError(f"{display_path(out_dir / rel)}: {what}; move it away or choose another --out")

    to_make = []
    for folder in sorted({folder for rel in files for folder in _ancestors(rel)}):
        st = _lstat(out_dir / folder)
        if st is None:
            to_make.append(folder)
        elif not stat.S_ISDIR(st.st_mode):
            raise refuse(folder, "is in the way of a page and is not a folder")
    for rel in files:
        st = _lstat(out_dir / rel)
        if st is not None and not (rel in old.files and stat.S_ISREG(st.st_mode)):
            raise refuse(rel, "exists and `publish` did not write it")
    return to_make


def _remove_unpublished(out_dir: Path, old: _Record, new: _Record) -> tuple[_Record, list[str]]:
    """Remove the files `old` lists and `new` does not, and the folders `publish` made
    that are empty now; skip what is no longer a plain file or folder of ours (or lies
    past a link). Returns `new` with what could not be removed, and why."""
    kept_files, kept_folders, failures = set(new.files), set(new.folders), []
    for rel in sorted(old.files - new.files):
        path = out_dir / rel
        st = _lstat(path) if _real_folder(out_dir, _parent(rel)) else None
        if st is None or not stat.S_ISREG(st.st_mode):
            continue
        try:
            path.unlink()
        except OSError as exc:
            kept_files.add(rel)  # still public: try again next time
            failures.append(f"cannot remove {display_path(path)}: {exc.strerror or exc}")
    for folder in sorted(old.folders - new.folders, key=lambda f: f.count("/"), reverse=True):
        if not _real_folder(out_dir, folder):
            continue
        try:
            (out_dir / folder).rmdir()
        except OSError:
            kept_folders.add(folder)  # something else is in it now
    return _Record(frozenset(kept_files), frozenset(kept_folders)), failures


def _write_site(files: dict[str, bytes], out_dir: Path) -> list[Path]:
    """Write the site's files into `out_dir`, replacing those a previous run wrote
    there and removing those it no longer publishes; nothing else in the folder is
    touched.

    Every page is first written whole under a temporary name and renamed only when
    all are complete (files.write_files), so a publish that fails leaves the previous
    site as it was. The index is renamed last, so it never links to a page not yet there.
    """
    from highlightsmail.files import remove_stale_temporaries, write_files

    assert all(_plain(rel) for rel in files)
    found, made_out_dir = _previous(out_dir)
    old = found or _Record()
    to_make = _folders_to_make(out_dir, files, old)
    needed = {folder for rel in files for folder in _ancestors(rel)}
    if found is not None:  # what a killed publish left: ours by name, of a process gone
        for folder in sorted({"", *old.folders, *needed}):
            if _real_folder(out_dir, folder):
                _quietly(partial(remove_stale_temporaries, out_dir / folder))

    # Record what may be there before writing it, so that even a publish killed
    # midway leaves a record of every file it may have written.
    made: list[Path] = []
    try:
        _write_record(out_dir, _Record(old.files | set(files), old.folders | set(to_make)))
        for folder in to_make:
            (out_dir / folder).mkdir()
            made.append(out_dir / folder)
        ordered = sorted(files, key=lambda rel: (rel == "index.html", "/" not in rel, rel))
        written = write_files({out_dir / rel: files[rel] for rel in ordered})
    except OSError as exc:
        for path in reversed(made):
            _quietly(path.rmdir)  # those still empty
        # Back to the previous record, with whatever of this run is in place: a
        # failure while renaming leaves the pages renamed before it (they were not
        # there before, so they are ours).
        placed = {rel for rel in files if rel not in old.files and _lstat(out_dir / rel) is not None}
        kept = {folder for folder in to_make if _lstat(out_dir / folder) is not None}
        back = _Record(old.files | placed, old.folders | kept)
        _quietly(partial(_write_record, out_dir, back if found is not None or back.files or back.folders else None))
        if made_out_dir:
            _quietly(out_dir.rmdir)
        where = exc.filename if isinstance(exc.filename, str) else out_dir / MANIFEST
        raise HighlightsError(f"cannot write {display_path(where)}: {exc.strerror or exc}") from None

    new = _Record(frozenset(files), frozenset((old.folders & needed) | set(to_make)))
    record, failures = _remove_unpublished(out_dir, old, new)
    try:
        _write_record(out_dir, record)
    except OSError as exc:
        failures.append(f"cannot write {display_path(out_dir / MANIFEST)}: {exc.strerror or exc}")
    if failures:
        raise HighlightsError(failures[0])
    return written


def _quietly(action: Callable[[], object]) -> None:
    """A step whose own failure matters less than what is under way: undoing a
    failed publish (the first failure is what is reported), or tidying up."""
    try:
        action()
    except OSError:
        pass


def publish(ws: Workspace, out_dir: Path, *, include_all: bool = False) -> Published:
    """Build the archive (index, one page per issue, feed) and write it to `out_dir`,
    replacing what a previous run wrote there and nothing else."""
    files, entries, skipped = Archive(ws, include_all=include_all).build()
    written = _write_site(files, Path(out_dir))
    return Published(Path(out_dir), entries, written, skipped)
