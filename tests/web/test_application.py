"""The web endpoint over real HTTP: uvicorn on a loopback port, a real SQLite file or a
PostgreSQL database (each test runs on both, but those about SQLite's file itself).

RFC 8058 one-click (urlencoded and multipart, no cookies, repeated), the confirmation page
flow, resubscribing, test-send links, refusals (400/404/405/409/413), security headers,
1,000+ mutated tokens that must change nothing, and 200 concurrent unsubscribes while an
import runs.
"""

from __future__ import annotations

import email
import email.policy
import logging
import os
import random
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpx
import pytest

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.mail.message import Recipient, build_message, recipient_links
from highlightsmail.store import ImportRow, Store
from highlightsmail.tokens import Signer
from highlightsmail.web.application import MAX_BODY_BYTES, mask_email
from support.db import damage_pages_holding, dump_tables, raw_connection, read_only, target_of
from support.paths import REPO
from support.webapp import Site, assert_secure_headers, forms_of, live_server, raw_http, serve_process, serve_workspace

ONE_CLICK = "List-Unsubscribe=One-Click"
URLENCODED = {"Content-Type": "application/x-www-form-urlencoded"}
NOT_VALID = "This link is not valid"
pytestmark = pytest.mark.usefixtures("engine")


@pytest.fixture
def site(workspace: Path):
    with serve_workspace(workspace) as s:
        yield s


@pytest.fixture
def http():
    # A fresh client per test, never following redirects: a redirect would be a failure.
    with httpx.Client(follow_redirects=False, timeout=30) as client:
        yield client


# ---------------------------------------------------------------- health and pages


def test_healthz(site: Site, http: httpx.Client) -> None:
    r = http.get(f"{site.url}/healthz")
    assert (r.status_code, r.text) == (200, "ok")
    assert_secure_headers(r)


def test_mask_email() -> None:
    assert mask_email("adalovelace@example.org") == "ad***@example.org"
    assert mask_email("bob@example.org") == "b***@example.org"
    assert mask_email("x@example.org") == "x***@example.org"


def test_get_shows_the_page_and_changes_nothing(site: Site, http: httpx.Client) -> None:
    ada = site.add("adalovelace@example.org", "Ada")
    before = site.dump()
    link = site.link(ada)
    for _ in range(3):  # scanners and previews fetch links, some more than once
        r = http.get(link)
        assert r.status_code == 200
        assert http.head(link).status_code == 200
    assert site.dump() == before
    assert_secure_headers(r)
    assert r.headers["content-type"].startswith("text/html")
    assert site.ws.settings.name in r.text
    assert "ad***@example.org" in r.text
    assert "adalovelace" not in r.text  # only the masked address
    assert '<meta name="viewport"' in r.text
    assert "<script" not in r.text.lower()
    [form] = forms_of(r.text)
    assert form["method"] == "post"
    assert urljoin(link, form["action"]) == link
    assert form["fields"] == {"action": "unsubscribe"}


def test_page_form_unsubscribes_as_web_then_resubscribe(site: Site, http: httpx.Client) -> None:
    ada, grace = site.add("ada@example.org"), site.add("grace@example.org")
    link = site.link(ada)
    [form] = forms_of(http.get(link).text)

    # Press the button: post what the form would post.
    r = http.post(urljoin(link, form["action"]), data=form["fields"])
    assert r.status_code == 200
    assert "You are unsubscribed" in r.text
    assert site.status(ada) == "unsubscribed"
    assert site.events(ada)[-1] == ("active", "unsubscribed", "web")
    assert site.status(grace) == "active"

    # The confirmation page offers to subscribe again; its form resolves to /u/TOKEN/resubscribe.
    [again] = forms_of(r.text)
    target = urljoin(link, again["action"])
    assert target == f"{link}/resubscribe"
    r = http.post(target, data=again["fields"])
    assert r.status_code == 200
    assert "subscribed again" in r.text
    assert site.status(ada) == "active"
    assert site.events(ada)[-1] == ("unsubscribed", "active", "web")

    # ... and the resubscribed page's button unsubscribes again, at the same link.
    [back] = forms_of(r.text)
    assert urljoin(target, back["action"]) == link
    assert http.post(link, data=back["fields"]).status_code == 200
    assert [e[2] for e in site.events(ada)] == ["cli", "web", "web", "web"]


def test_already_unsubscribed_page_offers_resubscribe(site: Site, http: httpx.Client) -> None:
    sid = site.add("left@example.org", status="unsubscribed")
    before = site.dump()
    r = http.get(site.link(sid))
    assert r.status_code == 200
    assert "already unsubscribed" in r.text
    [form] = forms_of(r.text)
    assert urljoin(site.link(sid), form["action"]) == site.link(sid) + "/resubscribe"
    assert site.dump() == before


# ---------------------------------------------------------------- RFC 8058 one-click


def test_one_click_urlencoded(site: Site, http: httpx.Client) -> None:
    ada, grace = site.add("ada@example.org"), site.add("grace@example.org")
    r = http.post(site.link(ada), content=ONE_CLICK, headers=URLENCODED)
    assert r.status_code == 200  # not a redirect (RFC 8058 section 3.2)
    assert "You are unsubscribed" in r.text
    assert_secure_headers(r)
    assert site.status(ada) == "unsubscribed"
    assert site.events(ada)[-1] == ("active", "unsubscribed", "one-click")
    assert site.status(grace) == "active"
    assert site.events(grace) == [(None, "active", "cli")]


