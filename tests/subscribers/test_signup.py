"""Joining the list over real HTTP: uvicorn on a loopback port, a real SQLite file, the
confirmation emails in the outbox (or through a real SMTP server).

The same answer for every state of an address, the trap for bots, refusals that name
the field, the limits per address and per client (also across two server processes),
CORS for JSON only from the allowed sites, confirmation links that cannot be forged,
moved or reused, and the welcome issue recorded in the ledger.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.store import Store
from highlightsmail.subscribers.signup import MAILS_PER_ADDRESS, POSTS_PER_CLIENT
from support.archive import mark_sent
from support.ports import free_port
from support.signup import confirm_link, enable_signup, mails, read_mail, wait_for_mails
from support.smtp import SinkHandler
from support.webapp import Site, assert_secure_headers, forms_of, serve_process, serve_workspace
from support.workspace import configure

# Every signup test runs on SQLite and on PostgreSQL (see conftest.py).
pytestmark = pytest.mark.usefixtures("engine")

BASE = "https://highlights.example.org"
CHECK_INBOX = "Check your inbox"


@pytest.fixture
def http():
    with httpx.Client(follow_redirects=False, timeout=30) as client:
        yield client


@pytest.fixture
def signup_site(workspace: Path):
    enable_signup(workspace, allowed_origins=["https://www.example.org"])
    with serve_workspace(workspace) as s:
        yield s


def confirm_dir(site: Site) -> Path:
    return site.ws.root / "outbox" / "_confirm"


def ip(n: int) -> dict[str, str]:
    """A request coming through the trusted proxy (uvicorn trusts 127.0.0.1) for client n."""
    return {"X-Forwarded-For": f"198.51.100.{n % 250 + 1}"}


def answer_parts(r: httpx.Response) -> tuple:
    """What must not differ between two answers: status, body, headers but Date."""
    return r.status_code, r.content, tuple(sorted((k, v) for k, v in r.headers.items() if k != "date"))


# ---------------------------------------------------------------- the form and its answer


def test_get_shows_the_form_and_a_query_string_changes_nothing(signup_site: Site, http: httpx.Client) -> None:
    before = signup_site.dump()
    r = http.get(f"{signup_site.url}/subscribe?email=ada%40example.org&name=Ada&website=")
    assert r.status_code == 200
    assert_secure_headers(r)
    (form,) = forms_of(r.text)
    assert (form["action"], form["method"]) == ("subscribe", "post")
    assert set(form["fields"]) == {"email", "name", "website"}
    assert form["fields"]["email"] == ""  # nothing from the query string comes back
    assert "<script" not in r.text
    time.sleep(0.3)
    assert signup_site.dump() == before
    assert mails(confirm_dir(signup_site)) == []


def test_the_same_answer_whatever_the_address(signup_site: Site, http: httpx.Client) -> None:
    states = {"pending": "pe@example.org", "active": "ac@example.org", "unsubscribed": "un@example.org"}
    states |= {"bounced": "bo@example.org", "complained": "co@example.org"}
    ids = {status: signup_site.add(address, status=status) for status, address in states.items()}
    addresses = {"new": "ne@example.org", **states}

    forms, jsons = {}, {}
    for n, (state, address) in enumerate(addresses.items()):
        forms[state] = http.post(f"{signup_site.url}/subscribe", data={"email": address, "name": ""}, headers=ip(n))
        jsons[state] = http.post(f"{signup_site.url}/subscribe", json={"email": address}, headers=ip(n))
    assert {answer_parts(r) for r in forms.values()} == {answer_parts(forms["new"])}
    assert {answer_parts(r) for r in jsons.values()} == {answer_parts(jsons["new"])}
    assert forms["new"].status_code == 200 and CHECK_INBOX in forms["new"].text
    assert jsons["new"].json() == {"status": "pending"}
    assert_secure_headers(forms["new"])
    assert_secure_headers(jsons["new"])
    assert "ne@example.org" not in forms["new"].text and "ne@" not in forms["new"].text

    # Every status is as it was; the new address is pending; only confirming activates.
    for status, sid in ids.items():
        assert signup_site.status(sid) == status
    with signup_site.store() as store:
        new = store.find("ne@example.org")
    assert new is not None and new.status == "pending"
    assert signup_site.events(new.id) == [(None, "pending", "form")]
    # One confirmation email each, except to the active address; the second post of
    # each address came within ten minutes of the first, so it sent nothing.
    sent = wait_for_mails(confirm_dir(signup_site), 5)
    time.sleep(0.3)
    sent = mails(confirm_dir(signup_site))
    recipients = sorted(str(read_mail(p)["To"]) for p in sent)
    assert recipients == sorted(a for s, a in addresses.items() if s != "active")


def test_a_filled_trap_gets_the_same_answer_and_nothing_happens(signup_site: Site, http: httpx.Client) -> None:
    before = signup_site.dump()
    honest = http.post(f"{signup_site.url}/subscribe", data={"email": "ada@example.org"}, headers=ip(1))
    bot = http.post(
        f"{signup_site.url}/subscribe", data={"email": "bot@example.org", "website": "https://spam.example"}
    )
    assert answer_parts(bot) == answer_parts(honest)
    bot_json = http.post(f"{signup_site.url}/subscribe", json={"email": "not an address", "website": "x"})
    assert (bot_json.status_code, bot_json.json()) == (200, {"status": "pending"})
    wait_for_mails(confirm_dir(signup_site), 1)
    time.sleep(0.3)
    with signup_site.store() as store:
        assert store.find("bot@example.org") is None
    assert len(signup_site.dump()) == len(before) + 2  # ada's row and her event, nothing of the bot's
    assert [str(read_mail(p)["To"]) for p in mails(confirm_dir(signup_site))] == ["ada@example.org"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"email": ""}, "email"),
        ({"name": "Ada"}, "email"),
        ({"email": "ada@"}, "email"),
        ({"email": "ada@example.org\r\nBcc: victim@example.net"}, "email"),
        ({"email": "=?utf-8?q?Hi=0D=0ABcc=3A_x=40example.net?=@example.org"}, "email"),
        ({"email": "ada@example.org", "name": "Ada\r\nBcc: victim@example.net"}, "name"),
        ({"email": "ada@example.org", "name": "Ada\nLovelace"}, "name"),
        ({"email": "ada@example.org", "name": "=?utf-8?q?Hi=0D=0ABcc:_victim@example.net?="}, "name"),
        ({"email": "ada@example.org", "name": "Ada\u2028Lovelace"}, "name"),
        ({"email": "ada@example.org", "name": "A" * 201}, "name"),
    ],
)
def test_a_field_that_cannot_be_taken_is_400_naming_it(
    signup_site: Site, http: httpx.Client, fields: dict, field: str
) -> None:
    before = signup_site.dump()
    r = http.post(f"{signup_site.url}/subscribe", data=fields)
    assert r.status_code == 400
    label = {"email": "Email address", "name": "Name"}[field]
    assert f'<p class="problem" id="problem" role="alert">{label}' in r.text
    (form,) = forms_of(r.text)
    assert set(form["fields"]) == {"email", "name", "website"}  # the form again, to correct
    j = http.post(f"{signup_site.url}/subscribe", json=fields)
    assert j.status_code == 400 and j.json()["field"] == field
    assert j.json()["error"].startswith(field)
    time.sleep(0.2)
    assert signup_site.dump() == before
    assert mails(confirm_dir(signup_site)) == []


NOT_UTF8 = [
    # (what, Content-Type, body, the field): %-escapes and raw bytes that are not UTF-8
    ("urlencoded %FC", "application/x-www-form-urlencoded", b"email=j%FCrgen%40example.org", "email"),
    ("urlencoded raw", "application/x-www-form-urlencoded", b"email=j\xfcrgen@example.org", "email"),
    ("urlencoded name", "application/x-www-form-urlencoded", b"email=ada%40example.org&name=J%FCrgen", "name"),
    ("urlencoded half", "application/x-www-form-urlencoded", b"email=ada%40example.org&name=J%C3", "name"),
    (
        "multipart",
        "multipart/form-data; boundary=B",
        b'--B\r\nContent-Disposition: form-data; name="email"\r\n\r\nj\xfcrgen@example.org\r\n--B--\r\n',
        "email",
    ),
    (
        "multipart name",
        "multipart/form-data; boundary=B",
        b'--B\r\nContent-Disposition: form-data; name="email"'
        b'\r\n\r\nada@example.org\r\n--B\r\nContent-Disposition: form-data; name="name"\r\n\r\nJ\xfcrgen\r\n--B--\r\n',
        "name",
    ),
    ("json raw", "application/json", b'{"email": "j\xfcrgen@example.org"}', "email"),
    ("json escape", "application/json", b'{"email": "j\\udcfcrgen@example.org"}', "email"),
    ("json name", "application/json", b'{"email": "ada@example.org", "name": "J\\ud800rgen"}', "name"),
]


@pytest.mark.parametrize(("what", "content_type", "body", "field"), NOT_UTF8, ids=[c[0] for c in NOT_UTF8])
def test_a_field_that_is_not_utf8_is_400_naming_it(
    signup_site: Site, http: httpx.Client, what: str, content_type: str, body: bytes, field: str
) -> None:
    """It was stored as U+FFFD (`j\ufffdrgen@example.org`), or read as Latin-1."""
    before = signup_site.dump()
    r = http.post(f"{signup_site.url}/subscribe", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 400
    label = {"email": "Email address", "name": "Name"}[field]
    if content_type == "application/json":
        assert r.json() == {"error": f"{field} is not UTF-8 text", "field": field}
    else:
        assert f'<p class="problem" id="problem" role="alert">{label} is not UTF-8 text' in r.text
        (form,) = forms_of(r.text)
        assert "\ufffd" not in form["fields"][field]  # what came is not shown back as text
    time.sleep(0.2)
    assert signup_site.dump() == before
    assert mails(confirm_dir(signup_site)) == []


def test_utf8_in_every_encoding_is_taken(signup_site: Site, http: httpx.Client) -> None:
    """The same address written every way a client may: escaped, raw UTF-8, multipart, JSON."""
    posts = [
        ("application/x-www-form-urlencoded", b"email=j%C3%BCrgen%40example.org&name=J%C3%BCrgen+M"),
        ("application/x-www-form-urlencoded", "email=jürgen@example.org&name=Jürgen M".encode()),
        (
            "multipart/form-data; boundary=B",
            '--B\r\nContent-Disposition: form-data; name="email"\r\n\r\njürgen@example.org\r\n--B--\r\n'.encode(),
        ),
        ("application/json", '{"email": "jürgen@example.org"}'.encode()),
        ("application/json", b'{"email": "j\\u00fcrgen@example.org"}'),
    ]
    for n, (content_type, body) in enumerate(posts):
        r = http.post(f"{signup_site.url}/subscribe", content=body, headers={"Content-Type": content_type, **ip(n)})
        assert r.status_code == 200, (content_type, body, r.text)
    with signup_site.store() as store:
        people = [(s.email, s.name) for s in store.iter_subscribers()]
    assert people == [("jürgen@example.org", "Jürgen M")]


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"email": "ada@example.org"', b"\xff\xfe", b'["ada@example.org"]', b'"ada@example.org"', b"[" * 5000],
)
def test_a_body_that_is_not_a_json_object_is_400(signup_site: Site, http: httpx.Client, body: bytes) -> None:
    before = signup_site.dump()
    r = http.post(f"{signup_site.url}/subscribe", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "error" in r.json()
    assert signup_site.dump() == before


def test_json_fields_of_the_wrong_type_are_400(signup_site: Site, http: httpx.Client) -> None:
    for fields, field in (({"email": 42}, "email"), ({"email": ["a@example.org"]}, "email")):
        r = http.post(f"{signup_site.url}/subscribe", json=fields)
        assert (r.status_code, r.json()["field"]) == (400, field)
    r = http.post(f"{signup_site.url}/subscribe", json={"email": "ada@example.org", "name": {"x": 1}})
    assert (r.status_code, r.json()["field"]) == (400, "name")


def test_a_megabyte_body_is_413(signup_site: Site, http: httpx.Client) -> None:
    before = signup_site.dump()
    big = "x" * 1_000_000
    for r in (
        http.post(f"{signup_site.url}/subscribe", data={"email": "ada@example.org", "name": big}),
        http.post(f"{signup_site.url}/subscribe", json={"email": "ada@example.org", "name": big}),
        http.post(f"{signup_site.url}/subscribe", content=(b"x" * 1_000_000 for _ in range(1))),
    ):
        assert r.status_code == 413
    assert signup_site.dump() == before


def test_multipart_posts_are_read_like_forms(signup_site: Site, http: httpx.Client) -> None:
    r = http.post(f"{signup_site.url}/subscribe", files={"email": (None, "ada@example.org"), "name": (None, "Ada")})
    assert r.status_code == 200 and CHECK_INBOX in r.text
    (sent,) = wait_for_mails(confirm_dir(signup_site), 1)
    assert str(read_mail(sent)["To"]) == "Ada <ada@example.org>"


# ---------------------------------------------------------------- limits


def test_fifty_posts_for_one_address_send_one_email(signup_site: Site, http: httpx.Client) -> None:
    def post(n: int) -> int:
        with httpx.Client(timeout=30) as client:
            return client.post(
                f"{signup_site.url}/subscribe", data={"email": "ada@example.org"}, headers=ip(n)
            ).status_code

    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(post, range(50)))
    assert codes == [200] * 50
    wait_for_mails(confirm_dir(signup_site), 1)
    time.sleep(0.5)
    assert len(mails(confirm_dir(signup_site))) == 1
    with signup_site.store() as store:
        assert store.count_by_status()["pending"] == 1


def test_the_limits_per_address_are_ten_minutes_and_five_a_day(workspace: Path) -> None:
    """The per-address limits over a day, with the database's clock moved on."""
    from datetime import UTC, datetime, timedelta

    assert ((timedelta(minutes=10), 1), (timedelta(days=1), 5)) == MAILS_PER_ADDRESS
    now = [datetime(2024, 1, 12, 8, 0, tzinfo=UTC)]
    with Store.open(load_workspace(workspace), clock=lambda: now[0]) as store:
        sid = store.add("ada@example.org", status="pending", source="form")[0].id
        made = []
        for minute in range(0, 24 * 60, 5):  # asks every five minutes for a day
            now[0] = datetime(2024, 1, 12, 8, 0, tzinfo=UTC) + timedelta(minutes=minute)
            reserved = store.reserve_confirmation(sid, MAILS_PER_ADDRESS)
            if reserved:
                made.append(minute)
                store.confirmation_sent(reserved[0])
        assert made == [0, 10, 20, 30, 40]
        now[0] = datetime(2024, 1, 13, 8, 1, tzinfo=UTC)  # a day after the first
        assert store.reserve_confirmation(sid, MAILS_PER_ADDRESS) is not None
        # An email that could not be sent counts no more.
        now[0] += timedelta(minutes=30)
        reservation, _made = store.reserve_confirmation(sid, MAILS_PER_ADDRESS) or (0, 0)
        store.confirmation_not_sent(reservation)
        assert store.reserve_confirmation(sid, MAILS_PER_ADDRESS) is not None
        # Never to an active subscriber.
        now[0] += timedelta(hours=2)
        store.set_status(sid, "active", "form")
        assert store.reserve_confirmation(sid, MAILS_PER_ADDRESS) is None


