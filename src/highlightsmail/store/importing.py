"""The rows of `subscribers import`, staged as they are read, and their duplicates found.

An import reads its file once, as a stream. Each checked row goes into `Staging`, a
private scratch SQLite database on disk (its own connection, a small page cache), so
memory stays flat however long the file is, and nothing touches the subscribers'
database until the whole file has been read: a file that turns out to be unusable
halfway leaves no trace, not even a new database file. The scratch database finds the
duplicates, then `Store.import_staged` applies the import's rules to its rows in one
write transaction (SQLite reads the scratch file in place; PostgreSQL copies it in).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, LiteralString

from highlightsmail.addresses import address_key
from highlightsmail.store.records import ImportRow
from highlightsmail.store.subscribers import IMPORT_COLUMNS, IMPORT_KEY, IMPORT_NAMES, IMPORT_STAGE

_SCRATCH_CACHE_KIB = 16_384  # the scratch database's page cache; the rest stays on disk
_STAGED_COLUMNS = ("pos", "email_key", "email", "name", "status", "extra")  # a StageRow's
_ROWS_PER_INSERT = 64


def _insert(rows: int) -> str:
    """INSERT of `rows` StageRows into the scratch table."""
    one = "(" + ", ".join("?" for _ in _STAGED_COLUMNS) + ")"
    return f"INSERT INTO {IMPORT_STAGE} ({', '.join(_STAGED_COLUMNS)}) VALUES " + ", ".join([one] * rows)


#: A row as `Staging.load` takes it: (line, email_key, email, name, status, extra), where
#: `extra` is the JSON array [created, updated, consented, consent_source], or "" when
#: they are all empty (as in most files: each parameter costs the sqlite3 module about
#: as much as a short row does, so the columns most rows leave empty travel as one; and
#: a None costs it three times what a string does).
StageRow = tuple[int, str, str, str, str, str]


def stage_row(line: int, row: ImportRow) -> StageRow:
    """A checked row of the file, as Staging takes it."""
    extra = ""
    if row.created or row.updated or row.consented or row.consent_source or row.topics:
        extra = json.dumps([row.created, row.updated, row.consented, row.consent_source, row.topics])
    # ASCII (most addresses): NFC changes nothing and case folding is lower-casing.
    key = row.email.lower() if row.email.isascii() else address_key(row.email)
    return line, key, row.email, row.name, row.status, extra


class Staging:
    """The rows of one import, by line, in a scratch SQLite database: a file in a
    private temporary folder (the rows are personal data), removed on close. (This
    scratch file is the import's own, whatever engine the store is on.) Once loaded
    and rid of its duplicates it is a `StagedFile` for `Store.import_staged`: the table
    `import_stage` (`pos` is the line), indexed on `email_key`."""

    table: LiteralString = IMPORT_STAGE
    definition: LiteralString = IMPORT_COLUMNS
    names: tuple[LiteralString, ...] = IMPORT_NAMES
    key: LiteralString = IMPORT_KEY

    def __init__(self, file_name: str) -> None:
        self.detail = f"{file_name}:"  # an event's detail is this and the line
        self._folder = tempfile.TemporaryDirectory(prefix="highlights-import-")
        self.path = Path(self._folder.name) / "stage.db"
        self._conn = sqlite3.connect(self.path, isolation_level=None)
        self._conn.execute(f"PRAGMA cache_size = -{_SCRATCH_CACHE_KIB}")
        self._conn.execute("PRAGMA journal_mode = OFF")  # scratch: nothing to recover
        self._conn.execute("PRAGMA synchronous = OFF")
        # `extra`: the columns most files leave empty, as loaded (see StageRow).
        self._conn.execute(f"CREATE TABLE {IMPORT_STAGE} ({IMPORT_COLUMNS}, extra TEXT)")

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._conn.close()
        self._folder.cleanup()

    def load(self, rows: Iterable[StageRow]) -> None:
        """Stage rows as they come (in line order, one per line), in one scratch transaction,
        _ROWS_PER_INSERT to a statement: the sqlite3 module's cost per statement run (a
        third of a row's) is shared."""
        self._conn.execute("BEGIN")
        width = len(_STAGED_COLUMNS) * _ROWS_PER_INSERT
        cells = itertools.chain.from_iterable(rows)
        rest: list[tuple[object, ...]] = []

        def full_chunks() -> Iterator[tuple[object, ...]]:
            while len(chunk := tuple(itertools.islice(cells, width))) == width:
                yield chunk
            rest.append(chunk)

        self._conn.executemany(_insert(_ROWS_PER_INSERT), full_chunks())
        if rest[0]:
            self._conn.execute(_insert(len(rest[0]) // len(_STAGED_COLUMNS)), rest[0])
        self._conn.execute(
            "UPDATE import_stage SET created = json_extract(extra, '$[0]'), updated = json_extract(extra, '$[1]'),"
            " consented = json_extract(extra, '$[2]'), consent_source = json_extract(extra, '$[3]'),"
            " topics = json_extract(extra, '$[4]')"
            " WHERE extra <> ''"
        )
        self._conn.execute("COMMIT")

    def drop_duplicates(self) -> list[tuple[int, int, str]]:
        """Take out every row whose address (by `address_key`) an earlier row has, and
        return them as (line, line of the first row, address as written), by line."""
        conn = self._conn
        conn.execute("BEGIN")
        # Built after the load (a sort), not kept up to date during it; the SQLite
        # store's statements use it too.
        conn.execute("CREATE INDEX import_stage_key ON import_stage (email_key, pos)")
        duplicates = conn.execute(
            """SELECT d.pos, f.first, d.email FROM
                   (SELECT email_key, min(pos) AS first FROM import_stage GROUP BY email_key HAVING count(*) > 1) AS f
                   JOIN import_stage AS d ON d.email_key = f.email_key AND d.pos > f.first
               ORDER BY d.pos"""
        ).fetchall()
        conn.executemany("DELETE FROM import_stage WHERE pos = ?", ((line,) for line, _first, _email in duplicates))
        conn.execute("COMMIT")
        return [(line, first, email) for line, first, email in duplicates]

    def count(self) -> int:
        """How many rows are staged."""
        return int(self._conn.execute("SELECT count(*) FROM import_stage").fetchone()[0])

    def import_rows(self) -> Iterator[ImportRow]:
        """The staged rows by line, as ImportRows."""
        rows = self._conn.execute(
            "SELECT email, name, status, created, updated, ? || pos, consented, consent_source, topics"
            " FROM import_stage"
            " ORDER BY pos",
            (self.detail,),
        )
        return (ImportRow._make(row) for row in rows)

    def addresses(self) -> Iterator[tuple[int, str, str]]:
        """(line, address key, address) of each staged row, by line."""
        return iter(self._conn.execute("SELECT pos, email_key, email FROM import_stage ORDER BY pos").fetchall())

    def drop_lines(self, lines: list[int]) -> None:
        """Take these rows out (an import refuses them)."""
        self._conn.execute("BEGIN")
        self._conn.executemany("DELETE FROM import_stage WHERE pos = ?", ((line,) for line in lines))
        self._conn.execute("COMMIT")

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """The staged rows by line, the columns IMPORT_NAMES (for a store that copies them)."""
        return iter(self._conn.execute(f"SELECT {', '.join(IMPORT_NAMES)} FROM {IMPORT_STAGE} ORDER BY pos"))


__all__ = ["StageRow", "Staging", "stage_row"]
