"""Every public address comes from urls.py: the links in mail, the pages that print or
post to one, and the web app's route table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.routing import BaseRoute, Mount

from highlightsmail import urls as urls_module
from highlightsmail.urls import APP_SEGMENTS, SITE_FILES, TOKEN_SEGMENTS, has_page, urls
from support.archive import enable_archive
from support.signup import enable_signup


@dataclass(frozen=True)
class _Archive:
    path: str = "/archive"


@dataclass(frozen=True)
class _Settings:
    base_url: str
    archive: _Archive = _Archive()


@pytest.mark.parametrize("base", ["https://news.example.org", "https://news.example.org/"])
def test_each_address_with_or_without_a_trailing_slash(base: str) -> None:
    u = urls(_Settings(base))
    assert u.unsubscribe("u1.SIG") == "https://news.example.org/u/u1.SIG"
    assert u.unsubscribe_prefix + "u1.SIG" == u.unsubscribe("u1.SIG")
    assert u.confirm("c1.2.SIG") == "https://news.example.org/confirm/c1.2.SIG"
    assert u.subscribe() == "https://news.example.org/subscribe"
    assert u.webhook() == "https://news.example.org/webhooks/sendgrid"
    assert u.archive() == "https://news.example.org/archive/"
    assert u.issue_page("2024-w02") == "https://news.example.org/archive/2024-w02/"
    assert u.feed() == "https://news.example.org/archive/feed.xml"
    assert u.origin() == "https://news.example.org"
    assert u.mount_path() == ""


def test_a_base_path_and_a_deep_archive_path() -> None:
    u = urls(_Settings("https://Example.ORG:8443/news/", _Archive("/news/letters/archive")))
    assert u.unsubscribe("t") == "https://Example.ORG:8443/news/u/t"
    assert u.subscribe() == "https://Example.ORG:8443/news/subscribe"
    assert u.archive() == "https://Example.ORG:8443/news/news/letters/archive/"
    assert u.feed() == "https://Example.ORG:8443/news/news/letters/archive/feed.xml"
    assert u.issue_page("a b") == "https://Example.ORG:8443/news/news/letters/archive/a%20b/"
    assert u.origin() == "https://example.org:8443"  # as a browser sends Origin
    assert u.mount_path() == ""  # its first segment is the archive's: only a proxy can tell them apart
    assert urls(_Settings("https://example.org/news/", _Archive("/archive"))).mount_path() == "/news"
    assert urls(_Settings("https://example.org/u/x")).mount_path() == ""  # the app's own /u


def test_the_same_settings_give_the_same_addresses_object() -> None:
    assert urls(_Settings("https://a.example")) is urls(_Settings("https://a.example"))
    assert urls(_Settings("https://a.example")) is not urls(_Settings("https://b.example"))


@pytest.mark.parametrize("slug", ["2024-w02", "a.b_c-1", "X"])
def test_a_plain_slug_has_a_page(slug: str) -> None:
    assert has_page(slug)


@pytest.mark.parametrize("slug", ["", ".hidden", "-x", "a b", "caf\u00e9", "a/b", *sorted(SITE_FILES)])
def test_a_slug_that_cannot_be_a_folder_and_segment_has_no_page(slug: str) -> None:
    assert not has_page(slug)


def _first_segments(routes: list[BaseRoute], archive: str) -> set[str]:
    found = set()
    for route in routes:
        path = getattr(route, "path", "")
        if isinstance(route, Mount) or path == archive:
            continue  # the archive's, under its own path
        found.add(path.split("/")[1])
    return found


def test_the_app_route_table_is_the_one_in_urls(workspace: Path) -> None:
    """The reserved segments the archive may not take are exactly the app's routes, and
    the token routes the logs cut are exactly those with a token."""
    from highlightsmail.authoring.workspace import load_workspace
    from highlightsmail.web.application import create_app

    enable_signup(workspace)
    enable_archive(workspace)
    app = create_app(load_workspace(workspace))
    assert _first_segments(app.routes, "/archive") == APP_SEGMENTS
    with_token = {r.path.split("/")[1] for r in app.routes if "{token}" in getattr(r, "path", "")}
    assert with_token == TOKEN_SEGMENTS == {"u", "confirm", "p"}


def test_no_module_but_urls_spells_a_public_route() -> None:
    """A route pattern written out anywhere else in the package would be a second copy."""
    package = Path(urls_module.__file__).parent
    patterns = ['"/u/', '"/subscribe"', '"/confirm/', '"/healthz"', '"/webhooks/', "base_url.rstrip("]
    found = [
        f"{path.name}: {pattern}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "urls.py"
        for pattern in patterns
        if pattern in path.read_text(encoding="utf-8")
    ]
    assert not found
