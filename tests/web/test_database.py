"""The web app's database (web/database.py) when the SQLite file cannot be used: 503 with
Retry-After and one log line per request and per change, /healthz saying so, pages that
still read, and every route group (the unsubscribe pages, the signup form, the SendGrid
webhook) using the file at the path, and using it again once it can be used, without a
restart. PostgreSQL's side is in tests/store/test_postgresql.py."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.store import ImportRow, Joining, Store, UnusableDatabase
from highlightsmail.subscribers.signup import MAILS_PER_ADDRESS
from highlightsmail.urls import SENDGRID_WEBHOOK
from highlightsmail.web import database
from highlightsmail.web.database import AppDatabase
from support.db import damage_pages_holding, read_only
from support.events import sent_to_everyone, statuses
from support.sendgrid_events import EventSender
from support.signup import enable_signup
from support.webapp import Site, assert_secure_headers, serve_workspace, server_text, wait_for_log

pytestmark = pytest.mark.sqlite_only
ISSUE = "2024-w02"
ONE_CLICK = "List-Unsubscribe=One-Click"
URLENCODED = {"Content-Type": "application/x-www-form-urlencoded"}


# ---------------------------------------------------------------- a file that cannot be used


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
    wait_for_log(caplog, "database unavailable: ")
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert all(r.exc_info is None for r in errors)  # one line each, no traceback
    [went] = [r.getMessage() for r in errors if r.getMessage().startswith("database unavailable: ")]
    requests = [r.getMessage() for r in errors if r.getMessage().startswith("cannot answer ")]
    assert len(requests) == 3 and len(errors) == 4
    for message in (went, *requests):
        assert "subscribers/highlights.db: not a usable highlightsmail database" in message
        assert '".recover"' in message
    assert requests[0].startswith(f"cannot answer POST /u/u{ada}.[redacted]: ")
    assert site.signer.make(ada) not in server_text(caplog)  # the log names the subscriber, not a working link
    assert http.get(f"{site.url}/healthz").status_code == 503
    # A database there again (an empty one: the backup is the editor's to restore): one
    # line says so, found by the server itself, without a request.
    site.ws.db_path.unlink()
    wait_for_log(caplog, "database available again: ")
    assert [r.getMessage() for r in caplog.records if "database available again" in r.getMessage()] == [
        "database available again: subscribers/highlights.db"
    ]
    assert http.get(f"{site.url}/healthz").text == "ok"


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


# ---------------------------------------------------------------- every route group


@pytest.fixture
def sender(monkeypatch: pytest.MonkeyPatch) -> EventSender:
    s = EventSender()
    monkeypatch.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", s.public_key)
    return s


@pytest.fixture
def every_group(workspace: Path, sender: EventSender) -> Iterator[Site]:
    """Every route group on: the signup form, and the webhook with its key."""
    enable_signup(workspace)
    with serve_workspace(workspace) as s:
        yield s


def _reader(site: Site) -> int:
    """An active subscriber who was sent the issue (so a webhook event about them counts)."""
    with site.store() as store:
        sub, _ = store.add("ada@example.org")
        sent_to_everyone(store, ISSUE)
    return sub.id


def _unsubscribe(site: Site, http: httpx.Client, sender: EventSender, sid: int) -> httpx.Response:
    return http.post(site.link(sid), content=ONE_CLICK, headers=URLENCODED)


def _subscribe(site: Site, http: httpx.Client, sender: EventSender, sid: int) -> httpx.Response:
    return http.post(f"{site.url}/subscribe", data={"email": "grace@example.org"})


def _webhook(site: Site, http: httpx.Client, sender: EventSender, sid: int) -> httpx.Response:
    event = sender.event("spamreport", email="ada@example.org", issue=ISSUE, subscriber_id=sid)
    return sender.post(site.url + SENDGRID_WEBHOOK, [event], client=http)


#: A write by each route group, and what the list shows once it was made.
WRITES: dict[str, tuple[Callable[[Site, httpx.Client, EventSender, int], httpx.Response], dict[str, str]]] = {
    "unsubscribe": (_unsubscribe, {"ada@example.org": "unsubscribed"}),
    "signup": (_subscribe, {"ada@example.org": "active", "grace@example.org": "pending"}),
    "webhook": (_webhook, {"ada@example.org": "complained"}),
}


@pytest.mark.parametrize("group", WRITES)
def test_each_route_group_writes_once_a_read_only_database_is_writable_again(
    every_group: Site, sender: EventSender, group: str
) -> None:
    """The signup form and the webhook kept the Store they opened first: opened while
    the file was read-only, it stayed so, and they answered 503 until a restart."""
    site = every_group
    write, after = WRITES[group]
    sid = _reader(site)
    with httpx.Client(timeout=30) as http:
        with read_only(site.ws.db_path):
            refused = write(site, http, sender, sid)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert statuses(site.ws.db_path) == {"ada@example.org": "active"}
        answer = write(site, http, sender, sid)
        assert answer.status_code == 200, answer.text
    assert statuses(site.ws.db_path) == after


def test_a_database_file_deleted_under_the_app_is_made_anew_for_every_route_group(every_group: Site) -> None:
    """What the groups write goes to the file at the path: the signup form kept its
    connection to a file deleted since, and wrote there, where nobody reads."""
    site = every_group
    sid = _reader(site)
    with httpx.Client(timeout=30) as http:
        assert http.post(site.link(sid), content=ONE_CLICK, headers=URLENCODED).status_code == 200
        assert http.post(f"{site.url}/subscribe", data={"email": "grace@example.org"}).status_code == 200
        for suffix in ("", "-wal", "-shm"):
            Path(f"{site.ws.db_path}{suffix}").unlink(missing_ok=True)
        # An empty list now (the backup is the editor's to restore): a new reader joins it.
        assert http.post(f"{site.url}/subscribe", data={"email": "hedy@example.org"}).status_code == 200
    with Store.open(site.ws) as store:
        assert [(s.email, s.status) for s in store.iter_subscribers()] == [("hedy@example.org", "pending")]


# ---------------------------------------------------------------- quick writes


def _in_a_loop_of_its_own(writes: Callable[[], Coroutine[Any, Any, None]]) -> str:
    """Run `writes()` in an event loop in a thread of its own (a test before may have
    left a loop running in this one); the thread's name."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(writes())
        except BaseException as exc:  # raised again in the test's own thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="the-event-loop")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return thread.name