@pytest.mark.parametrize("forwarded", ["with the path", "without the path"])
def test_a_base_url_with_a_path_is_answered_whichever_way_the_proxy_forwards(
    workspace: Path, http: httpx.Client, forwarded: str
) -> None:
    """base_url https://example.org/news makes links /news/u/TOKEN. A proxy that keeps
    the path (nginx's proxy_pass without a trailing /) got 404 for every link."""
    settings = workspace / "highlights.yaml"
    text = settings.read_text(encoding="utf-8").replace(
        "base_url: https://highlights.example.org", "base_url: https://example.org/news"
    )
    settings.write_text(text.replace("  enabled: false", "  enabled: true"), encoding="utf-8")
    with serve_workspace(workspace) as site:
        prefix = "/news" if forwarded == "with the path" else ""
        ada, grace = site.add("ada@example.org"), site.add("grace@example.org")
        assert http.get(f"{site.url}{prefix}/healthz").text == "ok"
        link = f"{site.url}{prefix}/u/{site.signer.make(ada)}"
        r = http.post(link, content=ONE_CLICK, headers=URLENCODED)
        assert r.status_code == 200 and "You are unsubscribed" in r.text
        assert site.status(ada) == "unsubscribed" and site.status(grace) == "active"
        assert http.get(f"{site.url}{prefix}/subscribe").status_code == 200
        assert http.get(f"{site.url}{prefix}/archive/").status_code == 200
        moved = http.get(f"{site.url}{prefix}/archive")
        assert (moved.status_code, moved.headers["location"]) == (308, "/news/archive/")
        assert http.post(f"{site.url}{prefix}/webhooks/sendgrid", content=b"[]").status_code == 403
        big = b"x" * (MAX_BODY_BYTES + 1)  # the webhook's own, larger limit still applies
        assert http.post(f"{site.url}{prefix}/webhooks/sendgrid", content=big).status_code == 403
        assert http.get(f"{site.url}/newsx/healthz").status_code == 404


def test_one_click_multipart(site: Site, http: httpx.Client) -> None:
    ada = site.add("ada@example.org")
    r = http.post(site.link(ada), files={"List-Unsubscribe": (None, "One-Click")})
    assert r.request.headers["content-type"].startswith("multipart/form-data")
    assert r.status_code == 200
    assert site.events(ada)[-1] == ("active", "unsubscribed", "one-click")


@pytest.mark.parametrize(
    "content_type, body, source",
    [
        # The multipart body some providers send, written out by hand.
        (
            "multipart/form-data; boundary=XyZ",
            '--XyZ\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--XyZ--\r\n',
            "one-click",
        ),
        (None, ONE_CLICK, "one-click"),  # no content type at all
        ("text/plain", ONE_CLICK + "\r\n", "one-click"),
        ("multipart/form-data; boundary=XyZ", "--XyZ\r\nthis is not multipart", "web"),  # unreadable: still leaves
        ("application/x-www-form-urlencoded", "List-Unsubscribe=Two-Clicks", "web"),
    ],
)
def test_one_click_body_variants(
    site: Site, http: httpx.Client, content_type: str | None, body: str, source: str
) -> None:
    ada = site.add("ada@example.org")
    r = http.post(site.link(ada), content=body, headers={"Content-Type": content_type} if content_type else {})
    assert r.status_code == 200
    assert site.events(ada)[-1] == ("active", "unsubscribed", source)


def test_one_click_needs_no_cookies_and_repeats_harmlessly(site: Site) -> None:
    ada = site.add("ada@example.org")
    answers = []
    for _ in range(3):
        # A new client each time: no cookie jar, no connection reuse, like a mail provider.
        with httpx.Client(follow_redirects=False) as client:
            r = client.post(site.link(ada), content=ONE_CLICK, headers=URLENCODED)
        assert "set-cookie" not in r.headers
        answers.append((r.status_code, "You are unsubscribed" in r.text))
    assert answers == [(200, True)] * 3
    assert site.events(ada) == [(None, "active", "cli"), ("active", "unsubscribed", "one-click")]


def test_empty_post_unsubscribes_as_web(site: Site, http: httpx.Client) -> None:
    ada = site.add("ada@example.org")
    assert http.post(site.link(ada)).status_code == 200
    assert site.events(ada)[-1] == ("active", "unsubscribed", "web")


def test_bounced_and_complained_keep_their_status(site: Site, http: httpx.Client) -> None:
    for status in ("bounced", "complained"):
        sid = site.add(f"{status}@example.org", status=status)
        before = site.dump()
        page = http.get(site.link(sid))
        assert page.status_code == 200 and "receives no mail" in page.text
        assert forms_of(page.text) == []
        r = http.post(site.link(sid), content=ONE_CLICK, headers=URLENCODED)
        assert r.status_code == 200 and "You are unsubscribed" in r.text
        assert forms_of(r.text) == []  # no resubscribe button for them
        r = http.post(site.link(sid) + "/resubscribe")
        assert r.status_code == 409
        assert "send to this address" in r.text
        assert_secure_headers(r)
        assert site.status(sid) == status
        assert site.dump() == before


def test_resubscribing_an_active_subscriber_changes_nothing(site: Site, http: httpx.Client) -> None:
    sid = site.add("ada@example.org")
    before = site.dump()
    r = http.post(site.link(sid) + "/resubscribe")
    assert r.status_code == 200 and "subscribed again" in r.text
    assert site.dump() == before


