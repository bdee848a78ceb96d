"""`POST /webhooks/sendgrid` over real HTTP (uvicorn on loopback, a real SQLite file or a
PostgreSQL database: each test runs on both), with batches signed as SendGrid signs them
by a key pair made for each test.

What must hold: every event type changes exactly the rows it should; the same batch
again, in another order, duplicated, or 1,000 events in one POST change nothing more;
anything not signed by the configured key, stale, or with no key configured is 403 and
records nothing; soft bounces count across issues in a row and a delivery resets them.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.errors import HighlightsError
from highlightsmail.store import Store
from highlightsmail.urls import SENDGRID_WEBHOOK as PATH
from highlightsmail.web.application import create_app
from highlightsmail.web.webhooks import MAX_BODY_BYTES
from support.db import raw_connection, target_of
from support.events import add_readers, dump, event_facts, sent_to_everyone, statuses
from support.sendgrid import SendGridServer
from support.sendgrid_events import SIGNATURE_HEADER, TIMESTAMP_HEADER, EventSender
from support.webapp import serve_workspace

ISSUE = "2024-w02"
API_KEY = "SG.webhook-tests"
pytestmark = pytest.mark.usefixtures("engine")


@pytest.fixture
def sender(monkeypatch: pytest.MonkeyPatch) -> EventSender:
    s = EventSender()
    monkeypatch.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", s.public_key)
    return s


def db_of(root: Path) -> Path | str:
    return target_of(root)


def configure(root: Path, **sections: Any) -> None:
    path = root / "highlights.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in sections.items():
        data["delivery"].setdefault(key, {}).update(value)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def readers(root: Path, n: int, issues: tuple[str, ...] = (ISSUE,)) -> list[int]:
    with Store(db_of(root)) as store:
        ids = add_readers(store, n)
        for issue in issues:
            sent_to_everyone(store, issue)
    return ids


def email(i: int) -> str:
    return f"reader{i}@example.org"


# ------------------------------------------------------------------ end to end


def test_events_for_mail_sent_through_sendgrid_change_exactly_the_intended_rows(
    workspace: Path, sender: EventSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real send through the local SendGrid server, then SendGrid's events for what it
    accepted (custom args and all): one event type per reader."""
    plan = {
        1: ("delivered", {}, "active"),
        2: ("open", {}, "active"),
        3: ("click", {"url": "https://arxiv.org/abs/2401.04658"}, "active"),
        4: ("bounce", {}, "bounced"),
        5: ("blocked", {}, "active"),  # soft: one issue is not enough
        6: ("dropped", {"reason": "Bounced Address"}, "bounced"),
        7: ("dropped", {"reason": "Invalid"}, "bounced"),
        8: ("spamreport", {}, "complained"),
        9: ("dropped", {"reason": "Spam Reporting Address"}, "complained"),
        10: ("unsubscribe", {}, "unsubscribed"),
        11: ("group_unsubscribe", {}, "unsubscribed"),
        12: ("dropped", {"reason": "Unsubscribed Address"}, "unsubscribed"),
        13: ("deferred", {}, "active"),  # soft only if a drop follows
        14: ("processed", {}, "active"),  # not kept
        15: ("dropped", {"reason": "Invalid SMTPAPI header"}, "active"),  # says nothing of the address
    }
    with Store(db_of(workspace)) as store:
        add_readers(store, len(plan) + 1)
    server = SendGridServer(api_key=API_KEY)
    with server:
        monkeypatch.setenv("SENDGRID_API_KEY", API_KEY)
        monkeypatch.setenv("HIGHLIGHTS_SENDGRID_HOST", server.url)
        configure(workspace, sendgrid={"batch_size": 5})
        text = (workspace / "highlights.yaml").read_text(encoding="utf-8")
        (workspace / "highlights.yaml").write_text(text.replace("backend: outbox", "backend: sendgrid"), "utf-8")
        runner = CliRunner()
        assert runner.invoke(main, ["send", ISSUE, "--test"]).exit_code == 0
        result = runner.invoke(main, ["send", ISSUE, "--yes"])
        assert result.exit_code == 0, result.output
        assert server.rejected == []
        accepted = list(server.accepted)

    by_email: dict[str, dict[str, Any]] = {}
    test_events = []
    for request in accepted:
        for kind in ("processed", "delivered"):
            for event in sender.for_request(request, kind):
                if event.get("test") == "true":
                    test_events.append(event)  # the editors' test send: not ours to count
        for event in sender.for_request(request, "delivered"):
            by_email[event["email"]] = event
    events = []
    for i, (kind, fields, _status) in plan.items():
        template = by_email[email(i)]
        args = {k: template[k] for k in ("issue", "subscriber_id")}
        events.append(sender.event(kind, email=email(i), **args, **fields))
    sid_16 = by_email[email(16)]["subscriber_id"]
    strangers = [
        sender.event("bounce", email="someone@example.net", issue=ISSUE, subscriber_id=99999),
        sender.event("bounce", email=email(16), issue="1999-w01", subscriber_id=sid_16),  # no such issue
        sender.event("bounce", email="other@example.net", issue=ISSUE, subscriber_id=sid_16),  # not their address
        sender.event("bounce", email=email(16)),  # no custom args: another app's mail
        {"event": "bounce", "email": email(16)},  # no sg_event_id
        sender.event("bounce", email=email(16), issue=ISSUE, subscriber_id="9" * 30),  # past SQLite's integers
        sender.event("bounce", email=email(16), issue=ISSUE, subscriber_id=sid_16, timestamp="soon"),
        "not an event",
    ]
    before = dump(db_of(workspace))
    with serve_workspace(workspace) as site:
        response = sender.post(site.url + PATH, events + test_events + strangers)
    assert response.status_code == 200, response.text
    counts = response.json()
    assert counts["recorded"] == len(plan) - 1  # all but `processed`
    assert counts["status_changes"] == 8
    assert counts["ignored"] == 1 + len(test_events) + len(strangers)

    after = dump(db_of(workspace))
    for table in ("ledger_recipients", "ledger_batches", "ledger_exceptions"):
        assert after[table] == before[table]
    assert statuses(db_of(workspace)) == {
        **{email(i): status for i, (_k, _f, status) in plan.items()},
        email(16): "active",
    }
    sid = {i: int(by_email[email(i)]["subscriber_id"]) for i in plan}
    # Exactly one history row per status change, from the webhook, with SendGrid's reason.
    new_history = after["events"][len(before["events"]) :]
    assert sorted(row[1] for row in new_history) == sorted(sid[i] for i in (4, 6, 7, 8, 9, 10, 11, 12))
    assert {row[5] for row in new_history} == {"sendgrid-webhook"}
    kinds = {(row[3], row[4]) for row in after["delivery_events"]}
    assert kinds == {
        (sid[1], "delivered"),
        (sid[2], "open"),
        (sid[3], "click"),
        (sid[4], "bounce"),
        (sid[5], "blocked"),
        (sid[6], "dropped"),
        (sid[7], "dropped"),
        (sid[8], "spamreport"),
        (sid[9], "dropped"),
        (sid[10], "unsubscribe"),
        (sid[11], "group_unsubscribe"),
        (sid[12], "dropped"),
        (sid[13], "deferred"),
        (sid[15], "dropped"),
    }
    clicks = [row for row in after["delivery_events"] if row[4] == "click"]
    assert clicks[0][6] == "https://arxiv.org/abs/2401.04658"
    reasons = {row[1]: row[6] for row in new_history}
    assert reasons[sid[6]] == "Bounced Address"
    assert "5.1.1" in reasons[sid[4]]


