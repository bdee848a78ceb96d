"""The web app as a whole over real HTTP (uvicorn on a loopback port, a real SQLite file or
a PostgreSQL database; each test runs on both): /healthz, the base path, refusals
(404/405/413/500), the pages a workspace overrides, the security headers on every kind
of answer, and the ways to run it (`highlightsmail.web:app`, `highlights serve`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.store import Store
from highlightsmail.tokens import Signer
from highlightsmail.web.middleware import MAX_BODY_BYTES
from highlightsmail.web.pages import mask_email
from support.db import dump_tables, raw_connection, target_of
from support.paths import REPO
from support.webapp import Site, assert_secure_headers, live_server, serve_workspace, server_text

ONE_CLICK = "List-Unsubscribe=One-Click"
URLENCODED = {"Content-Type": "application/x-www-form-urlencoded"}
pytestmark = pytest.mark.usefixtures("engine")


# ---------------------------------------------------------------- health and pages


def test_healthz(site: Site, http: httpx.Client) -> None:
    r = http.get(f"{site.url}/healthz")
    assert (r.status_code, r.text) == (200, "ok")
    assert_secure_headers(r)


def test_mask_email() -> None:
    assert mask_email("adalovelace@example.org") == "ad***@example.org"
    assert mask_email("bob@example.org") == "b***@example.org"
    assert mask_email("x@example.org") == "x***@example.org"


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


# ---------------------------------------------------------------- middlewares and refusals


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
    assert site.signer.make(ada) not in server_text(caplog)
    assert site.status(ada) == "active"


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