def test_test_send_links_change_nothing(site: Site, http: httpx.Client) -> None:
    ada = site.add("ada@example.org")
    gone = site.add("gone@example.org", status="unsubscribed")
    before = site.dump()
    for sid in (0, ada, gone, 999_999):  # editors have no subscriber row; ids do not matter
        link = site.link(sid, "test")
        for r in (
            http.get(link),
            http.post(link, content=ONE_CLICK, headers=URLENCODED),
            http.post(link, data={"action": "unsubscribe"}),
            http.post(link + "/resubscribe"),
        ):
            assert r.status_code == 200
            assert "This was a test message" in r.text
            assert "nobody was unsubscribed" in r.text
            assert forms_of(r.text) == []
            assert_secure_headers(r)
    assert site.dump() == before


# ---------------------------------------------------------------- refusals


def test_invalid_and_unknown_tokens_answer_400(site: Site, http: httpx.Client) -> None:
    ada = site.add("ada@example.org")
    before = site.dump()
    valid = site.signer.make(ada)
    unknown = site.signer.make(ada + 1000)  # signed correctly, but nobody has that id
    for token in ("sample", "u1", valid[:-1], valid + "A", valid.upper(), unknown, "%20", "..x"):
        for method, suffix in (("GET", ""), ("POST", ""), ("POST", "/resubscribe")):
            r = http.request(
                method, f"{site.url}/u/{quote(token, safe='')}{suffix}", content=ONE_CLICK, headers=URLENCODED
            )
            assert r.status_code == 400, (token, method, suffix)
            assert NOT_VALID in r.text
            assert_secure_headers(r)
    assert site.dump() == before


def test_wrong_methods_405_and_unknown_paths_404(site: Site, http: httpx.Client) -> None:
    ada = site.add("ada@example.org")
    link = site.link(ada)
    before = site.dump()
    for method, url, allowed in (
        ("PUT", link, {"GET", "HEAD", "POST"}),
        ("DELETE", link, {"GET", "HEAD", "POST"}),
        ("PATCH", link, {"GET", "HEAD", "POST"}),
        ("GET", link + "/resubscribe", {"POST"}),
        ("PUT", link + "/resubscribe", {"POST"}),
        ("POST", f"{site.url}/healthz", {"GET", "HEAD"}),
    ):
        r = http.request(method, url)
        assert r.status_code == 405, (method, url)
        assert {m.strip() for m in r.headers["allow"].split(",")} == allowed
        assert_secure_headers(r)
    for path in (
        "/",
        "/nope",
        "/u",
        "/u/",
        f"/u/{site.signer.make(ada)}/other",
        "/u/a/b/resubscribe",
        f"/u/{site.signer.make(ada)}/",
        f"/u/{site.signer.make(ada)}/resubscribe/",
        "/healthz/",
    ):
        for method in ("GET", "POST"):
            r = http.request(method, site.url + path, content=ONE_CLICK, headers=URLENCODED)
            assert r.status_code == 404, (method, path)  # never a redirect, even to add or drop a slash
            assert "location" not in r.headers
        assert "Page not found" in r.text
        assert_secure_headers(r)
    assert site.dump() == before


def test_bodies_over_the_limit_get_413(site: Site, http: httpx.Client) -> None:
    ada = site.add("ada@example.org")
    link = site.link(ada)
    too_big = ONE_CLICK + "&pad=" + "x" * MAX_BODY_BYTES

    r = http.post(link, content=too_big, headers=URLENCODED)  # refused by Content-Length
    assert r.status_code == 413
    assert_secure_headers(r)

    def chunks():  # no Content-Length: refused by counting what arrives
        yield ONE_CLICK.encode() + b"&pad="
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"x" * 1024

    with httpx.Client() as fresh:
        r = fresh.post(link, content=chunks(), headers=URLENCODED)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413
    assert site.status(ada) == "active"
    assert site.events(ada) == [(None, "active", "cli")]

    # Exactly at the limit is fine.
    at_limit = ONE_CLICK + "&pad=" + "x" * (MAX_BODY_BYTES - len(ONE_CLICK) - 5)
    assert len(at_limit) == MAX_BODY_BYTES
    r = http.post(link, content=at_limit, headers=URLENCODED)
    assert r.status_code == 200
    assert site.events(ada)[-1] == ("active", "unsubscribed", "one-click")


def _file_bytes(db: Path) -> tuple[bytes, bytes]:
    """The database file and its WAL, byte for byte: equal means nothing was written."""
    wal = Path(f"{db}-wal")
    return db.read_bytes(), wal.read_bytes() if wal.exists() else b""


def _assert_try_again_later(r: httpx.Response) -> None:
    assert r.status_code == 503
    assert r.headers["retry-after"] == "300"
    assert "Please try again later" in r.text and "nothing was changed" in r.text
    assert "Traceback" not in r.text and "sqlite" not in r.text.lower() and "highlights.db" not in r.text
    assert_secure_headers(r)


