"""The database side of `subscribers import`: rows staged as they are read, duplicates
found by the database, and the list changed with a handful of set-based statements.

An import reads its file once, as a stream. Each checked row goes into `Staging`, a
private scratch SQLite database on disk (its own connection, a small page cache), so
memory stays flat however long the file is, and nothing touches the subscribers'
database until the whole file has been read: a file that turns out to be unusable
halfway leaves no trace, not even a new database file. Then `merge` brings the rows
into the store in one write transaction (through the engine's bulk load: COPY on
PostgreSQL) and applies the rules
that `Store.import_rows` documents: a new address is added with its row's status; a
known one only ever moves to a status that says the person left, never back to
active, and a bounced or complained one keeps that status; a non-empty name replaces
the one on file; each creation and change gets an event naming the file and line.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, LiteralString

from highlightsmail.addresses import address_key
from highlightsmail.store.engine import Conn, trusted
from highlightsmail.store.facade import Store
from highlightsmail.store.records import SUPPRESSED, UNDELIVERABLE, ImportResult, ImportRow

# The staged rows: `pos` is the row's line, and its event's detail is "FILE:pos".
_STAGE = """CREATE TABLE stage (
    pos INTEGER PRIMARY KEY, email_key TEXT NOT NULL, email TEXT NOT NULL, name TEXT NOT NULL,
    status TEXT NOT NULL, extra TEXT, created TEXT, updated TEXT, consented TEXT, consent_source TEXT)"""
_SCRATCH_CACHE_KIB = 16_384  # the scratch database's page cache; the rest stays on disk


def _key(email: str) -> str:
    """`address_key`, quicker for the ASCII addresses most lists are made of: there NFC
    changes nothing and case folding is lower-casing."""
    return email.lower() if email.isascii() else address_key(email)


def _params(rows: Iterable[tuple[int, ImportRow]]) -> Iterator[tuple[object, ...]]:
    """A staged row's parameters. The columns most files leave empty travel as one JSON
    `extra` (NULL when they are all empty), unpacked by SQL after the load: each
    parameter costs the sqlite3 module about as much as a short row does."""
    for line, row in rows:
        extra = None
        if row.created or row.updated or row.consented or row.consent_source:
            extra = json.dumps([row.created, row.updated, row.consented, row.consent_source])
        yield line, _key(row.email), row.email, row.name, row.status, extra


class Staging:
    """The rows of one import, by line, in a scratch SQLite database: a file in a
    private temporary folder (the rows are personal data), removed on close. (This
    scratch file is the import's own, whatever engine the store is on.)"""

    def __init__(self, file_name: str) -> None:
        self.detail = f"{file_name}:"  # an event's detail is this and the line
        self._folder = tempfile.TemporaryDirectory(prefix="highlights-import-")
        self.path = Path(self._folder.name) / "stage.db"
        self._conn = sqlite3.connect(self.path, isolation_level=None)
        self._conn.execute(f"PRAGMA cache_size = -{_SCRATCH_CACHE_KIB}")
        self._conn.execute("PRAGMA journal_mode = OFF")  # scratch: nothing to recover
        self._conn.execute("PRAGMA synchronous = OFF")
        self._conn.execute(_STAGE)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._conn.close()
        self._folder.cleanup()

    def load(self, rows: Iterable[tuple[int, ImportRow]]) -> None:
        """Stage (line, row) pairs as they come, in one scratch transaction."""
        self._conn.execute("BEGIN")
        self._conn.executemany(
            "INSERT INTO stage (pos, email_key, email, name, status, extra) VALUES (?, ?, ?, ?, ?, ?)", _params(rows)
        )
        self._conn.execute(
            "UPDATE stage SET created = json_extract(extra, '$[0]'), updated = json_extract(extra, '$[1]'),"
            " consented = json_extract(extra, '$[2]'), consent_source = json_extract(extra, '$[3]')"
            " WHERE extra IS NOT NULL"
        )
        self._conn.execute("COMMIT")

    def drop_duplicates(self) -> list[tuple[int, int, str]]:
        """Take out every row whose address (by `address_key`) an earlier row has, and
        return them as (line, line of the first row, address as written), by line."""
        conn = self._conn
        conn.execute("BEGIN")
        # Built after the load (a sort), not kept up to date during it; the SQLite
        # store's statements use it too.
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

    def import_rows(self) -> Iterator[ImportRow]:
        """The staged rows by line, as ImportRows."""
        rows = self._conn.execute(
            "SELECT email, name, status, created, updated, ? || pos, consented, consent_source FROM stage ORDER BY pos",
            (self.detail,),
        )
        return (ImportRow._make(row) for row in rows)

    def filled_rows(self, now: str) -> Iterator[tuple[Any, ...]]:
        """The staged rows by line as `_TARGET` columns: created/updated filled in (now,
        unless the file says) and each row's detail."""
        return iter(
            self._conn.execute(
                "SELECT pos, email_key, email, name, status, coalesce(created, ?), coalesce(updated, created, ?),"
                " ? || pos, consented, consent_source FROM stage ORDER BY pos",
                (now, now, self.detail),
            )
        )


def merge(store: Store, staging: Staging, *, source: str = "import", dry_run: bool = False) -> ImportResult:
    """Import the staged rows into the store in one write transaction (rolled back for a
    dry run), by the rules the module docstring names. The same statements on either
    engine: the rows are loaded into a temporary table by the engine's bulk load (COPY
    on PostgreSQL), which also carries each known address's id and old values."""
    now = store.now()
    try:
        with store.write_transaction() as conn:
            store.stage_rows(conn, "import_stage", _TARGET, _TARGET_COLUMNS, staging.filled_rows(now))
            result = _merge_staged(conn, now, source)
            if dry_run:
                raise _Rollback(result)
    except _Rollback as rollback:
        return rollback.result
    return result


class _Rollback(Exception):
    def __init__(self, result: ImportResult) -> None:
        self.result = result


def _in(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))