# ------------------------------------------------------------------ idempotence


def mixed_events(sender: EventSender, ids: list[int], issue: str = ISSUE) -> list[dict[str, Any]]:
    kinds = ["delivered", "open", "click", "bounce", "spamreport", "unsubscribe", "blocked", "deferred", "dropped"]
    out = []
    for n, sid in enumerate(ids):
        i = n + 1
        out.append(sender.event("delivered", email=email(i), issue=issue, subscriber_id=sid))
        kind = kinds[n % len(kinds)]
        if kind != "delivered":
            out.append(sender.event(kind, email=email(i), issue=issue, subscriber_id=sid))
    return out


def test_the_same_batch_again_reordered_or_duplicated_changes_nothing_more(
    workspace: Path, sender: EventSender
) -> None:
    ids = readers(workspace, 30)
    events = mixed_events(sender, ids)
    with serve_workspace(workspace) as site, httpx.Client(timeout=30) as client:
        url = site.url + PATH
        first = sender.post(url, events, client=client)
        assert first.status_code == 200 and first.json()["recorded"] == len(events)
        once = dump(db_of(workspace))
        assert once["events"] != [] and len(once["delivery_events"]) == len(events)
        for again in (events, sender.reordered(events), sender.duplicated(events), events[:7]):
            response = sender.post(url, again, client=client)
            assert response.status_code == 200
            assert response.json()["recorded"] == 0
            assert response.json()["duplicates"] == len(again)
            assert dump(db_of(workspace)) == once