@pytest.mark.sqlite_only
def test_a_file_that_is_not_a_database_gets_503_and_one_log_line_per_request_and_per_change(
    site: Site, http: httpx.Client, server_log: pytest.LogCaptureFixture
) -> None:
    caplog = server_log
    ada = site.add("ada@example.org")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{site.ws.db_path}{suffix}").unlink(missing_ok=True)
    site.ws.db_path.write_bytes(b"this is not a database" * 100)
    for _ in range(3):
        _assert_try_again_later(http.post(site.link(ada), content=ONE_CLICK, headers=URLENCODED))
    # The request's own line each time, and once (from a check the first one started)
    # that the database is gone.
    _wait_for_log(caplog, "database unavailable: ")
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert all(r.exc_info is None for r in errors)  # one line each, no traceback
    [went] = [r.getMessage() for r in errors if r.getMessage().startswith("database unavailable: ")]
    requests = [r.getMessage() for r in errors if r.getMessage().startswith("cannot answer ")]
    assert len(requests) == 3 and len(errors) == 4
    for message in (went, *requests):
        assert "subscribers/highlights.db: not a usable highlightsmail database" in message
        assert '".recover"' in message
    assert requests[0].startswith(f"cannot answer POST /u/u{ada}.[redacted]: ")
    assert site.signer.make(ada) not in _server_text(caplog)  # the log names the subscriber, not a working link
    assert http.get(f"{site.url}/healthz").status_code == 503
    # A database there again (an empty one: the backup is the editor's to restore): one
    # line says so, found by the server itself, without a request.
    site.ws.db_path.unlink()
    _wait_for_log(caplog, "database available again: ")
    assert [r.getMessage() for r in caplog.records if "database available again" in r.getMessage()] == [
        "database available again: subscribers/highlights.db"
    ]
    assert http.get(f"{site.url}/healthz").text == "ok"


def _wait_for_log(caplog: pytest.LogCaptureFixture, start: str) -> None:
    """Until a record starting with `start` was logged (by the server's threads)."""
    for _ in range(1000):
        if any(r.getMessage().startswith(start) for r in caplog.records):
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"nothing logged starting with {start!r}")


@pytest.mark.sqlite_only
def test_a_damaged_page_gets_503_for_the_requests_that_reach_it(
    site: Site, http: httpx.Client, server_log: pytest.LogCaptureFixture
) -> None:
    caplog = server_log
    with site.store() as store:
        store.import_rows(ImportRow(f"reader{i:04d}@example.org") for i in range(3000))
        hit, spared = store.find("reader1500@example.org").id, store.find("reader0001@example.org").id
    damage_pages_holding(site.ws.db_path, b"reader1500@example.org")
    before = _file_bytes(site.ws.db_path)
    _assert_try_again_later(http.get(site.link(hit)))
    _assert_try_again_later(http.post(site.link(hit), content=ONE_CLICK, headers=URLENCODED))
    assert http.get(site.link(spared)).status_code == 200  # pages elsewhere still read
    assert _file_bytes(site.ws.db_path) == before
    messages = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(messages) == 2
    assert all(
        "subscribers/highlights.db: the database is damaged (database disk image is malformed)" in m for m in messages
    )


@pytest.mark.sqlite_only
def test_a_read_only_database_shows_pages_and_answers_503_to_changes(site: Site, http: httpx.Client) -> None:
    ada = site.add("ada@example.org")
    with read_only(site.ws.db_path):
        r = http.get(site.link(ada))
        assert r.status_code == 200 and "a***@example.org" in r.text
        _assert_try_again_later(http.post(site.link(ada), content=ONE_CLICK, headers=URLENCODED))
    assert site.status(ada) == "active"
    # Writable again: the same link works, without restarting the server.
    r = http.post(site.link(ada), content=ONE_CLICK, headers=URLENCODED)
    assert r.status_code == 200 and site.status(ada) == "unsubscribed"


