"""`highlights new --from-feed`: a draft issue from the new entries of feeds.

Atom, RSS 2.0 and RSS 1.0 (RDF, as arXiv's listings) are read with feedparser; JSON
Feed 1.0 and 1.1, which feedparser does not read, as JSON. Each entry becomes an item:
its title, its link as the item's button, its summary as Markdown (htmltext.py), its
authors in the text and its tags. An entry whose link is already in an issue file is
skipped, so a second draft never repeats the first. Every feed is fetched and read
before anything is written: a feed that fails leaves no file behind.
"""

from __future__ import annotations

import calendar
import datetime as dt
import io
import json
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import feedparser
import yaml
from pydantic import TypeAdapter, ValidationError

from highlightsmail.authoring.feedfetch import (
    STATE_FILE,
    Validators,
    fetch,
    load_validators,
    read_file,
    save_validators,
)
from highlightsmail.authoring.fields import HttpUrl
from highlightsmail.authoring.htmltext import clean_text, html_to_markdown, html_to_text, shorten, text_to_markdown
from highlightsmail.authoring.issue import Issue, Item, load_issue
from highlightsmail.authoring.scaffold import FEED_INTRO, issue_title, next_issue_path, write_new_issue
from highlightsmail.errors import HighlightsError, HighlightsWarning, display_path
from highlightsmail.text import header_problem

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace

__all__ = ["DEFAULT_LIMIT", "Draft", "Entry", "Feed", "draft_from_feeds", "known_links", "read_feed"]

#: Items in a draft unless --limit says otherwise: about 60 KB of HTML, well under
#: the size at which Gmail clips an email.
DEFAULT_LIMIT = 20
#: A draft's most items, and the most text kept of each summary: 30 items of 800
#: characters stay under the 102 KB at which Gmail clips an email, so a draft of any
#: allowed size passes `check` (50 arXiv abstracts of 1,500 made 161 KB of HTML).
MAX_ITEMS = 30
SUMMARY_CHARS = 800
TITLE_CHARS = 300
AUTHORS_CHARS = 300
TAG_CHARS = 80
MAX_TAGS = 20
#: The label of each item's button (its link).
BUTTON_LABEL = "Read"

_URL_IN_TEXT = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_HTTP_URL: TypeAdapter[str] = TypeAdapter(HttpUrl)


@dataclass(frozen=True)
class Entry:
    """One entry of a feed, ready to be an item."""

    title: str
    link: str | None
    summary: str  # Markdown, "" when the feed has none
    authors: str  # names, comma-separated, "" when none
    tags: tuple[str, ...]
    date: dt.datetime | None  # published, else updated, else the feed's own date


@dataclass(frozen=True)
class Feed:
    """A feed as read: its title and entries in the feed's order."""

    title: str
    entries: tuple[Entry, ...]


# --------------------------------------------------------------------------- reading


def read_feed(body: bytes, *, url: str | None, content_type: str, where: str) -> Feed:
    """A feed's entries from its body: JSON Feed when it is JSON, else what feedparser
    reads. Raises HighlightsError naming `where` when the body is no feed at all."""
    if body.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"{" or "json" in content_type.lower():
        return _json_feed(body, url, where)
    # No content-location: feedparser would resolve the links in an entry's HTML against
    # the feed's URL; htmltext resolves them against the entry's link (an xml:base, where
    # the feed has one, still counts first). Bytes in a stream: feedparser takes a string
    # for a URL or a file name to open.
    headers = {"content-type": content_type} if content_type else {}
    parsed = feedparser.parse(io.BytesIO(body), response_headers=headers)
    if not parsed.get("version"):
        looks = "an HTML page" if b"<html" in body[:2000].lower() else "no Atom, RSS or JSON Feed"
        raise HighlightsError(f"{where}: not a feed ({looks})")
    feed = parsed.get("feed", {})
    fallback = _struct_date(feed.get("updated_parsed") or feed.get("published_parsed"))
    entries = tuple(_xml_entry(entry, url, fallback) for entry in parsed.get("entries", []))
    return Feed(_title(feed), entries)


