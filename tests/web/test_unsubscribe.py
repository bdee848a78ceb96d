"""The unsubscribe routes over real HTTP (uvicorn on a loopback port, a real SQLite file
or a PostgreSQL database; each test runs on both, but those about SQLite's file itself).

RFC 8058 one-click (urlencoded and multipart, no cookies, repeated), the confirmation page
flow, resubscribing, test-send links, 400 for bad links, 1,000+ mutated tokens that must
change nothing, 200 concurrent unsubscribes while an import runs, and the List-Unsubscribe
header of a built message.
"""

from __future__ import annotations

import email
import email.policy
import random
import re
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import httpx
import pytest

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.mail.message import Recipient, build_message, recipient_links
from highlightsmail.store import ImportRow, Store
from highlightsmail.tokens import Signer
from support.webapp import Site, assert_secure_headers, forms_of, serve_workspace

ONE_CLICK = "List-Unsubscribe=One-Click"
URLENCODED = {"Content-Type": "application/x-www-form-urlencoded"}
NOT_VALID = "This link is not valid"
pytestmark = pytest.mark.usefixtures("engine")


# ---------------------------------------------------------------- the page and its forms


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


@pytest.mark.sqlite_only
def test_a_link_to_a_spelling_merged_by_an_upgrade_acts_on_the_one_subscriber(
    workspace: Path, http: httpx.Client
) -> None:
    """Mail sent before the upgrade carries links to both rows of Äda/äda: both must act
    on the one subscriber they became, or one of them would resubscribe a second copy."""
    from highlightsmail.store import MergedAddressesWarning
    from highlightsmail.store.migrator import MIGRATIONS

    conn = sqlite3.connect(load_workspace(workspace).db_path)
    for statement in MIGRATIONS["sqlite"][0]:
        conn.execute(statement)  # type: ignore[arg-type]
    conn.executemany(
        "INSERT INTO subscribers (id, email, status, created, updated) VALUES (?, ?, 'active', 't', 't')",
        [(1, "Äda@example.org"), (2, "äda@example.org")],
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with pytest.warns(MergedAddressesWarning):
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