@pytest.mark.sqlite_only  # the twin is a copy of the workspace's folder, database file and all
def test_events_arriving_out_of_order_end_in_the_same_state(
    workspace: Path, sender: EventSender, tmp_path: Path
) -> None:
    """One event per POST, forwards in one workspace and backwards in a copy: the same
    statuses and the same recorded events."""
    ids = readers(workspace, 12)
    events = mixed_events(sender, ids)
    # Conflicting news about one reader: the strongest (complained) must win either way.
    events += [sender.event(k, email=email(1), issue=ISSUE, subscriber_id=ids[0]) for k in ("spamreport", "bounce")]
    twin = tmp_path / "twin"
    shutil.copytree(workspace, twin)
    for root, order in ((workspace, events), (twin, list(reversed(events)))):
        with serve_workspace(root) as site, httpx.Client(timeout=30) as client:
            for event in order:
                assert sender.post(site.url + PATH, [event], client=client).status_code == 200
    assert statuses(db_of(workspace)) == statuses(db_of(twin))
    assert statuses(db_of(workspace))[email(1)] == "complained"
    assert event_facts(db_of(workspace)) == event_facts(db_of(twin))


def test_a_thousand_events_in_one_post(workspace: Path, sender: EventSender) -> None:
    ids = readers(workspace, 600)
    events = mixed_events(sender, ids)[:1000]
    assert len(events) == 1000
    with serve_workspace(workspace) as site:
        response = sender.post(site.url + PATH, events)
        assert response.status_code == 200
        assert response.json()["recorded"] == 1000
        once = dump(db_of(workspace))
        assert len(once["delivery_events"]) == 1000
        again = sender.post(site.url + PATH, sender.reordered(events))
        assert again.status_code == 200 and again.json()["duplicates"] == 1000
    assert dump(db_of(workspace)) == once
    bounced = [s for s in statuses(db_of(workspace)).values() if s == "bounced"]
    assert len(bounced) == sum(
        1 for e in events if e.get("type") == "bounce" or (e["event"] == "dropped" and e["reason"] == "Bounced Address")
    )


@pytest.mark.parametrize("accept", ["matched", "any"])
def test_a_signed_event_for_a_message_we_never_sent_changes_nothing(
    workspace: Path, sender: EventSender, accept: str
) -> None:
    """An event counts only for a message of ours: its custom args name an issue and a
    subscriber, and the ledger has that issue gone to them. delivery.bounces.accept
    does not loosen this (it is about bounce mail, which names no message by itself)."""
    configure(workspace, bounces={"accept": accept})
    with Store(db_of(workspace)) as store:
        ids = add_readers(store, 3)
        sent_to_everyone(store, ISSUE, leave=[ids[2]])  # reader 3's message failed: it never went out
        (late,) = add_readers(store, 1, start=4)  # joined after the dispatch
    pairs = [
        (email(3), ISSUE, ids[2]),
        (email(4), ISSUE, late),
        (email(1), "2024-w01", ids[0]),  # an issue never dispatched
        (email(1), "2024-w03", ids[0]),
    ]
    events = [
        sender.event(kind, email=address, issue=issue, subscriber_id=sid, **extra)
        for address, issue, sid in pairs
        for kind, extra in (
            ("bounce", {}),
            ("spamreport", {}),
            ("unsubscribe", {}),
            ("dropped", {"reason": "Bounced Address"}),
        )
    ]
    before = dump(db_of(workspace))
    with serve_workspace(workspace) as site:
        response = sender.post(site.url + PATH, events)
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == 0 and response.json()["ignored"] == len(events)
    assert dump(db_of(workspace)) == before
    assert set(statuses(db_of(workspace)).values()) == {"active"}


# ------------------------------------------------------------------ refusals


