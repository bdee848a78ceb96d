"""Input anyone can send never makes the web endpoint fail: every route (signup, archive
and webhook on), every method, hostile headers, paths and bodies, sent as raw bytes over
a socket to a real uvicorn, on SQLite and on PostgreSQL. No answer is a 5xx, and the
server logs no traceback.

Also the cases that were a 500 once: a webhook timestamp of digits that are not ASCII
(`²³`: str.isdigit() says yes, int() fails), and a well-signed token naming an id
beyond the database's integers (2^63 and up) on every route that reads a token.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from highlightsmail.feedback.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER
from highlightsmail.tokens import Signer
from highlightsmail.urls import SENDGRID_WEBHOOK as PATH
from support.archive import enable_archive, mark_sent
from support.sendgrid_events import EventSender
from support.webapp import RawAnswer, Site, raw_http, serve_workspace

pytestmark = pytest.mark.usefixtures("engine")

ISSUE = "2024-w02"
URLENCODED = "application/x-www-form-urlencoded"
BOUNDARY = "fuzzboundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
#: Ids a well-signed token may carry that no database row can have.
HUGE_IDS = (2**63, 2**63 + 1, 2**64, 36**13 - 1)


def _part(name: bytes, value: bytes, extra: bytes = b"") -> bytes:
    return (
        (f"--{BOUNDARY}\r\n".encode() + b'Content-Disposition: form-data; name="' + name + b'"' + extra + b"\r\n\r\n")
        + value
        + b"\r\n"
    )


_END = f"--{BOUNDARY}--\r\n".encode()

#: (Content-Type, body): each sent to every route with every method.
BODIES: list[tuple[str | bytes | None, bytes]] = [
    (None, b""),
    (URLENCODED, b"List-Unsubscribe=One-Click"),
    (URLENCODED, b"email=j%FCrgen%40example.org&name=%FF%FE"),
    (URLENCODED, b"email=j\xfcrgen@example.org&name=J\xc3\xbcrgen"),
    (URLENCODED, b"email=%00@example.org&name=%0D%0ABcc:x&action=resend&website="),
    (URLENCODED, b"&&==&=%&%%%zz&email"),
    (URLENCODED, b"a=1&" * 500),
    ("application/json", b"{"),
    ("application/json", b"[" * 3000 + b"]" * 3000),
    ("application/json", b'{"email": {"email": ' * 2000 + b"1" + b"}" * 2000),
    ("application/json", b'{"email": "j\\udcffrgen@example.org", "name": "\\ud800"}'),
    ("application/json", b'{"email": "j\xfcrgen@example.org"}'),
    ("application/json", b'{"email": "a@example.org", "name": 1e999, "website": null}'),
    ("application/json", b"\xef\xbb\xbf{}"),
    ("application/json", b'"\\u0000"'),
    ("application/json", json.dumps([{"event": "delivered", "subscriber_id": "²³", "issue": ISSUE}]).encode()),
    ("multipart/form-data", b"no boundary at all"),
    (MULTIPART, b"--other\r\n\r\nnot ours\r\n--other--\r\n"),
    (MULTIPART, _part(b"email", b"j\xfcrgen@example.org") + _part(b"name", b"\xff") + _END),
    (MULTIPART, _part(b"\xff\xfe", b"x") + _part(b"email", b"ada@example.org") + _END),
    (MULTIPART, _part(b"email", b"ada@example.org", b'; filename="x.txt"') + _END),
    (MULTIPART, _part(b"List-Unsubscribe", b"One-Click")),  # no closing boundary
    (f"multipart/form-data; boundary={'b' * 300}", b"--" + b"b" * 300 + b"\r\n"),
    ("multipart/mixed; boundary=x", b"--x\r\nContent-Type: multipart/mixed; boundary=y\r\n\r\n--y\r\n" * 40),
    ("text/plain", b"\x00\x01\x02\xff" * 50),
    (b"application/json; charset=\xff\xfe", b"{}"),
    (b"\xc3\xa9/\xc3\xa9; boundary=\xff", b"x"),
]

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "PROPFIND", "get")


@pytest.fixture
def site(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """Every route on: signup, the archive (one issue sent), the webhook with a key."""
    from support.signup import enable_signup

    monkeypatch.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", EventSender().public_key)
    enable_archive(workspace)
    enable_signup(workspace, allowed_origins=["https://www.example.org"])
    mark_sent(workspace, ISSUE)
    with serve_workspace(workspace) as s:
        yield s


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR)
    return caplog


def _targets(site: Site) -> list[str]:
    """Every route of the endpoint, with tokens that work, and tokens well signed for
    ids no database holds."""
    sid = site.add("ada@example.org")
    pending = site.add("pending@example.org", status="pending")
    now = int(time.time())
    signer = site.signer
    targets = [
        "/",
        "/healthz",
        f"/u/{signer.make(sid)}",
        f"/u/{signer.make(sid)}/resubscribe",
        f"/u/{signer.make(sid, 'test')}",
        "/subscribe",
        f"/confirm/{signer.make_confirm(pending, now)}",
        "/archive",
        "/archive/",
        "/archive/feed.xml",
        f"/archive/{ISSUE}",
        f"/archive/{ISSUE}/",
        PATH,
        "/nothing/here",
    ]
    for huge in HUGE_IDS:
        targets += [f"/u/{signer.make(huge)}", f"/u/{signer.make(huge)}/resubscribe"]
        targets += [f"/u/{signer.make(huge, 'test')}", f"/confirm/{signer.make_confirm(huge, now)}"]
        targets += [f"/confirm/{signer.make_confirm(pending, huge)}"]
    return targets


def _check(answer: RawAnswer, what: object) -> None:
    assert answer.status != 0, ("no answer", what)
    assert not 500 <= answer.status < 600, (answer.status, what, answer.body[:300])


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    failures = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(("uvicorn", "high"))
    ]
    assert failures == []


def _client(n: int) -> tuple[bytes, bytes]:
    """A client address through the trusted proxy (uvicorn trusts 127.0.0.1), another for
    each request, so the signup's per-client limit lets every body reach the parser."""
    return (b"X-Forwarded-For", f"198.51.{n // 250 % 250}.{n % 250 + 1}".encode())


