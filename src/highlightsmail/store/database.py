"""All SQL of highlightsmail: the state in SQLite (`subscribers/highlights.db`, the default)
or in PostgreSQL (`database: postgresql://user@host:port/dbname`).

One `Store` serves both engines. Statements are written once, with `?` placeholders,
wherever the two engines read them alike (both take `ON CONFLICT`, `RETURNING` and
`UPDATE ... FROM`); where they must differ (placeholders, temporary tables, date
arithmetic, the schema's version, locking, the send ledger's claims) the two texts stand
side by side. The PostgreSQL notes are at the end of this docstring.

SQLite:

The database is shared by the CLI and the web endpoint, often at the same moment, so:

- WAL mode: readers never block the one writer, and the writer never blocks readers.
- Every write is an explicit `BEGIN IMMEDIATE` transaction. A deferred transaction that
  reads first and writes later can fail at once with SQLITE_BUSY when another writer got
  in between, whatever the busy timeout; taking the write lock up front makes writers
  queue on the busy timeout (30 s) instead.
- The schema carries its version in `PRAGMA user_version`; opening an older database
  upgrades it in one transaction, opening a newer one is refused.

Threads: a `Store` owns one connection and guards it with a lock, so one `Store` may be
shared by threads (each call is serialised). The simplest safe pattern for a server is
still one `Store` per worker thread (or per request): each has its own connection, and
SQLite itself orders their writes. Opening a `Store` is cheap (well under a millisecond
once the file exists).

Addresses are compared by `addresses.address_key` (Unicode NFC and case folding), kept
in `email_key` under a unique index. The file is created readable by its owner only
(its -wal and -shm files take the same mode): it holds every subscriber's address.
Every SQLite failure a person can act on (a damaged file, a read-only file or folder,
a full disk, a long lock) becomes `UnusableDatabase`, one line naming the file and what
to do.

PostgreSQL:

- Writes that read before they write (every one but the send ledger's claims and
  finishes) take one transaction-level advisory lock first, so they run one at a time
  as on SQLite and the same rules hold with several processes on several machines.
  Claims lock the rows they take and skip rows another sender is taking
  (`FOR UPDATE SKIP LOCKED`), so several senders share one dispatch without overlap.
- A sender holds a session-level advisory lock naming it (`join_dispatch`) for as long
  as its connection lives, and writes its number into the rows it claims: rows in flight
  become in doubt only once their sender's lock is free, that is when its session is
  gone (a process killed, a machine lost: TCP keepalives end its session within about
  a minute), never because a network stalled.
- The web app borrows connections from a pool (`pooled=True`), each transaction its own.
- The password never comes from highlights.yaml: from HIGHLIGHTS_DATABASE_URL or PGPASSWORD.
  Errors name the server (user, host, port, database) and never the password.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shlex
import sqlite3
import threading
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, get_args

from highlightsmail.addresses import address_key, mailbox_key
from highlightsmail.dburl import describe_url, is_postgresql
from highlightsmail.errors import HighlightsError, HighlightsWarning, display_path

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool


class Place(Protocol):
    """Where a workspace keeps its data (workspace.Workspace fits): a PostgreSQL URL, or
    None and a SQLite file."""

    @property
    def database_url(self) -> str | None: ...

    @property
    def db_path(self) -> Path: ...


# `pending`: asked to join through the signup form, not confirmed yet; never mailed an issue.
Status = Literal["active", "unsubscribed", "bounced", "complained", "pending"]
Source = Literal["web", "one-click", "cli", "import", "sendgrid", "sendgrid-webhook", "bounce-mail", "form"]
STATUSES: tuple[str, ...] = get_args(Status)
SOURCES: tuple[str, ...] = get_args(Source)
#: Statuses that mean "never mail this address again".
SUPPRESSED: frozenset[str] = frozenset({"unsubscribed", "bounced", "complained"})
#: Statuses that mean mail to the address failed or was reported as unwanted: they
#: stay so whatever an import, `remove` or an unsubscribe link says, and only the
#: person writing to the editors brings the address back.
UNDELIVERABLE: frozenset[str] = frozenset({"bounced", "complained"})
#: A recipient's state in the send ledger of an issue: pending -> in_flight (committed
#: before the request) -> sent | failed | in_doubt; skipped when they left meanwhile.
DeliveryState = Literal["pending", "in_flight", "sent", "skipped", "failed", "in_doubt"]
DELIVERY_STATES: tuple[str, ...] = get_args(DeliveryState)

BUSY_TIMEOUT_S = 30.0
_PAGE = 1000  # rows per page when streaming subscribers


def _in(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class Conn(Protocol):
    """What the store's SQL runs on, whatever the engine: a SQLite connection, or a
    PostgreSQL one behind `_PgConn` (which reads the same `?` placeholders)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...


#: A step of a migration: an SQL statement, or a function run on the connection inside
#: the migration's transaction, returning lines to tell the editor (without the file name).
Step = str | Callable[[Conn], list[str]]


def _merge_same_addresses(conn: Conn) -> list[str]:
    """Migration 2: fill `email_key`, and make one subscriber of each group of rows
    whose addresses are one address (they differ only in Unicode form or case).

    Nothing is deleted, since events, the send ledger and the links in mail already
    sent name every row by id. In each group the oldest row (lowest id) is kept: it
    takes the strongest status of the group (complained, bounced, unsubscribed, then
    active), so nobody who left under one spelling is mailed under the other, and the
    name of another row when it has none. The others point at it (`merged_into`):
    they drop out of lists, counts and sends, and their links act on the kept row. In
    a dispatch under way, the group keeps one recipient (the one furthest along) and
    the others' open rows become `skipped`, so nobody gets two copies.
    Frozen like every migration: a later change to the rules is a new migration.
    """
    rows = conn.execute("SELECT id, email, name, status FROM subscribers ORDER BY id").fetchall()
    keys = [address_key(email) for _id, email, _name, _status in rows]
    conn.executemany("UPDATE subscribers SET email_key = ? WHERE id = ?", zip(keys, (r[0] for r in rows), strict=True))
    groups: dict[str, list[tuple[int, str, str, str]]] = {}
    for key, row in zip(keys, rows, strict=True):
        groups.setdefault(key, []).append(row)
    return [_merge_group(conn, members) for members in groups.values() if len(members) > 1]


def _tag_dispatches(conn: Conn) -> list[str]:
    """Migration 6: a tag for each dispatch begun before tags, so the rest of a dispatch
    still under way goes out with Message-IDs a bounce can be matched by. (Mail it sent
    already had random ones; its bounces are matched by the unsubscribe link they return.)"""
    from highlightsmail.tokens import new_dispatch_tag

    issues = [r[0] for r in conn.execute("SELECT issue FROM dispatches WHERE tag IS NULL").fetchall()]
    conn.executemany("UPDATE dispatches SET tag = ? WHERE issue = ?", [(new_dispatch_tag(), i) for i in issues])
    return []


_STATUS_WEIGHT = {"active": 0, "unsubscribed": 1, "bounced": 2, "complained": 3}
_LEDGER_WEIGHT = {"sent": 5, "in_flight": 4, "in_doubt": 3, "failed": 2, "pending": 1}


def _merge_group(conn: Conn, members: list[tuple[int, str, str, str]]) -> str:
    """Merge one group of rows (id order) into the first; returns the line to report."""
    keeper_id, keeper_email, keeper_name, keeper_status = members[0]
    strongest = max(members, key=lambda m: (_STATUS_WEIGHT[m[3]], -m[0]))
    now = format_time(_utc_now())
    if strongest[3] != keeper_status:
        # The change has the cause of the other row's status as its source (an
        # unsubscribe link, a bounce, an import), and says where it came from.
        found = conn.execute(
            "SELECT source FROM events WHERE subscriber_id = ? AND to_status = ? ORDER BY id DESC LIMIT 1",
            (strongest[0], strongest[3]),
        ).fetchone()
        conn.execute("UPDATE subscribers SET status = ?, updated = ? WHERE id = ?", (strongest[3], now, keeper_id))
        conn.execute(
            "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (
                keeper_id,
                now,
                keeper_status,
                strongest[3],
                found[0] if found else "cli",
                f"the same address as #{strongest[0]} {strongest[1]}, which is {strongest[3]}",
            ),
        )
    if not keeper_name:
        name = next((m[2] for m in members[1:] if m[2]), "")
        if name:
            conn.execute("UPDATE subscribers SET name = ? WHERE id = ?", (name, keeper_id))
    ids = [m[0] for m in members]
    conn.executemany(
        "UPDATE subscribers SET merged_into = ?, updated = ? WHERE id = ?", [(keeper_id, now, i) for i in ids[1:]]
    )
    marks = ", ".join("?" for _ in ids)
    ledger: dict[str, list[tuple[int, str]]] = {}
    for issue, sid, state in conn.execute(
        f"SELECT issue, subscriber_id, state FROM deliveries WHERE subscriber_id IN ({marks}) AND state <> 'skipped'",
        ids,
    ):
        ledger.setdefault(issue, []).append((sid, state))
    for issue, entries in ledger.items():
        kept = max(entries, key=lambda e: (_LEDGER_WEIGHT[e[1]], e[0] == keeper_id, -e[0]))
        conn.executemany(
            "UPDATE deliveries SET state = 'skipped', last_error = ?, updated = ?"
            " WHERE issue = ? AND subscriber_id = ? AND state IN ('pending', 'failed', 'in_doubt')",
            [(f"the same address as #{kept[0]}", now, issue, sid) for sid, _state in entries if sid != kept[0]],
        )
    spellings = " and ".join(f"{email} (#{sid}, {status})" for sid, email, _name, status in members)
    return (
        f"{spellings} are the same address: merged into #{keeper_id} {keeper_email}, now {strongest[3]}; "
        "links in mail sent to any of them still work and nobody gets two copies. "
        "Nothing to do, but keep one spelling in your own lists"
    )