def test_any_other_failure_gets_a_plain_500_page(
    site: Site, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    ada = site.add("ada@example.org")
    with raw_connection(target_of(site.ws.root)) as conn:
        conn.execute("DROP TABLE events")  # a database edited by hand: a bug, not a state of the file
    r = http.post(site.link(ada), content=ONE_CLICK, headers=URLENCODED)
    assert r.status_code == 500
    assert "Something went wrong" in r.text
    assert "Traceback" not in r.text and "sqlite" not in r.text.lower()
    assert_secure_headers(r)
    assert any("error answering POST" in rec.getMessage() for rec in caplog.records)
    assert site.signer.make(ada) not in _server_text(caplog)
    assert site.status(ada) == "active"


def test_workspace_pages_override_and_a_broken_one_falls_back(site: Site, http: httpx.Client) -> None:
    pages = site.ws.templates_dir / "pages"
    pages.mkdir(parents=True, exist_ok=True)
    (pages / "test-link.html.j2").write_text(
        '{% extends "pages/_base.html.j2" %}{% block content %}<h1>Only a rehearsal</h1>{% endblock %}'
    )
    r = http.get(site.link(0, "test"))
    assert r.status_code == 200 and "Only a rehearsal" in r.text

    (pages / "test-link.html.j2").write_text("{% block content %}{{ oops( }}")
    r = http.get(site.link(0, "test"))
    assert r.status_code == 200
    assert "This was a test message" in r.text  # the package's own page

    # A page saved in another encoding is no reason to answer an unsubscribe with a 500.
    ada = site.add("ada@example.org")
    (pages / "unsubscribed.html.j2").write_bytes("<h1>Désabonné</h1>".encode("latin-1"))
    r = http.post(site.link(ada), content=ONE_CLICK, headers=URLENCODED)
    assert r.status_code == 200 and "You are unsubscribed" in r.text
    assert site.status(ada) == "unsubscribed"


def test_security_headers_on_every_kind_of_answer(site: Site, http: httpx.Client) -> None:
    ada = site.add("ada@example.org")
    link = site.link(ada)
    seen = set()
    for method, url, body in (
        ("GET", f"{site.url}/healthz", None),
        ("GET", link, None),
        ("HEAD", link, None),
        ("POST", link, ONE_CLICK),
        ("POST", link + "/resubscribe", ""),
        ("GET", site.link(ada, "test"), None),
        ("GET", f"{site.url}/u/nope", None),
        ("GET", f"{site.url}/nope", None),
        ("DELETE", link, None),
        ("POST", link, "x" * (MAX_BODY_BYTES + 1)),
    ):
        r = http.request(method, url, content=body, headers=URLENCODED if body is not None else None)
        assert_secure_headers(r)
        seen.add(r.status_code)
    assert seen == {200, 400, 404, 405, 413}


# ---------------------------------------------------------------- tokens out of the logs


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at INFO that also hears uvicorn's loggers, whatever logging configuration
    an earlier uvicorn.Config in this process installed (uvicorn's default one stops
    its access log from reaching the root logger)."""
    saved = []
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error", "highlightsmail", "highlightsmail.web"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate, logger.disabled, logger.level))
        logger.propagate, logger.disabled = True, False
        logger.setLevel(logging.INFO)
    caplog.set_level(logging.INFO)
    yield caplog
    for logger, propagate, disabled, level in saved:
        logger.propagate, logger.disabled = propagate, disabled
        logger.setLevel(level)


def _server_text(caplog: pytest.LogCaptureFixture) -> str:
    """What the server logged, formatted (the test's own HTTP client logs its requests
    too, with the whole link: not the server's doing)."""
    return "\n".join(
        caplog.handler.format(r) for r in caplog.records if r.name.startswith(("uvicorn", "highlightsmail"))
    )


def _raw_request(base: str, target: str, method: str = "GET") -> int:
    """Send `target` exactly as written (no client tidies it up); the status code."""
    return raw_http(base, target, method).status


def near_misses(token: str) -> list[str]:
    """Request targets that carry a working token without being its page: typed or
    mangled by a person, a mail client, a proxy or a scanner."""
    prefix, mac = token.split(".")
    every_byte = "".join(f"%{b:02X}" for b in token.encode())
    return [
        f"/u//{token}",
        f"/U/{token}",
        f"/u/%20{token}",
        f"/unsubscribe/{token}",
        f"/u/{token}/",
        f"/u/{token}/extra",
        f"/u/{token}xyz",
        f"/u/{token}%0A",
        f"/?t={token}",
        f"/u/{prefix.upper()}.{mac}",  # lower-cased again, it works
        f"/u/{every_byte}",  # the server decodes this back to the token
        f"/u/{every_byte.replace('%', '%25')}",  # and this once more
        f"/u/{prefix}.{mac[:5]}%2D{mac[5:]}" if "-" not in mac else f"/u/{prefix}.{mac.replace('-', '%2D')}",
        f"/x/{token}?next=/u/{token}",
        # Mangled so that no token shape is left, though anyone can put it back together:
        f"/u/{prefix}+.{mac}",
        f"/u/{prefix}%2B.{mac}",
        f"/u/{prefix}..{mac}",
        f"/u/{token}%0D%0AX-Injected:%20yes",
        f"/u/{prefix}.{mac[:11]}%20{mac[11:]}",
        f"/u/{prefix}.{mac[:11]}%2520{mac[11:]}",
        f"/u/{prefix}.{mac[:11]}/{mac[11:]}",
        f"/u/{prefix}.{mac[:11]};{mac[11:]}",
        f"/u/{prefix}%252B.{mac}",
        f"/%75/{prefix}+.{mac}",
        f"/%2575/{prefix}+.{mac}",
        f"/u%2F{prefix}+.{mac}",
        f"/U/{prefix.upper()}+.{mac}",
        f"/news/u/{prefix}+.{mac}",
        f"/subscribe?next=/u/{prefix}+.{mac}",
    ]


def _hidden(text: str, mac: str) -> bool:
    """Whether no piece of `mac` that says much (8 characters) is in `text`, even after
    undoing %-escapes and dropping what split it (spaces, escapes, line breaks...)."""
    pieces = {mac[i : i + 8].lower() for i in range(len(mac) - 7)}
    for _ in range(4):
        for form in (text, re.sub(r"[^A-Za-z0-9_-]", "", text)):
            if any(piece in form.lower() for piece in pieces):
                return False
        text = unquote(text)
    return True


def test_near_miss_paths_never_log_a_working_token(
    site: Site, http: httpx.Client, server_log: pytest.LogCaptureFixture
) -> None:
    caplog = server_log
    ada = site.add("ada@example.org")
    token = site.signer.make(ada)
    mac = token.split(".")[1]
    for target in near_misses(token):
        # Most are refused; the fully escaped one is the page itself, once decoded.
        assert _raw_request(site.url, target) in (200, 400, 404, 405), target
    assert http.get(site.link(ada)).status_code == 200
    # The server's log (the test's own HTTP client logs its requests too: not counted).
    server = _server_text(caplog)
    assert server.count("HTTP/1.1") == len(near_misses(token)) + 1  # every request logged...
    assert _hidden(server, mac)  # ...and not one with the signature
    assert f"/u/u{ada}.[redacted]" in server  # the log still says who it was for


def test_our_own_log_lines_and_tracebacks_are_redacted_too(server_log: pytest.LogCaptureFixture) -> None:
    caplog = server_log
    from highlightsmail.web import application as web

    web._install_log_redaction()
    token = Signer(b"x" * 32).make(7)
    mac = token.split(".")[1]
    log = logging.getLogger("highlightsmail.web")
    try:
        raise ValueError(f"could not read /u/{token}")
    except ValueError:
        log.exception("error answering %s %s", "POST", f"/u//{token}")
    log.warning(f"preformatted /U/{token.upper()}")
    log.warning("as a mapping %(path)s", {"path": f"/u/%20{token}"})
    prefix = token.split(".")[0]
    for mangled in (f"/u/{prefix}+.{mac}", f"/u/{prefix}.{mac[:9]}%20{mac[9:]}", f"/u/{prefix}.{mac[:9]} {mac[9:]}"):
        log.error("cannot answer %s %s: %s", "GET", mangled, "the database is gone")
        try:
            raise ValueError(f"could not read {mangled}")
        except ValueError:
            log.exception(f"error answering {mangled}")
    assert len(caplog.records) == 9
    assert _hidden(caplog.text, mac), caplog.text
    assert "could not read /u/u7.[redacted]" in caplog.text
    assert "cannot answer GET /u/[redacted]: the database is gone" in caplog.text


def test_a_route_with_a_token_must_be_one_the_logs_cut() -> None:
    """The list of token routes is one place: a new route with a token (the preference
    page's /p/TOKEN) that is not on it stops the app from being made."""
    from starlette.routing import Mount, Route

    from highlightsmail.urls import APP_SEGMENTS
    from highlightsmail.web import application as web

    assert {"u", "confirm"} <= web.TOKEN_ROUTES <= APP_SEGMENTS

    async def page(request):  # pragma: no cover - never called
        raise AssertionError

    web._check_token_routes([Route("/u/{token}", page), Mount("/x", routes=[Route("/y", page)])])
    for routes in ([Route("/p/{token}", page)], [Mount("/x", routes=[Route("/p/{token}", page)])]):
        with pytest.raises(RuntimeError, match="TOKEN_ROUTES"):
            web._check_token_routes(routes)


def test_confirmation_links_however_mangled_never_reach_the_log(
    workspace: Path, server_log: pytest.LogCaptureFixture
) -> None:
    from support.signup import enable_signup

    enable_signup(workspace)
    with serve_workspace(workspace) as site:
        sid = site.add("ada@example.org", status="pending")
        token = site.signer.make_confirm(sid, 1_700_000_000)
        head, mac = token.rsplit(".", 1)
        targets = [
            f"/confirm/{token}",
            f"/confirm/{head}+.{mac}",
            f"/confirm/{token}%0D%0A",
            f"/confirm/{head}.{mac[:11]}%20{mac[11:]}",
            f"/CONFIRM/{head}.{mac[:11]}%2520{mac[11:]}",
            f"/%63onfirm/{head}+.{mac}",
        ]
        for target in targets:
            assert raw_http(site.url, target).status in (200, 400, 404, 410), target
    server = _server_text(server_log)
    assert server.count("HTTP/1.1") == len(targets)
    assert _hidden(server, mac), server
    assert f"/confirm/{head}.[redacted]" in server


# ---------------------------------------------------------------- mutated tokens

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~+=%:@!$&'()*,; é\n\x00?#"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
FORGOTTEN = "a-secret-nobody-lists-any-more-0123456"


def _mutants(rng: random.Random, token: str, count: int) -> list[str]:
    out = []
    for _ in range(count):
        kind = rng.randrange(6)
        i = rng.randrange(len(token))
        if kind == 0:  # flip one character
            m = token[:i] + rng.choice(_ALPHABET.replace(token[i], "")) + token[i + 1 :]
        elif kind == 1:  # truncate
            m = token[: rng.randrange(1, len(token))]
        elif kind == 2:  # extend
            m = token + "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 4)))
        elif kind == 3:  # insert
            m = token[:i] + rng.choice(_ALPHABET) + token[i:]
        elif kind == 4:  # delete
            m = token[:i] + token[i + 1 :]
        else:  # swap two neighbours (when they differ)
            j = min(i + 1, len(token) - 1)
            m = token[:i] + token[j] + token[i] + token[j + 1 :] if token[i] != token[j] else token[:-1]
        out.append(m)
    return out


@pytest.mark.slow
def test_a_thousand_mutated_tokens_change_nothing(site: Site, http: httpx.Client) -> None:
    rng = random.Random(8058)
    ids = {
        "active": site.add("ada@example.org"),
        "unsubscribed": site.add("left@example.org", status="unsubscribed"),
        "bounced": site.add("gone@example.org", status="bounced"),
        "other": site.add("grace@example.org"),
    }
    signer, forgotten = site.signer, Signer(FORGOTTEN.encode())
    valid = {signer.make(i, p) for i in ids.values() for p in ("unsubscribe", "test")}

    candidates: list[str] = []
    for token in sorted(valid):
        candidates += _mutants(rng, token, 160)
        # Every other last character: base64's unused low bits must not give a second spelling.
        candidates += [token[:-1] + c for c in _B64 if c != token[-1]]
        candidates += [token + "\n", token + "\r\n", token + "\x00", token + " "]
    for a in ids.values():
        for b in ids.values():
            if a != b:  # another subscriber's signature spliced onto this id
                candidates.append(f"u{signer.make(a).split('.')[0][1:]}.{signer.make(b).split('.')[1]}")
        kind_u, mac_u = signer.make(a, "unsubscribe").split(".")
        kind_t, mac_t = signer.make(a, "test").split(".")
        candidates += [f"{kind_u}.{mac_t}", f"{kind_t}.{mac_u}"]  # the other purpose's signature
        candidates += [forgotten.make(a), forgotten.make(a, "test")]  # an old secret not listed
        candidates += [signer.make(a + 500)]  # well signed, nobody with that id
    mutants = [m for m in dict.fromkeys(candidates) if m not in valid]
    assert len(mutants) >= 1000

    before = site.dump()
    outcomes: dict[int, int] = {}
    variants = (("GET", ""), ("POST", ""), ("POST", "/resubscribe"))
    for n, m in enumerate(mutants):
        method, suffix = variants[n % 3]
        r = http.request(method, f"{site.url}/u/{quote(m, safe='')}{suffix}", content=ONE_CLICK, headers=URLENCODED)
        outcomes[r.status_code] = outcomes.get(r.status_code, 0) + 1
        if "/" in m:  # the path has another shape now: no route, never a page that acts
            assert r.status_code in (404, 405), (m, r.status_code)
        else:
            assert r.status_code == 400, (m, method, suffix, r.status_code)
            assert NOT_VALID in r.text
    assert site.dump() == before
    assert outcomes.get(400, 0) >= 1000


# ---------------------------------------------------------------- concurrency


@pytest.mark.slow
def test_200_concurrent_unsubscribes_while_an_import_runs(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    with site.store() as store:
        store.import_rows([ImportRow(email=f"reader{i:03d}@example.org") for i in range(200)])
        targets = [s.id for s in store.iter_subscribers()]
    assert len(targets) == 200

    started, stop = threading.Event(), threading.Event()
    imports: list[int] = []
    failures: list[BaseException] = []

    def importer() -> None:
        # Keep importing fresh batches (each one transaction holding the write lock)
        # until every request has been answered.
        batch = 0
        try:
            with Store.open(site.ws) as store:
                while not stop.is_set():
                    rows = [
                        ImportRow(email=f"bulk{batch}-{i}@example.org", detail=f"bulk.csv:{i + 2}") for i in range(3000)
                    ]
                    started.set()
                    result = store.import_rows(rows)
                    imports.append(result.new)
                    batch += 1
                    # A breath between imports, as between two runs of `subscribers import`;
                    # without it SQLite's busy backoff lets the importer starve the requests.
                    stop.wait(0.02)
        except BaseException as exc:  # reported below, with the requests' results
            failures.append(exc)
            started.set()

    thread = threading.Thread(target=importer)
    thread.start()
    assert started.wait(30)
    try:
        with httpx.Client(
            follow_redirects=False, timeout=60, limits=httpx.Limits(max_connections=50, max_keepalive_connections=50)
        ) as client:

            def unsubscribe(sid: int) -> tuple[int, str]:
                r = client.post(site.link(sid), content=ONE_CLICK, headers=URLENCODED)
                return r.status_code, r.text

            with ThreadPoolExecutor(max_workers=50) as pool:
                answers = list(pool.map(unsubscribe, targets))
    finally:
        stop.set()
        thread.join(120)

    assert not failures, failures
    print(f"{len(imports)} imports of 3000 rows ran while 200 unsubscribes were answered")
    assert imports and all(n == 3000 for n in imports)
    assert [code for code, _ in answers] == [200] * 200
    assert all("You are unsubscribed" in text for _, text in answers)
    with site.store() as store:
        assert all(store.get(sid).status == "unsubscribed" for sid in targets)
        changes = [e for sid in targets for e in store.events(sid) if e.to_status == "unsubscribed"]
        assert len(changes) == 200 and {e.source for e in changes} == {"one-click"}
        assert store.count_by_status()["active"] == 3000 * len(imports)
    assert "locked" not in caplog.text and "busy" not in caplog.text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


# ---------------------------------------------------------------- a real message's header


def _rendered_issue(ws):
    """The example issue rendered by the real renderer, once."""
    from highlightsmail.authoring.issue import load_issue
    from highlightsmail.rendering.render import render_issue

    return render_issue(load_issue(ws.issue_path("latest")), ws)


def test_list_unsubscribe_header_of_a_built_message_unsubscribes_exactly_that_subscriber(
    site: Site, http: httpx.Client
) -> None:
    ada, grace = site.add("ada@example.org", "Ada"), site.add("grace@example.org", "Grace")
    rendered = _rendered_issue(site.ws)
    links = recipient_links(site.ws.settings, site.signer, ada)
    msg = build_message(rendered, site.ws.settings, Recipient("ada@example.org", "Ada", ada), links)

    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    header = parsed["List-Unsubscribe"]
    assert parsed["List-Unsubscribe-Post"] == ONE_CLICK
    url = re.fullmatch(r"<(https://[^>]+)>", header).group(1)
    assert url.startswith(site.ws.settings.base_url.rstrip("/") + "/u/")
    text = parsed.get_body(("plain",)).get_content()
    assert url in text  # the footer carries the same link

    # Mail providers POST to the header's URL; here the host is the test server's.
    local = site.url + urlsplit(url).path
    with httpx.Client(follow_redirects=False) as provider:
        r = provider.post(local, content=ONE_CLICK, headers=URLENCODED)
    assert r.status_code == 200
    assert site.events(ada)[-1] == ("active", "unsubscribed", "one-click")
    assert site.status(grace) == "active" and len(site.events(grace)) == 1


# ---------------------------------------------------------------- production entry points


def test_module_app_imports_anywhere_and_builds_from_the_environment(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = "import highlightsmail.web as w; print(type(w.app).__name__)"
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIGHLIGHTS_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=empty, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr

    from highlightsmail.web.application import _LazyApp

    monkeypatch.setenv("HIGHLIGHTS_WORKSPACE", str(workspace))
    monkeypatch.chdir(empty)
    with Store.open(load_workspace(workspace)) as store:
        sid = store.add("ada@example.org")[0].id
    with live_server(_LazyApp()) as url, httpx.Client() as client:
        assert client.get(f"{url}/healthz").text == "ok"
        signer = Signer(os.environ["HIGHLIGHTS_SECRET"].encode())
        assert client.post(f"{url}/u/{signer.make(sid)}", content=ONE_CLICK, headers=URLENCODED).status_code == 200
    with Store.open(load_workspace(workspace)) as store:
        assert store.get(sid).status == "unsubscribed"


def test_uvicorn_without_a_workspace_stops_with_the_reason(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIGHLIGHTS_")}
    out = subprocess.run(
        [sys.executable, "-m", "uvicorn", "highlightsmail.web:app", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "no highlights.yaml" in out.stderr


@pytest.mark.slow
def test_highlights_serve_prints_the_url_serves_and_keeps_tokens_out_of_the_log(workspace: Path) -> None:
    with Store.open(load_workspace(workspace)) as store:
        sid = store.add("ada@example.org")[0].id
    token = Signer(os.environ["HIGHLIGHTS_SECRET"].encode()).make(sid)
    with serve_process(workspace) as served, httpx.Client() as client:
        r = client.get(f"{served.url}/u/{token}")
        assert r.status_code == 200 and "a***@example.org" in r.text
        for target in near_misses(token):
            _raw_request(served.url, target)
    logged = served.log
    assert f"/u/u{token.split('.')[0][1:]}." in logged  # the access log names the request...
    assert _hidden(logged, token.split(".")[1])  # ...without the working link, however mangled
    assert logged.count('HTTP/1.1" ') == 2 + len(near_misses(token))  # and logs every request
    assert os.environ["HIGHLIGHTS_SECRET"] not in logged


def test_repository_pages_are_the_package_defaults() -> None:
    """The example workspace's templates/pages/ are copies of the package's, so a new
    newsletter starts from the same pages the package falls back to."""
    ours = REPO / "templates" / "pages"
    package = REPO / "src" / "highlightsmail" / "templates" / "pages"
    names = sorted(p.name for p in package.glob("*.html.j2"))
    assert names == sorted(p.name for p in ours.glob("*.html.j2"))
    assert {"unsubscribe.html.j2", "unsubscribed.html.j2", "resubscribed.html.j2", "notice.html.j2"} <= set(names)
    for name in names:
        assert (ours / name).read_text() == (package / name).read_text(), name


def test_open_server_prints_nothing_and_says_where_it_listens(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The web module reports through its return value and its log; the CLI does the talking."""
    from highlightsmail.web.application import open_server

    server = open_server(load_workspace(workspace), port=0)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", server.url)
        assert server.sock.getsockname()[1] == int(server.url.rsplit(":", 1)[1].rstrip("/"))
    finally:
        server.sock.close()
    assert capsys.readouterr() == ("", "")
    # Opened (and the schema made) before serving.
    assert dump_tables(target_of(workspace), ("subscribers",)) == {"subscribers": []}


@pytest.mark.sqlite_only
def test_a_link_to_a_spelling_merged_by_an_upgrade_acts_on_the_one_subscriber(
    workspace: Path, http: httpx.Client
) -> None:
    """Mail sent before the upgrade carries links to both rows of Äda/äda: both must act
    on the one subscriber they became, or one of them would resubscribe a second copy."""
    from highlightsmail.store import database as store_module

    conn = sqlite3.connect(load_workspace(workspace).db_path)
    for statement in store_module.MIGRATIONS[0]:
        conn.execute(statement)  # type: ignore[arg-type]
    conn.executemany(
        "INSERT INTO subscribers (id, email, status, created, updated) VALUES (?, ?, 'active', 't', 't')",
        [(1, "Äda@example.org"), (2, "äda@example.org")],
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with pytest.warns(store_module.MergedAddressesWarning):
        Store.open(load_workspace(workspace), upgrade=True).close()  # highlights db upgrade
    with serve_workspace(workspace) as site:
        r = http.get(site.link(2))
        assert r.status_code == 200 and "Ä***@example.org" in r.text
        r = http.post(site.link(2), content=ONE_CLICK, headers=URLENCODED)
        assert r.status_code == 200 and "You are unsubscribed" in r.text
        assert site.status(1) == "unsubscribed"
        assert site.events(1)[-1] == ("active", "unsubscribed", "one-click")
        assert http.post(site.link(2) + "/resubscribe").status_code == 200
        with site.store() as store:
            assert store.count_by_status()["active"] == 1  # one person, one copy
            assert store.begin_dispatch("2024-w02", "outbox") == 1


@pytest.mark.sqlite_only
def test_highlights_serve_with_a_database_it_cannot_open_stops_with_one_line(workspace: Path) -> None:
    from click.testing import CliRunner

    from highlightsmail.cli import main

    db = load_workspace(workspace).db_path
    Store(db).close()
    with read_only(db.parent):
        result = CliRunner().invoke(main, ["serve", "--port", "0"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""  # not "Serving ...": it never listened
    assert result.stderr.splitlines() == [
        "Error: subscribers/highlights.db: cannot open the database (unable to open database file); let the user "
        "running highlights read and write the file and its folder subscribers "
        "(SQLite keeps highlights.db-wal and -shm beside it)"
    ]