def _xml_entry(entry: Any, url: str | None, fallback: dt.datetime | None) -> Entry:
    link = _link(entry.get("link"), url)
    html, kind = _xml_summary(entry)
    if "html" in kind or "xml" in kind:
        summary = html_to_markdown(html, link, limit=SUMMARY_CHARS)
    else:
        summary = text_to_markdown(html, limit=SUMMARY_CHARS)
    names = [_one_line(a.get("name", "")) for a in entry.get("authors", []) if isinstance(a, dict)]
    if not any(names) and entry.get("author"):
        names = [_one_line(entry["author"])]
    tags = [tag.get("label") or tag.get("term") or "" for tag in entry.get("tags", []) if isinstance(tag, dict)]
    date = _struct_date(entry.get("published_parsed") or entry.get("updated_parsed")) or fallback
    return Entry(_title(entry), link, summary, _names(names), _tags(tags), date)


def _xml_summary(entry: Any) -> tuple[str, str]:
    """The entry's summary (else its content) and its type."""
    summary = entry.get("summary") or ""
    kind = (entry.get("summary_detail") or {}).get("type", "text/html")
    if not summary.strip() and entry.get("content"):
        first = entry["content"][0]
        summary, kind = first.get("value", ""), first.get("type", "text/html")
    return str(summary), str(kind)


def _json_feed(body: bytes, url: str | None, where: str) -> Feed:
    try:
        data = json.loads(body.decode("utf-8-sig", errors="replace"))
    except ValueError:
        raise HighlightsError(f"{where}: not a feed (JSON that does not parse)") from None
    version = data.get("version") if isinstance(data, dict) else None
    if not (isinstance(version, str) and version.startswith("https://jsonfeed.org/version/")):
        raise HighlightsError(f"{where}: not a feed (JSON, but no JSON Feed version)")
    items = data.get("items")
    if not isinstance(items, list):
        raise HighlightsError(f"{where}: not a feed (a JSON Feed needs a list of items)")
    # Relative item URLs lead into the site, which may not be where the feed is served.
    home = _text(data.get("home_page_url")) or _text(data.get("feed_url"))
    base = (urljoin(url, home) if url else home) or url
    feed_authors = _json_authors(data)
    entries = tuple(_json_entry(item, base, feed_authors) for item in items if isinstance(item, dict))
    return Feed(_one_line(_text(data.get("title")), html=False), entries)


def _json_entry(item: dict[str, Any], base: str | None, feed_authors: list[str]) -> Entry:
    link = _link(_text(item.get("url")) or _text(item.get("external_url")), base)
    if _text(item.get("summary")).strip():
        summary = text_to_markdown(_text(item.get("summary")), limit=SUMMARY_CHARS)
    elif _text(item.get("content_html")).strip():
        summary = html_to_markdown(_text(item.get("content_html")), link or base, limit=SUMMARY_CHARS)
    else:
        summary = text_to_markdown(_text(item.get("content_text")), limit=SUMMARY_CHARS)
    tags = [tag for tag in item.get("tags") or [] if isinstance(tag, str)]
    date = _iso_date(item.get("date_published")) or _iso_date(item.get("date_modified"))
    authors = _json_authors(item) or feed_authors
    # JSON Feed titles are plain text (version 1.1).
    return Entry(_one_line(_text(item.get("title")), html=False), link, summary, _names(authors), _tags(tags), date)


def _json_authors(data: dict[str, Any]) -> list[str]:
    """`authors` (1.1), or the single `author` of JSON Feed 1.0."""
    found = data.get("authors")
    if not isinstance(found, list):
        found = [data.get("author")]
    return [_one_line(_text(a.get("name"))) for a in found if isinstance(a, dict)]


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _one_line(value: str, *, html: bool = True) -> str:
    """Text from a feed on one line, spaces collapsed; when it is `html`, its markup
    gone. Plain text keeps every character: `$n<m$` in a paper's title is no tag."""
    value = clean_text(value)
    if html and ("<" in value or "&" in value):
        value = html_to_text(value)
    return " ".join(value.split())


def _title(data: Any) -> str:
    """A feedparser entry's or feed's title, read as the type the feed gives it."""
    kind = str((data.get("title_detail") or {}).get("type", "text/html"))
    return _one_line(str(data.get("title", "")), html="html" in kind)


def _names(names: Sequence[str]) -> str:
    return shorten(", ".join(name for name in names if name), AUTHORS_CHARS)