# Each migration is a list of steps run in order inside one transaction; the schema's
# version is the number of migrations applied. Append, never edit (so the value lists
# below are spelt out rather than taken from STATUSES and SOURCES).
MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    (  # 1: subscribers, their history, and the tables of the send ledger
        """CREATE TABLE subscribers (
            id      INTEGER PRIMARY KEY,
            email   TEXT NOT NULL UNIQUE COLLATE NOCASE,
            name    TEXT NOT NULL DEFAULT '',
            status  TEXT NOT NULL CHECK (status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        )""",
        # Listing by status in id order (`list --status`, choosing recipients).
        "CREATE INDEX subscribers_status ON subscribers (status, id)",
        """CREATE TABLE events (
            id            INTEGER PRIMARY KEY,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            at            TEXT NOT NULL,
            from_status   TEXT CHECK (from_status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            to_status     TEXT NOT NULL CHECK (to_status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            source        TEXT NOT NULL CHECK (source IN ('web', 'one-click', 'cli', 'import', 'sendgrid')),
            detail        TEXT
        )""",
        "CREATE INDEX events_subscriber ON events (subscriber_id, id)",
        # One row per (issue, recipient): the recipients are fixed when a dispatch starts,
        # and the state is committed before and after every request to the backend.
        """CREATE TABLE dispatches (
            issue    TEXT PRIMARY KEY,
            started  TEXT NOT NULL,
            backend  TEXT NOT NULL,
            total    INTEGER NOT NULL,
            finished TEXT
        )""",
        """CREATE TABLE deliveries (
            issue         TEXT NOT NULL,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            email         TEXT NOT NULL,
            state         TEXT NOT NULL DEFAULT 'pending'
                          CHECK (state IN ('pending', 'in_flight', 'sent', 'skipped', 'failed', 'in_doubt')),
            batch         INTEGER,
            attempts      INTEGER NOT NULL DEFAULT 0,
            last_error    TEXT,
            message_id    TEXT,
            created       TEXT NOT NULL,
            updated       TEXT NOT NULL,
            PRIMARY KEY (issue, subscriber_id)
        )""",
        # A batch's recipients change state together (in_flight -> sent / in_doubt).
        "CREATE INDEX deliveries_batch ON deliveries (issue, batch)",
        """CREATE TABLE test_sends (
            id          INTEGER PRIMARY KEY,
            issue       TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            recipients  TEXT NOT NULL CHECK (json_valid(recipients)),
            at          TEXT NOT NULL
        )""",
        "CREATE INDEX test_sends_issue ON test_sends (issue, fingerprint)",
        # Claiming the next pending recipients in id order without sorting the whole ledger.
        "CREATE INDEX deliveries_claim ON deliveries (issue, state, subscriber_id)",
    ),
    (  # 2: one subscriber per address, whatever the Unicode form or case of its letters
        "ALTER TABLE subscribers ADD COLUMN email_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE subscribers ADD COLUMN merged_into INTEGER REFERENCES subscribers (id)",
        _merge_same_addresses,
        "CREATE UNIQUE INDEX subscribers_email_key ON subscribers (email_key) WHERE merged_into IS NULL",
    ),
    (  # 3: delivery events: what SendGrid's Event Webhook and bounce mail say about each message
        # Two more sources of status changes. SQLite changes a CHECK constraint only by
        # rebuilding the table, so: copy, drop, rename, and the index again.
        """CREATE TABLE events_new (
            id            INTEGER PRIMARY KEY,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            at            TEXT NOT NULL,
            from_status   TEXT CHECK (from_status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            to_status     TEXT NOT NULL CHECK (to_status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            source        TEXT NOT NULL CHECK (source IN ('web', 'one-click', 'cli', 'import', 'sendgrid',
                                                          'sendgrid-webhook', 'bounce-mail')),
            detail        TEXT
        )""",
        "INSERT INTO events_new (id, subscriber_id, at, from_status, to_status, source, detail)"
        " SELECT id, subscriber_id, at, from_status, to_status, source, detail FROM events",
        "DROP TABLE events",
        "ALTER TABLE events_new RENAME TO events",
        "CREATE INDEX events_subscriber ON events (subscriber_id, id)",
        # One row per event about one message: `event_key` is SendGrid's sg_event_id (or,
        # for bounce mail, the mail's key and the subscriber), so an event is kept once
        # however often it arrives.
        """CREATE TABLE delivery_events (
            id            INTEGER PRIMARY KEY,
            event_key     TEXT NOT NULL UNIQUE,
            issue         TEXT NOT NULL,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            kind          TEXT NOT NULL CHECK (kind IN ('delivered', 'deferred', 'bounce', 'blocked', 'dropped',
                                                        'spamreport', 'unsubscribe', 'group_unsubscribe',
                                                        'open', 'click', 'dsn-permanent', 'dsn-temporary')),
            at            TEXT NOT NULL,
            url           TEXT,
            detail        TEXT
        )""",
        # The report counts by issue and kind; the soft-bounce rule reads by subscriber.
        "CREATE INDEX delivery_events_issue ON delivery_events (issue, kind, subscriber_id)",
        "CREATE INDEX delivery_events_subscriber ON delivery_events (subscriber_id, issue, kind)",
        # Bounce mail already read (by Message-ID, or a hash of the whole mail), so a
        # second scan of the same mailbox changes nothing.
        """CREATE TABLE scanned_mail (
            mail_key TEXT PRIMARY KEY,
            at       TEXT NOT NULL,
            outcome  TEXT NOT NULL
        )""",
    ),
    (  # 4: the ledger without its index by state
        # Every recipient changes state twice in a dispatch (claimed, then sent), and each
        # change moved an entry of this index: a third of the ledger's cost. The claim
        # walks the primary key (issue, subscriber_id) from where the last claim ended,
        # and the counts by state read one issue's rows, so nothing needs it.
        "DROP INDEX deliveries_claim",
    ),
    (  # 5: signup with double opt-in: the `pending` status, the `form` source, consents, limits
        # (the functions are in the signup section at the end of this module)
        lambda conn: _allow_in_checks(conn, "subscribers", {"status": "pending"}),
        lambda conn: _allow_in_checks(
            conn, "events", {"from_status": "pending", "to_status": "pending", "source": "form"}
        ),
        # Each consent given: when, how (`form`; or what an imported list said), from where.
        """CREATE TABLE consents (
            id            INTEGER PRIMARY KEY,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            at            TEXT NOT NULL,
            source        TEXT NOT NULL,
            ip            TEXT,
            detail        TEXT
        )""",
        "CREATE INDEX consents_subscriber ON consents (subscriber_id, id)",
        # Confirmation emails, sent or on their way: the per-address limits count them.
        """CREATE TABLE confirmation_mails (
            id            INTEGER PRIMARY KEY,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers (id),
            at            TEXT NOT NULL,
            state         TEXT NOT NULL CHECK (state IN ('sending', 'sent'))
        )""",
        "CREATE INDEX confirmation_mails_subscriber ON confirmation_mails (subscriber_id, at)",
        # POST /subscribe per client over the last hour (older rows are deleted).
        """CREATE TABLE signup_posts (
            id     INTEGER PRIMARY KEY,
            client TEXT NOT NULL,
            at     TEXT NOT NULL
        )""",
        "CREATE INDEX signup_posts_client ON signup_posts (client, at)",
        "CREATE INDEX signup_posts_at ON signup_posts (at)",
    ),
    (  # 6: each dispatch's tag, from which every message's Message-ID is derived (tokens.py)
        "ALTER TABLE dispatches ADD COLUMN tag TEXT",
        _tag_dispatches,
        "CREATE INDEX dispatches_tag ON dispatches (tag)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# Whether a subscriber left (unsubscribed, bounced, complained) after a given time.
_LEFT_SINCE = (
    "SELECT 1 FROM events WHERE subscriber_id = ? AND at > ?"
    " AND to_status IN ('bounced', 'complained', 'unsubscribed') LIMIT 1"
)

# PostgreSQL's migrations, number for number beside MIGRATIONS: a migration added there
# gets its PostgreSQL text here. No PostgreSQL database is older than migration 3, so the
# first entry makes the schema as it stands after migration 3 and the next two have
# nothing left to do. Beyond SQLite's tables, PostgreSQL keeps what several senders
# share: which sender claimed each row in flight (`claimed_by`), the last batch number
# handed out for an issue (`dispatches.batches`), and the numbers senders take.
_PG_IDENTITY = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
# Text columns compare and sort by code point, as SQLite's do, whatever the server's
# locale, so slugs, times and links come out in the same order on both engines.
PG_MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    (
        f"""CREATE TABLE subscribers (
            id          {_PG_IDENTITY},
            email       TEXT COLLATE "C" NOT NULL,
            name        TEXT COLLATE "C" NOT NULL DEFAULT '',
            status      TEXT COLLATE "C" NOT NULL CHECK (status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            created     TEXT COLLATE "C" NOT NULL,
            updated     TEXT COLLATE "C" NOT NULL,
            email_key   TEXT COLLATE "C" NOT NULL DEFAULT '',
            merged_into BIGINT REFERENCES subscribers (id)
        )""",
        "CREATE INDEX subscribers_status ON subscribers (status, id)",
        "CREATE UNIQUE INDEX subscribers_email_key ON subscribers (email_key) WHERE merged_into IS NULL",
        f"""CREATE TABLE events (
            id            {_PG_IDENTITY},
            subscriber_id BIGINT NOT NULL REFERENCES subscribers (id),
            at            TEXT COLLATE "C" NOT NULL,
            from_status   TEXT COLLATE "C" CHECK (from_status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            to_status     TEXT COLLATE "C" NOT NULL CHECK (to_status IN ('active', 'unsubscribed', 'bounced', 'complained')),
            source        TEXT COLLATE "C" NOT NULL CHECK (source IN ('web', 'one-click', 'cli', 'import', 'sendgrid',
                                                          'sendgrid-webhook', 'bounce-mail')),
            detail        TEXT COLLATE "C"
        )""",
        "CREATE INDEX events_subscriber ON events (subscriber_id, id)",
        """CREATE TABLE dispatches (
            issue    TEXT COLLATE "C" PRIMARY KEY,
            started  TEXT COLLATE "C" NOT NULL,
            backend  TEXT COLLATE "C" NOT NULL,
            total    BIGINT NOT NULL,
            finished TEXT COLLATE "C",
            batches  BIGINT NOT NULL DEFAULT 0
        )""",
        # The ledger has no index on `state` or `batch` here: each recipient's row changes
        # those twice per send, and a change to no indexed column is rewritten in place
        # on its page (a "HOT" update, which the free half of each page leaves room for)
        # instead of adding an entry to every index. Claims walk the primary key from the
        # last id they took; status and the report read an issue's rows once.
        """CREATE TABLE deliveries (
            issue         TEXT COLLATE "C" NOT NULL,
            subscriber_id BIGINT NOT NULL REFERENCES subscribers (id),
            email         TEXT COLLATE "C" NOT NULL,
            state         TEXT COLLATE "C" NOT NULL DEFAULT 'pending'
                          CHECK (state IN ('pending', 'in_flight', 'sent', 'skipped', 'failed', 'in_doubt')),
            batch         BIGINT,
            attempts      INTEGER NOT NULL DEFAULT 0,
            last_error    TEXT COLLATE "C",
            message_id    TEXT COLLATE "C",
            created       TEXT COLLATE "C" NOT NULL,
            updated       TEXT COLLATE "C" NOT NULL,
            claimed_by    BIGINT,
            PRIMARY KEY (issue, subscriber_id)
        ) WITH (fillfactor = 50)""",
        f"""CREATE TABLE test_sends (
            id          {_PG_IDENTITY},
            issue       TEXT COLLATE "C" NOT NULL,
            fingerprint TEXT COLLATE "C" NOT NULL,
            recipients  TEXT COLLATE "C" NOT NULL CHECK (recipients::jsonb IS NOT NULL),
            at          TEXT COLLATE "C" NOT NULL
        )""",
        "CREATE INDEX test_sends_issue ON test_sends (issue, fingerprint)",
        f"""CREATE TABLE delivery_events (
            id            {_PG_IDENTITY},
            event_key     TEXT COLLATE "C" NOT NULL UNIQUE,
            issue         TEXT COLLATE "C" NOT NULL,
            subscriber_id BIGINT NOT NULL REFERENCES subscribers (id),
            kind          TEXT COLLATE "C" NOT NULL CHECK (kind IN ('delivered', 'deferred', 'bounce', 'blocked', 'dropped',
                                                        'spamreport', 'unsubscribe', 'group_unsubscribe',
                                                        'open', 'click', 'dsn-permanent', 'dsn-temporary')),
            at            TEXT COLLATE "C" NOT NULL,
            url           TEXT COLLATE "C",
            detail        TEXT COLLATE "C"
        )""",
        "CREATE INDEX delivery_events_issue ON delivery_events (issue, kind, subscriber_id)",
        "CREATE INDEX delivery_events_subscriber ON delivery_events (subscriber_id, issue, kind)",
        """CREATE TABLE scanned_mail (
            mail_key TEXT COLLATE "C" PRIMARY KEY,
            at       TEXT COLLATE "C" NOT NULL,
            outcome  TEXT COLLATE "C" NOT NULL
        )""",
        # Each sender's number, which its advisory lock carries (an integer key).
        "CREATE SEQUENCE sender_ids AS INTEGER",
    ),
    (),  # 2: made by the first entry
    (),  # 3: made by the first entry
    (),  # 4: PostgreSQL's ledger never had the index by state
    (  # 5: signup with double opt-in: the `pending` status, the `form` source, consents, limits
        "ALTER TABLE subscribers DROP CONSTRAINT subscribers_status_check,"
        " ADD CONSTRAINT subscribers_status_check"
        " CHECK (status IN ('active', 'unsubscribed', 'bounced', 'complained', 'pending'))",
        "ALTER TABLE events DROP CONSTRAINT events_from_status_check,"
        " ADD CONSTRAINT events_from_status_check"
        " CHECK (from_status IN ('active', 'unsubscribed', 'bounced', 'complained', 'pending')),"
        " DROP CONSTRAINT events_to_status_check,"
        " ADD CONSTRAINT events_to_status_check"
        " CHECK (to_status IN ('active', 'unsubscribed', 'bounced', 'complained', 'pending')),"
        " DROP CONSTRAINT events_source_check,"
        " ADD CONSTRAINT events_source_check CHECK (source IN ('web', 'one-click', 'cli', 'import', 'sendgrid',"
        " 'sendgrid-webhook', 'bounce-mail', 'form'))",
        f"""CREATE TABLE consents (
            id            {_PG_IDENTITY},
            subscriber_id BIGINT NOT NULL REFERENCES subscribers (id),
            at            TEXT COLLATE "C" NOT NULL,
            source        TEXT COLLATE "C" NOT NULL,
            ip            TEXT COLLATE "C",
            detail        TEXT COLLATE "C"
        )""",
        "CREATE INDEX consents_subscriber ON consents (subscriber_id, id)",
        f"""CREATE TABLE confirmation_mails (
            id            {_PG_IDENTITY},
            subscriber_id BIGINT NOT NULL REFERENCES subscribers (id),
            at            TEXT COLLATE "C" NOT NULL,
            state         TEXT COLLATE "C" NOT NULL CHECK (state IN ('sending', 'sent'))
        )""",
        "CREATE INDEX confirmation_mails_subscriber ON confirmation_mails (subscriber_id, at)",
        f"""CREATE TABLE signup_posts (
            id     {_PG_IDENTITY},
            client TEXT COLLATE "C" NOT NULL,
            at     TEXT COLLATE "C" NOT NULL
        )""",
        "CREATE INDEX signup_posts_client ON signup_posts (client, at)",
        "CREATE INDEX signup_posts_at ON signup_posts (at)",
    ),
    (  # 6: each dispatch's tag, from which every message's Message-ID is derived (tokens.py)
        'ALTER TABLE dispatches ADD COLUMN tag TEXT COLLATE "C"',
        _tag_dispatches,
        "CREATE INDEX dispatches_tag ON dispatches (tag)",
    ),
)
assert len(PG_MIGRATIONS) == len(MIGRATIONS), "every migration needs its PostgreSQL text in PG_MIGRATIONS"

# Advisory lock keys (two 32-bit integers): the first names what is locked.
_LOCK_WRITER = 0x686D0001  # (this, 0): one read-then-write transaction at a time
_LOCK_SENDER = 0x686D0002  # (this, sender number): a sender is alive
_LOCK_ISSUE = 0x686D0003  # (this, hash of the slug), shared: a sender of this issue is alive
# A sender's session must end soon after its machine is gone, so that its batches are
# found in doubt: the server probes an idle connection after 30 s, every 10 s, 3 times.
_SENDER_KEEPALIVE = ("SET tcp_keepalives_idle = 30", "SET tcp_keepalives_interval = 10", "SET tcp_keepalives_count = 3")