def _leaving(where: list[str]) -> Callable[[int], Callable[[Store], object]]:
    """A quick write's work that unsubscribes one reader, noting the thread that made it."""

    def leave(sid: int) -> Callable[[Store], object]:
        def work(store: Store) -> object:
            where.append(threading.current_thread().name)
            return store.leave(sid, "one-click")

        return work

    return leave


def test_a_quick_write_is_made_in_the_event_loop_unless_the_file_is_busy(workspace: Path) -> None:
    """A quick write runs where it is asked once its Store is open (the first opens it,
    in the writer thread); when another process holds the file it is made in the writer
    thread, which waits, and the attempt before it changed nothing."""
    ws = load_workspace(workspace)
    with Store.open(ws) as store:
        ada, _ = store.add("ada@example.org")
        grace, _ = store.add("grace@example.org")
    db = AppDatabase(ws)
    where: list[str] = []
    leave = _leaving(where)

    async def writes() -> None:
        await db.write(leave(ada.id), quick=True)
        await db.write(leave(ada.id), quick=True)
        holder = sqlite3.connect(ws.db_path, isolation_level=None)  # another process, writing
        holder.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.3, holder.execute, "ROLLBACK")
        try:
            await db.write(leave(grace.id), quick=True)
        finally:
            holder.close()

    try:
        here = _in_a_loop_of_its_own(writes)
    finally:
        db.close()
    assert where[0].startswith("highlights-writer") and where[1:3] == [here, here]
    assert where[3].startswith("highlights-writer") and len(where) == 4
    assert statuses(ws.db_path) == {"ada@example.org": "unsubscribed", "grace@example.org": "unsubscribed"}
    with Store.open(ws) as store:
        assert [e.to_status for e in store.events(grace.id)] == ["active", "unsubscribed"]