def _refused(site_url: str, sender: EventSender, events: list[dict[str, Any]], how: str) -> httpx.Response:
    body = sender.encode(events)
    headers = sender.headers(body)
    if how == "flipped byte":
        body = body[:40] + bytes([body[40] ^ 0x01]) + body[41:]
    elif how == "signature from another key":
        headers[SIGNATURE_HEADER] = EventSender().sign(body, headers[TIMESTAMP_HEADER])
    elif how == "6 minutes old":
        headers = sender.headers(body, timestamp=int(time.time()) - 360)
    elif how == "6 minutes ahead":
        headers = sender.headers(body, timestamp=int(time.time()) + 360)
    elif how == "no signature header":
        del headers[SIGNATURE_HEADER]
    elif how == "no timestamp header":
        del headers[TIMESTAMP_HEADER]
    elif how == "signature not base64":
        headers[SIGNATURE_HEADER] = "%%%not-base64%%%"
    elif how == "signature of another timestamp":
        headers[TIMESTAMP_HEADER] = str(int(headers[TIMESTAMP_HEADER]) - 1)
    return httpx.post(site_url + PATH, content=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "how",
    [
        "flipped byte",
        "signature from another key",
        "6 minutes old",
        "6 minutes ahead",
        "no signature header",
        "no timestamp header",
        "signature not base64",
        "signature of another timestamp",
    ],
)
def test_a_batch_not_signed_by_the_key_or_stale_is_403_and_records_nothing(
    workspace: Path, sender: EventSender, how: str
) -> None:
    ids = readers(workspace, 5)
    events = mixed_events(sender, ids)
    before = dump(db_of(workspace))
    with serve_workspace(workspace) as site:
        assert _refused(site.url, sender, events, how).status_code == 403
        assert dump(db_of(workspace)) == before
        # The same events, properly signed, are taken: the refusal was the signature's doing.
        assert sender.post(site.url + PATH, events).status_code == 200
    assert dump(db_of(workspace)) != before