# The advisory locks of this database held now, by their first key (`?`).
_PG_ADVISORY = (
    "locktype = 'advisory' AND granted AND objsubid = 2 AND classid::bigint = ?"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
# A ledger row whose sender is gone: its lock is free (or no sender is named).
_PG_SENDER_GONE = f"(claimed_by IS NULL OR claimed_by NOT IN (SELECT objid::bigint FROM pg_locks WHERE {_PG_ADVISORY}))"
# One round of a claim: lock up to %(size)s pending rows after %(after)s, skipping rows
# locked by another sender's claim; take a batch number from the dispatch (the first
# round of a claim, when some row is still active); mark the active ones in flight for
# this sender and the others skipped, as the SQLite claim does.
_PG_CLAIM = """
WITH picked AS (
    SELECT d.subscriber_id FROM deliveries AS d
    WHERE d.issue = %(issue)s AND d.state = 'pending' AND d.subscriber_id > %(after)s
    ORDER BY d.subscriber_id LIMIT %(size)s
    FOR UPDATE SKIP LOCKED
), people AS (
    -- One primary-key lookup per picked row: the planner, which cannot tell how many rows
    -- `picked` holds, would otherwise hash every subscriber. (LIMIT 1 keeps each
    -- LATERAL subquery from being folded back into a plain join.)
    SELECT k.subscriber_id, p.name, p.status FROM picked AS k
    CROSS JOIN LATERAL (SELECT coalesce(s.merged_into, s.id) AS id FROM subscribers AS s
                        WHERE s.id = k.subscriber_id LIMIT 1) AS s
    CROSS JOIN LATERAL (SELECT p.name, p.status FROM subscribers AS p WHERE p.id = s.id LIMIT 1) AS p
), numbered AS (
    UPDATE dispatches SET batches = batches + 1
    WHERE issue = %(issue)s AND CAST(%(batch)s AS BIGINT) IS NULL
      AND EXISTS (SELECT 1 FROM people WHERE status = 'active')
    RETURNING batches
), chosen AS (
    SELECT coalesce(CAST(%(batch)s AS BIGINT), (SELECT batches FROM numbered)) AS batch
)
UPDATE deliveries AS d SET
    state = CASE WHEN x.status = 'active' THEN 'in_flight' ELSE 'skipped' END,
    batch = CASE WHEN x.status = 'active' THEN (SELECT batch FROM chosen) ELSE d.batch END,
    attempts = d.attempts + CASE WHEN x.status = 'active' THEN 1 ELSE 0 END,
    claimed_by = CASE WHEN x.status = 'active' THEN CAST(%(me)s AS BIGINT) ELSE d.claimed_by END,
    last_error = CASE WHEN x.status = 'active' THEN d.last_error ELSE x.status || ' since the dispatch began' END,
    updated = %(now)s
FROM people AS x
WHERE d.issue = %(issue)s AND d.subscriber_id = x.subscriber_id
RETURNING d.subscriber_id, d.email, x.name, d.state, d.batch, d.attempts
"""


#: How long the web app's pool keeps retrying a lost connection before it gives up and
#: waits for a request to need one.
POOL_RECONNECT_S = 10.0


class _PoolWarnings(logging.Filter):
    """psycopg.pool's warnings (two lines at every attempt to reconnect, 10-12 in 30 s
    while a server is down) stay out of the log: the web endpoint says in one line when
    the database goes, and in one when it is back."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _quiet_pool_log() -> None:
    logger = logging.getLogger("psycopg.pool")
    if not any(isinstance(f, _PoolWarnings) for f in logger.filters):
        logger.addFilter(_PoolWarnings())


def _issue_key(issue: str) -> int:
    return zlib.crc32(issue.encode("utf-8")) & 0x7FFFFFFF


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """A statement written with `?` placeholders, as psycopg reads it."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PgConn:
    """A psycopg connection that reads the store's `?` statements (a `Conn`)."""

    def __init__(self, raw: psycopg.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Any = (), /) -> psycopg.Cursor:
        return self.raw.execute(_pg_sql(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> psycopg.Cursor:
        cursor = self.raw.cursor()
        cursor.executemany(_pg_sql(sql), parameters)
        return cursor


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC to the second, with a `Z`: how every time is stored."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Not strftime: its %Y leaves out the leading zeros of a year before 1000.
    m = moment.astimezone(UTC)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class UnknownSubscriber(HighlightsError):
    """No subscriber with that id or address."""


class UnusableDatabase(HighlightsError):
    """The database cannot be used as it is: damaged, read-only, out of reach, on a full
    disk, or locked too long. The message names the file and says what to do."""


class NoHighlightsData(UnusableDatabase):
    """A PostgreSQL database without highlightsmail's tables. Only `db copy` and
    `db upgrade` give it the schema: a command that made it by itself would show an
    empty list as if the state were lost (the workspace pointed there before the copy)."""


class OutdatedSchema(HighlightsError):
    """The database has an older schema: `highlights db upgrade` brings it up to date."""


def _first_line(exc: Exception) -> str:
    """The gist of a driver's message, on one line (libpq's run over several, with hints)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
    # "connection failed: connection to server at "h", port 5432 failed: Connection refused"
    text = text.rsplit(" failed: ", 1)[-1] if "failed: " in text else text
    return " ".join(text.removeprefix("FATAL:").split())


class MergedAddressesWarning(HighlightsWarning):
    """An upgrade found rows whose addresses are one address, and merged them."""


@dataclass(frozen=True)
class Subscriber:
    id: int
    email: str
    name: str
    status: str
    created: str
    updated: str


@dataclass(frozen=True)
class Event:
    """One change of a subscriber's status (from_status is None when they were created)."""

    id: int
    subscriber_id: int
    at: str
    from_status: str | None
    to_status: str
    source: str
    detail: str | None


class ImportRow(NamedTuple):
    """One validated row of an import. `email` is already normalised; `created` and
    `updated` (stored format) are used only when the address is new. A tuple, since
    an import makes 100,000 of them and may pass them between processes."""

    email: str
    name: str = ""
    status: str = "active"
    created: str | None = None
    updated: str | None = None
    detail: str | None = None  # recorded with the event, e.g. "subscribers.csv:12"
    consented: str | None = None  # when the person consented (stored format), if the file says
    consent_source: str | None = None  # how they consented, as the file says (else the import's source)


@dataclass(frozen=True)
class ImportResult:
    new: int
    updated: int
    unchanged: int


_SUBSCRIBER_COLUMNS = "id, email, name, status, created, updated"
# A ledger row's subscriber as a person, `p`: the row it was merged into, if any, whose
# status and name are the ones that count.
_PERSON_JOIN = (
    "JOIN subscribers AS s ON s.id = d.subscriber_id JOIN subscribers AS p ON p.id = coalesce(s.merged_into, s.id)"
)


@dataclass(frozen=True)
class DispatchInfo:
    """An issue's dispatch: when it began, through what, and for how many recipients."""

    issue: str
    started: str
    backend: str
    total: int
    finished: str | None
    tag: str | None = None  # the dispatch's tag, in every message token (tokens.py)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One recipient's row in the ledger of an issue."""

    subscriber_id: int
    email: str
    name: str
    state: str
    batch: int | None
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class TestSend:
    issue: str
    fingerprint: str
    recipients: list[str]
    at: str


#: What the delivery events of an issue can be: SendGrid's event types (a bounce of
#: type `blocked` is kept as `blocked`), and permanent or temporary failures read from
#: bounce mail (DSNs).
DeliveryKind = Literal[
    "delivered",
    "deferred",
    "bounce",
    "blocked",
    "dropped",
    "spamreport",
    "unsubscribe",
    "group_unsubscribe",
    "open",
    "click",
    "dsn-permanent",
    "dsn-temporary",
]
DELIVERY_KINDS: tuple[str, ...] = get_args(DeliveryKind)
# How far each status says "mail no more": events only ever raise it.
_LEAVING_RANK = {"unsubscribed": 1, "bounced": 2, "complained": 3}
# Whether the issue `d.issue` soft-bounced for subscriber `d.subscriber_id` (SQL).
_SOFT_ISSUE = """(
    NOT EXISTS (SELECT 1 FROM delivery_events AS x WHERE x.subscriber_id = d.subscriber_id
                AND x.issue = d.issue AND x.kind = 'delivered')
    AND (EXISTS (SELECT 1 FROM delivery_events AS x WHERE x.subscriber_id = d.subscriber_id
                 AND x.issue = d.issue AND x.kind IN ('blocked', 'dsn-temporary'))
         OR (EXISTS (SELECT 1 FROM delivery_events AS x WHERE x.subscriber_id = d.subscriber_id
                     AND x.issue = d.issue AND x.kind = 'deferred')
             AND EXISTS (SELECT 1 FROM delivery_events AS x WHERE x.subscriber_id = d.subscriber_id
                         AND x.issue = d.issue AND x.kind = 'dropped'))))"""


class DeliveryEventRow(NamedTuple):
    """One event about the message an issue sent to a subscriber, ready to record."""

    key: str  # SendGrid's sg_event_id, or the bounce mail's key and the subscriber
    issue: str | None  # None: bounce mail naming no issue we sent them (only the status moves)
    subscriber_id: int
    kind: str  # one of DELIVERY_KINDS
    at: str  # when it happened, in the stored format
    email: str | None = None  # the address the event names, checked against the ledger's
    url: str | None = None  # a click's link
    detail: str | None = None  # the reason given, kept with the event and any status change
    status: str | None = None  # the status the event moves the subscriber to, if any
    soft: bool = False  # whether it may make the issue a soft bounce


@dataclass
class RecordResult:
    """What recording a batch of delivery events did."""

    recorded: int = 0
    duplicates: int = 0  # already recorded (the same event key)
    unknown: int = 0  # no such issue sent to that subscriber: ignored
    changed: int = 0  # status changes, the soft limit's included
    soft_limited: int = 0  # subscribers made bounced by the soft limit


def _create_private(path: Path) -> None:
    """Create the database file readable and writable by its owner only, before SQLite
    does (it would use 0644): the file holds every subscriber's address, and SQLite
    gives the -wal and -shm files the mode of the database. An existing file keeps its
    mode, which its owner may have chosen (a group shared with the web server)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        folder = display_path(path.parent) if str(path.parent) else "."
        raise UnusableDatabase(
            f"{display_path(path)}: cannot create the database: {exc.strerror or exc}; "
            f"let the user running highlights write to the folder {folder}"
        ) from None
    os.close(fd)


class Store:
    """The database of one workspace. Also a context manager that closes it.

    `target` is the SQLite file's path or a PostgreSQL URL. An empty database gets the
    schema (a PostgreSQL one only with `create=True`, or `upgrade=True`: else it is
    refused with NoHighlightsData); one with an older schema is refused with the hint to
    run `highlights db upgrade`, which opens it with `upgrade=True`. On PostgreSQL,
    `pooled=True` borrows a connection from a pool for each call (the web app), so one
    Store serves many threads at once; otherwise the Store has its own connection."""

    def __init__(
        self,
        target: Path | str,
        *,
        clock: Callable[[], datetime] | None = None,
        timeout: float = BUSY_TIMEOUT_S,
        upgrade: bool = False,
        pooled: bool = False,
        create: bool = True,
    ) -> None:
        self._clock = clock or _utc_now
        self._timeout = timeout
        self._lock = threading.RLock()
        self._outer = 0  # transaction() depth: writes inside it are savepoints (SQLite)
        self._upgrade = upgrade
        self._create = create or upgrade
        self._sender: int | None = None
        self.upgraded_from: int | None = None  # the version an upgrade started from, if one ran
        self.created_schema = False  # whether this opening gave an empty database the schema
        self.postgresql = isinstance(target, str) and is_postgresql(target)
        if self.postgresql:
            assert isinstance(target, str)
            self.url = target
            self.where = describe_url(target)
            self.path = None
            self._open_pg(pooled)
        else:
            self.path = Path(target)
            self.where = display_path(self.path)
            self._open_sqlite()

    def _open_sqlite(self) -> None:
        assert self.path is not None
        where = self.where
        _create_private(self.path)
        try:
            # isolation_level=None: the module never opens transactions behind our back;
            # every write below says BEGIN IMMEDIATE itself.
            self._conn = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._unusable(exc) or HighlightsError(f"{where}: cannot open the database: {exc}") from None
        try:
            with self._guard():
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL
                self._conn.execute("PRAGMA foreign_keys = ON")
                self._conn.execute("PRAGMA temp_store = MEMORY")
            reports = self._migrate()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise HighlightsError(f"{where}: not a usable highlightsmail database: {exc}") from None
        except BaseException:
            self._conn.close()
            raise
        self._tell(reports)

    def _open_pg(self, pooled: bool) -> None:
        import psycopg

        self._pool: psycopg_pool.ConnectionPool | None = None
        self._raw: psycopg.Connection | None = None
        options: dict[str, Any] = {
            "autocommit": True,  # reads see what is committed now; writes say where their transaction begins
            "connect_timeout": max(1, round(min(self._timeout, 10))),
            "application_name": "highlights",
            # A lock held too long is the same one line as SQLite's busy database.
            "options": f"-c lock_timeout={int(self._timeout * 1000)}",
        }
        try:
            if pooled:
                from psycopg_pool import ConnectionPool

                _quiet_pool_log()
                # Checked on the way out of the pool: a server restarted since is met with a
                # new connection, not a failed request.
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=8,
                    kwargs=options,
                    # A request waits this long for a connection, then answers 503.
                    timeout=min(self._timeout, 5),
                    check=ConnectionPool.check_connection,
                    # A connection lost with the server is retried at growing intervals
                    # (1, 2, 4 s...), then given up, and made anew when a request needs
                    # it: a server back after a long outage is used at once, not after
                    # the next of ever longer waits (there were minutes between tries).
                    reconnect_timeout=POOL_RECONNECT_S,
                    name="highlights",
                    open=False,
                )
                self._pool.open(wait=True, timeout=min(self._timeout, 5))
            else:
                self._raw = psycopg.connect(self.url, **options)
            reports = self._migrate()
        except psycopg.Error as exc:
            self._close_pg()
            raise self._pg_unusable(exc, connecting=True) or HighlightsError(
                f"{self.where}: not a usable highlightsmail database: {_first_line(exc)}"
            ) from None
        except BaseException:
            self._close_pg()
            raise
        self._tell(reports)

    def _tell(self, reports: list[str]) -> None:
        for line in reports:
            warnings.warn(MergedAddressesWarning(f"{self.where}: {line}"), stacklevel=3)

    @classmethod
    def open(cls, ws: Place, **kwargs) -> Store:
        """The workspace's database (settings `database`, or HIGHLIGHTS_DATABASE_URL), as
        every command and the web app open it: a new SQLite file (and its folder) is made
        on first use, but an empty PostgreSQL database is NoHighlightsData unless this is
        `db upgrade` (upgrade=True)."""
        url = ws.database_url
        if url:
            kwargs.setdefault("create", False)
            return cls(url, **kwargs)
        kwargs.pop("pooled", None)  # SQLite: each Store has its own connection
        path = ws.db_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnusableDatabase(
                f"{display_path(path)}: cannot create its folder: {exc.strerror or exc}; "
                "check the permissions of the folders above it"
            ) from None
        return cls(path, **kwargs)

    def close(self) -> None:
        with self._lock:
            if self.postgresql:
                self._close_pg()
            else:
                self._conn.close()

    def _close_pg(self) -> None:
        if self._raw is not None:
            self._raw.close()  # also frees the session's advisory locks
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------

    def now(self) -> str:
        """The current time in the stored format (the clock is injectable for tests)."""
        return format_time(self._clock())

    @property
    def schema_version(self) -> int:
        if self.postgresql:
            with self._pg_connection() as raw:
                return self._pg_version(raw)
        with self._lock, self._guard():
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    @staticmethod
    def _pg_version(raw: psycopg.Connection) -> int:
        """The schema's version in PostgreSQL: its one-row table (0: no schema yet)."""
        # Read from pg_class itself, not to_regclass(): the server's cache of names may
        # still say "no such table" after waiting for a lock behind the transaction that
        # made it, since an advisory lock does not refresh that cache.
        exists = raw.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n"
            " ON n.oid = c.relnamespace WHERE c.relname = 'schema_version' AND n.nspname = current_schema())"
        ).fetchone()
        if not exists or not exists[0]:
            return 0
        row = raw.execute("SELECT version FROM schema_version").fetchone()
        return row[0] if row else 0

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise HighlightsError(
                f"{self.where}: this database was made by a newer highlightsmail "
                f"(schema {version}, this version knows up to {SCHEMA_VERSION}); upgrade highlightsmail"
            )
        if 0 < version < SCHEMA_VERSION and not self._upgrade:
            raise OutdatedSchema(
                f"{self.where}: the database has schema {version} and this highlightsmail needs {SCHEMA_VERSION}; "
                "back it up, then run `highlights db upgrade`"
            )

    def _migrate(self) -> list[str]:
        """Bring the schema up to date; returns what the steps have to tell the editor.

        An empty database gets the whole schema at once. An older one is upgraded only
        when asked (`upgrade=True`, the `db upgrade` command): an upgrade cannot be undone,
        the older highlightsmail that other machines may still run refuses the newer
        schema, and some upgrades merge rows, so it is the editor's step, not a side
        effect of whichever command runs first. An empty PostgreSQL database gets the
        schema only when asked too (`create`): see NoHighlightsData."""
        reports: list[str] = []
        version = self.schema_version
        self._check_version(version)
        if version == SCHEMA_VERSION:
            return reports
        if version == 0 and self.postgresql and not self._create:
            raise NoHighlightsData(
                f"{self.where}: no highlightsmail data here; run `highlights db copy` (to move a SQLite "
                "state in) or `highlights db upgrade` (to start an empty list here)"
            )
        migrations = PG_MIGRATIONS if self.postgresql else MIGRATIONS
        with self._write() as conn:
            # Another process may have migrated while we waited for the write lock.
            if self.postgresql:
                assert isinstance(conn, _PgConn)
                version = self._pg_version(conn.raw)
            else:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            self._check_version(version)
            if version == SCHEMA_VERSION:
                return reports
            if version:
                self.upgraded_from = version
            else:
                self.created_schema = True
            for number in range(version, SCHEMA_VERSION):
                for step in migrations[number]:
                    if isinstance(step, str):
                        conn.execute(step)
                    else:
                        reports.extend(step(conn) or [])
            if self.postgresql:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            else:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        return reports

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make the writes inside one transaction, committed at the end (the send loop
        records the batches that came back and claims the next ones with one commit).
        Each write inside it is a savepoint, undone alone if it fails. On PostgreSQL it
        takes no writers' lock: a sender's turn must not hold up the others."""
        with self._write(serial=not self.postgresql):
            self._outer += 1
            try:
                yield
            finally:
                self._outer -= 1

    def write_transaction(self) -> AbstractContextManager[Conn]:
        """One write transaction and its connection, for the store's own modules (the
        import in store/importing.py runs its statements on it)."""
        return self._write()

    @contextmanager
    def _pg_connection(self) -> Iterator[psycopg.Connection]:
        """A PostgreSQL connection for one call: the Store's own, or one from the pool."""
        import psycopg

        try:
            if self._pool is not None:
                with self._pool.connection() as raw:
                    yield raw
            else:
                assert self._raw is not None
                with self._lock:
                    yield self._raw
        except psycopg.Error as exc:
            problem = self._pg_unusable(exc)
            if problem is None:
                raise
            raise problem from None

    @contextmanager
    def _write(self, *, serial: bool = True) -> Iterator[Conn]:
        """One write transaction. On SQLite it holds the write lock from its first
        statement; on PostgreSQL, unless `serial` is False, the writers' advisory lock,
        so read-then-write transactions run one at a time there too."""
        if self.postgresql:
            with self._pg_connection() as raw, raw.transaction():
                if serial:
                    raw.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_WRITER,))
                yield _PgConn(raw)
            return
        with self._lock:
            if self._outer:
                with self._savepoint():
                    yield self._conn
                return
            with self._guard():
                self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                # Roll back only what is still open: SQLite may have ended the
                # transaction itself (a full disk, a damaged page).
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the error being raised says more than this one
                if isinstance(exc, sqlite3.Error):
                    problem = self._unusable(exc)
                    if problem is not None:
                        raise problem from None
                raise

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        with self._guard():
            self._conn.execute("SAVEPOINT write")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:
                with self._guard():
                    self._conn.execute("ROLLBACK TO write")
                    self._conn.execute("RELEASE write")
            raise
        with self._guard():
            self._conn.execute("RELEASE write")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn the SQLite errors a person can act on into UnusableDatabase."""
        try:
            yield
        except sqlite3.Error as exc:
            problem = self._unusable(exc)
            if problem is None:
                raise
            raise problem from None

    def _unusable(self, exc: sqlite3.Error) -> UnusableDatabase | None:
        """The one-line error for a failure of the file, its folder or the disk (None for
        anything else, such as a broken constraint: that is a bug, not a state of the file)."""
        assert self.path is not None
        code = getattr(exc, "sqlite_errorname", "") or ""
        where = display_path(self.path)
        folder = display_path(self.path.parent) if str(self.path.parent) else "."
        if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return UnusableDatabase(
                f"{where}: the database stayed busy for more than {self._timeout:g} s "
                "(another highlights process is writing); try again"
            )
        if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            rescued = self.path.with_name(self.path.stem + "-recovered" + self.path.suffix)
            first = "not a usable highlightsmail database" if code == "SQLITE_NOTADB" else "the database is damaged"
            return UnusableDatabase(
                f"{where}: {first} ({exc}); keep this file, rescue what it holds with "
                f'`sqlite3 {shlex.quote(where)} ".recover" | sqlite3 {shlex.quote(display_path(rescued))}` '
                "and put the new file in its place, or restore a backup"
            )
        if code.startswith("SQLITE_READONLY"):
            return UnusableDatabase(
                f"{where}: cannot write to the database ({exc}); let the user running highlights write to "
                f"the file and to its folder {folder} (SQLite keeps {self.path.name}-wal and -shm beside it)"
            )
        if code.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
            return UnusableDatabase(
                f"{where}: cannot open the database ({exc}); let the user running highlights read and write "
                f"the file and its folder {folder} (SQLite keeps {self.path.name}-wal and -shm beside it)"
            )
        if code.startswith("SQLITE_FULL"):
            return UnusableDatabase(f"{where}: the disk is full ({exc}); free some space and try again")
        if code.startswith("SQLITE_IOERR"):
            return UnusableDatabase(
                f"{where}: reading or writing the database failed ({exc}); check the disk, and that the "
                f"user running highlights may write to the file and its folder {folder}"
            )
        return None

    def _pg_unusable(self, exc: Exception, *, connecting: bool = False) -> UnusableDatabase | None:
        """The one-line error for a PostgreSQL server that cannot be reached, refuses, or
        cannot do what was asked now (None for anything else: a bug, not a state of the
        server). It names the server as `where` does, never the password."""
        import psycopg
        from psycopg import errors

        reason = _first_line(exc)
        if isinstance(exc, errors.LockNotAvailable | errors.DeadlockDetected):
            return UnusableDatabase(
                f"{self.where}: the database stayed busy for more than {self._timeout:g} s "
                "(another highlights process is writing); try again"
            )
        if isinstance(exc, errors.InvalidPassword | errors.InvalidAuthorizationSpecification):
            return UnusableDatabase(
                f"{self.where}: the server refused the login ({reason}); check the user, and the password in "
                "PGPASSWORD or HIGHLIGHTS_DATABASE_URL"
            )
        if isinstance(exc, errors.InvalidCatalogName):
            return UnusableDatabase(f"{self.where}: no such database on the server ({reason}); create it first")
        if isinstance(exc, errors.InsufficientPrivilege):
            return UnusableDatabase(
                f"{self.where}: the database user may not do this ({reason}); grant it the rights on the "
                "database's tables (or, for the first run, to create them)"
            )
        if isinstance(exc, errors.ReadOnlySqlTransaction):
            return UnusableDatabase(
                f"{self.where}: the server accepts no writes ({reason}); point the workspace at the primary server"
            )
        if isinstance(exc, errors.DiskFull | errors.OutOfMemory | errors.TooManyConnections):
            return UnusableDatabase(f"{self.where}: the database server cannot take this now ({reason}); try again")
        if isinstance(exc, psycopg.OperationalError):
            if connecting or type(exc).__name__ == "PoolTimeout":
                return UnusableDatabase(
                    f"{self.where}: cannot connect to the database server ({reason}); check that it is running "
                    "and that this machine can reach it; nothing was changed"
                )
            return UnusableDatabase(
                f"{self.where}: lost the database server ({reason}); what was under way was not kept; "
                "try again once the server is back"
            )
        return None

    def ping(self) -> None:
        """Ask the database something; UnusableDatabase when it cannot answer."""
        self._query("SELECT count(*) FROM dispatches")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.postgresql:
            with self._pg_connection() as raw:
                return raw.execute(_pg_sql(sql), params).fetchall()
        with self._lock, self._guard():
            return self._conn.execute(sql, params).fetchall()

    def _fetch_page(self, sql: str, params: tuple, page: int) -> list[tuple]:
        """At most `page` rows of a statement, read in one short step."""
        if self.postgresql:
            with self._pg_connection() as raw:
                return raw.execute(_pg_sql(sql), params).fetchmany(page)
        with self._lock, self._guard():
            return self._conn.execute(sql, params).fetchmany(page)

    @staticmethod
    def _event(
        conn: Conn,
        subscriber_id: int,
        at: str,
        from_status: str | None,
        to_status: str,
        source: str,
        detail: str | None,
    ) -> None:
        conn.execute(
            "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (subscriber_id, at, from_status, to_status, source, detail),
        )

    # -- subscribers ------------------------------------------------------------

    def get(self, subscriber_id: int) -> Subscriber | None:
        """The subscriber with this id, or None. An id whose row was merged into another
        (the same address) gives that one: the links in mail sent to it act on it."""
        rows = self._query(
            f"SELECT {_SUBSCRIBER_COLUMNS} FROM subscribers"
            " WHERE id = (SELECT coalesce(merged_into, id) FROM subscribers WHERE id = ?)",
            (subscriber_id,),
        )
        return Subscriber(*rows[0]) if rows else None

    def find(self, email: str) -> Subscriber | None:
        """The subscriber with this address (compared by `address_key`), or None."""
        rows = self._query(
            f"SELECT {_SUBSCRIBER_COLUMNS} FROM subscribers WHERE email_key = ? AND merged_into IS NULL",
            (address_key(email),),
        )
        return Subscriber(*rows[0]) if rows else None

    def add(
        self,
        email: str,
        name: str = "",
        *,
        status: Status = "active",
        source: Source = "cli",
        detail: str | None = None,
    ) -> tuple[Subscriber, bool]:
        """Add a subscriber; `(subscriber, True)` if new, `(existing, False)` if the address
        is already there in any spelling (then nothing is changed). `email` must already
        be validated."""
        _check(status, STATUSES, "status")
        _check(source, SOURCES, "source")
        key = address_key(email)
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_SUBSCRIBER_COLUMNS} FROM subscribers WHERE email_key = ? AND merged_into IS NULL", (key,)
            ).fetchone()
            if row:
                return Subscriber(*row), False
            now = self.now()
            sid = conn.execute(
                "INSERT INTO subscribers (email, email_key, name, status, created, updated) VALUES (?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                (email, key, name, status, now, now),
            ).fetchone()[0]
            self._event(conn, sid, now, None, status, source, detail)
            return Subscriber(sid, email, name, status, now, now), True

    def set_name(self, ident: int | str, name: str) -> bool:
        """Change a subscriber's name; True if it changed."""
        with self._write() as conn:
            sid, _status, old_name = self._locate(conn, ident)
            if old_name == name:
                return False
            conn.execute("UPDATE subscribers SET name = ?, updated = ? WHERE id = ?", (name, self.now(), sid))
            return True

    def set_status(
        self,
        ident: int | str,
        status: Status,
        source: Source,
        detail: str | None = None,
        *,
        only_from: Status | None = None,
    ) -> bool:
        """Move a subscriber (by id or address) to `status`, recording an event in the same
        transaction. True if the status changed; False (and no event) if it already was,
        or if `only_from` is given and the status is another (checked inside the
        transaction, so a bounce recorded meanwhile is never overwritten).
        Raises UnknownSubscriber."""
        _check(status, STATUSES, "status")
        _check(source, SOURCES, "source")
        with self._write() as conn:
            sid, old, _name = self._locate(conn, ident)
            if old == status or (only_from is not None and old != only_from):
                return False
            now = self.now()
            conn.execute("UPDATE subscribers SET status = ?, updated = ? WHERE id = ?", (status, now, sid))
            self._event(conn, sid, now, old, status, source, detail)
            return True

    @staticmethod
    def _locate(conn: Conn, ident: int | str) -> tuple[int, str, str]:
        """(id, status, name) of the subscriber with this id (a merged row gives the row
        it was merged into, as `get` does) or address."""
        if isinstance(ident, int):
            sql = (
                "SELECT id, status, name FROM subscribers"
                " WHERE id = (SELECT coalesce(merged_into, id) FROM subscribers WHERE id = ?)"
            )
            row = conn.execute(sql, (ident,)).fetchone()
        else:
            sql = "SELECT id, status, name FROM subscribers WHERE email_key = ? AND merged_into IS NULL"
            row = conn.execute(sql, (address_key(ident),)).fetchone()
        if row is None:
            raise UnknownSubscriber(f"no subscriber {ident}")
        return row

    def iter_subscribers(self, status: Status | None = None, *, page: int = _PAGE) -> Iterator[Subscriber]:
        """Every subscriber (or those with `status`) in id order, fetched a page at a time.

        Pages are read by id (keyset), each in its own short statement, so nothing holds a
        read transaction open while a slow consumer (a pager, a network) takes its time,
        and other calls on this Store can run between pages. A subscriber added while
        iterating appears at the end; none appears twice.
        """
        if status is not None:
            _check(status, STATUSES, "status")
        where = "id > ?" if status is None else "status = ? AND id > ?"
        sql = f"SELECT {_SUBSCRIBER_COLUMNS} FROM subscribers WHERE {where} AND merged_into IS NULL ORDER BY id LIMIT ?"
        last = 0
        while True:
            params = (last, page) if status is None else (status, last, page)
            rows = self._fetch_page(sql, params, page)
            for row in rows:
                yield Subscriber(*row)
            if len(rows) < page:
                return
            last = rows[-1][0]

    def count_by_status(self) -> dict[str, int]:
        """How many subscribers have each status (every status present, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        counts.update(self._query("SELECT status, count(*) FROM subscribers WHERE merged_into IS NULL GROUP BY status"))
        return counts

    def events(self, subscriber_id: int) -> list[Event]:
        """A subscriber's history, oldest first."""
        rows = self._query(
            "SELECT id, subscriber_id, at, from_status, to_status, source, detail FROM events"
            " WHERE subscriber_id = ? ORDER BY id",
            (subscriber_id,),
        )
        return [Event(*row) for row in rows]

    def import_rows(
        self, rows: Iterable[ImportRow], *, source: Source = "import", dry_run: bool = False
    ) -> ImportResult:
        """Import validated rows in ONE transaction; with `dry_run`, roll it back.

        Rules (so a list moved from another tool keeps its suppressions, and nobody who
        left is mailed again):
        - a new address is added with the row's status (`created`/`updated` from the row
          when given, e.g. from `subscribers export`, else now);
        - an existing address keeps its status unless the row says the person left
          (unsubscribed, bounced, complained), in which case that change is recorded;
          an import never makes anyone active again, and a bounced or complained
          address keeps that status (as on the web and with `remove`: an unsubscribed
          one could resubscribe itself);
        - an existing address takes the row's name only when the name is not empty
          (a list without names never erases the names you have).
        Every creation and status change gets an event with `source` and the row's detail;
        a new address whose row says when the person consented gets that consent too.
        Addresses are matched by `address_key` and must be unique by it within `rows`
        (ValueError otherwise).
        """
        _check(source, SOURCES, "source")
        now = self.now()
        params = (
            (
                r.email,
                address_key(r.email),
                r.name,
                _check(r.status, STATUSES, "status"),
                r.created or now,
                r.updated or r.created or now,
                r.detail,
                r.consented,
                r.consent_source,
            )
            for r in rows
        )
        try:
            with self._write() as conn:
                result = self._import(conn, params, now, source)
                if dry_run:
                    raise _Rollback(result)
        except _Rollback as rollback:
            return rollback.result
        return result

    def _import(self, conn: Conn, params: Iterable[tuple], now: str, source: str) -> ImportResult:
        # Stage the rows in a temporary table and let the database do the matching and the
        # writes in a handful of set-based statements: 100,000 rows take well under a second.
        if isinstance(conn, _PgConn):
            self._stage_pg(conn, params)
        else:
            self._stage_sqlite(conn, params)
        return self._import_staged(conn, now, source)

    _STAGE_COLUMNS = """
                email      TEXT NOT NULL,
                email_key  TEXT NOT NULL UNIQUE,
                name       TEXT NOT NULL,
                status     TEXT NOT NULL,
                created    TEXT NOT NULL,
                updated    TEXT NOT NULL,
                detail     TEXT,
                consented  TEXT,
                consent_source TEXT,
                sid        BIGINT,
                old_status TEXT,
                old_name   TEXT,
                is_new     INTEGER NOT NULL DEFAULT 1"""

    @classmethod
    def _stage_pg(cls, conn: _PgConn, params: Iterable[tuple]) -> None:
        from psycopg import errors

        conn.execute("DROP TABLE IF EXISTS pg_temp.import_rows")
        conn.execute(
            "CREATE TEMP TABLE import_rows (pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            f" {cls._STAGE_COLUMNS}) ON COMMIT DROP"
        )
        try:
            # COPY: the rows stream to the server without a round trip each.
            with conn.raw.cursor().copy(
                "COPY import_rows (email, email_key, name, status, created, updated, detail, consented, consent_source)"
                " FROM STDIN"
            ) as copy:
                for row in params:
                    copy.write_row(row)
        except errors.UniqueViolation as exc:
            raise ValueError(f"an address appears twice in the rows to import: {_first_line(exc)}") from None

    @classmethod
    def _stage_sqlite(cls, conn: Conn, params: Iterable[tuple]) -> None:
        conn.execute("DROP TABLE IF EXISTS temp.import_rows")
        conn.execute(f"CREATE TEMP TABLE import_rows (pos INTEGER PRIMARY KEY, {cls._STAGE_COLUMNS})")
        try:
            conn.executemany(
                "INSERT INTO import_rows (email, email_key, name, status, created, updated, detail,"
                " consented, consent_source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"an address appears twice in the rows to import: {exc}") from None

    @staticmethod
    def _import_staged(conn: Conn, now: str, source: str) -> ImportResult:
        conn.execute(
            "UPDATE import_rows SET sid = s.id, old_status = s.status, old_name = s.name, is_new = 0"
            " FROM subscribers AS s WHERE s.email_key = import_rows.email_key AND s.merged_into IS NULL"
        )
        total, new = conn.execute("SELECT count(*), coalesce(sum(is_new), 0) FROM import_rows").fetchone()

        conn.execute(
            "INSERT INTO subscribers (email, email_key, name, status, created, updated)"
            " SELECT email, email_key, name, status, created, updated FROM import_rows WHERE is_new = 1 ORDER BY pos"
        )
        conn.execute(
            "UPDATE import_rows SET sid = s.id FROM subscribers AS s"
            " WHERE import_rows.is_new = 1 AND s.email_key = import_rows.email_key AND s.merged_into IS NULL"
        )
        conn.execute(
            "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail)"
            " SELECT sid, ?, NULL, status, ?, detail FROM import_rows WHERE is_new = 1 ORDER BY pos",
            (now, source),
        )
        # A consent the file records (an export from here or another tool) comes along.
        conn.execute(
            "INSERT INTO consents (subscriber_id, at, source, detail)"
            " SELECT sid, consented, coalesce(consent_source, ?), detail FROM import_rows"
            " WHERE is_new = 1 AND consented IS NOT NULL ORDER BY pos",
            (source,),
        )

        # Conditions on the staged row `i`: the person left (and was not already in that
        # state, nor bounced or complained), or the row brings a different, non-empty name.
        leaves = (
            f"i.status IN ({_in(sorted(SUPPRESSED))}) AND i.status <> i.old_status"
            f" AND i.old_status NOT IN ({_in(sorted(UNDELIVERABLE))})"
        )
        renames = "i.name <> '' AND i.name <> i.old_name"
        conn.execute(
            "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail)"
            f" SELECT i.sid, ?, i.old_status, i.status, ?, i.detail FROM import_rows AS i"
            f" WHERE i.is_new = 0 AND {leaves} ORDER BY i.pos",
            (now, source),
        )
        cur = conn.execute(
            f"""UPDATE subscribers SET
                    status = CASE WHEN {leaves} THEN i.status ELSE subscribers.status END,
                    name = CASE WHEN {renames} THEN i.name ELSE subscribers.name END,
                    updated = ?
                FROM import_rows AS i
                WHERE subscribers.id = i.sid AND i.is_new = 0 AND (({leaves}) OR ({renames}))""",
            (now,),
        )
        updated = cur.rowcount
        conn.execute("DROP TABLE import_rows")  # the temporary one: it hides any other of that name
        return ImportResult(new=new, updated=updated, unchanged=total - new - updated)

    # -- the send ledger ----------------------------------------------------------
    # The dispatcher's contract: rows move pending -> in_flight (committed before the
    # request) -> sent | failed (committed after it). in_flight rows found by a later
    # run become in_doubt. Nothing here deletes a delivery row.

    def record_test_send(self, issue: str, fingerprint: str, recipients: list[str]) -> None:
        """Remember that this rendering (by fingerprint) went to these editors."""
        import json

        with self._write() as conn:
            conn.execute(
                "INSERT INTO test_sends (issue, fingerprint, recipients, at) VALUES (?, ?, ?, ?)",
                (issue, fingerprint, json.dumps(recipients), self.now()),
            )

    def has_test_send(self, issue: str, fingerprint: str | None = None) -> bool:
        """Whether the issue (this exact rendering, when `fingerprint` is given) was test-sent."""
        if fingerprint is None:
            rows = self._query("SELECT 1 FROM test_sends WHERE issue = ? LIMIT 1", (issue,))
        else:
            rows = self._query(
                "SELECT 1 FROM test_sends WHERE issue = ? AND fingerprint = ? LIMIT 1", (issue, fingerprint)
            )
        return bool(rows)

    def test_sends(self, issue: str) -> list[TestSend]:
        """The issue's test sends, oldest first."""
        import json

        rows = self._query(
            "SELECT issue, fingerprint, recipients, at FROM test_sends WHERE issue = ? ORDER BY id", (issue,)
        )
        return [TestSend(i, f, json.loads(r), at) for i, f, r, at in rows]

    def apply_suppressions(self, suppressions: Iterable) -> int:
        """Mark active subscribers whom the provider suppresses (items with `email`,
        `status`, `detail`), source `sendgrid`; returns how many changed. The iterable is
        read whole before writing, so a failure while reading it changes nothing."""
        wanted = [(x.email, x.status, x.detail or None) for x in suppressions]
        if not wanted:
            return 0
        now = self.now()
        changed = 0
        with self._write() as conn:
            for email, status, detail in wanted:
                _check(status, STATUSES, "status")
                row = conn.execute(
                    "SELECT id FROM subscribers WHERE email_key = ? AND merged_into IS NULL AND status = 'active'",
                    (address_key(email),),
                ).fetchone()
                if row is None:
                    continue
                conn.execute("UPDATE subscribers SET status = ?, updated = ? WHERE id = ?", (status, now, row[0]))
                self._event(conn, row[0], now, "active", status, "sendgrid", detail)
                changed += 1
        return changed

    def dispatch_info(self, issue: str) -> DispatchInfo | None:
        rows = self._query(
            "SELECT issue, started, backend, total, finished, tag FROM dispatches WHERE issue = ?", (issue,)
        )
        return DispatchInfo(*rows[0]) if rows else None

    def issues_tagged(self, tag: str) -> list[str]:
        """The issues whose dispatch has this tag (one, unless two random tags met)."""
        return [r[0] for r in self._query("SELECT issue FROM dispatches WHERE tag = ? ORDER BY issue", (tag,))]

    def begin_dispatch(self, issue: str, backend: str) -> int:
        """Fix the recipients of an issue: every subscriber active now, and the
        dispatch's tag (the one per-dispatch value its Message-IDs are derived from).
        Returns how many."""
        from highlightsmail.tokens import new_dispatch_tag

        now = self.now()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM dispatches WHERE issue = ?", (issue,)).fetchone():
                raise HighlightsError(f"{issue}: its dispatch has already begun")
            cur = conn.execute(
                "INSERT INTO deliveries (issue, subscriber_id, email, state, created, updated)"
                " SELECT ?, id, email, 'pending', ?, ? FROM subscribers"
                " WHERE status = 'active' AND merged_into IS NULL ORDER BY id",
                (issue, now, now),
            )
            total = cur.rowcount
            conn.execute(
                "INSERT INTO dispatches (issue, started, backend, total, tag) VALUES (?, ?, ?, ?, ?)",
                (issue, now, backend, total, new_dispatch_tag()),
            )
            return total

    def mark_in_doubt(self, issue: str) -> int:
        """A run that died left rows in_flight: nobody knows whether they went out.
        On PostgreSQL, only the rows of senders that are gone (their lock is free)."""
        if self.postgresql:
            with self._write(serial=False) as conn:
                return conn.execute(
                    "UPDATE deliveries SET state = 'in_doubt', updated = ?"
                    f" WHERE issue = ? AND state = 'in_flight' AND {_PG_SENDER_GONE}",
                    (self.now(), issue, _LOCK_SENDER),
                ).rowcount
        with self._write() as conn:
            return conn.execute(
                "UPDATE deliveries SET state = 'in_doubt', updated = ? WHERE issue = ? AND state = 'in_flight'",
                (self.now(), issue),
            ).rowcount

    def requeue(self, issue: str, state: str) -> int:
        """Put rows in `state` (failed, in_doubt) back to pending; returns how many."""
        _check(state, ("failed", "in_doubt"), "state")
        with self._write() as conn:
            return conn.execute(
                "UPDATE deliveries SET state = 'pending', updated = ? WHERE issue = ? AND state = ?",
                (self.now(), issue, state),
            ).rowcount

    def next_batch_number(self, issue: str) -> int:
        return self._query("SELECT coalesce(max(batch), 0) + 1 FROM deliveries WHERE issue = ?", (issue,))[0][0]

    def peek_recipients(self, issue: str, started: bool, limit: int) -> list[Delivery]:
        """The next recipients a dispatch would take, without claiming them."""
        if started:
            sql = (
                "SELECT d.subscriber_id, d.email, p.name, d.state, d.batch, d.attempts, d.last_error"
                f" FROM deliveries AS d {_PERSON_JOIN}"
                " WHERE d.issue = ? AND d.state = 'pending' AND p.status = 'active'"
                " ORDER BY d.subscriber_id LIMIT ?"
            )
            rows = self._query(sql, (issue, limit))
        else:
            rows = self._query(
                "SELECT id, email, name, 'pending', NULL, 0, NULL FROM subscribers"
                " WHERE status = 'active' AND merged_into IS NULL ORDER BY id LIMIT ?",
                (limit,),
            )
        return [Delivery(*row) for row in rows]

    def claim_batch(self, issue: str, batch: int, size: int, after_id: int = 0) -> tuple[list[Delivery], int, int]:
        """Take up to `size` pending recipients after `after_id`, in one transaction:
        anyone no longer active becomes `skipped`, the rest `in_flight` in `batch`.
        Returns (claimed, skipped count, last subscriber id looked at).
        On PostgreSQL the batch number is the dispatch's next one (several senders share
        the numbering); each claimed row carries the number it got."""
        if self.postgresql:
            return self._claim_batch_pg(issue, size, after_id)
        now = self.now()
        claimed: list[Delivery] = []
        skipped = 0
        with self._write() as conn:
            while len(claimed) < size:
                first = after_id
                # The rows come back as one JSON text: one step of SQLite instead of one
                # per row, and each step gives up Python's lock, which the worker threads
                # (busy encoding requests) then hold for milliseconds.
                (packed,) = conn.execute(
                    "SELECT json_group_array(json_array(sid, email, name, status, attempts)) FROM ("
                    " SELECT d.subscriber_id AS sid, d.email, p.name, p.status, d.attempts"
                    f" FROM deliveries AS d {_PERSON_JOIN}"
                    " WHERE d.issue = ? AND d.state = 'pending' AND d.subscriber_id > ?"
                    " ORDER BY d.subscriber_id LIMIT ?)",
                    (issue, after_id, size - len(claimed)),
                ).fetchone()
                rows = sorted(json.loads(packed))
                if not rows:
                    break
                after_id = rows[-1][0]
                gone = [
                    (f"{status} since the dispatch began", now, issue, sid)
                    for sid, _e, _n, status, _a in rows
                    if status != "active"
                ]
                if gone:
                    conn.executemany(
                        "UPDATE deliveries SET state = 'skipped', last_error = ?, updated = ?"
                        " WHERE issue = ? AND subscriber_id = ?",
                        gone,
                    )
                    skipped += len(gone)
                # The rows just read are all the pending ones in (first, after_id]: one
                # statement claims the range (set-based; a statement per row cost more
                # than the requests themselves).
                conn.execute(
                    "UPDATE deliveries SET state = 'in_flight', batch = ?, attempts = attempts + 1, updated = ?"
                    " WHERE issue = ? AND state = 'pending' AND subscriber_id > ? AND subscriber_id <= ?",
                    (batch, now, issue, first, after_id),
                )
                claimed.extend(
                    Delivery(sid, email, name, "in_flight", batch, attempts + 1, None)
                    for sid, email, name, status, attempts in rows
                    if status == "active"
                )
        return claimed, skipped, after_id

    def finish_batch(
        self,
        issue: str,
        *,
        sent: Iterable[int],
        failed: dict[int, str],
        in_doubt: dict[int, str] | None = None,
        message_id: str | None = None,
        batch: int | None = None,
    ) -> None:
        """Record what the backend said about a claimed batch. With `batch` (its number)
        the sent recipients are marked in one statement, not one per recipient."""
        if self.postgresql:
            return self._finish_batch_pg(issue, sent, failed, in_doubt or {}, message_id)
        now = self.now()
        sent = list(sent)
        try:
            self._finish(issue, sent, failed, in_doubt or {}, message_id, now, batch)
        except _Mismatch:  # the batch holds rows not named as sent: name each one
            self._finish(issue, sent, failed, in_doubt or {}, message_id, now, None)

    def _finish(
        self,
        issue: str,
        sent: list[int],
        failed: dict[int, str],
        in_doubt: dict[int, str],
        message_id: str | None,
        now: str,
        batch: int | None,
    ) -> None:
        with self._write() as conn:
            for state, reasons in (("failed", failed), ("in_doubt", in_doubt)):
                conn.executemany(
                    f"UPDATE deliveries SET state = '{state}', last_error = ?, updated = ?"
                    " WHERE issue = ? AND subscriber_id = ? AND state = 'in_flight'",
                    [(why[:2000], now, issue, sid) for sid, why in reasons.items()],
                )
            if batch is not None and sent:
                # What is still in flight in the batch should be exactly what was sent;
                # the row count proves it, else the transaction is undone.
                cur = conn.execute(
                    "UPDATE deliveries SET state = 'sent', message_id = ?, last_error = NULL, updated = ?"
                    " WHERE issue = ? AND batch = ? AND state = 'in_flight'",
                    (message_id, now, issue, batch),
                )
                if cur.rowcount != len(sent):
                    raise _Mismatch
                return
            conn.executemany(
                "UPDATE deliveries SET state = 'sent', message_id = ?, last_error = NULL, updated = ?"
                " WHERE issue = ? AND subscriber_id = ? AND state = 'in_flight'",
                [(message_id, now, issue, sid) for sid in sent],
            )

    # -- several senders (PostgreSQL) ---------------------------------------------------
    # SQLite has one sender per issue at a time (the per-issue lock file in dispatch);
    # on PostgreSQL any number share a dispatch, each known by its advisory lock.

    @property
    def shares_dispatch(self) -> bool:
        """Whether several senders may run one dispatch at once on this database."""
        return self.postgresql

    def join_dispatch(self, issue: str) -> int:
        """Make this Store a sender of `issue` for as long as it is open: it takes a sender
        number and holds, on its own session, the advisory lock naming it and a shared lock
        on the issue. Returns the sender number. PostgreSQL only, without a pool."""
        if not self.postgresql or self._raw is None:
            raise ValueError("join_dispatch needs a PostgreSQL Store with its own connection")
        if self._sender is not None:
            return self._sender
        with self._pg_connection() as raw:
            for statement in _SENDER_KEEPALIVE:
                raw.execute(statement)
            number = raw.execute("SELECT nextval('sender_ids')").fetchone()[0]  # type: ignore[index]
            raw.execute("SELECT pg_advisory_lock(%s, %s)", (_LOCK_SENDER, number))
            raw.execute("SELECT pg_advisory_lock_shared(%s, %s)", (_LOCK_ISSUE, _issue_key(issue)))
        self._sender = number
        return number

    def sending_now(self, issue: str) -> bool:
        """Whether a sender of `issue` is alive now (on any machine). PostgreSQL only."""
        return bool(
            self._query(
                f"SELECT EXISTS (SELECT 1 FROM pg_locks WHERE {_PG_ADVISORY} AND objid::bigint = ?)",
                (_LOCK_ISSUE, _issue_key(issue)),
            )[0][0]
        )

    def _claim_batch_pg(self, issue: str, size: int, after_id: int) -> tuple[list[Delivery], int, int]:
        """claim_batch on PostgreSQL: one statement per round locks the next pending rows,
        skipping rows another sender is claiming this instant, and marks them. Each round
        is a transaction by itself (one round trip, no BEGIN and COMMIT of its own): a
        sender that dies between two rounds leaves the first round's rows in flight, as
        it would had it died after a whole claim and before its request."""
        if self._sender is None:
            raise ValueError("claim_batch on PostgreSQL needs join_dispatch first")
        now = self.now()
        claimed: list[Delivery] = []
        skipped = 0
        batch: int | None = None
        restarted = after_id == 0
        with self._pg_connection() as raw:
            while len(claimed) < size:
                rows = raw.execute(
                    _PG_CLAIM,
                    {
                        "issue": issue,
                        "after": after_id,
                        "size": size - len(claimed),
                        "batch": batch,
                        "me": self._sender,
                        "now": now,
                    },
                ).fetchall()
                if not rows:
                    if restarted:
                        break
                    # Rows that another sender skipped past (it died while claiming them,
                    # and they went back to pending) lie behind `after_id`: look once more
                    # from the start.
                    restarted, after_id = True, 0
                    continue
                rows.sort()
                after_id = max(after_id, rows[-1][0])
                for sid, email, name, state, number, attempts in rows:
                    if state == "skipped":
                        skipped += 1
                    else:
                        batch = number
                        claimed.append(Delivery(sid, email, name, "in_flight", number, attempts, None))
        return claimed, skipped, after_id

    def _finish_batch_pg(
        self,
        issue: str,
        sent: Iterable[int],
        failed: dict[int, str],
        in_doubt: dict[int, str],
        message_id: str | None,
    ) -> None:
        """finish_batch on PostgreSQL: one statement per outcome and reason, in one
        transaction when there are several (the usual batch, all sent, is one statement
        and so one round trip)."""
        now = self.now()
        statements: list[tuple[str, tuple]] = []
        ids = list(sent)
        if ids:
            statements.append(
                (
                    "UPDATE deliveries SET state = 'sent', message_id = %s, last_error = NULL, updated = %s"
                    " WHERE issue = %s AND subscriber_id = ANY(%s) AND state = 'in_flight'",
                    (message_id, now, issue, ids),
                )
            )
        for state, reasons in (("failed", failed), ("in_doubt", in_doubt)):
            by_reason: dict[str, list[int]] = {}
            for sid, why in reasons.items():
                by_reason.setdefault(why[:2000], []).append(sid)
            statements.extend(
                (
                    "UPDATE deliveries SET state = %s, last_error = %s, updated = %s"
                    " WHERE issue = %s AND subscriber_id = ANY(%s) AND state = 'in_flight'",
                    (state, why, now, issue, group),
                )
                for why, group in by_reason.items()
            )
        if len(statements) == 1:
            with self._pg_connection() as raw:
                raw.execute(*statements[0])
            return
        with self._write(serial=False) as conn:
            assert isinstance(conn, _PgConn)
            for statement in statements:
                conn.raw.execute(*statement)

    def delivery_counts(self, issue: str) -> dict[str, int]:
        """How many of the issue's recipients are in each state (states with none left out)."""
        # One pass adding up, rather than GROUP BY: with no index by state, grouping
        # would sort every row of a large ledger in memory.
        sums = ", ".join(
            f"coalesce(sum(CASE WHEN state = '{state}' THEN 1 ELSE 0 END), 0)" for state in DELIVERY_STATES
        )
        (row,) = self._query(f"SELECT {sums} FROM deliveries WHERE issue = ?", (issue,))
        return {state: n for state, n in zip(DELIVERY_STATES, row, strict=True) if n}

    def iter_deliveries(self, issue: str, states: Iterable[str]) -> Iterator[Delivery]:
        """The ledger rows of an issue in these states, in id order, a page at a time."""
        wanted = tuple(_check(s, DELIVERY_STATES, "state") for s in states)
        marks = ", ".join("?" for _ in wanted)
        last = 0
        while True:
            rows = self._query(
                "SELECT d.subscriber_id, d.email, coalesce(s.name, ''), d.state, d.batch, d.attempts, d.last_error"
                " FROM deliveries AS d LEFT JOIN subscribers AS s ON s.id = d.subscriber_id"
                f" WHERE d.issue = ? AND d.state IN ({marks}) AND d.subscriber_id > ?"
                " ORDER BY d.subscriber_id LIMIT ?",
                (issue, *wanted, last, _PAGE),
            )
            yield from (Delivery(*row) for row in rows)
            if len(rows) < _PAGE:
                return
            last = rows[-1][0]

    def finish_dispatch_if_done(self, issue: str) -> bool:
        """Mark the dispatch finished once every recipient is sent or skipped."""
        with self._write() as conn:
            open_rows = conn.execute(
                "SELECT count(*) FROM deliveries WHERE issue = ? AND state NOT IN ('sent', 'skipped')", (issue,)
            ).fetchone()[0]
            if open_rows:
                return False
            conn.execute("UPDATE dispatches SET finished = coalesce(finished, ?) WHERE issue = ?", (self.now(), issue))
            return True

    # -- delivery events ----------------------------------------------------------
    # What SendGrid's Event Webhook and bounce mail say about the message an issue sent
    # to a subscriber. Each event is kept once (by its key); the statuses it implies only
    # ever move towards "mail no more" (active < unsubscribed < bounced < complained), so
    # the end state is the same whatever order, and however often, events arrive.

    def record_delivery_events(
        self,
        rows: Iterable[DeliveryEventRow],
        *,
        source: Source,
        soft_limit: int,
        same_address: Callable[[str, str], bool] | None = None,
    ) -> RecordResult:
        """Record events in one transaction and apply what they imply.

        A row whose issue did not go to that subscriber (no ledger row in flight, sent or
        in doubt), or whose address is not the one the ledger has (`same_address(ledger,
        event)` says no), is counted as unknown and ignored: events of another newsletter
        on the same account must not touch this one. A row with `issue` None (bounce mail
        naming no issue) only moves the status. After the rows, a subscriber whose soft
        bounces now span `soft_limit` issues in a row becomes `bounced`."""
        _check(source, SOURCES, "source")
        result = RecordResult()
        now = self.now()
        softened: set[int] = set()
        with self._write() as conn:
            ledger: dict[tuple[str, int], str | None] = {}
            for row in rows:
                _check(row.kind, DELIVERY_KINDS, "event kind")
                if row.issue is None:
                    if conn.execute("SELECT 1 FROM subscribers WHERE id = ?", (row.subscriber_id,)).fetchone() is None:
                        result.unknown += 1
                        continue
                    result.recorded += 1
                else:
                    pair = (row.issue, row.subscriber_id)
                    if pair not in ledger:
                        hit = conn.execute(
                            "SELECT email FROM deliveries WHERE issue = ? AND subscriber_id = ?"
                            " AND state IN ('in_flight', 'sent', 'in_doubt')",
                            pair,
                        ).fetchone()
                        ledger[pair] = hit[0] if hit else None
                    sent_to = ledger[pair]
                    if sent_to is None or (row.email and same_address and not same_address(sent_to, row.email)):
                        result.unknown += 1
                        continue
                    cur = conn.execute(
                        "INSERT INTO delivery_events (event_key, issue, subscriber_id, kind, at, url, detail)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (row.key, row.issue, row.subscriber_id, row.kind, row.at, row.url, row.detail),
                    )
                    if not cur.rowcount:
                        result.duplicates += 1
                        continue
                    result.recorded += 1
                if row.status is not None and self._raise_status(
                    conn, row.subscriber_id, row.status, now, source, row.detail
                ):
                    result.changed += 1
                if row.soft and row.issue is not None:
                    softened.add(row.subscriber_id)
            for sid in sorted(softened):
                run = self._soft_run(conn, sid)
                if len(run) >= soft_limit:
                    detail = f"soft bounces in {len(run)} issues in a row ({', '.join(run)})"
                    if self._raise_status(conn, sid, "bounced", now, source, detail):
                        result.changed += 1
                        result.soft_limited += 1
        return result

    def _raise_status(self, conn: Conn, sid: int, status: str, now: str, source: str, detail: str | None) -> bool:
        """Move a subscriber to `status` only if it says more than their current one."""
        _check(status, STATUSES, "status")
        row = conn.execute("SELECT status FROM subscribers WHERE id = ?", (sid,)).fetchone()
        if row is None or _LEAVING_RANK.get(status, 0) <= _LEAVING_RANK.get(row[0], 0):
            return False
        conn.execute("UPDATE subscribers SET status = ?, updated = ? WHERE id = ?", (status, now, sid))
        self._event(conn, sid, now, row[0], status, source, detail)
        return True

    @staticmethod
    def _soft_run(conn: Conn, sid: int) -> list[str]:
        """The longest run of consecutive issues (in dispatch order, among those sent to
        this subscriber) that soft-bounced: a `blocked` bounce or a temporary DSN, or a
        deferral that ended in a drop, and no delivery. Any other issue breaks the run."""
        rows = conn.execute(
            # CROSS JOIN keeps this order in SQLite: each dispatch (a few a month), then one
            # primary-key lookup in the ledger; the ledger has no index by subscriber alone.
            # (PostgreSQL plans that order itself, and has no CROSS JOIN ... ON.)
            f"""SELECT d.issue, {_SOFT_ISSUE} AS soft
                FROM dispatches AS p {_cross_join(conn)} deliveries AS d ON d.issue = p.issue AND d.subscriber_id = ?
                WHERE d.state IN ('in_flight', 'sent', 'in_doubt')
                ORDER BY p.started, p.issue""",
            (sid,),
        ).fetchall()
        best: list[str] = []
        run: list[str] = []
        for issue, soft in rows:
            run = [*run, issue] if soft else []
            if len(run) > len(best):
                best = run
        return best

    def has_delivery_events(self, issue: str) -> bool:
        return bool(self._query("SELECT 1 FROM delivery_events WHERE issue = ? LIMIT 1", (issue,)))

    def latest_issue_sent(self, subscriber_id: int, prefer: str | None = None) -> str | None:
        """The issue a bounce is most likely about: `prefer` if it went to this subscriber,
        else the last dispatch that did."""
        rows = self._query(
            f"SELECT d.issue FROM dispatches AS p {'JOIN' if self.postgresql else 'CROSS JOIN'} deliveries AS d"
            " ON d.issue = p.issue AND d.subscriber_id = ?"
            " WHERE d.state IN ('in_flight', 'sent', 'in_doubt')"
            " ORDER BY d.issue = ? DESC, p.started DESC, p.issue DESC LIMIT 1",
            (subscriber_id, prefer or ""),
        )
        return rows[0][0] if rows else None

    def sent_address(self, issue: str, subscriber_id: int) -> str | None:
        """The address the ledger has for this subscriber in the issue's dispatch, if the
        issue went to them (in flight, sent or in doubt); None otherwise."""
        rows = self._query(
            "SELECT email FROM deliveries WHERE issue = ? AND subscriber_id = ?"
            " AND state IN ('in_flight', 'sent', 'in_doubt')",
            (issue, subscriber_id),
        )
        return rows[0][0] if rows else None

    def scanned_mail(self, keys: Iterable[str]) -> set[str]:
        """Which of these bounce mail keys were read by an earlier scan."""
        wanted = list(dict.fromkeys(keys))
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            found.update(
                r[0]
                for r in self._query(f"SELECT mail_key FROM scanned_mail WHERE mail_key IN ({marks})", tuple(chunk))
            )
        return found

    def mark_scanned(self, mail_key: str, outcome: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO scanned_mail (mail_key, at, outcome) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (mail_key, self.now(), outcome),
            )

    def distinct_subscribers(self, issue: str, kinds: Iterable[str]) -> int:
        """How many subscribers have at least one event of these kinds for the issue."""
        wanted = tuple(_check(k, DELIVERY_KINDS, "event kind") for k in kinds)
        marks = ", ".join("?" for _ in wanted)
        return self._query(
            f"SELECT count(DISTINCT subscriber_id) FROM delivery_events WHERE issue = ? AND kind IN ({marks})",
            (issue, *wanted),
        )[0][0]

    def soft_bounced(self, issue: str) -> int:
        """How many recipients of the issue soft-bounced (the rule of `_soft_run`)."""
        return self._query(
            f"""SELECT count(*) FROM (SELECT DISTINCT issue, subscriber_id FROM delivery_events WHERE issue = ?) AS d
                WHERE {_SOFT_ISSUE}""",
            (issue,),
        )[0][0]

    def link_clicks(self, issue: str) -> list[tuple[str, int, int]]:
        """(url, clicks, distinct subscribers) per clicked link, most clicked first."""
        return self._query(
            "SELECT url, count(*), count(DISTINCT subscriber_id) FROM delivery_events"
            " WHERE issue = ? AND kind = 'click' AND url IS NOT NULL"
            " GROUP BY url ORDER BY count(*) DESC, count(DISTINCT subscriber_id) DESC, url",
            (issue,),
        )

    def unsubscribes_after(self, issue: str) -> int:
        """Recipients of the issue who unsubscribed (by any way) after it went out and
        before the next issue did."""
        info = self.dispatch_info(issue)
        if info is None:
            return 0
        following = self._query(
            "SELECT min(started) FROM dispatches WHERE started > ? OR (started = ? AND issue > ?)",
            (info.started, info.started, issue),
        )[0][0]
        return self._query(
            "SELECT count(DISTINCT e.subscriber_id) FROM events AS e"
            " JOIN deliveries AS d ON d.subscriber_id = e.subscriber_id AND d.issue = ?"
            " WHERE d.state IN ('in_flight', 'sent', 'in_doubt') AND e.to_status = 'unsubscribed'"
            " AND e.at >= ? AND (CAST(? AS TEXT) IS NULL OR e.at < ?)",
            (issue, info.started, following, following),
        )[0][0]

    def events_per_hour(self, issue: str, start: str, hours: int) -> list[tuple[int, str, int]]:
        """(hour since `start`, kind, events) for the first `hours` hours."""
        if self.postgresql:
            hour = "CAST(floor((extract(epoch FROM CAST(at AS timestamptz)) - extract(epoch FROM CAST(? AS timestamptz))) / 3600) AS INTEGER)"
        else:
            # Whole seconds, not julianday(): its floating point puts 10:00 in the 9 o'clock hour.
            hour = "(CAST(strftime('%s', at) AS INTEGER) - CAST(strftime('%s', ?) AS INTEGER)) / 3600"
        return self._query(
            "SELECT hour, kind, count(*) FROM ("
            f"  SELECT {hour} AS hour, kind, at"
            "  FROM delivery_events WHERE issue = ? AND at >= ?"
            ") AS e WHERE hour < ? GROUP BY hour, kind ORDER BY hour, kind",
            (start, issue, start, hours),
        )

    # -- signup with double opt-in ------------------------------------------------
    # The signup form's state: who asked to join (`pending`), the confirmation emails
    # sent, the POSTs per client, the consents given. The limits live here, not in a
    # process, so that they hold for every server on one database.

    def record_signup_post(self, client: str, *, limit: int, window: timedelta) -> int | None:
        """Count a POST /subscribe from `client` against `limit` per `window`. None when it
        is allowed (it is counted); otherwise the seconds until it would be, and nothing is
        counted. Rows older than the window are deleted on the way: a client's address is
        kept no longer than the limit needs it."""
        now = self._clock()
        with self._write() as conn:
            conn.execute("DELETE FROM signup_posts WHERE at <= ?", (format_time(now - window),))
            count, oldest = conn.execute(
                "SELECT count(*), min(at) FROM signup_posts WHERE client = ?", (client,)
            ).fetchone()
            if count >= limit:
                wait = datetime.fromisoformat(oldest) + window - now
                return max(1, -int(-wait.total_seconds() // 1))
            conn.execute("INSERT INTO signup_posts (client, at) VALUES (?, ?)", (client, format_time(now)))
            return None

    def reserve_confirmation(
        self, subscriber_id: int, limits: Iterable[tuple[timedelta, int]]
    ) -> tuple[int, int] | None:
        """Reserve a confirmation email for a subscriber who asked to join, if they may have
        one now: they are not active, and in each `(window, most)` of `limits` fewer than
        `most` were sent. Returns (the reservation's id, the time it was made in unix
        seconds, which the link carries), or None. A reservation counts at once, so that
        many requests at the same moment make one email."""
        now = self._clock().replace(microsecond=0)
        with self._write() as conn:
            row = conn.execute("SELECT status, email_key FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
            if row is None or row[0] == "active":
                return None
            # Counted by mailbox: bomb+1@, bomb+2@... are one inbox, whoever typed them.
            same_mailbox, params = _same_mailbox(row[1])
            for window, most in limits:
                (sent,) = conn.execute(
                    "SELECT count(*) FROM confirmation_mails AS c JOIN subscribers AS s ON s.id = c.subscriber_id"
                    f" WHERE c.at > ? AND s.merged_into IS NULL AND {same_mailbox}",
                    (format_time(now - window), *params),
                ).fetchone()
                if sent >= most:
                    return None
            (reservation,) = conn.execute(
                "INSERT INTO confirmation_mails (subscriber_id, at, state) VALUES (?, ?, 'sending') RETURNING id",
                (subscriber_id, format_time(now)),
            ).fetchone()
            return reservation, int(now.timestamp())

    def confirmation_sent(self, reservation: int) -> None:
        """The reserved confirmation email went out."""
        with self._write() as conn:
            conn.execute("UPDATE confirmation_mails SET state = 'sent' WHERE id = ?", (reservation,))

    def confirmation_not_sent(self, reservation: int) -> None:
        """The reserved confirmation email could not be sent: it no longer counts, so the
        next request may try again."""
        with self._write() as conn:
            conn.execute("DELETE FROM confirmation_mails WHERE id = ? AND state = 'sending'", (reservation,))

    def confirm(self, subscriber_id: int, made: int, ip: str | None) -> tuple[str, Subscriber] | None:
        """A confirmation link (made at unix time `made`) was used: the subscriber becomes
        active, with an event and a consent (source `form`, the client's `ip`), in one
        transaction. Returns (outcome, subscriber): `confirmed`; `already` (active
        before: nothing recorded); `spent` (they left after the link was made, which
        then opens nothing). None for an unknown subscriber."""
        now = self.now()
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_SUBSCRIBER_COLUMNS} FROM subscribers WHERE id = ?", (subscriber_id,)
            ).fetchone()
            if row is None:
                return None
            sub = Subscriber(*row)
            if sub.status == "active":
                return "already", sub
            if self._left_since(conn, subscriber_id, made):
                return "spent", sub
            conn.execute("UPDATE subscribers SET status = 'active', updated = ? WHERE id = ?", (now, subscriber_id))
            self._event(conn, subscriber_id, now, sub.status, "active", "form", None)
            conn.execute(
                "INSERT INTO consents (subscriber_id, at, source, ip) VALUES (?, ?, 'form', ?)",
                (subscriber_id, now, ip),
            )
            return "confirmed", Subscriber(sub.id, sub.email, sub.name, "active", sub.created, now)

    def confirmation_state(self, subscriber_id: int, made: int) -> tuple[Subscriber, bool] | None:
        """The subscriber a confirmation link (made at unix time `made`) names, and whether
        they left after it was made; None for an unknown subscriber. Changes nothing."""
        rows = self._query(f"SELECT {_SUBSCRIBER_COLUMNS} FROM subscribers WHERE id = ?", (subscriber_id,))
        if not rows:
            return None
        left = self._query(_LEFT_SINCE, (subscriber_id, format_time(datetime.fromtimestamp(made, UTC))))
        return Subscriber(*rows[0]), bool(left)

    @staticmethod
    def _left_since(conn: Conn, subscriber_id: int, made: int) -> bool:
        """Whether the subscriber became unsubscribed, bounced or complained after unix
        time `made`: a confirmation link made before then no longer brings them back."""
        row = conn.execute(_LEFT_SINCE, (subscriber_id, format_time(datetime.fromtimestamp(made, UTC)))).fetchone()
        return row is not None

    def consents(self, subscriber_id: int) -> list[Consent]:
        """A subscriber's consents, oldest first."""
        rows = self._query(
            "SELECT subscriber_id, at, source, ip, detail FROM consents WHERE subscriber_id = ? ORDER BY id",
            (subscriber_id,),
        )
        return [Consent(*row) for row in rows]

    def with_consent(
        self, subscribers: Iterable[Subscriber], *, chunk: int = 500
    ) -> Iterator[tuple[Subscriber, str, str]]:
        """Each subscriber with their latest consent, for the export: how it was given
        (`form`, or what an imported list said) and when; ('', '') when none is recorded
        (an address an editor added, or a list imported without consents). Looked up a
        chunk at a time, so a stream of subscribers stays a stream."""
        sql = (
            "SELECT c.subscriber_id, c.source, c.at FROM consents AS c"
            " WHERE c.id IN (SELECT max(id) FROM consents WHERE subscriber_id IN ({}) GROUP BY subscriber_id)"
        )
        pending: list[Subscriber] = []

        def flush() -> Iterator[tuple[Subscriber, str, str]]:
            found = {
                sid: (source, at)
                for sid, source, at in self._query(
                    sql.format(", ".join("?" * len(pending))), tuple(s.id for s in pending)
                )
            }
            for sub in pending:
                source, at = found.get(sub.id, ("", ""))
                yield sub, source, at
            pending.clear()

        for sub in subscribers:
            pending.append(sub)
            if len(pending) >= chunk:
                yield from flush()
        if pending:
            yield from flush()

    def latest_dispatch(self) -> str | None:
        """The issue whose dispatch began last, or None."""
        rows = self._query("SELECT issue FROM dispatches ORDER BY started DESC, issue DESC LIMIT 1")
        return rows[0][0] if rows else None

    def claim_one(self, issue: str, subscriber_id: int) -> Delivery | None:
        """Put one more subscriber into the ledger of an issue whose dispatch has begun
        (someone who has just joined), `in_flight` in a batch of their own, as
        `claim_batch` does. Nothing (None) when they are not active, or the ledger has
        them sent, in flight or in doubt already: neither this nor a later resume of
        the dispatch makes a second copy. A row still pending, failed or skipped (they
        had left) is taken over."""
        now = self.now()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM dispatches WHERE issue = ?", (issue,)).fetchone() is None:
                return None
            sub = conn.execute("SELECT email, name, status FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
            if sub is None or sub[2] != "active":
                return None
            email, name, _status = sub
            if self.postgresql:  # senders there share the dispatch's counter
                (batch,) = conn.execute(
                    "UPDATE dispatches SET batches = batches + 1 WHERE issue = ? RETURNING batches", (issue,)
                ).fetchone()
            else:
                (batch,) = conn.execute(
                    "SELECT coalesce(max(batch), 0) + 1 FROM deliveries WHERE issue = ?", (issue,)
                ).fetchone()
            row = conn.execute(
                "SELECT state, attempts FROM deliveries WHERE issue = ? AND subscriber_id = ?", (issue, subscriber_id)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO deliveries (issue, subscriber_id, email, state, batch, attempts, created, updated)"
                    " VALUES (?, ?, ?, 'in_flight', ?, 1, ?, ?)",
                    (issue, subscriber_id, email, batch, now, now),
                )
                conn.execute("UPDATE dispatches SET total = total + 1 WHERE issue = ?", (issue,))
                attempts = 1
            elif row[0] in ("pending", "failed", "skipped"):
                attempts = row[1] + 1
                conn.execute(
                    "UPDATE deliveries SET state = 'in_flight', email = ?, batch = ?, attempts = ?, last_error = NULL,"
                    " updated = ? WHERE issue = ? AND subscriber_id = ?",
                    (email, batch, attempts, now, issue, subscriber_id),
                )
            else:
                return None
            return Delivery(subscriber_id, email, name, "in_flight", batch, attempts, None)

    # -- copying a workspace's SQLite state into PostgreSQL -----------------------------

    def copy_into(self, target: Store) -> dict[str, int]:
        """Copy every row of this (SQLite) database into `target`, an empty PostgreSQL
        database with the current schema, in one transaction there; return the rows per
        table. The counts are checked in the target before it commits, so a copy is whole
        or not there at all. Tables are read from SQLite's own list, so a table a later
        migration adds is copied without a change here."""
        if self.postgresql or not target.postgresql:
            raise ValueError("copy_into copies a SQLite database into a PostgreSQL one")
        with self._lock, self._guard():
            names = [
                r[0]
                for r in self._conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name"
                )
            ]
        # Parents before the rows that point at them.
        first = ("subscribers", "dispatches")
        tables = [t for t in first if t in names] + [t for t in names if t not in first]
        with target._write() as conn:
            assert isinstance(conn, _PgConn)
            raw = conn.raw
            theirs = {
                r[0]
                for r in raw.execute(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
                )
            }
            missing = [t for t in tables if t not in theirs]
            if missing:
                raise HighlightsError(
                    f"{target.where}: has no table {', '.join(missing)}; is it at schema {SCHEMA_VERSION}?"
                )
            others = sorted(theirs - set(tables) - {"schema_version"})
            filled = [t for t in tables if raw.execute(f"SELECT EXISTS (SELECT 1 FROM {t})").fetchone()[0]]  # type: ignore[index]
            if filled or others:
                what = f"rows in {', '.join(filled)}" if filled else f"other tables ({', '.join(others)})"
                raise HighlightsError(
                    f"{target.where}: is not empty (it holds {what}); copy only into an empty database"
                )
            counts: dict[str, int] = {}
            with self._lock, self._guard():
                self._conn.execute("BEGIN")  # one snapshot of the source for every table
                try:
                    for table in tables:
                        counts[table] = self._copy_table(table, raw)
                finally:
                    self._conn.execute("COMMIT")
            for table, n in counts.items():
                there = raw.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
                if there != n:
                    raise HighlightsError(
                        f"{target.where}: {table} has {there} rows after the copy, not {n}; nothing was kept"
                    )
            # Identities continue after the copied ids; batch numbers after the copied batches.
            for table, column in raw.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND is_identity = 'YES'"
            ).fetchall():
                raw.execute(
                    f"SELECT setval(pg_get_serial_sequence(%s, %s), coalesce(max({column}), 0) + 1, false) FROM {table}",
                    (table, column),
                )
            raw.execute(
                "UPDATE dispatches AS p SET batches = coalesce("
                "(SELECT max(batch) FROM deliveries AS d WHERE d.issue = p.issue), 0)"
            )
        return counts

    def _copy_table(self, table: str, raw: psycopg.Connection) -> int:
        """Stream one table into PostgreSQL's COPY; the columns both sides have."""
        mine = [r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")]
        theirs = {
            r[0]
            for r in raw.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = %s",
                (table,),
            )
        }
        columns = [c for c in mine if c in theirs]
        names = ", ".join(columns)
        n = 0
        with raw.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in self._conn.execute(f"SELECT {names} FROM {table} ORDER BY rowid"):
                copy.write_row(row)
                n += 1
        return n


def _same_mailbox(email_key: str) -> tuple[str, tuple[str, ...]]:
    """A condition on `s.email_key` (and its parameters) for every address of the
    mailbox that `email_key` reaches (addresses.mailbox_key): the mailbox itself, and
    `mailbox+anything@domain`, found by a range of the index on email_key."""
    mailbox = mailbox_key(email_key)
    if mailbox == email_key and "+" in email_key.rpartition("@")[0]:
        return "s.email_key = ?", (email_key,)  # `+tag@`: no mailbox name to share
    local, _, domain = mailbox.rpartition("@")

    def escaped(text: str) -> str:
        return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

    condition = "(s.email_key = ? OR (s.email_key >= ? AND s.email_key < ? AND s.email_key LIKE ? ESCAPE '\\'))"
    # `+` is followed by `,` in ASCII: the range holds every `local+...`.
    return condition, (mailbox, f"{local}+", f"{local},", f"{escaped(local)}+%@{escaped(domain)}")


class _Mismatch(Exception):
    """A batch-wide update touched other rows than expected: undone, and done row by row."""


class _Rollback(Exception):
    def __init__(self, result: ImportResult) -> None:
        self.result = result


def _cross_join(conn: Conn) -> str:
    """SQLite's way to fix the order of a join; PostgreSQL plans it and has no CROSS JOIN ... ON."""
    return "JOIN" if isinstance(conn, _PgConn) else "CROSS JOIN"


def _check(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return value


# ---------------------------------------------------------------- signup: the migration's functions


@dataclass(frozen=True)
class Consent:
    """One consent a subscriber gave: when, how (`form`, or what an imported list said),
    and from which client address (for the form)."""

    subscriber_id: int
    at: str
    source: str
    ip: str | None
    detail: str | None


def _allow_in_checks(conn: Conn, table: str, additions: dict[str, str]) -> list[str]:
    """Let each `CHECK (column IN (...))` of `table` named in `additions` (column ->
    value) take one more value, keeping every row with its id, and the table's indexes.

    SQLite changes a constraint only by making the table again. Its definition is taken
    from the schema as it stands, so the columns that earlier migrations added come along.
    Rows of other tables point at it by foreign key (events and deliveries at
    subscribers): with foreign keys checked only at COMMIT, dropping the table leaves
    them pointing nowhere for a moment and putting its rows back makes them whole again,
    so a row lost on the way would fail the whole migration. `foreign_key_check`
    confirms it before that.
    """
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    for column, value in additions.items():
        pattern = re.compile(rf"CHECK\s*\(\s*{column}\s+IN\s*\(([^)]*)\)\s*\)", re.IGNORECASE)
        matches = list(pattern.finditer(sql))
        if len(matches) != 1:
            raise HighlightsError(f"the {table} table has no single check on {column} to widen; is this database ours?")
        (match,) = matches
        if f"'{value}'" not in match.group(1):
            sql = f"{sql[: match.start()]}CHECK ({column} IN ({match.group(1)}, '{value}')){sql[match.end() :]}"
    extras = [
        row[0]
        for row in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type IN ('index', 'trigger') AND tbl_name = ? AND sql IS NOT NULL"
            " ORDER BY type, name",
            (table,),
        )
    ]
    copy = f"temp.rebuild_{table}"
    conn.execute("PRAGMA defer_foreign_keys = ON")  # back to OFF by itself at COMMIT
    conn.execute(f"CREATE TABLE {copy} AS SELECT * FROM {table}")
    conn.execute(f"DROP TABLE {table}")
    conn.execute(sql)
    conn.execute(f"INSERT INTO {table} SELECT * FROM {copy}")
    conn.execute(f"DROP TABLE {copy}")
    for statement in extras:
        conn.execute(statement)
    broken = conn.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        tables = ", ".join(sorted({row[0] for row in broken}))
        raise HighlightsError(
            f"the upgrade of the {table} table found {len(broken)} rows pointing nowhere (in {tables}): the "
            "database was changed outside highlightsmail. Nothing was changed; sqlite3 lists them with "
            "PRAGMA foreign_key_check"
        )
    return []