@pytest.mark.slow
def test_every_route_method_and_body(site: Site, server_errors: pytest.LogCaptureFixture) -> None:
    n = 0
    for target in _targets(site):
        for method in METHODS:
            for content_type, body in BODIES:
                headers = [_client(n)]
                if content_type is not None:
                    headers.append((b"Content-Type", content_type))
                n += 1
                _check(raw_http(site.url, target, method, headers, body), (method, target, content_type, body[:40]))
    assert n > 2000
    _no_tracebacks(server_errors)


#: Headers anyone may send, each added to an ordinary request.
HOSTILE_HEADERS: list[list[tuple[bytes, bytes]]] = [
    [(b"X-Huge", b"x" * 15_000)],
    [(b"X-Huge", b"x" * 70_000)],
    [(f"X-Many-{i}".encode(), b"1") for i in range(300)],
    [(b"Content-Type", b"application/json"), (b"Content-Type", URLENCODED.encode())],
    [(b"Content-Type", URLENCODED.encode()), (b"Content-Type", b"application/json")],
    [(b"Content-Type", MULTIPART.encode()), (b"Content-Type", b"text/plain")],
    [(b"Content-Type", b"\xff\xfe\x00")],
    [(b"Content-Type", "application/json; charset=ütf-8".encode())],
    [(b"Origin", "https://ëxample.org".encode())],
    [(b"Origin", b"null"), (b"Origin", b"https://www.example.org")],
    [(b"Origin", b"https://www.example.org"), (b"Access-Control-Request-Method", b"\xff")],
    [(b"If-None-Match", b"*")],
    [(b"If-None-Match", b'W/"x", ' * 1000)],
    [(b"If-None-Match", b"\xff\xfe")],
    [(b"X-Forwarded-For", b"not an address")],
    [(b"X-Forwarded-For", b"\xff\xfe\xfd")],
    [(b"X-Forwarded-For", ", ".join(f"10.0.{i // 250}.{i % 250}" for i in range(1000)).encode())],
    [(b"X-Forwarded-For", b"[::1"), (b"X-Forwarded-Proto", b"javascript")],
    [(b"X-Forwarded-For", b"::ffff:999.1.1.1"), (b"X-Forwarded-Proto", b"https, http")],
    [(b"X-Forwarded-For", b""), (b"X-Forwarded-Proto", b"")],
    [(b"X-Forwarded-Proto", b"\xff"), (b"X-Forwarded-Host", b"evil.example")],
    [(b"X-Forwarded-Proto", b"ws"), (b"X-Forwarded-Port", b"99999999999999999999")],
    [(b"Forwarded", b"for=\xff;proto=\xff;host=[")],
    [(b"Cookie", b"a=\xff; " * 200)],
    [(b"Accept-Encoding", b"gzip;q=\xff")],
    [(b"Expect", b"100-continue")],
    [(b"Range", b"bytes=0-1,\xff")],
    [(SIGNATURE_HEADER.encode(), b"\xff" * 100), (TIMESTAMP_HEADER.encode(), b"\xb2\xb3")],
    [(SIGNATURE_HEADER.encode(), b"AAAA"), (TIMESTAMP_HEADER.encode(), str(2**70).encode())],
    [(SIGNATURE_HEADER.encode(), b"=" * 10), (TIMESTAMP_HEADER.encode(), b"-1")],
]