def test_a_quick_write_waits_for_the_writer_thread_s_write_instead_of_queueing_behind_it(workspace: Path) -> None:
    """While the writer thread is at one of the app's writes, quick writes wait for it
    in the event loop and are then made there: queued behind it, each would find the
    writer busy with the one before, and every later request would go there too."""
    ws = load_workspace(workspace)
    with Store.open(ws) as store:
        ids = [store.add(f"reader{i}@example.org")[0].id for i in range(6)]
    db = AppDatabase(ws)
    where: list[str] = []
    leave = _leaving(where)

    def slow(store: Store) -> None:
        time.sleep(0.005)  # one of the app's slower writes (a signup's), in the writer thread

    async def writes() -> None:
        await db.write(leave(ids[0]), quick=True)  # opens the quick Store, in the writer thread
        writer = asyncio.ensure_future(db.write(slow))
        await asyncio.sleep(0.001)  # the writer thread holds the app's writes now
        await asyncio.gather(*(db.write(leave(sid), quick=True) for sid in ids[1:]))
        await writer

    try:
        here = _in_a_loop_of_its_own(writes)
    finally:
        db.close()
    assert where[0].startswith("highlights-writer")
    assert where[1:] == [here] * 5, where
    assert set(statuses(ws.db_path).values()) == {"unsubscribed"}