def test_plus_tags_of_one_mailbox_share_its_limits(workspace: Path) -> None:
    """bomb+1@, bomb+2@... reach one inbox: the per-address limits count the mailbox,
    whichever tag (or none, or another case) asked; each address stays a subscriber
    of its own. Other mailboxes, and the same name at another domain, count apart."""
    from datetime import UTC, datetime, timedelta

    start = datetime(2024, 1, 12, 8, 0, tzinfo=UTC)
    now = [start]
    with Store.open(load_workspace(workspace), clock=lambda: now[0]) as store:

        def add(address: str) -> int:
            return store.add(address, status="pending", source="form")[0].id

        tagged = [add(f"bomb+{i}@example.org") for i in range(1, 11)]
        plain, shouted = add("bomb@example.org"), add("BOMB+x@Example.org")
        assert len({*tagged, plain, shouted}) == 12  # twelve subscribers...
        everyone = [*tagged, plain, shouted]
        made = []
        for step, minute in enumerate(range(0, 24 * 60, 5)):  # ...asking by turns all day
            now[0] = start + timedelta(minutes=minute)
            reserved = store.reserve_confirmation(everyone[step % len(everyone)], MAILS_PER_ADDRESS)
            if reserved:
                made.append(minute)
                store.confirmation_sent(reserved[0])
        assert made == [0, 10, 20, 30, 40]  # ...and one mailbox's limits
        for other in ("bomb2@example.org", "bomb+1@example.net", "bomb+1@mail.example.org", "bom@example.org"):
            assert store.reserve_confirmation(add(other), MAILS_PER_ADDRESS) is not None, other


