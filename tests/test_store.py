"""The SQLite store, against real database files: schema and migrations, subscribers and
their history, bulk import rules, streaming, and many writers at once."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from highlightsmail import store as store_module
from highlightsmail.errors import HighlightsError
from highlightsmail.store import ImportRow, Store, UnknownSubscriber

T0 = datetime(2024, 1, 12, 8, 30, tzinfo=UTC)


class Clock:
    """A clock that moves one minute each time it is read, so every write has its own time."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "subscribers" / "highlights.db"


@pytest.fixture
def store(db: Path):
    db.parent.mkdir()
    with Store(db, clock=Clock()) as s:
        yield s


def dump(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table, read through a separate connection."""
    conn = sqlite3.connect(path)
    try:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("subscribers", "events", "deliveries", "dispatches", "test_sends")
        }
    finally:
        conn.close()


# -- schema and migrations ----------------------------------------------------------


def test_new_database_has_the_schema_in_wal_mode(store: Store, db: Path) -> None:
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"subscribers", "events", "deliveries", "dispatches", "test_sends"} <= tables
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"deliveries_claim", "subscribers_status", "events_subscriber"} <= indexes
    assert store.schema_version == store_module.SCHEMA_VERSION == len(store_module.MIGRATIONS)
    conn.close()


def test_open_creates_the_folder_of_the_workspace_database(tmp_path: Path) -> None:
    class Ws:
        db_path = tmp_path / "deep" / "er" / "h.db"

    with Store.open(Ws()) as s:  # type: ignore[arg-type]
        s.add("a@example.org")
    assert Ws.db_path.is_file()


def test_an_older_database_is_upgraded_in_place(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db.parent.mkdir()
    with Store(db) as s:
        s.add("ada@example.org", "Ada")
    later = (*store_module.MIGRATIONS, ("ALTER TABLE subscribers ADD COLUMN locale TEXT NOT NULL DEFAULT 'en'",))
    monkeypatch.setattr(store_module, "MIGRATIONS", later)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(later))
    with Store(db) as s:
        assert s.schema_version == len(later)
        assert s.find("ada@example.org").name == "Ada"  # data kept
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT locale FROM subscribers").fetchall() == [("en",)]
    conn.close()


def test_a_failing_migration_changes_nothing(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db.parent.mkdir()
    Store(db).close()
    broken = (*store_module.MIGRATIONS, ("CREATE TABLE half (x)", "ALTER TABLE nowhere ADD COLUMN y"))
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(broken))
    with pytest.raises(HighlightsError, match="not a usable highlightsmail database"):
        Store(db)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(broken) - 1
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0
    conn.close()


def test_a_database_from_a_newer_version_is_refused(db: Path) -> None:
    db.parent.mkdir()
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(HighlightsError, match="made by a newer highlightsmail"):
        Store(db)


def test_a_file_that_is_not_a_database_is_a_clear_error(db: Path) -> None:
    db.parent.mkdir()
    db.write_text("email,name\nada@example.org,Ada\n" * 100)
    with pytest.raises(HighlightsError, match="not a usable highlightsmail database"):
        Store(db)


def test_many_first_opens_at_once_migrate_exactly_once(db: Path) -> None:
    db.parent.mkdir()
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def opener(i: int) -> None:
        try:
            start.wait()
            with Store(db) as s:
                s.add(f"user{i}@example.org")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store(db) as s:
        assert s.count_by_status()["active"] == 20
        assert s.schema_version == store_module.SCHEMA_VERSION


def test_constraints_hold_in_the_database_itself(store: Store, db: Path) -> None:
    store.add("ada@example.org")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA foreign_keys = ON")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO subscribers (email, status, created, updated) VALUES ('ADA@EXAMPLE.ORG', 'active', 'x', 'x')"
        )
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO subscribers (email, status, created, updated) VALUES ('b@example.org', 'paused', 'x', 'x')"
        )
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO events (subscriber_id, at, to_status, source) VALUES (99, 'x', 'active', 'cli')")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO events (subscriber_id, at, to_status, source) VALUES (1, 'x', 'active', 'fax')")
    conn.execute(
        "INSERT INTO deliveries (issue, subscriber_id, email, created, updated) VALUES ('2024-w02', 1, 'a', 'x', 'x')"
    )
    assert conn.execute("SELECT state, attempts FROM deliveries").fetchone() == ("pending", 0)
    with pytest.raises(sqlite3.IntegrityError):  # one row per issue and subscriber
        conn.execute(
            "INSERT INTO deliveries (issue, subscriber_id, email, created, updated) VALUES ('2024-w02', 1, 'a', 'x', 'x')"
        )
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE deliveries SET state = 'lost'")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO test_sends (issue, fingerprint, recipients, at) VALUES ('i', 'f', 'not json', 'x')")
    conn.rollback()
    conn.close()


# -- subscribers and their history ---------------------------------------------------


def test_addresses_are_unique_whatever_their_case(store: Store) -> None:
    ada, created = store.add("Ada@example.org", "Ada")
    assert created and ada.status == "active" and ada.created == "2024-01-12T08:31:00Z"
    again, created = store.add("ADA@EXAMPLE.ORG", "Someone else")
    assert not created and again == ada  # the existing one, unchanged
    assert store.find("ada@EXAMPLE.org") == ada
    assert store.get(ada.id) == ada
    assert store.get(999) is None and store.find("nobody@example.org") is None


def test_every_status_change_is_an_event_with_its_source(store: Store) -> None:
    ada, _ = store.add("ada@example.org", source="cli")
    assert store.set_status(ada.id, "unsubscribed", "one-click") is True
    assert store.set_status("ADA@example.org", "unsubscribed", "web") is False  # no change, no event
    assert store.set_status(ada.id, "active", "web", detail="resubscribe button") is True
    assert store.set_status(ada.id, "bounced", "sendgrid", detail="550 no such user") is True
    history = [(e.from_status, e.to_status, e.source, e.detail) for e in store.events(ada.id)]
    assert history == [
        (None, "active", "cli", None),
        ("active", "unsubscribed", "one-click", None),
        ("unsubscribed", "active", "web", "resubscribe button"),
        ("active", "bounced", "sendgrid", "550 no such user"),
    ]
    now = store.get(ada.id)
    assert now.status == "bounced" and now.updated == store.events(ada.id)[-1].at > now.created


def test_set_status_rejects_unknown_subscribers_statuses_and_sources(store: Store) -> None:
    ada, _ = store.add("ada@example.org")
    with pytest.raises(UnknownSubscriber):
        store.set_status(12345, "unsubscribed", "web")
    with pytest.raises(UnknownSubscriber):
        store.set_status("nobody@example.org", "unsubscribed", "web")
    with pytest.raises(ValueError):
        store.set_status(ada.id, "paused", "web")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.set_status(ada.id, "unsubscribed", "fax")  # type: ignore[arg-type]
    assert len(store.events(ada.id)) == 1


def test_set_status_only_from_leaves_any_other_status_alone(store: Store) -> None:
    sub, _ = store.add("ada@example.org")
    store.set_status(sub.id, "bounced", "sendgrid")
    assert store.set_status(sub.id, "active", "web", only_from="unsubscribed") is False
    assert store.get(sub.id).status == "bounced" and len(store.events(sub.id)) == 2
    store.set_status(sub.id, "unsubscribed", "cli")
    assert store.set_status(sub.id, "active", "web", only_from="unsubscribed") is True
    assert store.get(sub.id).status == "active"


def test_count_by_status_names_every_status(store: Store) -> None:
    assert store.count_by_status() == {"active": 0, "unsubscribed": 0, "bounced": 0, "complained": 0, "pending": 0}
    for i in range(3):
        store.add(f"u{i}@example.org")
    store.set_status("u1@example.org", "complained", "sendgrid")
    assert store.count_by_status() == {"active": 2, "unsubscribed": 0, "bounced": 0, "complained": 1, "pending": 0}


def test_set_name(store: Store) -> None:
    ada, _ = store.add("ada@example.org")
    assert store.set_name(ada.id, "Ada Lovelace") is True
    assert store.set_name("ADA@example.org", "Ada Lovelace") is False
    assert store.find("ada@example.org").name == "Ada Lovelace"


# -- streaming ---------------------------------------------------------------------------


def test_iter_subscribers_pages_in_id_order_with_a_status_filter(store: Store) -> None:
    store.import_rows(ImportRow(f"u{i}@example.org", status="bounced" if i % 3 == 0 else "active") for i in range(10))
    everyone = list(store.iter_subscribers(page=3))
    assert [s.email for s in everyone] == [f"u{i}@example.org" for i in range(10)]
    active = list(store.iter_subscribers("active", page=2))
    assert [s.email for s in active] == [f"u{i}@example.org" for i in range(10) if i % 3]
    assert list(store.iter_subscribers("complained")) == []


def test_iter_subscribers_streams_instead_of_loading_everything_first(store: Store, db: Path) -> None:
    store.import_rows(ImportRow(f"u{i:05}@example.org") for i in range(2500))
    rows = store.iter_subscribers(page=1000)
    first = next(rows)
    assert first.email == "u00000@example.org"
    # Added after the first row was handed out: a list built up front could not hold it.
    with Store(db) as other:
        late, _ = other.add("late@example.org")
    rest = list(rows)
    assert len(rest) == 2500 and rest[-1] == late


# -- bulk import ----------------------------------------------------------------------


def test_import_counts_new_updated_unchanged_and_records_events(store: Store) -> None:
    _ada, _ = store.add("ada@example.org", "Ada")
    bob, _ = store.add("bob@example.org")
    result = store.import_rows(
        [
            ImportRow("ADA@example.org", "", detail="list.csv:2"),  # known, nothing new
            ImportRow("bob@example.org", "Bob", detail="list.csv:3"),  # known, gets a name
            ImportRow("cy@example.org", "Cy", detail="list.csv:4"),  # new, active
            ImportRow("di@example.org", "", "complained", detail="list.csv:5"),  # new, suppressed
        ]
    )
    assert result == store_module.ImportResult(new=2, updated=1, unchanged=1)
    assert store.find("ada@example.org").name == "Ada"  # an empty name never erases one
    assert store.find("bob@example.org").name == "Bob"
    di = store.find("di@example.org")
    assert di.status == "complained"
    assert [(e.from_status, e.to_status, e.source, e.detail) for e in store.events(di.id)] == [
        (None, "complained", "import", "list.csv:5")
    ]
    assert len(store.events(bob.id)) == 1  # a name is not a status change
    assert [s.email for s in store.iter_subscribers()] == [
        "ada@example.org",
        "bob@example.org",
        "cy@example.org",
        "di@example.org",
    ]  # file order


def test_import_keeps_suppressions_and_never_reactivates(store: Store) -> None:
    for address in ("gone@example.org", "bounced@example.org", "here@example.org"):
        store.add(address)
    store.set_status("gone@example.org", "unsubscribed", "one-click")
    store.set_status("bounced@example.org", "bounced", "sendgrid")
    result = store.import_rows(
        [
            ImportRow("gone@example.org", status="active"),
            ImportRow("bounced@example.org"),
            ImportRow("here@example.org", status="unsubscribed", detail="old-tool.csv:9"),
        ]
    )
    assert result == store_module.ImportResult(new=0, updated=1, unchanged=2)
    assert store.find("gone@example.org").status == "unsubscribed"
    assert store.find("bounced@example.org").status == "bounced"
    here = store.find("here@example.org")
    assert here.status == "unsubscribed"
    assert store.events(here.id)[-1].source == "import" and store.events(here.id)[-1].detail == "old-tool.csv:9"


def test_import_never_turns_a_bounce_or_complaint_into_an_unsubscribe(store: Store) -> None:
    # An unsubscribed address may resubscribe itself from its link; a bounced or
    # complained one may not, so an import must not downgrade it.
    for address, status in (
        ("b@example.org", "bounced"),
        ("c@example.org", "complained"),
        ("u@example.org", "unsubscribed"),
    ):
        store.add(address, status=status)
    result = store.import_rows(
        [
            ImportRow("b@example.org", status="unsubscribed"),
            ImportRow("c@example.org", status="bounced"),
            ImportRow("u@example.org", status="complained"),
        ]
    )
    assert result == store_module.ImportResult(new=0, updated=1, unchanged=2)
    assert [store.find(a).status for a in ("b@example.org", "c@example.org", "u@example.org")] == [
        "bounced",
        "complained",
        "complained",
    ]


def test_import_uses_given_times_only_for_new_addresses(store: Store) -> None:
    ada, _ = store.add("ada@example.org")
    store.import_rows(
        [
            ImportRow("ada@example.org", created="2020-01-01T00:00:00Z", updated="2020-01-02T00:00:00Z"),
            ImportRow("bob@example.org", created="2021-05-06T07:08:09Z", updated="2022-01-01T00:00:00Z"),
            ImportRow("cy@example.org", created="2021-05-06T07:08:09Z"),
        ]
    )
    assert store.find("ada@example.org").created == ada.created
    bob = store.find("bob@example.org")
    assert (bob.created, bob.updated) == ("2021-05-06T07:08:09Z", "2022-01-01T00:00:00Z")
    cy = store.find("cy@example.org")
    assert cy.created == cy.updated == "2021-05-06T07:08:09Z"


def test_dry_run_import_changes_nothing(store: Store, db: Path) -> None:
    store.add("gone@example.org")
    store.set_status("gone@example.org", "unsubscribed", "web")
    before = dump(db)
    result = store.import_rows(
        [ImportRow("gone@example.org", "G"), ImportRow("new@example.org", status="bounced")], dry_run=True
    )
    assert result == store_module.ImportResult(new=1, updated=1, unchanged=0)
    assert dump(db) == before
    # and the store still works normally afterwards
    assert store.import_rows([ImportRow("new@example.org")]).new == 1


def test_import_with_a_repeated_address_writes_nothing(store: Store, db: Path) -> None:
    before = dump(db)
    with pytest.raises(ValueError, match="twice"):
        store.import_rows([ImportRow("a@example.org"), ImportRow("b@example.org"), ImportRow("A@example.org")])
    assert dump(db) == before


# -- many writers at once -------------------------------------------------------------------


@pytest.mark.slow
def test_200_writers_and_a_big_import_at_once_all_succeed(db: Path) -> None:
    """Each writer has its own Store (as the web endpoint does); none may fail with
    'database is locked' while an import holds the write lock."""
    db.parent.mkdir()
    with Store(db) as s:
        s.import_rows(ImportRow(f"reader{i}@example.org") for i in range(200))

    import_started = threading.Event()

    def rows():
        import_started.set()  # the import's write transaction is open from here on
        for i in range(40_000):
            yield ImportRow(f"bulk{i}@example.org", f"Bulk {i}")

    errors: list[BaseException] = []
    results: list[bool] = []

    def importer() -> None:
        try:
            with Store(db) as s:
                results.append(s.import_rows(rows()).new == 40_000)
        except BaseException as exc:
            errors.append(exc)

    def writer(i: int) -> None:
        try:
            import_started.wait(30)
            with Store(db) as s:
                results.append(s.set_status(f"reader{i}@example.org", "unsubscribed", "one-click", detail=f"w{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=importer)] + [threading.Thread(target=writer, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert results == [True] * 201
    with Store(db) as s:
        assert s.count_by_status() == {
            "active": 40_000,
            "unsubscribed": 200,
            "bounced": 0,
            "complained": 0,
            "pending": 0,
        }
        for i in (0, 99, 199):
            events = s.events(s.find(f"reader{i}@example.org").id)
            assert [(e.to_status, e.source, e.detail) for e in events[1:]] == [("unsubscribed", "one-click", f"w{i}")]


def test_one_store_shared_by_threads_serialises_its_calls(store: Store) -> None:
    store.import_rows(ImportRow(f"u{i}@example.org") for i in range(50))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            store.set_status(f"u{i}@example.org", "unsubscribed", "web")
            assert sum(1 for _ in store.iter_subscribers(page=7)) == 50
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count_by_status()["unsubscribed"] == 50