def test_a_wrong_key_configured_is_403(workspace: Path, sender: EventSender, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = readers(workspace, 3)
    monkeypatch.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", EventSender().public_key)
    before = dump(db_of(workspace))
    with serve_workspace(workspace) as site:
        assert sender.post(site.url + PATH, mixed_events(sender, ids)).status_code == 403
    assert dump(db_of(workspace)) == before


def test_no_key_configured_is_403(workspace: Path) -> None:
    sender = EventSender()
    ids = readers(workspace, 3)
    before = dump(db_of(workspace))
    with serve_workspace(workspace) as site:
        assert sender.post(site.url + PATH, mixed_events(sender, ids)).status_code == 403
    assert dump(db_of(workspace)) == before


def test_the_environment_key_overrides_the_setting_and_a_pem_block_is_accepted(
    workspace: Path, sender: EventSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = readers(workspace, 3)
    configure(workspace, sendgrid={"webhook_public_key": EventSender().public_key})
    with serve_workspace(workspace) as site:
        assert sender.post(site.url + PATH, mixed_events(sender, ids[:1])).status_code == 200
    monkeypatch.delenv("SENDGRID_WEBHOOK_PUBLIC_KEY")
    with serve_workspace(workspace) as site:
        assert sender.post(site.url + PATH, mixed_events(sender, ids[1:2])).status_code == 403
    pem = "-----BEGIN PUBLIC KEY-----\n" + sender.public_key + "\n-----END PUBLIC KEY-----\n"
    configure(workspace, sendgrid={"webhook_public_key": pem.replace("\n", " ").strip()})
    monkeypatch.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", pem)
    with serve_workspace(workspace) as site:
        assert sender.post(site.url + PATH, mixed_events(sender, ids[2:])).status_code == 200


def test_a_key_that_is_not_a_key_stops_the_app_with_a_clear_error(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", "bm90IGEga2V5")
    with pytest.raises(HighlightsError, match="SENDGRID_WEBHOOK_PUBLIC_KEY: not a verification key"):
        create_app(load_workspace(workspace))


def test_a_body_over_the_cap_is_413_and_records_nothing(workspace: Path, sender: EventSender) -> None:
    ids = readers(workspace, 2)
    events = mixed_events(sender, ids)
    events[0]["padding"] = "x" * MAX_BODY_BYTES
    before = dump(db_of(workspace))
    with serve_workspace(workspace) as site:
        assert sender.post(site.url + PATH, events).status_code == 413
    assert dump(db_of(workspace)) == before


def test_a_signed_body_that_is_not_a_list_is_400(workspace: Path, sender: EventSender) -> None:
    readers(workspace, 1)
    with serve_workspace(workspace) as site:
        body = b'{"event": "delivered"}'
        response = httpx.post(site.url + PATH, content=body, headers=sender.headers(body), timeout=30)
    assert response.status_code == 400


def test_a_signed_body_nested_beyond_the_json_parser_is_400_not_500(workspace: Path, sender: EventSender) -> None:
    """The parser's RecursionError was a 500 with a traceback in the log, which SendGrid
    retries for as long as it retries anything."""
    readers(workspace, 1)
    before = dump(db_of(workspace))
    with serve_workspace(workspace) as site:
        body = b"[" * 100_000 + b"]" * 100_000
        response = httpx.post(site.url + PATH, content=body, headers=sender.headers(body), timeout=30)
    assert response.status_code == 400
    assert dump(db_of(workspace)) == before


# ------------------------------------------------------------------ soft bounces


WEEKS = ("2024-w01", "2024-w02", "2024-w03", "2024-w04")


def soft(sender: EventSender, issue: str, sid: int, how: str) -> list[dict[str, Any]]:
    if how == "blocked":
        return [sender.event("blocked", email=email(1), issue=issue, subscriber_id=sid)]
    if how == "deferred then dropped":
        return [
            sender.event("deferred", email=email(1), issue=issue, subscriber_id=sid),
            sender.event("dropped", email=email(1), issue=issue, subscriber_id=sid, reason="Deferred too long"),
        ]
    if how == "deferred then delivered":
        return [
            sender.event("deferred", email=email(1), issue=issue, subscriber_id=sid),
            sender.event("delivered", email=email(1), issue=issue, subscriber_id=sid),
        ]
    if how == "delivered":
        return [sender.event("delivered", email=email(1), issue=issue, subscriber_id=sid)]
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("story", "bounced"),
    [
        (("blocked", "deferred then dropped", "blocked"), True),
        (("blocked", "delivered", "blocked", "blocked"), False),  # a delivery resets the count
        (("blocked", "deferred then delivered", "blocked", "blocked"), False),  # a deferral alone is no bounce
        (("delivered", "blocked", "blocked", "deferred then dropped"), True),
    ],
)
def test_soft_bounces_in_soft_limit_issues_in_a_row_make_the_address_bounced(
    workspace: Path, sender: EventSender, story: tuple[str, ...], bounced: bool
) -> None:
    ids = readers(workspace, 2, issues=WEEKS[: len(story)])
    events = [e for issue, how in zip(WEEKS, story, strict=False) for e in soft(sender, issue, ids[0], how)]
    with serve_workspace(workspace) as site:
        # Newest issue first: the count must not depend on the order events arrive in.
        for issue in reversed(WEEKS):
            batch = [e for e in events if e["issue"] == issue]
            if batch:
                assert sender.post(site.url + PATH, batch).status_code == 200
    assert statuses(db_of(workspace))[email(1)] == ("bounced" if bounced else "active")
    assert statuses(db_of(workspace))[email(2)] == "active"
    if bounced:
        with raw_connection(db_of(workspace)) as conn:
            detail = conn.execute("SELECT detail FROM events WHERE to_status = 'bounced'").fetchone()[0]
        assert "soft bounces in 3 issues in a row" in detail


def test_soft_limit_is_a_setting(workspace: Path, sender: EventSender) -> None:
    configure(workspace, bounces={"soft_limit": 2})
    ids = readers(workspace, 1, issues=WEEKS[:2])
    events = soft(sender, WEEKS[0], ids[0], "blocked") + soft(sender, WEEKS[1], ids[0], "blocked")
    with serve_workspace(workspace) as site:
        assert sender.post(site.url + PATH, events).status_code == 200
    assert statuses(db_of(workspace))[email(1)] == "bounced"


# ------------------------------------------------------------------ the schema


@pytest.mark.sqlite_only  # no PostgreSQL database is older than delivery events
def test_a_database_from_before_delivery_events_is_upgraded_with_its_history(tmp_path: Path) -> None:
    """The events table is rebuilt to take the new sources; its rows stay."""
    from highlightsmail.store.migrator import MIGRATIONS

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for statement in MIGRATIONS["sqlite"][0]:
        conn.execute(statement)  # type: ignore[arg-type]
    conn.execute(
        "INSERT INTO subscribers (email, name, status, created, updated)"
        " VALUES ('ada@example.org', 'Ada', 'unsubscribed', '2024-01-01T00:00:00Z', '2024-01-02T00:00:00Z')"
    )
    conn.execute(
        "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail) VALUES"
        " (1, '2024-01-01T00:00:00Z', NULL, 'active', 'import', 'list.csv:2'),"
        " (1, '2024-01-02T00:00:00Z', 'active', 'unsubscribed', 'one-click', NULL)"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with Store(db, upgrade=True) as store:
        history = store.events(1)
        assert [(e.to_status, e.source, e.detail) for e in history] == [
            ("active", "import", "list.csv:2"),
            ("unsubscribed", "one-click", None),
        ]
        assert store.set_status(1, "bounced", source="bounce-mail")
        assert store.events(1)[-1].source == "bounce-mail"
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO events (subscriber_id, at, to_status, source) VALUES (1, '2024-01-03T00:00:00Z', 'active', 'x')"
        )
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'events_subscriber'").fetchone()
    conn.close()