def _tags(raw: Sequence[str]) -> tuple[str, ...]:
    tags: list[str] = []
    for tag in raw:
        tag = _one_line(tag)
        if tag and len(tag) <= TAG_CHARS and tag not in tags:
            tags.append(tag)
    return tuple(tags[:MAX_TAGS])


def _link(value: str | None, base: str | None) -> str | None:
    """An entry's link, resolved against `base`, when it is one an item can carry."""
    if not value:
        return None
    value = value.strip()
    try:
        value = urljoin(base, value) if base else value
        return _HTTP_URL.validate_python(value)
    except (ValueError, ValidationError):
        return None


def _struct_date(value: Any) -> dt.datetime | None:
    """feedparser's time tuple (UTC) as a datetime."""
    try:
        return dt.datetime.fromtimestamp(calendar.timegm(value), dt.UTC) if value else None
    except (TypeError, ValueError, OverflowError):
        return None


def _iso_date(value: object) -> dt.datetime | None:
    """A JSON Feed date (RFC 3339); one without a zone is taken as UTC."""
    try:
        when = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return when.replace(tzinfo=dt.UTC) if when and when.tzinfo is None else when


# --------------------------------------------------------------------------- what the issues hold


def _link_key(url: str) -> str:
    """What makes two links the same entry: not the scheme (http or https), the case
    of the host or a trailing slash."""
    url = _trimmed(url.strip())
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    return f"{(parts.netloc or '').lower()}{parts.path.rstrip('/')}?{parts.query}#{parts.fragment}"


def _trimmed(url: str) -> str:
    """A URL found in text without what ends the sentence or the Markdown link around it."""
    while url:
        last = url[-1]
        opening = {")": "(", "]": "["}.get(last)
        if last in ".,;:!?'\"" or (opening and url.count(last) > url.count(opening)):
            url = url[:-1]
        else:
            return url
    return url


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for child in value.values():
            yield from _strings(child)
    elif isinstance(value, list):
        for child in value:
            yield from _strings(child)


def known_links(issues_dir: Path) -> set[str]:
    """The links (as `_link_key`s) in every issue file: buttons, images and links in
    the Markdown. A file that does not load as YAML is searched as text."""
    found: set[str] = set()
    for path in sorted([*issues_dir.glob("*.yaml"), *issues_dir.glob("*.yml")]):
        try:
            raw = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise HighlightsError(f"{display_path(path)}: cannot read it ({exc.strerror or exc})") from None
        try:
            texts = list(_strings(yaml.safe_load(raw)))
        except yaml.YAMLError:
            texts = [raw]
        for text in texts:
            found.update(_link_key(url) for url in _URL_IN_TEXT.findall(text))
            found.update(_link_key(line) for line in text.split() if line.lower().startswith(("http://", "https://")))
    return found


# --------------------------------------------------------------------------- the draft


@dataclass(frozen=True)
class _Source:
    label: str  # as the editor named it
    url: str | None = None
    path: Path | None = None


@dataclass
class Draft:
    """What `draft_from_feeds` did: the file written (None when nothing was new) and
    how many entries were left out, and why."""

    path: Path | None
    sources: list[str]
    items: int = 0
    already: int = 0  # their link is in an issue file
    older: int = 0  # dated before --since
    left: int = 0  # over --limit; the next draft takes them
    no_link: int = 0  # no link an item can carry
    unfit: int = 0  # could not be made an item (a bug if ever counted)

    def describe(self) -> str:
        """One line: what was written, or that nothing was new, with what was left out."""
        notes = [
            f"{n} {what}"
            for n, what in (
                (self.already, "already in issues"),
                (self.older, "older than --since"),
                (self.left, "over --limit, left for the next draft"),
                (self.no_link, "without a link"),
                (self.unfit, "that could not be made an item"),
            )
            if n
        ]
        why = f" ({'; '.join(notes)})" if notes else ""
        feeds = ", ".join(self.sources)
        if self.path is None:
            return f"nothing new in {feeds}{why}"
        items = f"{self.items} item{'' if self.items == 1 else 's'}"
        return f"{display_path(self.path)}: {items} from {feeds}{why}"


