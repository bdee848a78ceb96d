"""Logs never hold a working link (web/redaction.py): uvicorn's access and error logs and
ours, for near-miss and mangled paths, tracebacks and confirmation links, in a served
app (a real SQLite file or a PostgreSQL database) and in `highlights serve`'s output."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.store import Store
from highlightsmail.tokens import Signer
from highlightsmail.web import redaction
from support.webapp import Site, raw_http, serve_process, serve_workspace, server_text

pytestmark = pytest.mark.usefixtures("engine")


# ---------------------------------------------------------------- tokens out of the logs


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
    server = server_text(caplog)
    assert server.count("HTTP/1.1") == len(near_misses(token)) + 1  # every request logged...
    assert _hidden(server, mac)  # ...and not one with the signature
    assert f"/u/u{ada}.[redacted]" in server  # the log still says who it was for


def test_our_own_log_lines_and_tracebacks_are_redacted_too(server_log: pytest.LogCaptureFixture) -> None:
    caplog = server_log
    redaction.install()
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
    """The list of token routes is one place (the preference page's /p/TOKEN is on it): a
    new route with a token that is not on it stops the app from being made."""
    from starlette.routing import Mount, Route

    from highlightsmail.urls import APP_SEGMENTS

    assert {"u", "confirm", "p"} <= redaction.TOKEN_ROUTES <= APP_SEGMENTS

    async def page(request):  # pragma: no cover - never called
        raise AssertionError

    redaction.check_token_routes([Route("/u/{token}", page), Mount("/x", routes=[Route("/y", page)])])
    for routes in ([Route("/q/{token}", page)], [Mount("/x", routes=[Route("/q/{token}", page)])]):
        with pytest.raises(RuntimeError, match="TOKEN_ROUTES"):
            redaction.check_token_routes(routes)


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
    server = server_text(server_log)
    assert server.count("HTTP/1.1") == len(targets)
    assert _hidden(server, mac), server
    assert f"/confirm/{head}.[redacted]" in server


def test_preference_links_never_reach_the_log(workspace: Path, server_log: pytest.LogCaptureFixture) -> None:
    with serve_workspace(workspace) as site:
        sid = site.add("ada@example.org")
        token = site.signer.make_preferences(sid, 1_700_000_000)
        head, mac = token.rsplit(".", 1)
        targets = [f"/p/{token}", f"/p/{head}+.{mac}", f"/P/{token}%0D%0A", f"/%70/{head}.{mac}"]
        for target in targets:
            assert raw_http(site.url, target).status in (200, 400, 404, 410), target
    server = server_text(server_log)
    assert server.count("HTTP/1.1") == len(targets)
    assert _hidden(server, mac), server
    assert f"/p/{head}.[redacted]" in server


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