def test_the_quick_writes_log_is_copied_in_the_writer_thread_and_starts_again(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event loop's commits never copy the log into the file (and wait for the
    disk's sync): the writer thread does, every so many quick writes, as one of the
    app's writes, so the copy is whole and the log starts again instead of growing."""
    monkeypatch.setattr(database, "_CHECKPOINT_EVERY", 50)
    seen: list[str] = []
    real = Store.checkpoint

    def checkpoint(store: Store) -> None:
        seen.append(threading.current_thread().name)
        real(store)

    monkeypatch.setattr(Store, "checkpoint", checkpoint)
    ws = load_workspace(workspace)
    with Store.open(ws) as store:
        store.import_rows(ImportRow(f"reader{n}@example.org", "") for n in range(300))
    db = AppDatabase(ws)

    async def writes() -> None:
        for sid in range(1, 301):  # the first in the writer thread, the others in the event loop
            await db.write(lambda store, sid=sid: store.leave(sid, "web"), quick=True)

    try:
        _in_a_loop_of_its_own(writes)
        with sqlite3.connect(ws.db_path) as raw:  # while the app's Stores are open
            _busy, logged, _copied = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        db.close()
    assert seen and all(name.startswith("highlights-writer") for name in seen)
    # Five pages each: 1,500 pages had the log only grown; it started again after a
    # checkpoint, some fifty writes ago (or a few more, as the threads took turns).
    assert logged < 1000
    assert set(statuses(ws.db_path).values()) == {"unsubscribed"}


def _log_frames(db: Path) -> int:
    """The pages written to the SQLite log since it last started again."""
    with sqlite3.connect(db) as raw:
        return int(raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


def test_quick_writes_asked_in_one_turn_of_the_loop_share_one_commit(workspace: Path) -> None:
    """Quick writes asked together are made in the loop's next turn as one transaction:
    each page they touch goes to the log once, not once per write."""
    ws = load_workspace(workspace)
    with Store.open(ws) as store:
        store.import_rows(ImportRow(f"reader{n}@example.org", "") for n in range(41))
    db = AppDatabase(ws)
    where: list[str] = []
    leave = _leaving(where)
    frames: dict[str, int] = {}

    async def writes() -> None:
        await db.write(leave(1), quick=True)  # opens the quick Store, in the writer thread
        await db.write(leave(2), quick=True)
        db._writer.submit(db._checkpoint).result()  # the log starts again from here
        before = _log_frames(ws.db_path)
        for sid in range(3, 23):  # one at a time: a commit each
            await db.write(leave(sid), quick=True)
        frames["one by one"] = _log_frames(ws.db_path) - before
        db._writer.submit(db._checkpoint).result()
        before = _log_frames(ws.db_path)
        await asyncio.gather(
            *(db.write(leave(sid), quick=True) for sid in range(23, 42)), db.write(leave(42), quick=True)
        )
        frames["together"] = _log_frames(ws.db_path) - before

    try:
        here = _in_a_loop_of_its_own(writes)
    finally:
        db.close()
    assert where[1:] == [here] * 41
    assert set(statuses(ws.db_path).values()) == {"unsubscribed"}
    with Store.open(ws) as store:
        assert all([e.to_status for e in store.events(sid)] == ["active", "unsubscribed"] for sid in range(1, 42))
    # Twenty commits of a few pages each, against one commit of those same few pages.
    assert frames["together"] * 5 < frames["one by one"], frames


def test_a_quick_write_that_fails_among_others_is_undone_alone(workspace: Path) -> None:
    """In a shared transaction, a work that raises after writing has its own changes
    undone and its caller gets the exception; the others commit."""
    ws = load_workspace(workspace)
    with Store.open(ws) as store:
        ids = [store.add(f"reader{i}@example.org")[0].id for i in range(5)]
    db = AppDatabase(ws)
    leave = _leaving([])

    def leave_then_fail(store: Store) -> object:
        store.leave(ids[2], "web")
        raise ValueError("a bug in one request's work")

    async def writes() -> list[object]:
        await db.write(leave(ids[0]), quick=True)  # opens the quick Store
        asked = [db.write(leave(sid), quick=True) for sid in (ids[1], ids[3], ids[4])]
        return await asyncio.gather(asked[0], db.write(leave_then_fail, quick=True), *asked[1:], return_exceptions=True)

    outcomes: list[list[object]] = []
    try:
        _in_a_loop_of_its_own(lambda: _keep(outcomes, writes()))
    finally:
        db.close()
    (results,) = outcomes
    assert isinstance(results[1], ValueError)
    assert [getattr(r, "status", None) for r in results] == ["unsubscribed", None, "unsubscribed", "unsubscribed"]
    assert list(statuses(ws.db_path).values()) == [
        "unsubscribed",
        "unsubscribed",
        "active",
        "unsubscribed",
        "unsubscribed",
    ]
    with Store.open(ws) as store:
        assert [e.to_status for e in store.events(ids[2])] == ["active"]


def test_quick_writes_that_cannot_share_a_transaction_are_each_made_in_the_writer_thread(workspace: Path) -> None:
    """When the shared transaction cannot be made (a work finds the database unusable),
    nothing of it stays: each work is made again in the writer thread, and each caller
    gets what its own work gave there (a signup's reservation is its own subscriber's)."""
    ws = load_workspace(workspace)
    db = AppDatabase(ws)
    where: list[str] = []
    failed = []

    def join(n: int) -> Callable[[Store], Joining]:
        def work(store: Store) -> Joining:
            where.append(threading.current_thread().name)
            email = f"joiner{n}@example.org"
            return store.ask_to_join(f"10.0.0.{n}", email, "", posts=(30, timedelta(hours=1)), limits=MAILS_PER_ADDRESS)

        return work

    def unusable_in_the_loop(store: Store) -> str:
        if not threading.current_thread().name.startswith("highlights-writer"):
            failed.append(1)
            raise UnusableDatabase("busy for a moment")
        return "made"

    async def writes() -> list[object]:
        await db.write(join(0), quick=True)  # opens the quick Store
        return await asyncio.gather(
            db.write(join(1), quick=True), db.write(unusable_in_the_loop, quick=True), db.write(join(2), quick=True)
        )

    outcomes: list[list[object]] = []
    try:
        here = _in_a_loop_of_its_own(lambda: _keep(outcomes, writes()))
    finally:
        db.close()
    (results,) = outcomes
    assert failed == [1] and results[1] == "made"
    # The first work was made in the loop and undone with the transaction; the one after
    # the failure never started there.
    assert where[1] == here and len(where) == 4
    assert all(name.startswith("highlights-writer") for name in where[2:]), where
    with sqlite3.connect(ws.db_path) as raw:
        owners = dict(raw.execute("SELECT id, subscriber_id FROM confirmation_mails"))
        emails = dict(raw.execute("SELECT id, email FROM subscribers"))
    assert len(owners) == 3 and len(emails) == 3
    for n in (1, 2):
        joining = results[0 if n == 1 else 2]
        assert isinstance(joining, Joining) and joining.subscriber is not None
        assert joining.subscriber.email == f"joiner{n}@example.org"
        assert owners[joining.reservation] == joining.subscriber.id
        assert emails[joining.subscriber.id] == f"joiner{n}@example.org"


async def _keep(into: list[Any], outcome: Coroutine[Any, Any, Any]) -> None:
    into.append(await outcome)