def _resolve(ws: Workspace, source: str) -> _Source:
    named = {feed.name: feed.url for feed in ws.settings.feeds}
    if source in named:
        return _Source(source, url=named[source])
    if "://" in source:
        try:
            return _Source(source, url=_HTTP_URL.validate_python(source))
        except ValidationError as exc:
            why = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise HighlightsError(f"{source}: {why}") from None
    path = Path(source)
    if path.is_file():
        return _Source(display_path(path), path=path)
    names = ", ".join(named) or "none yet"
    raise HighlightsError(
        f"{display_path(source)}: not a feed's name from `feeds:` in highlights.yaml ({names}), a URL or a file"
    )


def _since(ws: Workspace, since: str | None) -> dt.datetime | None:
    """The moment entries must be dated from: DATE, or the last issue's date for
    `last` (none without an issue yet: every entry is newer than no issue)."""
    if since is None:
        return None
    if since == "last":
        if not any(ws.issues_dir.glob("*.yaml")):
            return None
        day = load_issue(ws.issue_path("latest")).date
    else:
        try:
            day = dt.date.fromisoformat(since)
        except ValueError:
            raise HighlightsError(f"--since {since}: write a date as YYYY-MM-DD, or `last`") from None
    # From the start of that day: an entry of the same day already taken is skipped by its link.
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def _load(source: _Source, kept: dict[str, Validators], timeout: float | None) -> tuple[Feed, Validators | None]:
    """The source's feed, and the validators its server gave (None for a file). A feed
    that did not change since the kept validators has no entries."""
    if source.path is not None:
        body = read_file(source.path)
        return read_feed(body, url=None, content_type="", where=source.label), None
    assert source.url is not None
    got = fetch(source.url, kept.get(source.url), timeout=timeout)
    if got.body is None:
        return Feed("", ()), got.validators
    where = source.label if source.label == source.url else f"{source.label} ({source.url})"
    return read_feed(got.body, url=got.url, content_type=got.content_type, where=where), got.validators


def _select(
    feeds: list[Feed], known: set[str], since: dt.datetime | None, limit: int, draft: Draft
) -> tuple[list[list[Entry]], list[int]]:
    """The new entries of each feed, at most `limit` in all, shared in turns so that
    every feed has its place, and how many of each were left over; `draft` counts
    what was left out."""
    fresh: list[list[Entry]] = []
    for feed in feeds:
        kept = []
        for entry in feed.entries:
            key = _link_key(entry.link) if entry.link else None
            if key is None:
                draft.no_link += 1
            elif key in known:
                draft.already += 1
            elif since is not None and entry.date is not None and entry.date < since:
                draft.older += 1
            else:
                known.add(key)
                kept.append(entry)
        fresh.append(kept)
    taken = [0] * len(fresh)
    while sum(taken) < limit and any(taken[i] < len(f) for i, f in enumerate(fresh)):
        for i, entries in enumerate(fresh):
            if taken[i] < len(entries) and sum(taken) < limit:
                taken[i] += 1
    left = [len(entries) - n for entries, n in zip(fresh, taken, strict=True)]
    draft.left = sum(left)
    return [entries[:n] for entries, n in zip(fresh, taken, strict=True)], left


def draft_from_feeds(
    ws: Workspace,
    sources: Sequence[str],
    *,
    limit: int | None = None,
    since: str | None = None,
    date: dt.date | None = None,
    timeout: float | None = None,
) -> Draft:
    """Write the next issue file from the new entries of `sources` (URLs, files or
    names from `feeds:`), or nothing when none is new. Every feed is read first;
    any failure raises HighlightsError before anything is written."""
    wanted = [_resolve(ws, source) for source in dict.fromkeys(sources)]
    cutoff = _since(ws, since)
    state = ws.private_dir / STATE_FILE
    kept = load_validators(state)
    loaded = [_load(source, kept, timeout) for source in wanted]
    draft = Draft(None, [source.label for source in wanted])
    chosen, left = _select(
        [feed for feed, _ in loaded], known_links(ws.issues_dir), cutoff, limit or DEFAULT_LIMIT, draft
    )
    items = [item for entries, (feed, _) in zip(chosen, loaded, strict=True) for item in _items(entries, feed, draft)]
    if items:
        path, day = next_issue_path(ws, date)
        text = issue_text(ws, items, day, path.stem, draft.sources)
        write_new_issue(path, text)
        draft.path, draft.items = path, len(items)
    fetched = {source.url: validators for source, (_, validators) in zip(wanted, loaded, strict=True) if source.url}
    _remember(ws, state, kept, fetched, {source.url for source, n in zip(wanted, left, strict=True) if n})
    return draft


