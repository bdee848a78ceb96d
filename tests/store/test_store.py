"""The store's contract, against real databases: schema and migrations, subscribers and
their history, bulk import rules, streaming, and many writers at once.

Every test that takes `target` (or `store`) runs on both engines: a SQLite file and a
fresh PostgreSQL database. The tests that take `db` are about SQLite's file itself
(damaged pages, permissions, WAL) and run on SQLite alone."""

from __future__ import annotations

import os
import sqlite3
import threading
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import highlightsmail.store as store_module
from highlightsmail.addresses import address_key
from highlightsmail.errors import HighlightsError
from highlightsmail.store import ImportRow, Store, UnknownSubscriber, migrator
from highlightsmail.store.importing import Staging, stage_row
from highlightsmail.store.ledger import CHUNK, READ_CHUNKS
from support.db import damage_pages_holding, dump_tables, integrity_errors, raw_connection, read_only

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
def target(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path | str:
    """Where a store lives: a SQLite file (its folder made), or a fresh PostgreSQL database."""
    if engine == "postgresql":
        return request.getfixturevalue("pg_url")
    path = tmp_path / "subscribers" / "highlights.db"
    path.parent.mkdir()
    return path


@pytest.fixture
def store(target: Path | str):
    with Store(target, clock=Clock()) as s:
        yield s


def dump(target: Path | str) -> dict[str, list[tuple]]:
    """Every row of every table, read through a separate connection."""
    return dump_tables(
        target,
        (
            "subscribers",
            "events",
            "ledger_recipients",
            "ledger_batches",
            "ledger_exceptions",
            "dispatches",
            "test_sends",
        ),
    )


# -- schema and migrations ----------------------------------------------------------


def test_new_database_has_the_schema(store: Store, target: Path | str) -> None:
    with raw_connection(target) as conn:
        if isinstance(target, Path):
            assert conn.execute("PRAGMA user_version").fetchone()[0] == migrator.SCHEMA_VERSION == 11
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        else:
            assert conn.execute("SELECT version FROM schema_version").fetchall() == [(11,)]
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
            indexes = {
                r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
            }
    assert {
        "subscribers",
        "events",
        "ledger_recipients",
        "ledger_batches",
        "ledger_exceptions",
        "dispatches",
        "test_sends",
        "delivery_events",
        "scanned_mail",
        "consents",
        "confirmation_mails",
        "signup_posts",
        "subscriber_topics",
        "erased_addresses",
    } <= tables
    assert {"subscribers_status", "events_subscriber", "subscribers_email_key", "dispatches_tag"} <= indexes
    assert "subscribers_merged" in indexes  # what a subscriber's erasure looks for (merged rows)
    assert "deliveries" not in tables  # the ledger is kept per batch, not per recipient
    assert {"ledger_batches_range", "ledger_exceptions_batch", "ledger_recipients_last"} <= indexes
    assert store.schema_version == 11


def test_open_creates_the_folder_of_the_workspace_database(tmp_path: Path) -> None:
    class Ws:
        database_url = None
        db_path = tmp_path / "deep" / "er" / "h.db"

    with Store.open(Ws()) as s:
        s.add("a@example.org")
    assert Ws.db_path.is_file()


def _add_migration(monkeypatch: pytest.MonkeyPatch, *steps: str) -> None:
    """A later highlightsmail: one more migration, the same text for both engines."""
    later = {engine: (*migrations, steps) for engine, migrations in migrator.MIGRATIONS.items()}
    monkeypatch.setattr(migrator, "MIGRATIONS", later)
    monkeypatch.setattr(migrator, "SCHEMA_VERSION", len(later["sqlite"]))


def _schema_version(target: Path | str) -> int:
    with raw_connection(target) as conn:
        if isinstance(target, Path):
            return conn.execute("PRAGMA user_version").fetchone()[0]
        return conn.execute("SELECT version FROM schema_version").fetchone()[0]


def test_an_older_database_is_refused_with_the_hint_and_upgraded_when_asked(
    target: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(target) as s:
        s.add("ada@example.org", "Ada")
        where = s.where
    before = migrator.SCHEMA_VERSION
    _add_migration(monkeypatch, "ALTER TABLE subscribers ADD COLUMN locale TEXT NOT NULL DEFAULT 'en'")
    with pytest.raises(store_module.OutdatedSchema) as refused:
        Store(target)
    assert refused.value.format_message() == (
        f"{where}: the database has schema {before} and this highlightsmail needs {before + 1}; "
        "back it up, then run `highlights db upgrade`"
    )
    assert _schema_version(target) == before  # refused: nothing changed
    with Store(target, upgrade=True) as s:
        assert s.upgraded_from == before
        assert s.schema_version == before + 1
        assert s.find("ada@example.org").name == "Ada"  # data kept
    with raw_connection(target) as conn:
        assert [tuple(r) for r in conn.execute("SELECT locale FROM subscribers")] == [("en",)]
    with Store(target) as s:  # up to date now: no hint, nothing to do
        assert s.upgraded_from is None


def test_every_dispatch_has_its_own_tag_and_the_upgrade_gives_one_to_dispatches_begun_before(
    target: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Message-IDs are derived from a dispatch's tag (tokens.py): one random value per
    dispatch, recorded once when it begins, and found again by it."""
    import re

    with monkeypatch.context() as older:  # the schema before tags
        older.setattr(migrator, "MIGRATIONS", {engine: m[:5] for engine, m in migrator.MIGRATIONS.items()})
        older.setattr(migrator, "SCHEMA_VERSION", 5)
        Store(target).close()
        with raw_connection(target) as conn:
            conn.execute(
                "INSERT INTO dispatches (issue, started, backend, total) VALUES"
                " ('2024-w01', '2024-01-05T08:00:00Z', 'smtp', 0), ('2024-w02', '2024-01-12T08:00:00Z', 'smtp', 0)"
            )
            if isinstance(target, Path):
                conn.commit()
    with Store(target, upgrade=True, clock=Clock()) as s:
        old = {issue: s.dispatch_info(issue).tag for issue in ("2024-w01", "2024-w02")}
        s.add("ada@example.org")
        s.begin_dispatch("2024-w03", "smtp")
        new = s.dispatch_info("2024-w03").tag
        tags = [*old.values(), new]
        assert all(re.fullmatch(r"[a-z2-7]{8}", t or "") for t in tags) and len(set(tags)) == 3
        assert {issue: s.issues_tagged(tag) for issue, tag in old.items()} == {
            "2024-w01": ["2024-w01"],
            "2024-w02": ["2024-w02"],
        }
        assert s.issues_tagged(new) == ["2024-w03"] and s.issues_tagged("aaaaaaaa") == []


def _address_indexes(db: Path) -> list[tuple[str, int]]:
    """(name, unique) of each index of the subscribers table that holds the address."""
    with raw_connection(db) as conn:
        return sorted(
            (name, unique)
            for _seq, name, unique, _origin, _partial in conn.execute("PRAGMA index_list(subscribers)")
            if any(col[2] in ("email", "email_key") for col in conn.execute(f"PRAGMA index_info('{name}')"))
        )


def test_one_index_finds_a_subscriber_by_address_and_the_upgrade_drops_the_first_schema_s_second(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's first schema made `email` UNIQUE as well: a second index on the address
    that every new subscriber paid for. Migration 11 makes the table again without it,
    keeping every row, id, event and the other indexes; `email_key` still refuses a
    second subscriber of one address."""
    db.parent.mkdir()
    with monkeypatch.context() as older:  # the schema before migration 11
        older.setattr(migrator, "MIGRATIONS", {engine: m[:10] for engine, m in migrator.MIGRATIONS.items()})
        older.setattr(migrator, "SCHEMA_VERSION", 10)
        with Store(db, clock=Clock()) as s:
            ada, _ = s.add("Ada@example.org", "Ada")
            s.set_status(ada.id, "unsubscribed", "web")
            s.import_rows([ImportRow("bob@example.org", "Bob"), ImportRow("cy@example.org", status="bounced")])
            zoe, _ = s.add("Zo\u00eb@example.org")
        with raw_connection(db) as conn:  # another spelling merged into Zoë's, as migration 2 leaves one
            conn.execute(
                "INSERT INTO subscribers (email, email_key, name, status, created, updated, merged_into)"
                " VALUES ('Zoe\u0308@example.org', ?, '', 'active', 'then', 'then', ?)",
                (address_key("Zoe\u0308@example.org"), zoe.id),
            )
            conn.commit()
        assert _address_indexes(db) == [("sqlite_autoindex_subscribers_1", 1), ("subscribers_email_key", 1)]
        before = dump_tables(db)
    with Store(db, upgrade=True) as s:
        assert (s.upgraded_from, s.schema_version) == (10, 11)
    assert _address_indexes(db) == [("subscribers_email_key", 1)]
    assert dump_tables(db) == before  # every row, with its id, the merged one too
    with raw_connection(db) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'subscribers'")}
        assert {"subscribers_status", "subscribers_email_key", "subscribers_merged"} <= indexes
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        # What the foreign key looks for, for each row, as the table is made again (and
        # when a subscriber is erased): by the index, not by reading the whole table.
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT 1 FROM subscribers WHERE merged_into = 1").fetchall()
        assert "subscribers_merged" in " ".join(str(row[-1]) for row in plan)
    with Store(db) as s:
        assert s.add("ADA@example.org") == (s.find("ada@example.org"), False)
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"), s._db.write() as conn:
            conn.execute(
                "INSERT INTO subscribers (email, email_key, name, status, created, updated)"
                " VALUES ('bob@example.org', 'bob@example.org', '', 'active', 'now', 'now')"
            )
    # A new database has the one index from the start.
    fresh = db.with_name("fresh.db")
    Store(fresh).close()
    assert _address_indexes(fresh) == [("subscribers_email_key", 1)]


def test_a_failing_migration_changes_nothing(target: Path | str, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(target).close()
    current = migrator.SCHEMA_VERSION
    _add_migration(monkeypatch, "CREATE TABLE half (x INTEGER)", "ALTER TABLE nowhere ADD COLUMN y INTEGER")
    with pytest.raises(HighlightsError, match="not a usable highlightsmail database"):
        Store(target, upgrade=True)
    assert _schema_version(target) == current
    with raw_connection(target) as conn:
        if isinstance(target, Path):
            half = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0]
        else:
            half = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'half'").fetchone()[0]
    assert half == 0


def test_a_database_from_a_newer_version_is_refused(target: Path | str) -> None:
    Store(target).close()
    with raw_connection(target) as conn:
        if isinstance(target, Path):
            conn.execute(f"PRAGMA user_version = {migrator.SCHEMA_VERSION + 1}")
        else:
            conn.execute(f"UPDATE schema_version SET version = {migrator.SCHEMA_VERSION + 1}")
    with pytest.raises(HighlightsError, match="made by a newer highlightsmail"):
        Store(target)


def test_a_file_that_is_not_a_database_is_a_clear_error(db: Path) -> None:
    db.parent.mkdir()
    db.write_text("email,name\nada@example.org,Ada\n" * 100)
    with pytest.raises(HighlightsError, match="not a usable highlightsmail database"):
        Store(db)


def test_many_first_opens_at_once_migrate_exactly_once(target: Path | str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def opener(i: int) -> None:
        try:
            start.wait()
            with Store(target) as s:
                s.add(f"user{i}@example.org")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store(target) as s:
        assert s.count_by_status()["active"] == 20
        assert s.schema_version == migrator.SCHEMA_VERSION


def test_a_first_open_waits_for_a_writer_that_got_the_new_file_first(db: Path) -> None:
    """The race behind the test above, made certain: another connection holds the write
    lock of a new file still in its first journal mode. SQLite answers the switch to WAL
    busy at once, without its timeout; the open must wait for the lock all the same."""
    db.parent.mkdir()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    opened: list[object] = []

    def opener() -> None:
        try:
            with Store(db, timeout=10) as s:
                opened.append(s.add("ada@example.org"))
        except BaseException as exc:
            opened.append(exc)

    thread = threading.Thread(target=opener)
    thread.start()
    thread.join(0.3)
    assert thread.is_alive() and opened == []  # still waiting, not failed
    other.execute("COMMIT")
    other.close()
    thread.join(10)
    assert len(opened) == 1 and not isinstance(opened[0], BaseException), opened
    with Store(db) as s:
        assert s.count_by_status()["active"] == 1


def test_constraints_hold_in_the_database_itself(store: Store, target: Path | str) -> None:
    store.add("ada@example.org")
    refused = integrity_errors()
    with raw_connection(target) as conn:
        with pytest.raises(refused):
            conn.execute(
                "INSERT INTO subscribers (email, email_key, status, created, updated)"
                " VALUES ('ADA@EXAMPLE.ORG', 'ada@example.org', 'active', 'x', 'x')"
            )
        with pytest.raises(refused):
            conn.execute(
                "INSERT INTO subscribers (email, status, created, updated) VALUES ('b@example.org', 'paused', 'x', 'x')"
            )
        with pytest.raises(refused):
            conn.execute("INSERT INTO events (subscriber_id, at, to_status, source) VALUES (99, 'x', 'active', 'cli')")
        with pytest.raises(refused):
            conn.execute("INSERT INTO events (subscriber_id, at, to_status, source) VALUES (1, 'x', 'active', 'fax')")
        conn.execute(
            "INSERT INTO ledger_exceptions (issue, subscriber_id, state, updated) VALUES ('2024-w02', 1, 'pending', 'x')"
        )
        assert tuple(conn.execute("SELECT state, attempts FROM ledger_exceptions").fetchone()) == ("pending", 0)
        with pytest.raises(refused):  # one row per issue and subscriber
            conn.execute(
                "INSERT INTO ledger_exceptions (issue, subscriber_id, state, updated)"
                " VALUES ('2024-w02', 1, 'failed', 'x')"
            )
        with pytest.raises(refused):
            conn.execute("UPDATE ledger_exceptions SET state = 'lost'")
        with pytest.raises(refused):  # a batch is in flight, sent, failed or in doubt: never pending
            conn.execute(
                "INSERT INTO ledger_batches (issue, batch, counted, state, updated) VALUES ('i', 1, 0, 'pending', 'x')"
            )
        with pytest.raises(refused):
            conn.execute(
                "INSERT INTO test_sends (issue, fingerprint, recipients, at) VALUES ('i', 'f', 'not json', 'x')"
            )


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


def test_leave_unsubscribes_an_active_subscriber_once_and_leaves_any_other_status(store: Store) -> None:
    ada, _ = store.add("ada@example.org")
    grace, _ = store.add("grace@example.org")
    store.set_status(grace.id, "bounced", "sendgrid")
    left = store.leave(ada.id, "one-click")
    assert left is not None and (left.id, left.email, left.status) == (ada.id, ada.email, "unsubscribed")
    assert left == store.get(ada.id)
    assert store.leave(ada.id, "web") == left  # a repeat: the same, and no event
    assert [(e.from_status, e.to_status, e.source) for e in store.events(ada.id)] == [
        (None, "active", "cli"),
        ("active", "unsubscribed", "one-click"),
    ]
    kept = store.leave(grace.id, "one-click")
    assert kept is not None and kept.status == "bounced" and len(store.events(grace.id)) == 2
    assert store.leave(12345, "web") is None
    with pytest.raises(ValueError):
        store.leave(ada.id, "fax")  # type: ignore[arg-type]


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


def test_iter_subscribers_streams_instead_of_loading_everything_first(store: Store, target: Path | str) -> None:
    store.import_rows(ImportRow(f"u{i:05}@example.org") for i in range(2500))
    rows = store.iter_subscribers(page=1000)
    first = next(rows)
    assert first.email == "u00000@example.org"
    # Added after the first row was handed out: a list built up front could not hold it.
    with Store(target) as other:
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


def test_dry_run_import_changes_nothing(store: Store, target: Path | str) -> None:
    store.add("gone@example.org")
    store.set_status("gone@example.org", "unsubscribed", "web")
    before = dump(target)
    result = store.import_rows(
        [ImportRow("gone@example.org", "G"), ImportRow("new@example.org", status="bounced")], dry_run=True
    )
    assert result == store_module.ImportResult(new=1, updated=1, unchanged=0)
    assert dump(target) == before
    # and the store still works normally afterwards
    assert store.import_rows([ImportRow("new@example.org")]).new == 1


def test_import_with_a_repeated_address_writes_nothing(store: Store, target: Path | str) -> None:
    before = dump(target)
    with pytest.raises(ValueError, match="twice"):
        store.import_rows([ImportRow("a@example.org"), ImportRow("b@example.org"), ImportRow("A@example.org")])
    assert dump(target) == before


def _staged(name: str, rows: list[tuple[int, ImportRow]]) -> Staging:
    """A scratch file holding `rows` by line, as `subscribers import` stages a file."""
    staging = Staging(name)
    staging.load(stage_row(line, row) for line, row in rows)
    assert staging.drop_duplicates() == []
    return staging


@pytest.mark.parametrize("rows", [0, 1, 64, 129])
def test_a_scratch_file_holds_every_row_it_is_given_in_order(rows: int) -> None:
    """Rows go in many to a statement: none is lost or doubled at a statement's edge."""
    lines = range(2, rows + 2)
    with Staging("list.csv") as staging:
        staging.load(
            stage_row(line, ImportRow(f"u{line}@example.org", created=None if line % 3 else "x")) for line in lines
        )
        assert staging.count() == rows
        assert [(r.email, r.detail, r.created) for r in staging.import_rows()] == [
            (f"u{line}@example.org", f"list.csv:{line}", None if line % 3 else "x") for line in lines
        ]


def test_a_staged_file_follows_the_same_rules_and_the_store_takes_more_after_it(store: Store) -> None:
    store.add("gone@example.org")
    store.set_status("gone@example.org", "unsubscribed", "web")
    bob, _ = store.add("bob@example.org")
    rows = [
        (2, ImportRow("gone@example.org", status="active")),  # never made active again
        (3, ImportRow("BOB@example.org", "Bob", "bounced")),  # known: leaves, and takes the name
        (5, ImportRow("cy@example.org", "Cy", consented="2024-01-01T00:00:00Z", consent_source="form")),
        (6, ImportRow("di@example.org", status="complained")),
    ]
    with _staged("list.csv", rows) as staging:
        result = store.import_staged(staging, detail=staging.detail)
    assert result == store_module.ImportResult(new=2, updated=1, unchanged=1)
    assert [(s.email, s.name, s.status) for s in store.iter_subscribers()] == [
        ("gone@example.org", "", "unsubscribed"),
        ("bob@example.org", "Bob", "bounced"),
        ("cy@example.org", "Cy", "active"),
        ("di@example.org", "", "complained"),
    ]
    history = {
        s.email: [(e.from_status, e.to_status, e.detail) for e in store.events(s.id)] for s in store.iter_subscribers()
    }
    assert history["bob@example.org"] == [(None, "active", None), ("active", "bounced", "list.csv:3")]
    assert history["cy@example.org"] == [(None, "active", "list.csv:5")]
    assert history["di@example.org"] == [(None, "complained", "list.csv:6")]
    assert [(s.email, source, at) for s, source, at in store.with_consent(store.iter_subscribers()) if at] == [
        ("cy@example.org", "form", "2024-01-01T00:00:00Z")
    ]
    assert store.find("bob@example.org").id == bob.id
    # The same Store takes another file (the first one was let go), then rows of its own.
    with _staged("more.csv", [(2, ImportRow("ed@example.org"))]) as staging:
        assert store.import_staged(staging, detail=staging.detail).new == 1
    assert store.import_rows([ImportRow("fay@example.org"), ImportRow("ed@example.org", "Ed")]) == (
        store_module.ImportResult(new=1, updated=1, unchanged=0)
    )
    with _staged("last.csv", [(2, ImportRow("gus@example.org")), (3, ImportRow("fay@example.org"))]) as staging:
        assert store.import_staged(staging, detail=staging.detail, dry_run=True) == (
            store_module.ImportResult(new=1, updated=0, unchanged=1)
        )
    assert store.find("gus@example.org") is None


def test_a_staged_import_leaves_the_schema_s_checks_on(db: Path) -> None:
    """SQLite skips the schema's CHECKs and foreign keys for the import's own statements
    (its values were checked as the file was read, and each id it writes comes from the
    subscriber it joins), and for nothing after them."""
    db.parent.mkdir()
    with Store(db) as store:
        with _staged("list.csv", [(2, ImportRow("ada@example.org"))]) as staging:
            assert store.import_staged(staging, detail=staging.detail).new == 1
        ada = store.find("ada@example.org")
        assert ada is not None
        assert [(e.to_status, e.detail) for e in store.events(ada.id)] == [("active", "list.csv:2")]
        with store._db.connection() as conn:  # on the import's own connection
            with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
                conn.execute(
                    "INSERT INTO subscribers (email, email_key, name, status, created, updated)"
                    " VALUES ('bob@example.org', 'bob@example.org', '', 'paused', 'now', 'now')"
                )
            with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
                conn.execute(
                    "INSERT INTO events (subscriber_id, at, to_status, source) VALUES (?, 'now', 'active', 'cli')",
                    (ada.id + 1000,),
                )


# -- many writers at once -------------------------------------------------------------------


@pytest.mark.slow
def test_200_writers_and_a_big_import_at_once_all_succeed(target: Path | str) -> None:
    """Each writer has its own Store (as the web endpoint does); none may fail with
    'database is locked' while an import holds the write lock."""
    with Store(target) as s:
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
            with Store(target) as s:
                results.append(s.import_rows(rows()).new == 40_000)
        except BaseException as exc:
            errors.append(exc)

    def writer(i: int) -> None:
        try:
            import_started.wait(30)
            with Store(target) as s:
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
    with Store(target) as s:
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


# -- one address, whatever the case or Unicode form of its letters ----------------------------


def test_addresses_differing_only_in_unicode_case_or_form_are_one_subscriber(store: Store) -> None:
    ada, created = store.add("Äda@example.org", "Ada")
    assert created
    again, created = store.add("äda@example.org", "Someone else")
    assert not created and again == ada
    assert store.find("ÄDA@EXAMPLE.ORG") == ada
    assert store.find("A\u0308da@example.org") == ada  # decomposed: the same letters
    sz, _ = store.add("strasse@example.org")
    assert store.add("STRAẞE@example.org")[0] == sz  # full case folding: ẞ is SS
    assert store.set_status("äda@example.org", "unsubscribed", "cli") is True
    assert store.get(ada.id).status == "unsubscribed"
    assert store.count_by_status() == {"active": 1, "unsubscribed": 1, "bounced": 0, "complained": 0, "pending": 0}

    result = store.import_rows([ImportRow("äda@example.org", "Ada L."), ImportRow("zoë@example.org")])
    assert result == store_module.ImportResult(new=1, updated=1, unchanged=0)
    assert store.find("Äda@example.org").name == "Ada L."
    assert store.find("Äda@example.org").status == "unsubscribed"  # an import never re-activates
    with pytest.raises(ValueError, match="twice"):
        store.import_rows([ImportRow("ZOË@example.org"), ImportRow("zoë@example.org")])
    assert [s.email for s in store.iter_subscribers()] == ["Äda@example.org", "strasse@example.org", "zoë@example.org"]

    class Suppressed:
        email, status, detail = "ZOË@EXAMPLE.ORG", "bounced", "550"

    assert store.apply_suppressions([Suppressed()]) == 1
    assert store.find("zoë@example.org").status == "bounced"


def test_the_unique_index_holds_in_the_database_itself(store: Store, target: Path | str) -> None:
    store.add("Äda@example.org")
    with raw_connection(target) as conn, pytest.raises(integrity_errors()):
        conn.execute(
            "INSERT INTO subscribers (email, email_key, status, created, updated)"
            " VALUES ('äda@example.org', 'äda@example.org', 'active', 'x', 'x')"
        )


def _schema_1_database(db: Path) -> sqlite3.Connection:
    """A database as highlightsmail made it before addresses were compared by their
    case-folded form: `Äda` and `äda` could both be there."""
    db.parent.mkdir(exist_ok=True)
    conn = sqlite3.connect(db, isolation_level=None)
    for statement in migrator.MIGRATIONS["sqlite"][0]:
        assert isinstance(statement, str)
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    return conn


def test_upgrading_merges_addresses_that_are_one_and_reports_each_clash(db: Path) -> None:
    conn = _schema_1_database(db)
    people = [
        (1, "Äda@example.org", "", "active"),
        (2, "bob@example.org", "Bob", "active"),
        (3, "äda@example.org", "Ada", "unsubscribed"),
        (4, "zoë@example.org", "", "active"),
        (5, "ZOË@example.org", "", "active"),
        (6, "ÄDA@example.com", "", "bounced"),
    ]
    for sid, email, name, status in people:
        conn.execute(
            "INSERT INTO subscribers (id, email, name, status, created, updated) VALUES (?, ?, ?, ?, 't0', 't0')",
            (sid, email, name, status),
        )
        conn.execute(
            "INSERT INTO events (subscriber_id, at, to_status, source) VALUES (?, 't0', 'active', 'import')", (sid,)
        )
    conn.execute(
        "INSERT INTO events (subscriber_id, at, from_status, to_status, source) VALUES (3, 't1', 'active', 'unsubscribed', 'one-click')"
    )
    # A dispatch under way: Äda got it as #1, äda (#3) waits; both spellings of Zoë wait.
    conn.execute("INSERT INTO dispatches (issue, started, backend, total) VALUES ('2024-w02', 't0', 'outbox', 5)")
    for sid, email, _name, _status in people:
        if sid != 6:
            state = "sent" if sid in (1, 2) else "pending"
            conn.execute(
                "INSERT INTO deliveries (issue, subscriber_id, email, state, created, updated)"
                " VALUES ('2024-w02', ?, ?, ?, 't0', 't0')",
                (sid, email, state),
            )
    conn.close()
    before = dump_tables(db, ("subscribers", "events"))

    with pytest.warns(store_module.MergedAddressesWarning) as caught, Store(db, clock=Clock(), upgrade=True) as s:
        assert s.schema_version == migrator.SCHEMA_VERSION
        lines = [str(w.message) for w in caught]
        assert len(lines) == 2
        assert lines[0].startswith(
            f"{db}: Äda@example.org (#1, active) and äda@example.org (#3, unsubscribed) are the same address: "
            "merged into #1 Äda@example.org, now unsubscribed;"
        )
        assert lines[1].startswith(
            f"{db}: zoë@example.org (#4, active) and ZOË@example.org (#5, active) are the same address: "
            "merged into #4 zoë@example.org, now active;"
        )
        assert all("\n" not in line and "nobody gets two copies" in line for line in lines)

        # Nobody is lost: every row and event is still there.
        after = dump_tables(db, ("subscribers", "events"))
        assert [r[0] for r in after["subscribers"]] == [r[0] for r in before["subscribers"]]
        assert after["events"][: len(before["events"])] == before["events"]

        ada = s.find("äda@example.org")
        assert (ada.id, ada.email, ada.name, ada.status) == (1, "Äda@example.org", "Ada", "unsubscribed")
        assert [(e.from_status, e.to_status, e.source) for e in s.events(1)][-1] == (
            "active",
            "unsubscribed",
            "one-click",
        )
        assert "#3" in s.events(1)[-1].detail
        assert s.get(3) == ada  # a link in mail sent to äda acts on the one subscriber
        assert s.find("ÄDA@example.com").status == "bounced"  # another domain: another address
        assert [x.id for x in s.iter_subscribers()] == [1, 2, 4, 6]
        assert s.count_by_status() == {"active": 2, "unsubscribed": 1, "bounced": 1, "complained": 0, "pending": 0}

        # The dispatch under way: nobody gets a second copy, Zoë still gets one.
        states = {d.subscriber_id: d.state for d in s.iter_deliveries("2024-w02", store_module.DELIVERY_STATES)}
        assert states == {1: "sent", 2: "sent", 3: "skipped", 4: "pending", 5: "skipped"}
        claimed, skipped, _ = s.claim_batch("2024-w02", 1, 10)
        assert [c.subscriber_id for c in claimed] == [4] and skipped == 0

        # A new dispatch takes each person once.
        assert s.begin_dispatch("2024-w03", "outbox") == 2
        # Unsubscribing through a merged row's link changes the one subscriber.
        assert s.set_status(5, "unsubscribed", "one-click") is True
        assert s.get(4).status == "unsubscribed" and s.get(5).id == 4

    with warnings.catch_warnings(record=True) as again, Store(db):
        warnings.simplefilter("always")
    assert again == []  # told once, by the upgrade


def test_a_dispatch_keeps_the_copy_furthest_along_when_spellings_merge(db: Path) -> None:
    conn = _schema_1_database(db)
    for sid, email in ((1, "Äda@example.org"), (2, "äda@example.org")):
        conn.execute(
            "INSERT INTO subscribers (id, email, status, created, updated) VALUES (?, ?, 'active', 't0', 't0')",
            (sid, email),
        )
    conn.execute("INSERT INTO dispatches (issue, started, backend, total) VALUES ('i', 't0', 'outbox', 2)")
    conn.execute(
        "INSERT INTO deliveries (issue, subscriber_id, email, state, created, updated)"
        " VALUES ('i', 1, 'Äda@example.org', 'failed', 't', 't'), ('i', 2, 'äda@example.org', 'in_doubt', 't', 't')"
    )
    conn.close()
    with pytest.warns(store_module.MergedAddressesWarning), Store(db, upgrade=True) as s:
        states = {d.subscriber_id: d.state for d in s.iter_deliveries("i", store_module.DELIVERY_STATES)}
        # in doubt may have arrived: the failed copy is not retried on top of it
        assert states == {1: "skipped", 2: "in_doubt"}


# -- files that cannot be used: one line naming the file and what to do ------------------------


def test_the_database_and_its_wal_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        db = tmp_path / "h.db"
        with Store(db) as s:
            s.add("ada@example.org")
            modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert modes == {"h.db": 0o600, "h.db-wal": 0o600, "h.db-shm": 0o600}


def test_a_damaged_page_is_one_line_with_the_way_to_rescue_the_rest(db: Path) -> None:
    db.parent.mkdir()
    with Store(db) as s:
        s.import_rows(ImportRow(f"reader{i:04d}@example.org", f"Reader {i}") for i in range(3000))
    pages = damage_pages_holding(db, b"reader1500@example.org")
    assert min(pages) > 2 and max(pages) < db.stat().st_size // 4096 - 1  # in the middle
    with Store(db) as s:
        for call in (
            lambda: list(s.iter_subscribers()),
            lambda: s.add("reader1500@example.org"),
            lambda: s.find("reader1500@example.org"),
            lambda: s.count_by_status(),
            lambda: s.import_rows([ImportRow(f"reader{i:04d}@example.org") for i in range(3000)]),
            lambda: s.begin_dispatch("2024-w02", "outbox"),
        ):
            with pytest.raises(store_module.UnusableDatabase) as caught:
                call()
            message = caught.value.format_message()
            assert message.startswith(f"{db}: the database is damaged (database disk image is malformed); ")
            assert f'`sqlite3 {db} ".recover" | sqlite3 {db.parent}/highlights-recovered.db`' in message
            assert "\n" not in message
        assert s.dispatch_info("2024-w02") is None  # the failed write left nothing behind


def test_a_read_only_file_can_be_read_and_a_write_says_what_to_do(db: Path) -> None:
    db.parent.mkdir()
    with Store(db) as s:
        s.add("ada@example.org")
    with read_only(db), Store(db) as s:
        assert [x.email for x in s.iter_subscribers()] == ["ada@example.org"]
        with pytest.raises(store_module.UnusableDatabase) as caught:
            s.add("bob@example.org")
    assert caught.value.format_message().startswith(
        f"{db}: cannot write to the database (attempt to write a readonly database); "
        f"let the user running highlights write to the file and to its folder {db.parent}"
    )


def test_a_read_only_folder_says_what_to_do(db: Path) -> None:
    db.parent.mkdir()
    with Store(db) as s:
        s.add("ada@example.org")
    with read_only(db.parent), pytest.raises(store_module.UnusableDatabase) as caught:
        Store(db)
    assert caught.value.format_message().startswith(
        f"{db}: cannot open the database (unable to open database file); "
        f"let the user running highlights read and write the file and its folder {db.parent}"
    )
    db.unlink()
    with read_only(db.parent), pytest.raises(store_module.UnusableDatabase) as caught:
        Store(db)
    assert caught.value.format_message().startswith(f"{db}: cannot create the database: ")


def test_a_lock_held_too_long_is_one_line_saying_to_try_again(db: Path) -> None:
    db.parent.mkdir()
    Store(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with Store(db, timeout=0.1) as s, pytest.raises(store_module.UnusableDatabase) as caught:
            s.add("ada@example.org")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert caught.value.format_message() == (
        f"{db}: the database stayed busy for more than 0.1 s (another highlights process is writing); try again"
    )
    with Store(db) as s:
        assert s.add("ada@example.org")[1]  # nothing half-done was left behind


# -- the send ledger, on both engines ---------------------------------------------------------


def _sender(store: Store, issue: str) -> Store:
    """A store ready to claim batches of `issue`: on PostgreSQL a sender joins first."""
    if store.shares_dispatch:
        store.join_dispatch(issue)
    return store


def test_a_reader_erased_mid_send_is_claimed_from_no_chunk_read_before(store: Store, target: Path | str) -> None:
    """Batches smaller than a chunk: the chunk read for the first batch is not used again
    as it was once an erasure has taken an id out of it."""
    store.import_rows(ImportRow(f"u{i}@example.org") for i in range(10))
    assert store.begin_dispatch("2024-w02", "outbox") == 10
    _sender(store, "2024-w02")
    first, _, after = store.claim_batch("2024-w02", 1, 3)
    erased = store.find("u4@example.org")
    assert erased is not None
    store.forget(erased.id, "0" * 64)
    second, skipped, _ = store.claim_batch("2024-w02", 2, 3, after)
    assert [c.email for c in second] == ["u3@example.org", "u5@example.org", "u6@example.org"] and skipped == 0
    with raw_connection(target) as conn:
        assert (
            conn.execute("SELECT count(*) FROM ledger_exceptions WHERE subscriber_id = ?", (erased.id,)).fetchone()[0]
            == 0
        )
    third, _, _ = store.claim_batch("2024-w02", 3, 10, second[-1].subscriber_id)
    for batch in (first, second, third):
        store.finish_batch("2024-w02", sent=[c.subscriber_id for c in batch], failed={}, batch=batch[0].batch)
    assert store.delivery_counts("2024-w02") == {"sent": 9}  # none left pending for ever
    assert store.finish_dispatch_if_done("2024-w02")


@pytest.mark.parametrize("retry", [False, True])
def test_a_reader_erased_while_their_batch_is_in_flight_leaves_its_outcome_whole(store: Store, retry: bool) -> None:
    """The backend's answer may name them on its own (a refused address) after they were
    erased: the others' outcome is recorded, and no row names them again."""
    store.import_rows(ImportRow(f"u{i}@example.org") for i in range(4))
    assert store.begin_dispatch("2024-w02", "outbox") == 4
    _sender(store, "2024-w02")
    batch, _, _ = store.claim_batch("2024-w02", 1, 10)
    ids = [c.subscriber_id for c in batch]
    if retry:  # a batch of retries: its recipients are exception rows
        store.finish_batch("2024-w02", sent=[], failed=dict.fromkeys(ids, "421 try later"), batch=batch[0].batch)
        assert store.requeue("2024-w02", "failed") == 4
        batch, _, _ = store.claim_batch("2024-w02", 2, 10)
        assert sorted(c.subscriber_id for c in batch) == ids
    store.forget(ids[1], "0" * 64)
    sent = [ids[0], ids[2], ids[3]]
    store.finish_batch("2024-w02", sent=sent, failed={ids[1]: "550 no such user"}, batch=batch[0].batch)
    assert store.delivery_counts("2024-w02") == {"sent": 3}
    assert store.finish_dispatch_if_done("2024-w02")


@pytest.mark.parametrize("fate", ["sent", "failed", "welcome"])
def test_a_reader_erased_after_a_dispatch_leaves_its_counts_whole(store: Store, fate: str) -> None:
    store.import_rows(ImportRow(f"u{i}@example.org") for i in range(4))
    assert store.begin_dispatch("2024-w02", "outbox") == 4
    _sender(store, "2024-w02")
    batch, _, _ = store.claim_batch("2024-w02", 1, 10)
    ids = [c.subscriber_id for c in batch]
    failed = {ids[1]: "550 no such user"} if fate == "failed" else {}
    store.finish_batch("2024-w02", sent=[i for i in ids if i not in failed], failed=failed, batch=batch[0].batch)
    late = store.add("late@example.org")[0]  # joined after the dispatch began: a batch of their own
    welcome = store.claim_one("2024-w02", late.id)
    assert welcome is not None
    store.finish_batch("2024-w02", sent=[late.id], failed={}, batch=welcome.batch)
    before = store.delivery_counts("2024-w02")
    erased = late.id if fate == "welcome" else ids[1]
    store.forget(erased, "0" * 64)
    after = store.delivery_counts("2024-w02")
    gone = "failed" if fate == "failed" else "sent"
    assert after == {k: n - (k == gone) for k, n in before.items() if n - (k == gone)}
    assert "pending" not in after


def test_the_ledger_claims_each_recipient_once_and_skips_who_left(store: Store) -> None:
    store.import_rows(ImportRow(f"u{i}@example.org") for i in range(10))
    assert store.begin_dispatch("2024-w02", "outbox") == 10
    with pytest.raises(HighlightsError, match="already begun"):
        store.begin_dispatch("2024-w02", "outbox")
    store.set_status("u1@example.org", "unsubscribed", "web")  # left after the dispatch began
    _sender(store, "2024-w02")
    first, skipped, after = store.claim_batch("2024-w02", 1, 4)
    assert [c.email for c in first] == ["u0@example.org", "u2@example.org", "u3@example.org", "u4@example.org"]
    assert skipped == 1 and after == first[-1].subscriber_id
    assert {c.state for c in first} == {"in_flight"} and {c.attempts for c in first} == {1}
    number = first[0].batch
    assert number is not None and {c.batch for c in first} == {number}
    second, _, _ = store.claim_batch("2024-w02", number + 1, 100, after)
    assert [c.email for c in second] == [f"u{i}@example.org" for i in range(5, 10)]
    assert second[0].batch != number
    store.finish_batch("2024-w02", sent=[c.subscriber_id for c in first[:2]], failed={first[2].subscriber_id: "550"})
    store.finish_batch("2024-w02", sent=[], failed={}, in_doubt={first[3].subscriber_id: "no answer"})
    assert store.delivery_counts("2024-w02") == {"sent": 2, "failed": 1, "in_doubt": 1, "skipped": 1, "in_flight": 5}
    assert store.claim_batch("2024-w02", number + 2, 10, 0)[0] == []  # nothing pending is left
    reasons = {
        d.email: (d.state, d.last_error) for d in store.iter_deliveries("2024-w02", ("failed", "in_doubt", "skipped"))
    }
    assert reasons == {
        "u1@example.org": ("skipped", "unsubscribed since the dispatch began"),
        "u3@example.org": ("failed", "550"),
        "u4@example.org": ("in_doubt", "no answer"),
    }
    assert store.requeue("2024-w02", "failed") == 1
    assert not store.finish_dispatch_if_done("2024-w02")


def test_rows_in_flight_of_a_run_that_is_gone_are_in_doubt(target: Path | str) -> None:
    with Store(target) as first:
        first.import_rows(ImportRow(f"u{i}@example.org") for i in range(6))
        first.begin_dispatch("2024-w02", "outbox")
        claimed, _, _ = _sender(first, "2024-w02").claim_batch("2024-w02", 1, 4)
        assert len(claimed) == 4
    # The run is gone (its connection closed, as when a process dies).
    with Store(target) as again:
        assert again.mark_in_doubt("2024-w02") == 4
        assert again.delivery_counts("2024-w02") == {"in_doubt": 4, "pending": 2}


def test_postgresql_senders_share_a_dispatch_and_only_a_gone_senders_rows_are_in_doubt(pg_url: str) -> None:
    with Store(pg_url) as setup:
        setup.import_rows(ImportRow(f"u{i:03d}@example.org") for i in range(100))
        setup.begin_dispatch("2024-w02", "sendgrid")
    a, b = Store(pg_url), Store(pg_url)
    try:
        assert a.join_dispatch("2024-w02") != b.join_dispatch("2024-w02")
        with Store(pg_url) as watcher:
            assert watcher.sending_now("2024-w02") and not watcher.sending_now("2024-w03")
        # Both claim at once, over and over: no row is claimed twice, none is lost.
        taken: dict[str, list[int]] = {"a": [], "b": []}
        numbers: list[int] = []
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def claim(name: str, s: Store) -> None:
            try:
                start.wait()
                after = 0
                while True:
                    rows, _, after = s.claim_batch("2024-w02", 0, 7, after)
                    if not rows:
                        return
                    taken[name].extend(r.subscriber_id for r in rows)
                    numbers.append(rows[0].batch)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=claim, args=(n, s)) for n, s in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert sorted(taken["a"] + taken["b"]) == list(range(1, 101))  # each exactly once
        assert taken["a"] and taken["b"]
        assert len(set(numbers)) == len(numbers)  # batch numbers are not shared either
        # b is gone; a is alive, however long its batches take.
        b.close()
        with Store(pg_url) as resumed:
            assert resumed.mark_in_doubt("2024-w02") == len(taken["b"])
            states = {d.subscriber_id: d.state for d in resumed.iter_deliveries("2024-w02", ("in_flight", "in_doubt"))}
        assert {sid for sid, st in states.items() if st == "in_doubt"} == set(taken["b"])
        assert {sid for sid, st in states.items() if st == "in_flight"} == set(taken["a"])
    finally:
        a.close()
        b.close()
    with Store(pg_url) as watcher:
        assert not watcher.sending_now("2024-w02")
        assert watcher.mark_in_doubt("2024-w02") == len(taken["a"])


# -- the ledger kept per batch ------------------------------------------------------------------


def _ledger_rows(target: Path | str) -> tuple[int, int]:
    """(batch rows, exception rows) in the ledger."""
    with raw_connection(target) as conn:
        batches = conn.execute("SELECT count(*) FROM ledger_batches").fetchone()[0]
        exceptions = conn.execute("SELECT count(*) FROM ledger_exceptions").fetchone()[0]
    return batches, exceptions


def test_a_batch_is_one_row_and_only_who_fared_otherwise_gets_a_row_of_their_own(
    store: Store, target: Path | str
) -> None:
    store.import_rows(ImportRow(f"u{i}@example.org") for i in range(12))
    assert store.begin_dispatch("2024-w02", "outbox") == 12
    _sender(store, "2024-w02")
    first, _, _ = store.claim_batch("2024-w02", 0, 5)
    second, _, _ = store.claim_batch("2024-w02", 0, 5)
    assert _ledger_rows(target) == (2, 0)  # nothing written per recipient to claim them
    ids = [c.subscriber_id for c in first]
    store.finish_batch("2024-w02", sent=ids[:4], failed={ids[4]: "550 no such user"}, batch=first[0].batch)
    store.finish_batch(
        "2024-w02", sent=[], failed={c.subscriber_id: "400 bad request" for c in second}, batch=second[0].batch
    )
    assert _ledger_rows(target) == (2, 1)  # the one refused inside a sent batch
    assert store.delivery_counts("2024-w02") == {"sent": 4, "failed": 6, "pending": 2}
    failed = {d.subscriber_id: (d.batch, d.last_error) for d in store.iter_deliveries("2024-w02", ["failed"])}
    assert failed == {
        ids[4]: (first[0].batch, "550 no such user"),
        **{c.subscriber_id: (second[0].batch, "400 bad request") for c in second},
    }
    # Put back, the failed go first, each once, and nobody sent goes again.
    assert store.requeue("2024-w02", "failed") == 6
    again, _, _ = store.claim_batch("2024-w02", 0, 100)
    assert sorted(c.subscriber_id for c in again) == sorted(failed)
    assert {c.attempts for c in again} == {2}
    store.finish_batch("2024-w02", sent=[c.subscriber_id for c in again], failed={}, batch=again[0].batch)
    rest, _, _ = store.claim_batch("2024-w02", 0, 100)
    assert [c.email for c in rest] == ["u10@example.org", "u11@example.org"]
    store.finish_batch("2024-w02", sent=[c.subscriber_id for c in rest], failed={}, batch=rest[0].batch)
    assert store.claim_batch("2024-w02", 0, 100)[0] == []
    assert store.delivery_counts("2024-w02") == {"sent": 12}
    assert store.finish_dispatch_if_done("2024-w02")


def test_recipients_are_those_active_when_the_dispatch_began(store: Store) -> None:
    store.import_rows(ImportRow(f"u{i}@example.org") for i in range(4))
    store.set_status("u1@example.org", "unsubscribed", "web")
    assert store.begin_dispatch("2024-w02", "outbox") == 3
    # u1 comes back and someone joins: neither was a recipient when it began.
    store.set_status("u1@example.org", "active", "cli")
    store.add("late@example.org")
    _sender(store, "2024-w02")
    claimed, skipped, _ = store.claim_batch("2024-w02", 0, 10)
    assert [c.email for c in claimed] == ["u0@example.org", "u2@example.org", "u3@example.org"] and skipped == 0


def test_upgrading_turns_each_recipients_row_into_the_ledger_kept_per_batch(db: Path) -> None:
    db.parent.mkdir()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    for migration in migrator.MIGRATIONS["sqlite"][:6]:
        for step in migration:
            if callable(step):
                step(conn)
            else:
                conn.execute(step)
    conn.execute("PRAGMA user_version = 6")
    for sid in range(1, 9):
        conn.execute(
            "INSERT INTO subscribers (id, email, email_key, status, created, updated) VALUES (?, ?, ?, 'active', 't', 't')",
            (sid, f"u{sid}@example.org", f"u{sid}@example.org"),
        )
    conn.execute(
        "INSERT INTO dispatches (issue, started, backend, total, tag) VALUES ('i', 't', 'outbox', 8, 'abcdefgh')"
    )
    ledger = {
        1: ("sent", 1, 1),
        2: ("failed", 1, 1),
        3: ("sent", 1, 1),
        4: ("in_flight", 2, 1),
        5: ("pending", None, 1),  # a failed one put back: below where the claims reached
        6: ("in_doubt", 2, 1),
        7: ("pending", None, 0),
        8: ("pending", None, 0),
    }
    conn.executemany(
        "INSERT INTO deliveries (issue, subscriber_id, email, state, batch, attempts, created, updated)"
        " VALUES ('i', ?, ?, ?, ?, ?, 't', 't')",
        [(sid, f"u{sid}@example.org", *row) for sid, row in ledger.items()],
    )
    conn.execute("COMMIT")
    conn.close()
    with Store(db, upgrade=True) as s:
        states = {d.subscriber_id: d.state for d in s.iter_deliveries("i", store_module.DELIVERY_STATES)}
        # What was in flight when the old version stopped is in doubt; the rest as it was.
        assert states == {
            1: "sent",
            2: "failed",
            3: "sent",
            4: "in_doubt",
            5: "pending",
            6: "in_doubt",
            7: "pending",
            8: "pending",
        }
        assert s.dispatch_info("i").total == 8
        claimed = [c.subscriber_id for c in s.claim_batch("i", 0, 10)[0]]
        assert claimed == [5]  # the one put back first, then the rest
        assert [c.subscriber_id for c in s.claim_batch("i", 0, 10)[0]] == [7, 8]
        assert s.sent_address("i", 1) == "u1@example.org" and s.sent_address("i", 2) is None
    with raw_connection(db) as raw:
        assert raw.execute("SELECT name FROM sqlite_master WHERE name = 'deliveries'").fetchall() == []


def test_a_store_that_checkpoints_later_leaves_the_log_for_its_checkpoint(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        store.checkpoint_later()
        for i in range(400):  # four pages of log or more each: past SQLite's own 1,000
            store.add(f"u{i}@example.org")
        store.checkpoint()
        with sqlite3.connect(tmp_path / "db") as raw:
            _busy, logged, copied = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert logged > 1000 and copied == logged  # no checkpoint restarted the log; the one asked for copied it all


def test_a_list_longer_than_one_read_is_fixed_in_whole_chunks_in_id_order(store: Store, target: Path | str) -> None:
    """The list is read several chunks at a time: across reads the chunks still number on
    from 0, hold CHUNK ids each in order (the last the rest), and hold exactly the
    subscribers active at the start, each once."""
    n = CHUNK * READ_CHUNKS + 2 * CHUNK + 7  # more than one read, its last chunk short
    store.import_rows(
        ImportRow(f"u{i:06}@example.org", status="unsubscribed" if i % 97 == 0 else "active") for i in range(n)
    )
    active = [s.id for s in store.iter_subscribers() if s.status == "active"]
    assert store.begin_dispatch("2024-w02", "outbox") == len(active)
    with raw_connection(target) as conn:
        rows = conn.execute(
            "SELECT chunk, first_id, last_id, size, ids FROM ledger_recipients WHERE issue = '2024-w02' ORDER BY chunk"
        ).fetchall()
    assert [r[0] for r in rows] == list(range(len(rows)))
    chunks = [[int(i) for i in r[4].split(",")] for r in rows]
    assert [len(c) for c in chunks[:-1]] == [CHUNK] * (len(rows) - 1) and 0 < len(chunks[-1]) <= CHUNK
    assert all((r[1], r[2], r[3]) == (c[0], c[-1], len(c)) for r, c in zip(rows, chunks, strict=True))
    assert [i for c in chunks for i in c] == sorted(active)