def test_ten_plus_tags_get_one_confirmation_email(signup_site: Site, http: httpx.Client) -> None:
    for n in range(1, 11):
        r = http.post(f"{signup_site.url}/subscribe", data={"email": f"bomb+{n}@example.org"}, headers=ip(n))
        assert r.status_code == 200 and CHECK_INBOX in r.text
    (sent,) = wait_for_mails(confirm_dir(signup_site), 1)
    time.sleep(0.5)
    assert mails(confirm_dir(signup_site)) == [sent]
    assert str(read_mail(sent)["To"]) == "bomb+1@example.org"
    with signup_site.store() as store:
        assert store.count_by_status()["pending"] == 10  # each address is its own subscriber


def test_thirty_one_posts_from_one_client_get_429(signup_site: Site, http: httpx.Client) -> None:
    assert POSTS_PER_CLIENT == 30
    codes = []
    for n in range(31):
        # Accepted, refused for a bad address, or caught in the trap: each one counts.
        data = [{"email": f"r{n}@example.org"}, {"email": "bad"}, {"email": "x@example.org", "website": "y"}][n % 3]
        codes.append(http.post(f"{signup_site.url}/subscribe", data=data, headers=ip(7)).status_code)
    assert codes[:30] == [[200, 400, 200][n % 3] for n in range(30)]
    assert codes[30] == 429
    r = http.post(f"{signup_site.url}/subscribe", json={"email": "late@example.org"}, headers=ip(7))
    assert r.status_code == 429
    assert 3500 <= int(r.headers["retry-after"]) <= 3600
    assert_secure_headers(r)
    with signup_site.store() as store:
        assert store.find("late@example.org") is None
    # Another client is not held back.
    assert http.post(f"{signup_site.url}/subscribe", json={"email": "z@example.org"}, headers=ip(8)).status_code == 200