def _items(entries: list[Entry], feed: Feed, draft: Draft) -> Iterator[dict[str, Any]]:
    """Each entry as an issue's item (a dict as the file holds it)."""
    for entry in entries:
        assert entry.link is not None
        title = entry.title or _title_from(entry)
        summary = entry.summary or f"From {_escape_plain(feed.title or urlsplit(entry.link).hostname or '')}."
        if entry.authors:
            summary = f"*{_escape_plain(entry.authors)}*\n\n{summary}"
        item: dict[str, Any] = {
            "title": shorten(title, TITLE_CHARS),
            "summary": summary.strip() + "\n",
            "links": [{"label": BUTTON_LABEL, "url": entry.link}],
        }
        if entry.tags:
            item["tags"] = list(entry.tags)
        try:
            Item.model_validate(item)  # made to fit, so never expected; skipped rather than a traceback
        except ValidationError:
            draft.unfit += 1
            continue
        yield item


def _title_from(entry: Entry) -> str:
    """A title for an entry with none: the first sentence of its text, else where its
    link goes."""
    first = entry.summary.split("\n\n")[0]
    first = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", first)  # a link's text
    first = re.sub(r"\\(.)", r"\1", first.replace("**", "").replace("`", ""))
    sentence = re.split(r"(?<=[.!?])\s", " ".join(first.split()), maxsplit=1)[0]
    if sentence:
        return shorten(sentence, 80)
    parts = urlsplit(entry.link or "")
    return f"{parts.hostname}{parts.path}".rstrip("/")


def _escape_plain(text: str) -> str:
    return text_to_markdown(text, limit=AUTHORS_CHARS)


class _Dumper(yaml.SafeDumper):
    """YAML as the skeleton is written: text of several lines as a `|` block, and the
    entries of a list indented under their key."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_text)


def issue_text(ws: Workspace, items: list[dict[str, Any]], day: dt.date, slug: str, sources: list[str]) -> str:
    """The issue file: title and date as `new` writes them, a preheader of the first
    titles, the placeholder intro, the items. Checked as `check` would before writing."""
    titles = " · ".join(item["title"] for item in items)
    preheader = shorten(titles, 150)
    if header_problem(preheader):
        preheader = f"{len(items)} new items"
    data = {
        "title": issue_title(ws.settings.name, day),
        "date": day,
        "preheader": preheader,
        "intro": FEED_INTRO + "\n",
        "items": items,
    }
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10_000)
    head = (
        f"# Drafted by `highlights new --from-feed` from {', '.join(sources)}.\n"
        f"# Write the intro and read every item; `highlights check {slug}` warns while the intro is unchanged.\n"
    )
    try:
        Issue.model_validate(yaml.safe_load(body))
    except (ValidationError, yaml.YAMLError) as exc:  # pragma: no cover - each item was checked
        raise HighlightsError(f"{slug}: the draft would not be a valid issue ({exc})") from None
    return head + body


def _remember(
    ws: Workspace,
    state: Path,
    kept: dict[str, Validators],
    fetched: dict[str, Validators | None],
    left_over: set[str | None],
) -> None:
    """Keep each fetched feed's validators for its next conditional GET, but forget
    those of a feed with new entries left over (--limit): a 304 must mean that
    nothing new is waiting."""
    changed = dict(kept)
    for url, validators in fetched.items():
        if url in left_over or validators is None or not validators.as_json():
            changed.pop(url, None)
        else:
            changed[url] = validators
    if changed == kept:
        return
    try:
        ws.make_private_dir(state)
        save_validators(state, changed)
    except OSError as exc:  # only a cache: the draft stands, the next fetch is a full one
        warnings.warn(
            f"{display_path(state)}: cannot keep the feeds' validators ({exc.strerror or exc})",
            HighlightsWarning,
            stacklevel=2,
        )
