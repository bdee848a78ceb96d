"""The database side of `subscribers import`: rows staged as they are read, duplicates
found by the database, and the list changed with a handful of set-based statements.

An import reads its file once, as a stream. Each checked row goes into `Staging`, a
private scratch SQLite database on disk (its own connection, a small page cache), so
memory stays flat however long the file is, and nothing touches the subscribers'
database until the whole file has been read: a file that turns out to be unusable
halfway leaves no trace, not even a new database file. Then `merge` moves the rows
into the store in one write transaction (COPY on PostgreSQL) and applies the rules
that `Store.import_rows` documents: a new address is added with its row's status; a
known one only ever moves to a status that says the person left, never back to
active, and a bounced or complained one keeps that status; a non-empty name replaces
the one on file; each creation and change gets an event naming the file and line.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, cast

from highlightsmail.addresses import address_key
from highlightsmail.store.database import SUPPRESSED, UNDELIVERABLE, Conn, ImportResult, ImportRow, Store

# The staged columns, in ImportRow's order after the key; `pos` is the row's line.
_ROW_COLUMNS = "email, name, status, created, updated, detail, consented, consent_source"
_COLUMNS = f"pos, email_key, {_ROW_COLUMNS}"
_STAGE = """CREATE TABLE stage (
    pos INTEGER PRIMARY KEY, email_key TEXT NOT NULL, email TEXT NOT NULL, name TEXT NOT NULL,
    status TEXT NOT NULL, created TEXT, updated TEXT, detail TEXT, consented TEXT, consent_source TEXT)"""
_SCRATCH_CACHE_KIB = 16_384  # the scratch database's page cache; the rest stays on disk


class Staging:
    """The rows of one import, by line, in a private scratch database (a temporary file
    SQLite deletes when the connection closes)."""

    def __init__(self) -> None:
        # "" is a private on-disk database: pages beyond the cache go to a temporary file.
        self._conn = sqlite3.connect("", isolation_level=None)
        self._conn.execute(f"PRAGMA cache_size = -{_SCRATCH_CACHE_KIB}")
        self._conn.execute("PRAGMA journal_mode = OFF")  # scratch: nothing to recover
        self._conn.execute("PRAGMA synchronous = OFF")
        self._conn.execute(_STAGE)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._conn.close()

    def load(self, rows: Iterable[tuple[int, ImportRow]]) -> None:
        """Stage (line, row) pairs as they come, in one scratch transaction."""
        params = ((line, address_key(row.email), *row) for line, row in rows)
        self._conn.execute("BEGIN")
        self._conn.executemany(f"INSERT INTO stage ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", params)
        self._conn.execute("COMMIT")

    def drop_duplicates(self) -> list[tuple[int, int, str]]:
        """Take out every row whose address (by `address_key`) an earlier row has, and
        return them as (line, line of the first row, address as written), by line."""
        conn = self._conn
        conn.execute("BEGIN")
        # Built after the load (a sort), not kept up to date during it.
        conn.execute("CREATE INDEX stage_key ON stage (email_key, pos)")
        duplicates = conn.execute(
            """SELECT d.pos, f.first, d.email FROM
                   (SELECT email_key, min(pos) AS first FROM stage GROUP BY email_key HAVING count(*) > 1) AS f
                   JOIN stage AS d ON d.email_key = f.email_key AND d.pos > f.first
               ORDER BY d.pos"""
        ).fetchall()
        conn.executemany("DELETE FROM stage WHERE pos = ?", ((line,) for line, _first, _email in duplicates))
        conn.execute("COMMIT")
        return [(line, first, email) for line, first, email in duplicates]

    def count(self) -> int:
        """How many rows are staged."""
        return int(self._conn.execute("SELECT count(*) FROM stage").fetchone()[0])

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """The staged rows by line, as `_COLUMNS` tuples."""
        return iter(self._conn.execute(f"SELECT {_COLUMNS} FROM stage ORDER BY pos"))

    def import_rows(self) -> Iterator[ImportRow]:
        """The staged rows by line, as ImportRows."""
        return (ImportRow._make(row[2:]) for row in self.rows())


def merge(store: Store, staging: Staging, *, source: str = "import", dry_run: bool = False) -> ImportResult:
    """Import the staged rows into the store in one write transaction (rolled back for a
    dry run), by the rules the module docstring names."""
    now = store.now()
    try:
        with store.write_transaction() as conn:
            if store.postgresql:
                _stage_pg(conn, staging, now)
            else:
                _stage_sqlite(conn, staging, now)
            result = _merge_staged(conn, now, source)
            if dry_run:
                raise _Rollback(result)
    except _Rollback as rollback:
        return rollback.result
    return result


class _Rollback(Exception):
    def __init__(self, result: ImportResult) -> None:
        self.result = result


_TARGET_COLUMNS = """
    pos        BIGINT PRIMARY KEY,
    email_key  TEXT NOT NULL,
    email      TEXT NOT NULL,
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