def test_an_ipv6_client_is_counted_by_its_64(workspace: Path) -> None:
    from highlightsmail.subscribers.signup import client_key

    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert client_key("198.51.100.7") == "198.51.100.7"
    assert client_key(None) == "unknown"


@pytest.mark.slow
def test_two_server_processes_on_one_database_share_the_limits(workspace: Path) -> None:
    enable_signup(workspace)
    with serve_process(workspace) as one, serve_process(workspace) as two, httpx.Client(timeout=30) as client:
        a, b = one.url, two.url
        # One address, ten times through each server: one email.
        for n in range(20):
            url = a if n % 2 else b
            r = client.post(f"{url}/subscribe", data={"email": "ada@example.org"}, headers=ip(n + 100))
            assert r.status_code == 200
        # One client, thirty posts spread over both: the thirty-first is refused by either.
        for n in range(30):
            r = client.post(f"{(a, b)[n % 2]}/subscribe", json={"email": f"r{n}@example.org"}, headers=ip(5))
            assert r.status_code == 200, n
        assert client.post(f"{a}/subscribe", json={"email": "x@example.org"}, headers=ip(5)).status_code == 429
        assert client.post(f"{b}/subscribe", json={"email": "y@example.org"}, headers=ip(5)).status_code == 429
    folder = workspace / "outbox" / "_confirm"
    to = [str(read_mail(p)["To"]) for p in mails(folder)]
    assert to.count("ada@example.org") == 1
    assert len(to) == 31


# ---------------------------------------------------------------- CORS


