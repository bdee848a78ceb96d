"""Shared by the archive's tests: turning the archive on in a workspace, recording a
dispatch as `send` does, and reading a built site (strict HTML, its links, its headings)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import html5lib
import yaml
from lxml import html as lxml_html

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.store import Store
from support.workspace import configure

BASE_URL = "https://highlights.example.org"
ARCHIVE = f"{BASE_URL}/archive/"
SENT_AT = datetime(2024, 1, 12, 8, 30, tzinfo=UTC)
EMAIL_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


def enable_archive(root: Path, path: str = "/archive", **changes: object) -> None:
    configure(root, archive={"enabled": True, "path": path}, **changes)


def mark_sent(root: Path, slug: str, when: datetime = SENT_AT) -> None:
    """Start the dispatch of `slug` in the workspace's database, as `send` does first."""
    ws = load_workspace(root)
    with Store.open(ws, clock=lambda: when) as store:
        store.begin_dispatch(slug, "outbox")


def write_issue(root: Path, slug: str, data: dict) -> Path:
    path = root / "issues" / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def small_issue(title: str = "Test issue", day: str = "2024-01-19", **changes: object) -> dict:
    data: dict = {
        "title": title,
        "date": day,
        "preheader": "A short preheader",
        "items": [
            {
                "title": "First item",
                "summary": "Some *text*.",
                "links": [{"label": "Paper", "url": "https://example.org/paper"}],
            }
        ],
    }
    data.update(changes)
    return data


def strict_parse(text: str, where: str) -> None:
    """html5lib in strict mode: any parse error (a stray end tag, a bad attribute, a
    missing doctype) raises."""
    try:
        html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)
    except Exception as exc:  # html5lib raises ParseError with the position
        raise AssertionError(f"{where}: not valid HTML: {exc}") from None


def site_pages(out: Path) -> dict[str, Path]:
    """{URL of the page when the site sits at ARCHIVE: file} for every HTML file."""
    pages = {}
    for path in sorted(out.rglob("*.html")):
        rel = path.relative_to(out).as_posix()
        url = ARCHIVE + (rel[: -len("index.html")] if rel.endswith("index.html") else rel)
        pages[url] = path
    return pages


def file_for(out: Path, url: str) -> Path | None:
    """The file a static host would answer for an URL under ARCHIVE."""
    rest = unquote(urlsplit(url)._replace(fragment="").geturl()[len(ARCHIVE) :])
    if rest == "" or rest.endswith("/"):
        rest += "index.html"
    path = out / rest
    return path if path.is_file() else None


def broken_links(out: Path) -> list[str]:
    """Every href and src within the site that does not reach a file (or an element
    with the fragment's id); links to other sites are not followed."""
    broken = []
    for url, path in site_pages(out).items():
        if path.name == "404.html":
            continue  # shown at any address; its links are absolute and checked as such below
        doc = lxml_html.fromstring(path.read_text(encoding="utf-8"))
        for el in doc.iter():
            for attr in ("href", "src"):
                value = el.get(attr)
                if value is None:
                    continue
                target = urljoin(url, value)
                if not target.startswith(ARCHIVE):
                    continue
                file = file_for(out, target)
                fragment = urlsplit(target).fragment
                if file is None:
                    broken.append(f"{url}: {value}")
                elif fragment and not lxml_html.fromstring(file.read_text(encoding="utf-8")).xpath(
                    f'//*[@id="{fragment}"]'
                ):
                    broken.append(f"{url}: {value} (no id {fragment})")
    return broken


def heading_levels(text: str) -> list[int]:
    doc = lxml_html.fromstring(text)
    return [int(el.tag[1]) for el in doc.iter() if isinstance(el.tag, str) and re.fullmatch(r"h[1-6]", el.tag)]


def headings_in_order(levels: list[int]) -> bool:
    """One h1, first; no later heading more than one level below the one before."""
    if not levels or levels[0] != 1 or levels.count(1) != 1:
        return False
    return all(b <= a + 1 for a, b in pairwise(levels))