def _filled(rows: Iterable[tuple[Any, ...]], now: str) -> Iterator[tuple[Any, ...]]:
    """Staged rows with `created`/`updated` filled in (now, unless the file says)."""
    for pos, key, email, name, status, created, updated, detail, consented, consent_source in rows:
        yield (
            pos,
            key,
            email,
            name,
            status,
            created or now,
            updated or created or now,
            detail,
            consented,
            consent_source,
        )


def _stage_sqlite(conn: Conn, staging: Staging, now: str) -> None:
    conn.execute("DROP TABLE IF EXISTS temp.import_stage")
    conn.execute(f"CREATE TEMP TABLE import_stage ({_TARGET_COLUMNS})")
    conn.executemany(
        f"INSERT INTO import_stage ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _filled(staging.rows(), now)
    )
    conn.execute("CREATE INDEX temp.import_stage_key ON import_stage (email_key)")


def _stage_pg(conn: Conn, staging: Staging, now: str) -> None:
    conn.execute("DROP TABLE IF EXISTS pg_temp.import_stage")
    conn.execute(f"CREATE TEMP TABLE import_stage ({_TARGET_COLUMNS}) ON COMMIT DROP")
    # COPY: the rows stream to the server without a round trip each. `raw` is the
    # psycopg connection behind the store's PostgreSQL `Conn`.
    raw = cast(Any, conn).raw
    with raw.cursor().copy(f"COPY import_stage ({_COLUMNS}) FROM STDIN") as copy:
        for row in _filled(staging.rows(), now):
            copy.write_row(row)
    conn.execute("CREATE INDEX ON import_stage (email_key)")
    conn.execute("ANALYZE import_stage")


def _in(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))


# Conditions on a staged row `i` of a known address: the person left (and was not
# already in that state, nor bounced or complained), or the row brings another name.
_LEAVES = f"i.status IN ({_in(SUPPRESSED)}) AND i.status <> i.old_status AND i.old_status NOT IN ({_in(UNDELIVERABLE)})"
_RENAMES = "i.name <> '' AND i.name <> i.old_name"


def _merge_staged(conn: Conn, now: str, source: str) -> ImportResult:
    conn.execute(
        "UPDATE import_stage SET sid = s.id, old_status = s.status, old_name = s.name, is_new = 0"
        " FROM subscribers AS s WHERE s.email_key = import_stage.email_key AND s.merged_into IS NULL"
    )
    total, new = conn.execute("SELECT count(*), coalesce(sum(is_new), 0) FROM import_stage").fetchone()
    if new:
        _insert_new(conn, now, source)
    conn.execute(
        "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail)"
        f" SELECT i.sid, ?, i.old_status, i.status, ?, i.detail FROM import_stage AS i"
        f" WHERE i.is_new = 0 AND {_LEAVES} ORDER BY i.pos",
        (now, source),
    )
    cur = conn.execute(
        f"""UPDATE subscribers SET
                status = CASE WHEN {_LEAVES} THEN i.status ELSE subscribers.status END,
                name = CASE WHEN {_RENAMES} THEN i.name ELSE subscribers.name END,
                updated = ?
            FROM import_stage AS i
            WHERE subscribers.id = i.sid AND i.is_new = 0 AND (({_LEAVES}) OR ({_RENAMES}))""",
        (now,),
    )
    updated = int(cur.rowcount)
    conn.execute("DROP TABLE import_stage")  # the temporary one: it hides any other of that name
    return ImportResult(new=int(new), updated=updated, unchanged=int(total) - int(new) - updated)


def _insert_new(conn: Conn, now: str, source: str) -> None:
    """Add the new addresses, by line, each with its creation event (and its consent,
    when the file records one: an export from here or another tool)."""
    conn.execute(
        "INSERT INTO subscribers (email, email_key, name, status, created, updated)"
        " SELECT email, email_key, name, status, created, updated FROM import_stage WHERE is_new = 1 ORDER BY pos"
    )
    conn.execute(
        "UPDATE import_stage SET sid = s.id FROM subscribers AS s"
        " WHERE import_stage.is_new = 1 AND s.email_key = import_stage.email_key AND s.merged_into IS NULL"
    )
    conn.execute(
        "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail)"
        " SELECT sid, ?, NULL, status, ?, detail FROM import_stage WHERE is_new = 1 ORDER BY pos",
        (now, source),
    )
    conn.execute(
        "INSERT INTO consents (subscriber_id, at, source, detail)"
        " SELECT sid, consented, coalesce(consent_source, ?), detail FROM import_stage"
        " WHERE is_new = 1 AND consented IS NOT NULL ORDER BY pos",
        (source,),
    )


__all__ = ["Staging", "merge"]
