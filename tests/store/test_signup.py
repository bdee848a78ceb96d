"""The signup's part of the database: the upgrade of a database made by the previous
schema (with data in every table), the confirmation tokens, the per-client limit with
its Retry-After, confirming, and the ledger row of a welcome issue."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from highlightsmail.errors import HighlightsError, InvalidToken
from highlightsmail.store import DELIVERY_STATES, SCHEMA_VERSION, Store
from highlightsmail.store.migrator import MIGRATIONS
from highlightsmail.tokens import Signer

SIGNER = Signer(b"signup-tests-secret-0123456789abcdef")
T0 = datetime(2024, 1, 12, 8, 30, tzinfo=UTC)
ALL_TABLES = ("subscribers", "events", "dispatches", "deliveries", "test_sends")


# ---------------------------------------------------------------- the upgrade


BEFORE_SIGNUP = 4  # the signup's upgrade is the fifth


def old_database(path: Path) -> dict[str, list[tuple]]:
    """A database as the schema before signup made it (every migration but the last),
    with rows in every table and foreign keys on, as the store keeps them; returns its
    rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN")
    for migration in MIGRATIONS["sqlite"][:BEFORE_SIGNUP]:
        for step in migration:
            if callable(step):
                step(conn)
            else:
                conn.execute(step)
    conn.execute(f"PRAGMA user_version = {BEFORE_SIGNUP}")
    t = "2024-01-12T08:30:00Z"
    conn.executemany(
        "INSERT INTO subscribers (id, email, email_key, name, status, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (1, "ada@example.org", "ada@example.org", "Ada", "active", t, t),
            (2, "Grace@Example.org", "grace@example.org", "", "unsubscribed", t, t),
            (5, "bo@example.org", "bo@example.org", "Bö", "bounced", t, t),
            (9, "co@example.org", "co@example.org", "", "complained", t, t),
        ],
    )
    conn.executemany(
        "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (1, t, None, "active", "import", "subscribers.csv:2"),
            (2, t, None, "active", "cli", None),
            (2, t, "active", "unsubscribed", "one-click", None),
            (5, t, None, "bounced", "sendgrid", "550"),
            (9, t, None, "complained", "import", None),
        ],
    )
    conn.execute("INSERT INTO dispatches VALUES ('2024-w02', ?, 'outbox', 3, NULL)", (t,))
    conn.executemany(
        "INSERT INTO deliveries (issue, subscriber_id, email, state, batch, attempts, created, updated)"
        " VALUES ('2024-w02', ?, ?, ?, 1, 1, ?, ?)",
        [
            (1, "ada@example.org", "sent", t, t),
            (2, "Grace@Example.org", "skipped", t, t),
            (5, "bo@example.org", "in_doubt", t, t),
        ],
    )
    conn.execute(
        "INSERT INTO test_sends (issue, fingerprint, recipients, at) VALUES ('2024-w02', 'f', '[\"a\"]', ?)", (t,)
    )
    conn.execute("COMMIT")
    rows = {table: conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall() for table in ALL_TABLES}
    conn.close()
    return rows


def rows_of(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        # The per-recipient ledger is kept per batch since migration 7: read through the store.
        tables = [t for t in ALL_TABLES if t != "deliveries"]
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall() for table in tables}
    finally:
        conn.close()