#: Host headers: missing, empty, bracketed badly, a port out of range, not ASCII, two.
HOSTS: list[bytes | None] = [None, b"", b"[", b"[::1", b"x:99999999999", b"x:-1", b"\xc3\xa9", b"a b", b"x, y"]


@pytest.mark.slow
def test_hostile_headers_on_every_route(site: Site, server_errors: pytest.LogCaptureFixture) -> None:
    n = 0
    for target in _targets(site):
        for method in ("GET", "POST", "OPTIONS"):
            body = b"List-Unsubscribe=One-Click" if method == "POST" else b""
            for headers in HOSTILE_HEADERS:
                n += 1
                _check(raw_http(site.url, target, method, [*headers], body), (method, target, headers[0]))
            for host in HOSTS:
                n += 1
                _check(raw_http(site.url, target, method, [], body, host=host), (method, target, host))
            # A length given twice, alike and not; a length that is not a number; chunks
            # (with and without a length beside them).
            size = str(len(body)).encode()
            for lengths in ((size, size), (size, size + b"1"), (b"\xb2\xb3",), (b"+" + size,), (b"2" * 40,)):
                n += 1
                headers = [(b"Content-Length", v) for v in lengths]
                _check(raw_http(site.url, target, method, headers, body, content_length=False), (target, lengths))
            chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n" if body else b"0\r\n\r\n"
            for lengths in ((), (b"26",)):
                n += 1
                headers = [(b"Transfer-Encoding", b"chunked"), *((b"Content-Length", v) for v in lengths)]
                _check(raw_http(site.url, target, method, headers, chunked, content_length=False), (target, "chunked"))
    assert n > 1000
    _no_tracebacks(server_errors)


#: Request targets no client would send as they are.
HOSTILE_PATHS = [
    "/%00",
    "/u/%00",
    "/u/%ff",
    "/u/%C0%AF",
    "/u/u1.%00%ff",
    "/confirm/%ff%fe",
    "/archive/%ff/",
    "/archive/%00",
    "/subscribe%00",
    "/healthz%ff",
    "/" + "a" * 8000,
    "/u/" + "u1." + "A" * 8000,
    "/archive/" + "x" * 8000,
    "/..",
    "/../../etc/passwd",
    "/archive/../../highlights.yaml",
    "/archive/%2e%2e/%2e%2e/highlights.yaml",
    "/u/..",
    "/./u/./x",
    "//u//x",
    "/\\u\\x",
    "/u/é",
    "/archive/é/",
    "/archive/\u202e/",
    "/u/\U0001f600",
    "/?%ff=%00&a=%",
    "/subscribe?email=%ff",
    "*",
    "http://evil.example/u/x",
    "https://[/u",
]


@pytest.mark.slow
def test_hostile_paths(site: Site, server_errors: pytest.LogCaptureFixture) -> None:
    raw_bytes = [b"/u/\xff", b"/archive/\xc3\x28/", b"/\x00", b"/u/\x7f"]
    for target in [*HOSTILE_PATHS, *raw_bytes]:
        for method in ("GET", "HEAD", "POST", "OPTIONS", "DELETE"):
            _check(raw_http(site.url, target, method), (method, target))
    _no_tracebacks(server_errors)


# ---------------------------------------------------------------- the cases that were a 500


@pytest.mark.parametrize("stamp", [b"\xb2\xb3", b"\xb9\xb2\xb3\xb2\xb3\xb2\xb3\xb2\xb3\xb2", b"1_700_000_000", b"+1"])
def test_a_webhook_timestamp_that_is_not_ascii_digits_is_403(
    site: Site, server_errors: pytest.LogCaptureFixture, stamp: bytes
) -> None:
    body = b"[]"
    headers = [(SIGNATURE_HEADER.encode(), b"MEUCIQ=="), (TIMESTAMP_HEADER.encode(), stamp)]
    answer = raw_http(site.url, PATH, "POST", [(b"Content-Type", b"application/json"), *headers], body)
    assert answer.status == 403
    _no_tracebacks(server_errors)


