"""The preference page, /p/TOKEN, over real HTTP on both engines: GET changes nothing;
its forms save topics, the name and a pause, unsubscribe from everything, download
the reader's data and erase them (after a confirmation step); forged, foreign and
expired tokens change nothing on any action; the one-click unsubscribe still leaves
the whole newsletter."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urljoin

import httpx
import pytest

from highlightsmail.store import Store
from highlightsmail.tokens import Signer
from highlightsmail.web.preferences import LINK_VALID_DAYS
from support.webapp import Site, assert_secure_headers, forms_of, serve_workspace
from support.workspace import configure

pytestmark = pytest.mark.usefixtures("engine")
NOT_VALID = "This link is not valid"
TOPICS = [
    {"id": "llm", "name": "Language models", "description": "LLM papers", "default": True},
    {"id": "vision", "name": "Vision", "default": False},
    {"id": "rl", "name": "Reinforcement learning"},
]
ACTIONS = ("save", "unsubscribe", "download", "erase", "erase-confirmed")


@pytest.fixture
def site(workspace: Path) -> Iterator[Site]:
    configure(workspace, topics=TOPICS)
    with serve_workspace(workspace) as s:
        yield s


def link(site: Site, subscriber_id: int, made: float | None = None) -> str:
    return f"{site.url}/p/{site.signer.make_preferences(subscriber_id, int(time.time() if made is None else made))}"


def reader(site: Site, email: str = "adalovelace@example.org", topics: tuple[str, ...] = ("llm",)) -> int:
    sid = site.add(email, "Ada")
    with site.store() as store:
        store.set_topics(sid, topics)
    return sid


def held(site: Site, sid: int) -> tuple:
    """What the page may change: the subscriber row, their topics and pause."""
    with site.store() as store:
        return (store.get(sid), store.topics(sid), store.paused_until(sid))


def test_get_shows_the_page_and_changes_nothing(site: Site, http: httpx.Client) -> None:
    sid = reader(site)
    before, dump = held(site, sid), site.dump()
    url = link(site, sid)
    for _ in range(3):  # scanners fetch links, some more than once
        r = http.get(url)
        assert r.status_code == 200
    assert held(site, sid) == before and site.dump() == dump
    assert_secure_headers(r)
    assert "ad***@example.org" in r.text and "adalovelace" not in r.text
    assert "<script" not in r.text.lower()
    # One checkbox per topic, its value the id, checked where the reader is in it.
    boxes = re.findall(r'<input type="checkbox" id="topic-(\w+)" name="topic" value="(\w+)"( checked)?>', r.text)
    assert boxes == [("llm", "llm", " checked"), ("vision", "vision", ""), ("rl", "rl", "")]
    actions = [f["fields"]["action"] for f in forms_of(r.text)]
    assert actions == ["save", "unsubscribe", "download", "erase"]
    assert all(urljoin(url, f["action"]) == url for f in forms_of(r.text))


def test_save_changes_topics_name_and_pause(site: Site, http: httpx.Client) -> None:
    sid, other = reader(site), reader(site, "grace@example.org", ("vision",))
    untouched = held(site, other)
    url = link(site, sid)
    form = [("action", "save"), ("topic", "vision"), ("topic", "rl"), ("topic", "forged"), ("name", "Ada L."),
            ("pause", "4")]  # fmt: skip
    r = http.post(url, content=urlencode(form), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and "Your preferences are saved." in r.text
    sub, topics, paused = held(site, sid)
    assert topics == ["rl", "vision"] and sub is not None and sub.name == "Ada L."
    assert paused is not None
    until = datetime.fromisoformat(paused)
    assert abs(until - (datetime.now(UTC) + timedelta(weeks=4))) < timedelta(minutes=5)
    assert held(site, other) == untouched
    # The page shows the pause and can end it; no box ticked: in no topic.
    assert "Keep my pause until" in r.text
    r = http.post(url, data={"action": "save", "pause": "none", "name": "Ada L."})
    assert r.status_code == 200
    _sub, topics, paused = held(site, sid)
    assert topics == [] and paused is None


def test_a_bad_name_is_refused_and_nothing_changes(site: Site, http: httpx.Client) -> None:
    sid = reader(site)
    before = held(site, sid)
    r = http.post(link(site, sid), data={"action": "save", "topic": "rl", "name": "=?utf-8?q?x?="})
    assert r.status_code == 400 and "Name:" in r.text
    assert held(site, sid) == before


def test_unsubscribe_from_everything(site: Site, http: httpx.Client) -> None:
    sid = reader(site)
    r = http.post(link(site, sid), data={"action": "unsubscribe"})
    assert r.status_code == 200 and "unsubscribed from everything" in r.text
    assert site.status(sid) == "unsubscribed"
    assert site.events(sid)[-1] == ("active", "unsubscribed", "web")


def test_one_click_still_leaves_the_whole_newsletter(site: Site, http: httpx.Client) -> None:
    sid = reader(site, topics=("llm", "vision"))
    r = http.post(site.link(sid), content=b"List-Unsubscribe=One-Click",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 200
    assert site.status(sid) == "unsubscribed"
    assert site.events(sid)[-1] == ("active", "unsubscribed", "one-click")


def test_download_my_data(site: Site, http: httpx.Client) -> None:
    sid = reader(site, topics=("llm", "rl"))
    before = site.dump()
    r = http.post(link(site, sid), data={"action": "download"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["content-disposition"] == 'attachment; filename="my-data.json"'
    data = json.loads(r.content)
    assert data["email"] == "adalovelace@example.org" and data["status"] == "active" and data["topics"] == ["llm", "rl"]
    assert {"consents", "deliveries", "events", "delivery_events", "name", "created"} <= data.keys()
    assert data["events"][0]["to_status"] == "active"
    assert site.dump() == before


def test_erase_asks_first_then_erases(site: Site, http: httpx.Client) -> None:
    sid, other = reader(site), reader(site, "grace@example.org")
    url = link(site, sid)
    before = site.dump()
    r = http.post(url, data={"action": "erase"})
    assert r.status_code == 200 and "Erase everything about you?" in r.text
    assert site.dump() == before  # only asked
    [confirm] = forms_of(r.text)
    assert confirm["fields"] == {"action": "erase-confirmed"} and urljoin(url, confirm["action"]) == url
    r = http.post(url, data=confirm["fields"])
    assert r.status_code == 200 and "You are erased" in r.text
    with site.store() as store:
        assert store.get(sid) is None and store.find("adalovelace@example.org") is None
        assert store.get(other) is not None
    # The link names no one now: every route says so.
    for method, data in (("GET", None), ("POST", {"action": "save"}), ("POST", {"action": "erase-confirmed"})):
        r = http.request(method, url, data=data)
        assert r.status_code == 400 and NOT_VALID in r.text
    assert http.get(site.link(sid)).status_code == 400


def _tokens(site: Site, sid: int, other: int) -> dict[str, tuple[str, int]]:
    """Each bad link to /p/ and the status it must answer."""
    good = site.signer.make_preferences(sid, int(time.time()))
    body, mac = good.rsplit(".", 1)
    old = int(time.time()) - (LINK_VALID_DAYS + 1) * 86400
    return {
        "forged": (f"{body}.{mac[:-2]}{'AB' if mac[-2:] != 'AB' else 'CD'}", 400),
        "moved to another subscriber": (f"p{other}.{good.split('.')[1]}.{mac}", 400),  # ids below 10: one digit
        "an unsubscribe token": (site.signer.make(sid), 400),
        "a confirmation token": (site.signer.make_confirm(sid, int(time.time())), 400),
        "signed with another secret": (
            Signer(b"another-secret-0123456789").make_preferences(sid, int(time.time())),
            400,
        ),
        "expired": (site.signer.make_preferences(sid, old), 410),
        "garbage": ("p%2e%2e", 400),
    }


@pytest.mark.parametrize("method_action", [("GET", None), *(("POST", a) for a in ACTIONS)])
def test_forged_foreign_and_expired_tokens_change_nothing(
    site: Site, http: httpx.Client, method_action: tuple[str, str | None]
) -> None:
    method, action = method_action
    sid, other = reader(site), reader(site, "grace@example.org", ("vision",))
    before = site.dump(), held(site, sid), held(site, other)
    for why, (token, status) in _tokens(site, sid, other).items():
        data = None if action is None else {"action": action, "topic": "rl", "name": "X", "pause": "12"}
        r = http.request(method, f"{site.url}/p/{token}", data=data)
        assert r.status_code == status, why
        assert r.headers["content-type"].startswith("text/html"), why
        assert (site.dump(), held(site, sid), held(site, other)) == before, why


def test_a_preference_token_opens_nothing_elsewhere(site: Site, http: httpx.Client) -> None:
    sid = reader(site)
    token = site.signer.make_preferences(sid, int(time.time()))
    before = site.dump()
    for path in (f"/u/{token}", f"/u/{token}/resubscribe", f"/confirm/{token}"):
        for method in ("GET", "POST"):
            r = http.request(method, site.url + path, content=b"List-Unsubscribe=One-Click",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
            assert r.status_code in (400, 404, 405), (path, method, r.status_code)
    assert site.dump() == before and site.status(sid) == "active"


def test_a_test_send_s_link_says_it_was_a_test(site: Site, http: httpx.Client) -> None:
    token = site.signer.make(1, "test")
    before = site.dump()
    for method in ("GET", "POST"):
        r = http.request(method, f"{site.url}/p/{token}", data={"action": "erase-confirmed"})
        assert r.status_code == 200 and "test" in r.text.lower()
    assert site.dump() == before


def test_without_topics_the_page_has_no_topic_boxes(workspace: Path, http: httpx.Client) -> None:
    with serve_workspace(workspace) as site:
        sid = site.add("ada@example.org")
        r = http.get(link(site, sid))
        assert r.status_code == 200 and 'name="topic"' not in r.text
        r = http.post(link(site, sid), data={"action": "save", "name": "Ada", "pause": "1"})
        assert r.status_code == 200
        with Store.open(site.ws) as store:
            assert store.paused_until(sid) is not None and store.topics(sid) == []


def test_erasing_through_the_page_leaves_no_byte_of_the_address(site: Site, http: httpx.Client, engine: str) -> None:
    sid = reader(site)
    for n in range(50):
        site.add(f"reader{n}@example.org", f"Reader {n}")
    url = link(site, sid)
    assert http.get(url).status_code == 200  # the app has read her row
    assert http.post(url, data={"action": "erase-confirmed"}).status_code == 200
    if engine == "sqlite":
        db = site.ws.db_path
        held_bytes = b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    else:
        import psycopg

        assert site.ws.database_url is not None
        with psycopg.connect(site.ws.database_url) as conn:
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            held_bytes = repr([list(conn.execute(f'SELECT * FROM "{t}"')) for t in tables]).encode()
    assert b"adalovelace" not in held_bytes and b"Ada" not in held_bytes.replace(b"Reader", b"")
    assert b"reader7@example.org" in held_bytes