def test_cors_for_json_from_the_allowed_origins_only(signup_site: Site, http: httpx.Client) -> None:
    url = f"{signup_site.url}/subscribe"
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    ok = http.options(url, headers={"Origin": "https://www.example.org", **ask})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == "https://www.example.org"
    assert ok.headers["access-control-allow-methods"] == "POST"
    assert ok.headers["access-control-allow-headers"].lower() == "content-type"
    assert "origin" in ok.headers["vary"].lower()
    refused = http.options(url, headers={"Origin": "https://evil.example", **ask})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers

    r = http.post(url, json={"email": "ada@example.org"}, headers={"Origin": "https://www.example.org"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://www.example.org"
    before = signup_site.dump()
    r = http.post(url, json={"email": "eve@example.org"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    assert signup_site.dump() == before
    # The HTML form needs no CORS: a form post from any site is taken, and the answer is a page.
    r = http.post(url, data={"email": "grace@example.org"}, headers={"Origin": "https://blog.example.net"})
    assert r.status_code == 200 and CHECK_INBOX in r.text and "access-control-allow-origin" not in r.headers
    with signup_site.store() as store:
        assert store.find("grace@example.org") is not None


def test_signup_is_off_unless_enabled(workspace: Path, http: httpx.Client) -> None:
    with serve_workspace(workspace) as site:
        assert http.get(f"{site.url}/subscribe").status_code == 404
        assert http.post(f"{site.url}/subscribe", json={"email": "ada@example.org"}).status_code == 404
        assert http.get(f"{site.url}/confirm/c1.abc.{'A' * 22}").status_code == 404


@pytest.mark.parametrize(
    ("template", "text", "words"),
    [
        ("confirm.mjml.j2", "{% if %}", "templates/confirm.mjml.j2:1: Expected an expression"),
        ("confirm.txt.j2", "No link here.\n", "must both show {{ confirm_url }}"),
    ],
)
def test_a_confirmation_template_that_cannot_render_stops_serve_with_one_line(
    workspace: Path, template: str, text: str, words: str
) -> None:
    """It started, answered every reader "check your inbox", and sent nobody an email:
    the only trace was a log line per request."""
    enable_signup(workspace)
    (workspace / "templates" / template).write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["serve", "--port", "0"])
    assert result.exit_code == 1
    assert result.stdout == ""  # it never listened
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and words in line


# ---------------------------------------------------------------- confirming


def join(site: Site, http: httpx.Client, address: str, n: int = 0, name: str = "") -> str:
    """Ask to join; the path of the link in the confirmation email that follows."""
    before = len(mails(confirm_dir(site)))
    r = http.post(f"{site.url}/subscribe", data={"email": address, "name": name}, headers=ip(n))
    assert r.status_code == 200
    sent = wait_for_mails(confirm_dir(site), before + 1)
    return confirm_link(read_mail(sent[-1]))


def test_confirming_activates_with_consent_and_repeating_is_fine(signup_site: Site, http: httpx.Client) -> None:
    path = join(signup_site, http, "ada@example.org", name="Ada Lovelace")
    with signup_site.store() as store:
        sub = store.find("ada@example.org")
    assert sub is not None and sub.status == "pending"

    before = signup_site.dump()
    page = http.get(signup_site.url + path)
    assert page.status_code == 200 and "Confirm your subscription" in page.text and "a***@example.org" in page.text
    assert_secure_headers(page)
    (form,) = forms_of(page.text)
    assert form["method"] == "post" and form["action"] == path.rsplit("/", 1)[1]
    assert signup_site.dump() == before  # opening the link changed nothing

    done = http.post(signup_site.url + path, data=form["fields"], headers={"X-Forwarded-For": "203.0.113.9"})
    assert done.status_code == 200 and "You are subscribed" in done.text
    assert signup_site.status(sub.id) == "active"
    assert signup_site.events(sub.id) == [(None, "pending", "form"), ("pending", "active", "form")]
    with signup_site.store() as store:
        (consent,) = store.consents(sub.id)
    assert (consent.source, consent.ip) == ("form", "203.0.113.9")
    after = signup_site.dump()
    again = http.post(signup_site.url + path)
    assert again.status_code == 200 and "already subscribed" in again.text
    assert signup_site.dump() == after


def test_a_suppressed_address_is_active_only_after_confirming(signup_site: Site, http: httpx.Client) -> None:
    sid = signup_site.add("ada@example.org", status="complained")
    path = join(signup_site, http, "ada@example.org")
    assert signup_site.status(sid) == "complained"
    assert http.post(signup_site.url + path).status_code == 200
    assert signup_site.status(sid) == "active"
    assert signup_site.events(sid)[-1] == ("complained", "active", "form")


def test_a_link_used_after_leaving_again_brings_nobody_back(signup_site: Site, http: httpx.Client) -> None:
    path = join(signup_site, http, "ada@example.org")
    assert http.post(signup_site.url + path).status_code == 200
    with signup_site.store() as store:
        sub = store.find("ada@example.org")
        assert sub is not None
        time.sleep(1.1)  # times are kept to the second
        store.set_status(sub.id, "unsubscribed", "web")
    before = signup_site.dump()
    for r in (http.get(signup_site.url + path), http.post(signup_site.url + path)):
        assert r.status_code == 410 and "after this link was sent" in r.text
    assert signup_site.dump() == before


def test_an_expired_link_activates_nothing_and_offers_a_new_one(signup_site: Site, http: httpx.Client) -> None:
    sid = signup_site.add("ada@example.org", status="pending")
    old = int(time.time()) - 8 * 86400
    path = f"/confirm/{signup_site.signer.make_confirm(sid, old)}"
    before = signup_site.dump()
    page = http.get(signup_site.url + path)
    assert page.status_code == 410 and "This link no longer works" in page.text and "7 days" in page.text
    assert_secure_headers(page)
    assert http.post(signup_site.url + path).status_code == 410
    assert signup_site.dump() == before
    (form,) = forms_of(page.text)
    assert form["fields"] == {"action": "resend"}
    r = http.post(signup_site.url + path, data=form["fields"])
    assert r.status_code == 200 and CHECK_INBOX in r.text
    (sent,) = wait_for_mails(confirm_dir(signup_site), 1)
    fresh = confirm_link(read_mail(sent))
    assert fresh != path
    assert signup_site.status(sid) == "pending"
    assert http.post(signup_site.url + fresh).status_code == 200
    assert signup_site.status(sid) == "active"


def _confirm_token_mutants(token: str) -> list[str]:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_-."
    out = []
    for i, ch in enumerate(token):
        for other in (alphabet[(alphabet.index(ch) + 1) % len(alphabet)], "A"):
            if other != ch:
                out.append(token[:i] + other + token[i + 1 :])
    out += [token[:-1], token + "A", token.upper(), " " + token, token.replace(".", "..", 1), "c0" + token[1:]]
    return out


def test_forged_altered_and_wrong_kind_tokens_change_nothing(signup_site: Site, http: httpx.Client) -> None:
    sid = signup_site.add("ada@example.org", status="pending")
    active = signup_site.add("grace@example.org")
    signer = signup_site.signer
    good = signer.make_confirm(sid, int(time.time()))
    from highlightsmail.tokens import Signer

    forged = Signer(b"another-secret-0123456789abcdefgh").make_confirm(sid, int(time.time()))
    bad = [
        forged,
        signer.make(sid),  # an unsubscribe token on /confirm
        signer.make(sid, "test"),
        signer.make_confirm(999, int(time.time())),  # nobody
        signer.make_confirm(sid, int(time.time()) + 7 * 86400),  # made in the future
        "c1.abc",
        "",
        *_confirm_token_mutants(good),
    ]
    before = signup_site.dump()
    codes = set()
    for token in bad:
        for method in ("GET", "POST"):
            r = http.request(method, f"{signup_site.url}/confirm/{token}", data={"action": "confirm"})
            codes.add(r.status_code)
            assert r.status_code in (400, 404, 405, 410), (token, r.status_code)
    assert 400 in codes and not [c for c in codes if c >= 500]
    assert signup_site.dump() == before
    # A confirmation token opens nothing on the unsubscribe routes either.
    for path in (f"/u/{good}", f"/u/{good}/resubscribe", f"/u/{signer.make_confirm(active, int(time.time()))}"):
        for method in ("GET", "POST"):
            r = http.request(method, signup_site.url + path)
            assert r.status_code in (400, 404, 405) and r.status_code < 500
    assert signup_site.dump() == before
    # The right token still works afterwards.
    assert http.post(f"{signup_site.url}/confirm/{good}").status_code == 200
    assert signup_site.status(sid) == "active"


def test_links_made_with_the_previous_secret_still_confirm(workspace: Path, monkeypatch, http: httpx.Client) -> None:
    from highlightsmail.tokens import Signer

    enable_signup(workspace)
    old = "the-old-secret-0123456789abcdef"
    monkeypatch.setenv("HIGHLIGHTS_SECRET_PREVIOUS", old)
    with serve_workspace(workspace) as site:
        sid = site.add("ada@example.org", status="pending")
        token = Signer(old.encode()).make_confirm(sid, int(time.time()))
        assert http.post(f"{site.url}/confirm/{token}").status_code == 200
        assert site.status(sid) == "active"


# ---------------------------------------------------------------- the backend


def test_a_failing_backend_gives_the_same_answer_and_the_next_post_tries_again(
    workspace: Path, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there yet
    enable_signup(workspace)
    configure(
        workspace,
        delivery={
            "backend": "smtp",
            "max_attempts": 1,
            "smtp": {"host": "127.0.0.1", "port": port, "security": "none"},
        },
    )
    handler = SinkHandler()
    with serve_workspace(workspace) as site, caplog.at_level(logging.ERROR, logger="highlightsmail.signup"):
        first = http.post(f"{site.url}/subscribe", data={"email": "ada@example.org"})
        assert first.status_code == 200 and CHECK_INBOX in first.text
        for _ in range(400):
            if "not sent" in caplog.text:
                break
            time.sleep(0.025)
        assert "confirmation email to subscriber #1 not sent" in caplog.text
        assert "ada@example.org" not in caplog.text  # the log names the id, not the address
        from aiosmtpd.controller import Controller

        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            second = http.post(f"{site.url}/subscribe", data={"email": "ada@example.org"})
            assert (second.status_code, second.content) == (first.status_code, first.content)
            for _ in range(400):
                if handler.received:
                    break
                time.sleep(0.025)
        finally:
            controller.stop()
    (got,) = handler.received
    assert got.rcpt_tos == ["ada@example.org"]
    msg = got.message()
    assert "/confirm/c" in msg.get_body(("plain",)).get_content()
    assert msg["List-Unsubscribe"] is None and msg["List-Id"] is None  # the reader has not joined


def test_the_confirmation_email_through_sendgrid_is_a_valid_request(
    workspace: Path, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from highlightsmail.mail.backends.sendgrid import ENV_API_KEY, ENV_HOST
    from highlightsmail.rendering.rendered import UNSUBSCRIBE_PLACEHOLDER
    from support.sendgrid import SendGridServer

    server = SendGridServer(api_key="SG.signup-test")
    enable_signup(workspace)
    configure(workspace, delivery={"backend": "sendgrid"})
    with server:
        monkeypatch.setenv(ENV_API_KEY, "SG.signup-test")
        monkeypatch.setenv(ENV_HOST, server.url)
        with serve_workspace(workspace) as site:
            assert http.post(f"{site.url}/subscribe", json={"email": "ada@example.org"}).status_code == 200
        assert server.rejected == []
        (request,) = server.accepted
    body = request.body
    (p,) = body["personalizations"]
    assert p["to"] == [{"email": "ada@example.org"}]
    assert p["custom_args"] == {"issue": "_confirm", "subscriber_id": "1"}
    assert "List-Unsubscribe" not in p.get("headers", {})
    link = p["substitutions"][UNSUBSCRIBE_PLACEHOLDER]
    assert link.startswith(f"{BASE}/confirm/c1.")
    assert body["subject"] == "Confirm your subscription to AI Research Highlights"
    assert all(UNSUBSCRIBE_PLACEHOLDER in c["value"] for c in body["content"])


def test_the_answer_does_not_wait_for_a_slow_provider(workspace: Path, http: httpx.Client) -> None:
    """An SMTP server that accepts the connection and then says nothing: the answer
    comes while the email is still stuck there."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    got_one = threading.Event()

    def accept() -> None:
        conn, _ = listener.accept()
        accepted.append(conn)
        got_one.set()

    threading.Thread(target=accept, daemon=True).start()
    enable_signup(workspace)
    configure(
        workspace,
        delivery={
            "backend": "smtp",
            "max_attempts": 1,
            "smtp": {"host": "127.0.0.1", "port": listener.getsockname()[1], "security": "none", "timeout": 30},
        },
    )
    try:
        with serve_workspace(workspace) as site:
            r = http.post(f"{site.url}/subscribe", json={"email": "ada@example.org"})
            assert (r.status_code, r.json()) == (200, {"status": "pending"})
            # The answer came, and the email is on its way to a server that has not said a word.
            assert got_one.wait(20)
            accepted[0].close()  # the provider hangs up: the failure is logged, nothing is stuck
    finally:
        listener.close()


# ---------------------------------------------------------------- the welcome issue


def test_welcome_sends_the_latest_issue_once_through_the_ledger(workspace: Path, http: httpx.Client) -> None:
    from highlightsmail.sending.dispatch import send

    enable_signup(workspace)
    with Store.open(load_workspace(workspace)) as store:
        early = store.add("early@example.org")[0].id
    mark_sent(workspace, "2024-w02")  # the dispatch began with `early`, who has not got it yet
    with serve_workspace(workspace) as site:
        path = join(site, http, "ada@example.org")
        assert "latest issue is on its way" in http.post(site.url + path).text
        issue_dir = workspace / "outbox" / "2024-w02"
        (welcome,) = wait_for_mails(issue_dir, 1)
        assert http.post(site.url + path).status_code == 200  # again: nothing more
        with site.store() as store:
            ada = store.find("ada@example.org")
    assert ada is not None
    msg = read_mail(welcome)
    assert str(msg["To"]) == "ada@example.org"
    assert msg["List-Unsubscribe"].startswith(f"<{BASE}/u/u")
    with Store.open(load_workspace(workspace)) as store:
        assert store.delivery_counts("2024-w02") == {"pending": 1, "sent": 1}
    # Resuming the dispatch sends to `early` only.
    ws = load_workspace(workspace)
    send(ws, ws.issue_path("2024-w02"), skip_test_check=True)
    to = sorted(str(read_mail(p)["To"]) for p in mails(issue_dir))
    assert to == ["ada@example.org", "early@example.org"]
    with Store.open(ws) as store:
        assert store.delivery_counts("2024-w02") == {"sent": 2}
        assert store.dispatch_info("2024-w02").finished is not None
    del early


def test_no_welcome_when_turned_off_or_nothing_was_sent(workspace: Path, http: httpx.Client) -> None:
    enable_signup(workspace, welcome="none")
    mark_sent(workspace, "2024-w02")
    with serve_workspace(workspace) as site:
        path = join(site, http, "ada@example.org")
        r = http.post(site.url + path)
        assert r.status_code == 200 and "on its way" not in r.text
    assert mails(workspace / "outbox" / "2024-w02") == []


def test_no_second_welcome_for_someone_who_had_the_issue(workspace: Path, http: httpx.Client) -> None:
    from highlightsmail.sending.dispatch import send

    enable_signup(workspace)
    ws = load_workspace(workspace)
    with Store.open(ws) as store:
        sid = store.add("ada@example.org")[0].id
    send(ws, ws.issue_path("2024-w02"), skip_test_check=True)
    with Store.open(ws) as store:
        store.set_status(sid, "unsubscribed", "web")
    with serve_workspace(workspace) as site:
        time.sleep(1.1)  # the new link is made after leaving (times are kept to the second)
        path = join(site, http, "ada@example.org")
        r = http.post(site.url + path)
        assert r.status_code == 200 and "You are subscribed" in r.text and "on its way" not in r.text
        assert site.status(sid) == "active"
    assert len(mails(workspace / "outbox" / "2024-w02")) == 1


def test_a_welcome_that_cannot_be_sent_is_failed_in_the_ledger(
    workspace: Path, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    enable_signup(workspace)
    mark_sent(workspace, "2024-w02")
    (workspace / "issues" / "2024-w02.yaml").rename(workspace / "2024-w02.yaml")  # the file went away
    with serve_workspace(workspace) as site, caplog.at_level(logging.ERROR, logger="highlightsmail.signup"):
        path = join(site, http, "ada@example.org")
        assert http.post(site.url + path).status_code == 200
    assert "welcome issue 2024-w02 not sent to subscriber #1" in caplog.text
    with Store.open(load_workspace(workspace)) as store:
        (row,) = store.iter_deliveries("2024-w02", ["failed"])
    assert row.subscriber_id == 1 and "no issue file" in (row.last_error or "")


def test_confirmation_links_are_cut_in_the_logs() -> None:
    from highlightsmail.web.redaction import redact

    token = "c1z.sbjqzk.XOF33IDm_Vh-4hC5CKDtmg"
    assert redact(f"/confirm/{token}") == "/confirm/c1z.sbjqzk.[redacted]"


def test_pending_subscribers_are_never_sent_an_issue(workspace: Path) -> None:
    from highlightsmail.sending.dispatch import send

    ws = load_workspace(workspace)
    with Store.open(ws) as store:
        store.add("ada@example.org")
        store.add("pat@example.org", status="pending", source="form")
    send(ws, ws.issue_path("2024-w02"), skip_test_check=True)
    assert [str(read_mail(p)["To"]) for p in mails(workspace / "outbox" / "2024-w02")] == ["ada@example.org"]
    out = CliRunner().invoke(main, ["subscribers", "list", "--status", "pending", "--format", "csv"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[1].startswith("pat@example.org,,pending,")
    assert len(out.output.splitlines()) == 2


# ---------------------------------------------------------------- the form elsewhere


def test_highlights_form_prints_the_archive_form_posting_to_base(workspace: Path) -> None:
    enable_signup(workspace)
    out = CliRunner().invoke(main, ["form"])
    assert out.exit_code == 0, out.output
    (form,) = forms_of(out.stdout)
    assert (form["action"], form["method"]) == (f"{BASE}/subscribe", "post")
    assert set(form["fields"]) == {"email", "name", "website"}
    assert 'style="position: absolute; left: -9999px' in out.stdout  # the trap hides on any site
    assert out.stderr == ""
    # The archive's pages show the very same form.
    configure(workspace, archive={"enabled": True, "path": "/archive"})
    mark_sent(workspace, "2024-w02")
    site = workspace / "site"
    assert CliRunner().invoke(main, ["publish", "--out", str(site)]).exit_code == 0
    assert out.stdout.strip() in (site / "index.html").read_text(encoding="utf-8")


def test_highlights_form_says_when_signup_is_off(workspace: Path) -> None:
    out = CliRunner().invoke(main, ["form"])
    assert out.exit_code == 0
    assert "signup.enabled is false" in out.stderr
    assert forms_of(out.stdout)[0]["action"] == f"{BASE}/subscribe"


# ---------------------------------------------------------------- export and import


def test_export_adds_source_and_consent_and_imports_back(signup_site: Site, http: httpx.Client, tmp_path: Path) -> None:
    signup_site.add("cli@example.org")
    path = join(signup_site, http, "ada@example.org", name="Ada")
    http.post(signup_site.url + path)
    join(signup_site, http, "pat@example.org", n=1)
    runner = CliRunner()
    out = runner.invoke(main, ["subscribers", "export"])
    assert out.exit_code == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "email,name,status,created,updated,source,consented"
    rows = {line.split(",")[0]: line.split(",") for line in lines[1:]}
    assert rows["cli@example.org"][5:] == ["", ""]  # an editor added it: no consent recorded
    assert rows["ada@example.org"][2] == "active" and rows["ada@example.org"][5] == "form"
    assert rows["ada@example.org"][6].endswith("Z")
    assert rows["pat@example.org"][2] == "pending" and rows["pat@example.org"][5:] == ["", ""]

    # Into a new workspace: the consent comes along; exporting there gives the same file.
    csv_file = tmp_path / "export.csv"
    csv_file.write_text(out.stdout, encoding="utf-8")
    other = tmp_path / "other"
    assert runner.invoke(main, ["init", str(other)]).exit_code == 0
    imported = runner.invoke(main, ["--workspace", str(other), "subscribers", "import", str(csv_file)])
    assert imported.exit_code == 0, imported.stderr
    again = runner.invoke(main, ["--workspace", str(other), "subscribers", "export"]).stdout.splitlines()
    assert again == lines
    with Store.open(load_workspace(other)) as store:
        ada = store.find("ada@example.org")
        assert ada is not None and [c.source for c in store.consents(ada.id)] == ["form"]
    # Into the same workspace: nothing changes.
    same = runner.invoke(main, ["subscribers", "import", str(csv_file)])
    assert "0 new, 0 updated, 3 unchanged" in same.stdout


def test_import_takes_files_with_or_without_the_new_columns(workspace: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    old.write_text("email,name,status,created,updated\nada@example.org,Ada,active,2024-01-01T00:00:00Z,\n")
    new = tmp_path / "new.csv"
    new.write_text(
        "email,name,status,created,updated,source,consented\n"
        "bob@example.org,,active,,,landing-page,2023-05-01T10:00:00Z\n"
        "cy@example.org,,active,,,,\n"
        "dee@example.org,,active,,,x,not a time\n"
    )
    runner = CliRunner()
    assert runner.invoke(main, ["subscribers", "import", str(old)]).exit_code == 0
    out = runner.invoke(main, ["subscribers", "import", str(new)])
    assert out.exit_code == 0
    assert "new.csv:4: consented 'not a time' is not an ISO 8601 time" in out.stderr
    with Store.open(load_workspace(workspace)) as store:
        bob = store.find("bob@example.org")
        cy = store.find("cy@example.org")
        assert bob and cy and store.find("dee@example.org") is None
        assert [(c.source, c.at) for c in store.consents(bob.id)] == [("landing-page", "2023-05-01T10:00:00Z")]
        assert store.consents(cy.id) == []


def test_a_welcome_counts_toward_the_sending_limits_but_is_not_held(workspace: Path, http: httpx.Client) -> None:
    """Each welcome goes out at once even with the window full (one message, to a reader
    who has just confirmed), and is counted in it: the send after them waits."""
    import yaml

    from highlightsmail.sending.dispatch import send

    enable_signup(workspace)
    delivery = yaml.safe_load((workspace / "highlights.yaml").read_text(encoding="utf-8"))["delivery"]
    configure(workspace, delivery={**delivery, "rate_limit": "1/hour"})
    ws = load_workspace(workspace)
    with Store.open(ws) as store:
        store.add("early@example.org")
    mark_sent(workspace, "2024-w02")  # the dispatch began with `early`, who has not got it yet
    issue_dir = workspace / "outbox" / "2024-w02"
    with serve_workspace(workspace) as site:
        for n, address in enumerate(["ada@example.org", "grace@example.org"]):
            path = join(site, http, address, n)
            assert "latest issue is on its way" in http.post(site.url + path).text
            wait_for_mails(issue_dir, n + 1)  # the second too, with the window full
    with Store.open(ws) as store:
        assert store.sent_since("2000-01-01T00:00:00Z") == 2  # the confirmations are not counted
    resumed = send(ws, ws.issue_path("2024-w02"), skip_test_check=True)
    assert resumed.paused_until is not None
    assert resumed.summary is not None and (resumed.summary["sent"], resumed.summary["pending"]) == (2, 1)
    assert sorted(str(read_mail(p)["To"]) for p in mails(issue_dir)) == ["ada@example.org", "grace@example.org"]