@pytest.mark.parametrize("huge", HUGE_IDS)
def test_a_signed_token_beyond_the_database_is_not_valid(site: Site, huge: int) -> None:
    """The signature is good, the id is no one's: the 400 page, on every token route."""
    signer = site.signer
    now = int(time.time())
    before = site.dump()
    with httpx.Client(timeout=30) as http:
        for method, target in (
            ("GET", f"/u/{signer.make(huge)}"),
            ("POST", f"/u/{signer.make(huge)}"),
            ("POST", f"/u/{signer.make(huge)}/resubscribe"),
            ("GET", f"/confirm/{signer.make_confirm(huge, now)}"),
            ("POST", f"/confirm/{signer.make_confirm(huge, now)}"),
        ):
            r = http.request(method, site.url + target, content=b"List-Unsubscribe=One-Click")
            assert r.status_code == 400 and "This link is not valid" in r.text, (method, target, r.status_code)
    assert site.dump() == before


def test_tokens_read_ids_up_to_the_databases_integers_only() -> None:
    from highlightsmail.errors import InvalidToken
    from highlightsmail.tokens import read_message_token

    signer = Signer(b"s" * 32)
    assert signer.read(signer.make(2**63 - 1)) == ("unsubscribe", 2**63 - 1)
    assert signer.read_confirm(signer.make_confirm(2**63 - 1, 2**40)) == (2**63 - 1, 2**40)
    for huge in HUGE_IDS:
        with pytest.raises(InvalidToken):
            signer.read(signer.make(huge))
        with pytest.raises(InvalidToken):
            signer.read_confirm(signer.make_confirm(huge, 1))
        with pytest.raises(InvalidToken):
            signer.read_confirm(signer.make_confirm(1, huge))
        assert read_message_token(signer.make_message(ISSUE, "abcdefgh", huge)) is None
    assert read_message_token(signer.make_message(ISSUE, "abcdefgh", 2**63 - 1)) == ("abcdefgh", 2**63 - 1)


def test_numbers_from_outside_are_ascii_digits_within_bounds() -> None:
    from highlightsmail.text import MAX_INT64, parse_number

    assert parse_number("1700000000") == 1_700_000_000
    assert parse_number(b"26") == 26
    assert parse_number(str(MAX_INT64)) == MAX_INT64
    assert parse_number("zz", base=36) == 35 * 36 + 35
    assert parse_number("12", high=11) is None
    assert parse_number("0", low=1) is None
    for text in (
        "²³",
        "١٢",
        "１２",
        " 12",
        "12 ",
        "+12",
        "-1",
        "1_0",
        "1e3",
        "0x10",
        "",
        str(MAX_INT64 + 1),
        "9" * 5000,
    ):
        assert parse_number(text) is None, text
    assert parse_number("ZZ", base=36) is None and parse_number(b"\xb2") is None and parse_number(None) is None


def test_webhook_events_read_their_numbers_the_same_way() -> None:
    """A subscriber id or a timestamp in an event: ASCII digits within bounds (or a JSON
    number), else the event is not ours and is ignored."""
    from highlightsmail.feedback.events import sendgrid_row

    sender = EventSender()

    def row(**fields: object):
        event = sender.event("delivered", email="ada@example.org", issue=ISSUE, subscriber_id=1)
        return sendgrid_row({**event, **fields})

    assert row().subscriber_id == 1
    assert row(subscriber_id=7).subscriber_id == 7
    assert row(subscriber_id=str(2**63 - 1)).subscriber_id == 2**63 - 1
    for sid in ("²³", "١٢", " 1", "+1", "1_0", "0", "-1", str(2**63), 2**63, 0, -1, True, False, 1.0, None, ""):
        assert row(subscriber_id=sid) is None, sid
    assert row(timestamp="1700000000").at == row(timestamp=1_700_000_000).at
    for stamp in ("١٧٠٠٠٠٠٠٠٠", "1_700_000_000", "nan", "inf", "1e9", " 1700000000", "²³", True, float("nan")):
        assert row(timestamp=stamp) is None, stamp