def _leaves(old_status: str) -> str:
    """The staged row `i` says the person left, and the address (whose status before
    the import is `old_status`) was not already in that state, nor bounced or complained."""
    return (
        f"i.status IN ({_in(SUPPRESSED)}) AND i.status <> {old_status} AND {old_status} NOT IN ({_in(UNDELIVERABLE)})"
    )


def _renames(old_name: str) -> str:
    """The staged row `i` brings a name, and another than `old_name`."""
    return f"i.name <> '' AND i.name <> {old_name}"


# The temporary table: `pos` (the engine's, in load order, which is line order) and the
# row's columns; `sid`, `old_status` and `old_name` are filled from a known address.
_TARGET: LiteralString = """line BIGINT NOT NULL, email_key TEXT NOT NULL, email TEXT NOT NULL,
    name TEXT NOT NULL, status TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL,
    detail TEXT, consented TEXT, consent_source TEXT, sid BIGINT, old_status TEXT, old_name TEXT,
    is_new INTEGER NOT NULL DEFAULT 1"""
_TARGET_COLUMNS: tuple[LiteralString, ...] = (
    "line", "email_key", "email", "name", "status", "created", "updated", "detail", "consented", "consent_source",
)  # fmt: skip

# The conditions on a row of the temporary table, which carries the old values.
_LEAVES = trusted(_leaves("i.old_status"))
_RENAMES = trusted(_renames("i.old_name"))


def _merge_staged(conn: Conn, now: str, source: str) -> ImportResult:
    conn.execute("CREATE INDEX import_stage_key ON import_stage (email_key)")
    conn.execute("ANALYZE import_stage")
    conn.execute(
        "UPDATE import_stage SET sid = s.id, old_status = s.status, old_name = s.name, is_new = 0"
        " FROM subscribers AS s WHERE s.email_key = import_stage.email_key AND s.merged_into IS NULL"
    )
    # The planner must see what the UPDATE made of the table (at 1M rows on PostgreSQL,
    # the joins below took minutes on its first guess).
    conn.execute("ANALYZE import_stage")
    total, new = conn.execute("SELECT count(*), coalesce(sum(is_new), 0) FROM import_stage").fetchone()
    if new:
        _insert_new(conn, now, source)
    conn.execute(
        "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail)"
        " SELECT i.sid, ?, i.old_status, i.status, ?, i.detail FROM import_stage AS i"
        " WHERE i.is_new = 0 AND " + _LEAVES + " ORDER BY i.pos",
        (now, source),
    )
    cur = conn.execute(
        "UPDATE subscribers SET status = CASE WHEN " + _LEAVES + " THEN i.status ELSE subscribers.status END,"
        " name = CASE WHEN " + _RENAMES + " THEN i.name ELSE subscribers.name END, updated = ?"
        " FROM import_stage AS i"
        " WHERE subscribers.id = i.sid AND i.is_new = 0 AND ((" + _LEAVES + ") OR (" + _RENAMES + "))",
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