def test_upgrading_keeps_every_row_and_allows_pending_and_form(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    before = old_database(db)
    with Store(db, upgrade=True) as store:
        assert store.schema_version == SCHEMA_VERSION
        # Every row is where it was, ids, foreign keys and all; the dispatch has its tag
        # (a later upgrade, which adds a column).
        after = rows_of(db)
        assert [row[:5] for row in after.pop("dispatches")] == before.pop("dispatches")
        # Migration 9 adds each subscriber's pause, none at first.
        assert {row[-1] for row in after["subscribers"]} == {None}
        after["subscribers"] = [row[:-1] for row in after["subscribers"]]
        ledger = {
            d.subscriber_id: (d.email, d.state, d.batch, d.attempts)
            for d in store.iter_deliveries("2024-w02", DELIVERY_STATES)
        }
        assert ledger == {row[1]: row[2:6] for row in before.pop("deliveries")}
        assert after == before
        assert store._query("PRAGMA foreign_key_check") == []
        assert store._query("PRAGMA integrity_check") == [("ok",)]
        # The indexes are back, and the case-insensitive unique address too.
        names = {name for (name,) in store._query("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"subscribers_status", "events_subscriber", "ledger_batches_range", "consents_subscriber"} <= names
        assert store.add("grace@example.org")[1] is False
        # What the upgrade is for.
        pat, created = store.add("pat@example.org", status="pending", source="form")
        assert created and store.events(pat.id) == [store.events(pat.id)[0]]
        assert (store.events(pat.id)[0].to_status, store.events(pat.id)[0].source) == ("pending", "form")
        assert store.count_by_status() == {"active": 1, "unsubscribed": 1, "bounced": 1, "complained": 1, "pending": 1}
        # Foreign keys still hold after the upgrade.
        with pytest.raises(sqlite3.IntegrityError):
            with store._write() as conn:
                conn.execute(
                    "INSERT INTO events (subscriber_id, at, to_status, source) VALUES (77, 't', 'active', 'cli')"
                )
    with Store(db) as again:  # opening once more changes nothing
        assert again.schema_version == SCHEMA_VERSION


def test_upgrading_keeps_columns_and_indexes_added_before_it(tmp_path: Path) -> None:
    """The tables are rebuilt from their definition as it stands, so columns another
    upgrade added (a self-reference among them) and partial indexes come along."""
    db = tmp_path / "old.db"
    old_database(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("UPDATE subscribers SET merged_into = 1, email_key = 'ada@example.org' WHERE id = 9")
    before = conn.execute("SELECT * FROM subscribers ORDER BY id").fetchall()
    conn.close()
    with Store(db, upgrade=True) as store:
        # (Migration 9 adds the pause column last.)
        assert [r[:-1] for r in store._query("SELECT * FROM subscribers WHERE id <= 9 ORDER BY id")] == before
        sql = store._query("SELECT sql FROM sqlite_master WHERE name = 'subscribers_email_key'")[0][0]
        assert "WHERE merged_into IS NULL" in sql
        assert store._query("PRAGMA foreign_key_check") == []


def test_an_upgrade_that_would_leave_rows_pointing_nowhere_changes_nothing(tmp_path: Path) -> None:
    """A database already broken (an event of a subscriber who is not there) is refused
    with a sentence, and left as it was, still at its old version."""
    db = tmp_path / "old.db"
    old_database(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("INSERT INTO events (subscriber_id, at, to_status, source) VALUES (77, 't', 'active', 'cli')")
    conn.close()
    before = rows_of(db)
    with pytest.raises(HighlightsError, match="pointing nowhere"):
        Store(db, upgrade=True)
    assert rows_of(db) == before
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == BEFORE_SIGNUP
    conn.close()


def test_a_check_list_over_several_lines_is_widened(tmp_path: Path) -> None:
    """As another upgrade may have written it (the list broken over two lines)."""
    from highlightsmail.store.upgrades import allow_in_checks

    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute(
        """CREATE TABLE "events" (id INTEGER PRIMARY KEY,
        source TEXT NOT NULL CHECK (source IN ('web', 'cli',
                                              'sendgrid-webhook')))"""
    )
    conn.execute("INSERT INTO events (source) VALUES ('sendgrid-webhook')")
    conn.execute("BEGIN")
    allow_in_checks(conn, "events", {"source": "form"})
    conn.execute("COMMIT")
    conn.execute("INSERT INTO events (source) VALUES ('form')")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO events (source) VALUES ('other')")
    assert conn.execute("SELECT source FROM events ORDER BY id").fetchall() == [("sendgrid-webhook",), ("form",)]
    conn.close()


# ---------------------------------------------------------------- tokens


def test_confirmation_tokens_carry_the_subscriber_and_the_time() -> None:
    token = SIGNER.make_confirm(42, 1_700_000_000)
    assert token.startswith("c16.") and "@" not in token
    assert SIGNER.read_confirm(token) == (42, 1_700_000_000)


def test_confirmation_and_unsubscribe_tokens_open_nothing_of_each_other() -> None:
    confirm = SIGNER.make_confirm(42, 1_700_000_000)
    for token in (SIGNER.make(42), SIGNER.make(42, "test")):
        with pytest.raises(InvalidToken):
            SIGNER.read_confirm(token)
    with pytest.raises(InvalidToken):
        SIGNER.read(confirm)
    # Dressing one kind as the other, signature kept: refused.
    kind_sid, made, mac = confirm.split(".")
    with pytest.raises(InvalidToken):
        SIGNER.read(f"u{kind_sid[1:]}.{mac}")
    u_mac = SIGNER.make(42).split(".")[1]
    with pytest.raises(InvalidToken):
        SIGNER.read_confirm(f"{kind_sid}.{made}.{u_mac}")


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.replace("c16.", "c17.", 1),  # another subscriber
        lambda t: t.split(".")[0] + ".sbjqzk." + t.split(".")[2],  # another time
        lambda t: t.replace("c16.", "c016.", 1),  # the same id spelt with a zero
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: t + "\n",
        lambda t: t.upper(),
        lambda t: "",
    ],
)
def test_altered_confirmation_tokens_are_refused(change) -> None:
    token = SIGNER.make_confirm(42, 1_700_000_000)
    with pytest.raises(InvalidToken):
        SIGNER.read_confirm(change(token))


def test_confirmation_tokens_follow_the_secret_rotation() -> None:
    old = Signer(b"the-old-secret-0123456789abcdef")
    token = old.make_confirm(42, 1_700_000_000)
    assert Signer(b"the-new-secret-0123456789abcdef", (old.secret,)).read_confirm(token) == (42, 1_700_000_000)
    with pytest.raises(InvalidToken):
        Signer(b"the-new-secret-0123456789abcdef").read_confirm(token)


# ---------------------------------------------------------------- limits and confirming


def test_the_per_client_limit_and_its_retry_after(tmp_path: Path) -> None:
    now = [T0]
    with Store(tmp_path / "db", clock=lambda: now[0]) as store:
        window = timedelta(hours=1)
        for n in range(30):
            now[0] = T0 + timedelta(minutes=n)
            assert store.record_signup_post("198.51.100.7", limit=30, window=window) is None
        now[0] = T0 + timedelta(minutes=40)
        # The oldest of the thirty leaves the window at 09:30: twenty minutes from now.
        assert store.record_signup_post("198.51.100.7", limit=30, window=window) == 20 * 60
        assert store.record_signup_post("198.51.100.8", limit=30, window=window) is None
        now[0] = T0 + timedelta(hours=1, seconds=1)
        assert store.record_signup_post("198.51.100.7", limit=30, window=window) is None
        # Rows older than the window are gone: no address is kept longer than needed.
        assert store._query("SELECT min(at) FROM signup_posts")[0][0] > "2024-01-12T08:30:00Z"


def test_confirm_records_consent_once_and_a_spent_link_does_nothing(tmp_path: Path) -> None:
    now = [T0]
    with Store(tmp_path / "db", clock=lambda: now[0]) as store:
        sid = store.add("ada@example.org", status="pending", source="form")[0].id
        made = int(T0.timestamp())
        now[0] = T0 + timedelta(minutes=5)
        assert store.confirm(999, made, None) is None
        outcome, sub = store.confirm(sid, made, "203.0.113.9") or ("", None)
        assert outcome == "confirmed" and sub is not None and sub.status == "active"
        assert store.confirm(sid, made, "203.0.113.9")[0] == "already"  # type: ignore[index]
        assert [(c.source, c.ip, c.at) for c in store.consents(sid)] == [
            ("form", "203.0.113.9", "2024-01-12T08:35:00Z")
        ]
        now[0] = T0 + timedelta(minutes=6)
        store.set_status(sid, "unsubscribed", "web")
        now[0] = T0 + timedelta(minutes=7)
        assert store.confirm(sid, made, None)[0] == "spent"  # type: ignore[index]
        assert store.get(sid).status == "unsubscribed"  # type: ignore[union-attr]
        # A link made after leaving works.
        assert store.confirm(sid, int(now[0].timestamp()), None)[0] == "confirmed"  # type: ignore[index]


def test_claim_one_puts_a_new_subscriber_in_the_ledger_once(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        first = store.add("first@example.org")[0].id
        left = store.add("left@example.org")[0].id
        store.begin_dispatch("2024-w02", "outbox")
        new = store.add("new@example.org")[0].id
        pending = store.add("pat@example.org", status="pending", source="form")[0].id
        assert store.claim_one("2024-w01", new) is None  # no such dispatch
        assert store.claim_one("2024-w02", pending) is None  # not active
        claimed = store.claim_one("2024-w02", new)
        assert claimed is not None and (claimed.state, claimed.batch, claimed.email) == (
            "in_flight",
            1,
            "new@example.org",
        )
        assert store.claim_one("2024-w02", new) is None  # in flight: not twice
        store.finish_batch("2024-w02", sent=[new], failed={})
        assert store.claim_one("2024-w02", new) is None  # sent: not twice
        # Someone still pending in the dispatch is taken over, so the loop skips them.
        assert store.claim_one("2024-w02", first) is not None
        claimed_batch, _skipped, _last = store.claim_batch("2024-w02", 9, 100)
        assert [d.subscriber_id for d in claimed_batch] == [left]
        assert store.dispatch_info("2024-w02").total == 3  # type: ignore[union-attr]
