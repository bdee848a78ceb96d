"""The archive served by the web endpoint (`highlights serve`) over real HTTP: the same
pages as `publish` writes, built from the files on each request, with ETags and 304s,
a 404 page, caching and security headers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import feedparser
import httpx
import pytest
from click.testing import CliRunner

from highlightsmail.cli import main
from highlightsmail.web.archive import ARCHIVE_CACHE_CONTROL
from highlightsmail.web.pages import CONTENT_SECURITY_POLICY
from support.archive import ARCHIVE, enable_archive, mark_sent, small_issue, strict_parse, write_issue
from support.webapp import raw_http, serve_workspace

HTML = "text/html; charset=utf-8"


@pytest.fixture
def root(workspace: Path) -> Path:
    enable_archive(workspace)
    mark_sent(workspace, "2024-w02")
    return workspace


@pytest.fixture
def site(root: Path):
    with serve_workspace(root) as s:
        yield s


def assert_archive_headers(response: httpx.Response) -> None:
    h = response.headers
    assert h["cache-control"] == ARCHIVE_CACHE_CONTROL == "public, max-age=300"
    csp = h["content-security-policy"]
    for part in ("default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'", "img-src https: http:"):
        assert part in csp
    assert "script-src" not in csp  # scripts fall back to 'none'
    assert "form-action 'self' https://highlights.example.org" in csp
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    assert "noindex" not in h["x-robots-tag"]
    assert h["etag"].startswith('"') and h["etag"].endswith('"')
    assert "set-cookie" not in h


def test_index_issue_page_and_feed(site, http, root: Path) -> None:
    index = http.get(f"{site.url}/archive/")
    assert index.status_code == 200 and index.headers["content-type"] == HTML
    assert_archive_headers(index)
    strict_parse(index.text, "index")
    assert 'href="2024-w02/"' in index.text

    issue = http.get(f"{site.url}/archive/2024-w02/")
    assert issue.status_code == 200 and issue.headers["content-type"] == HTML
    assert_archive_headers(issue)
    assert f'<link rel="canonical" href="{ARCHIVE}2024-w02/">' in issue.text

    feed = http.get(f"{site.url}/archive/feed.xml")
    assert feed.status_code == 200 and feed.headers["content-type"] == "application/atom+xml; charset=utf-8"
    assert_archive_headers(feed)
    parsed = feedparser.parse(feed.content)
    assert not parsed.bozo and [e.id for e in parsed.entries] == [f"{ARCHIVE}2024-w02/"]

    # The very pages `publish` writes.
    result = CliRunner().invoke(main, ["publish"], catch_exceptions=False)
    assert result.exit_code == 0
    out = root / "out" / "site"
    assert (out / "index.html").read_bytes() == index.content
    assert (out / "2024-w02" / "index.html").read_bytes() == issue.content
    assert (out / "feed.xml").read_bytes() == feed.content


def test_etag_and_304(site, http) -> None:
    for path in ("/archive/", "/archive/2024-w02/", "/archive/feed.xml"):
        first = http.get(site.url + path)
        etag = first.headers["etag"]
        again = http.get(site.url + path, headers={"If-None-Match": etag})
        assert again.status_code == 304, path
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == ARCHIVE_CACHE_CONTROL
        # Weak comparison, lists and `*` (RFC 9110 13.1.2); another tag gets the page.
        for header in (f"W/{etag}", f'"other", {etag}', "*"):
            assert http.get(site.url + path, headers={"If-None-Match": header}).status_code == 304, header
        other = http.get(site.url + path, headers={"If-None-Match": '"not-this-one"'})
        assert other.status_code == 200 and other.content == first.content
        head = http.head(site.url + path)
        assert head.status_code == 200 and head.headers["etag"] == etag


def test_an_edited_issue_file_shows_at_once_with_a_new_etag(site, http, root: Path) -> None:
    first = http.get(f"{site.url}/archive/2024-w02/")
    path = root / "issues" / "2024-w02.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("Mixtral of Experts", "Mixtral of Many Experts"), encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = http.get(f"{site.url}/archive/2024-w02/", headers={"If-None-Match": first.headers["etag"]})
    assert second.status_code == 200
    assert "Mixtral of Many Experts" in second.text and "Mixtral of Many Experts" not in first.text
    assert second.headers["etag"] != first.headers["etag"]
    assert "Mixtral of Many Experts" in http.get(f"{site.url}/archive/feed.xml").text


def test_an_issue_just_sent_appears(site, http, root: Path) -> None:
    write_issue(root, "2024-w03", small_issue("Week three"))
    assert http.get(f"{site.url}/archive/2024-w03/").status_code == 404
    etag = http.get(f"{site.url}/archive/").headers["etag"]
    mark_sent(root, "2024-w03")
    assert http.get(f"{site.url}/archive/2024-w03/").status_code == 200
    index = http.get(f"{site.url}/archive/", headers={"If-None-Match": etag})
    assert index.status_code == 200 and "Week three" in index.text


@pytest.mark.parametrize(
    "path", ["/archive/2024-w09/", "/archive/nothing/here", "/archive/..%2F..%2Fhighlights.yaml/", "/archive/%2e%2e/"]
)
def test_unknown_addresses_get_the_archive_404_page(site, http, root: Path, path: str) -> None:
    write_issue(root, "2024-w09", small_issue("Not sent yet"))
    response = http.get(site.url + path)
    assert response.status_code == 404
    assert response.headers["content-type"] == HTML
    assert "Page not found" in response.text and "Not sent yet" not in response.text
    strict_parse(response.text, path)
    # Not cached: the issue may be sent in a minute; not indexed.
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-robots-tag"] == "noindex, nofollow"
    assert response.headers["x-frame-options"] == "DENY"
    assert f'href="{ARCHIVE}"' in response.text


def test_addresses_without_the_slash_are_redirected(site, http) -> None:
    response = http.get(f"{site.url}/archive")
    assert response.status_code == 308 and response.headers["location"] == "/archive/"
    response = http.get(f"{site.url}/archive/2024-w02")
    assert response.status_code == 308 and response.headers["location"] == "/archive/2024-w02/"
    assert http.get(f"{site.url}/archive/2024-w02", follow_redirects=True).status_code == 200
    # Nothing to add a slash to: the 404 page at once, not a redirect to it.
    assert http.get(f"{site.url}/archive/2024-w09").status_code == 404


#: Request targets that once came back as a Location leaving the site (`https:evil.example/`
#: is another site to a browser), or that try to: schemes, network paths, backslashes
#: (a browser reads `/\` as `//`), each also %-escaped, once and twice, and dot segments.
HOSTILE_TARGETS = [
    f"{archive}{rest}"
    for archive in ("/archive", "//archive", "/archive/", "/%61rchive")
    for rest in (
        "/https:evil.example",
        "/http:evil.example",
        "/javascript:alert(1)",
        "/JavaScript:alert(1)",
        "/data:text/html,x",
        "/https:%2F%2Fevil.example",
        "/https%3Aevil.example",
        "/https%253Aevil.example",
        "//evil.example",
        "/%2F%2Fevil.example",
        "/%252F%252Fevil.example",
        "/\\evil.example",
        "/%5Cevil.example",
        "/%5C%5Cevil.example",
        "/%255Cevil.example",
        "/\\/evil.example",
        "/..",
        "/.",
        "/%2e%2e",
        "/..%2F..%2Fevil.example",
        "/%09/evil.example",
        "/evil.example%0D%0ALocation:%20https://evil.example",
        "",
        "/2024-w02",
    )
]


def _assert_stays_on_the_site(location: str, home: str, target: str) -> None:
    """A Location a browser resolves to this origin, under the archive's own path:
    one `/` and then anything but `/` or `\\`, no scheme, no control character, no dot
    segment, %-escaped."""
    assert location.startswith(home), (target, location)
    assert location[1:2] not in ("/", "\\"), (target, location)
    assert all(0x21 <= ord(c) < 0x7F and c != "\\" for c in location), (target, location)
    segments = location.split("/")
    assert not any(seg.lower() in (".", "..", "%2e%2e", "%2e", ".%2e", "%2e.") for seg in segments), (target, location)
    assert ":" not in location, (target, location)


def test_every_redirect_stays_on_the_site_and_under_its_path(site) -> None:
    """Each target sent as it is (no client tidies it up); every 3xx checked."""
    redirects = 0
    for target in HOSTILE_TARGETS:
        answer = raw_http(site.url, target)
        assert answer.status in (200, 308, 400, 404), (target, answer.status)
        if 300 <= answer.status < 400:
            redirects += 1
            location = answer.header("location")
            assert location is not None
            _assert_stays_on_the_site(location, "/archive/", target)
            assert location in ("/archive/", "/archive/2024-w02/"), (target, location)
    assert redirects >= 2  # /archive and /archive/2024-w02 are still redirected


def test_redirects_under_a_base_url_with_a_path_stay_under_it(workspace: Path) -> None:
    """base_url https://highlights.example.org/news: the proxy may pass /news on or strip
    it; either way the Location is /news/archive/..., whatever the request said."""
    enable_archive(workspace, base_url="https://highlights.example.org/news")
    mark_sent(workspace, "2024-w02")
    with serve_workspace(workspace) as site:
        redirects = 0
        for target in [*HOSTILE_TARGETS, *(f"/news{t}" for t in HOSTILE_TARGETS)]:
            answer = raw_http(site.url, target)
            assert answer.status in (200, 308, 400, 404), (target, answer.status)
            if answer.status == 308:
                redirects += 1
                location = answer.header("location") or ""
                _assert_stays_on_the_site(location, "/news/archive/", target)
                assert location in ("/news/archive/", "/news/archive/2024-w02/"), (target, location)
        assert redirects >= 4


def test_a_location_is_built_from_segments_that_cannot_leave_the_site() -> None:
    """Every Location the endpoint makes is built by local_path: whatever the parts hold
    (a base_url path with `//` or an escaped backslash, a slug with a scheme), the result
    is one path on this site."""
    from highlightsmail.web.middleware import local_path

    assert local_path("/news", "/archive", "2024-w02", slash=True) == "/news/archive/2024-w02/"
    assert local_path("", "/archive", slash=True) == "/archive/"
    for parts in (
        ("//evil.example", "/archive"),
        ("/\\evil.example",),
        ("\\\\evil.example",),
        ("/archive", "https:evil.example"),
        ("/archive", "javascript:alert(1)"),
        ("/archive", "..", "..", "evil"),
        ("/archive", "%2F%2Fevil"),
        ("/archive", "a\r\nSet-Cookie: x=1"),
    ):
        location = local_path(*parts, slash=True)
        _assert_stays_on_the_site(location, "/", repr(parts))


def test_other_methods_are_refused(site, http) -> None:
    response = http.post(f"{site.url}/archive/", data={"x": "1"})
    assert response.status_code == 405
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_the_endpoints_own_pages_keep_their_headers(site, http) -> None:
    response = http.get(f"{site.url}/healthz")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-robots-tag"] == "noindex, nofollow"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    page = http.get(site.link(site.add("reader@example.org")))
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"


def test_a_broken_issue_file_is_left_out_and_logged(site, http, root: Path, caplog) -> None:
    write_issue(root, "2024-w03", {"title": "Broken", "date": "2024-01-19", "items": [{"title": "x", "summry": "y"}]})
    mark_sent(root, "2024-w03")
    with caplog.at_level(logging.ERROR, logger="highlightsmail.publish"):
        index = http.get(f"{site.url}/archive/")
        assert index.status_code == 200
    assert "Week 2, 2024" in index.text and "Broken" not in index.text
    assert any("2024-w03.yaml: left out of the archive" in r.getMessage() for r in caplog.records)
    assert http.get(f"{site.url}/archive/2024-w03/").status_code == 404


def test_a_site_template_the_editor_broke_is_a_500_page_and_one_log_line(site, http, root: Path, caplog) -> None:
    """The log had the whole traceback, though the error is one known line: which
    template, which line, what is wrong."""
    (root / "templates" / "site" / "issue.html.j2").write_text("{% if %}\n", encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="highlightsmail.web"):
        page = http.get(f"{site.url}/archive/2024-w02/")
    assert page.status_code == 500 and "Something went wrong" in page.text
    assert "Traceback" not in page.text and "issue.html.j2" not in page.text
    [record] = [r for r in caplog.records if r.name == "highlightsmail.web"]
    assert record.getMessage() == (
        "cannot answer GET /archive/2024-w02/: templates/site/issue.html.j2:1: "
        "Expected an expression, got 'end of statement block'"
    )
    assert record.exc_info is None
    assert http.get(f"{site.url}/archive/").status_code == 200  # the rest still answers


def test_no_archive_unless_enabled(workspace: Path, http) -> None:
    mark_sent(workspace, "2024-w02")
    with serve_workspace(workspace) as site:
        response = http.get(f"{site.url}/archive/")
        assert response.status_code == 404 and "Page not found" in response.text
        assert response.headers["cache-control"] == "no-store"
        assert http.get(f"{site.url}/archive/feed.xml").status_code == 404


def test_a_configured_path_is_served(workspace: Path, http) -> None:
    enable_archive(workspace, path="/news/back-issues")
    mark_sent(workspace, "2024-w02")
    with serve_workspace(workspace) as site:
        assert http.get(f"{site.url}/news/back-issues/2024-w02/").status_code == 200
        feed = feedparser.parse(http.get(f"{site.url}/news/back-issues/feed.xml").content)
        assert feed.entries[0].id == "https://highlights.example.org/news/back-issues/2024-w02/"
        assert http.get(f"{site.url}/archive/").status_code == 404
