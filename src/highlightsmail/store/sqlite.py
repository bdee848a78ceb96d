"""The SQLite engine: the state in one file (`subscribers/highlights.db`, the default).

The database is shared by the CLI and the web endpoint, often at the same moment, so:

- WAL mode: readers never block the one writer, and the writer never blocks readers.
- Every write is an explicit `BEGIN IMMEDIATE` transaction. A deferred transaction that
  reads first and writes later can fail at once with SQLITE_BUSY when another writer got
  in between, whatever the busy timeout; taking the write lock up front makes writers
  queue on the busy timeout (30 s) instead.
- The schema carries its version in `PRAGMA user_version`.

Threads: the engine owns one connection and guards it with a lock, so one `Store` may be
shared by threads (each call is serialised). The simplest safe pattern for a server is
still one `Store` per worker thread (or per request): each has its own connection, and
SQLite itself orders their writes. Opening one is cheap (well under a millisecond once
the file exists).

The file is created readable by its owner only (its -wal and -shm files take the same
mode): it holds every subscriber's address. Every SQLite failure a person can act on (a
damaged file, a read-only file or folder, a full disk, a long lock) becomes
`UnusableDatabase`, one line naming the file and what to do.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, LiteralString

from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.store.engine import Conn, StagedFile, UnusableDatabase, busy, trusted

# The schema name a staged file is attached under (see staged_write).
_STAGED = "staged"


def create_private(path: Path) -> None:
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


class SqliteEngine:
    """One SQLite file (an `Engine`)."""

    name: LiteralString = "sqlite"
    several_senders = False  # one sender per issue: the per-issue lock file in dispatch
    empty_needs_asking = False  # a new file gets the schema on first use
    # Whole seconds, not julianday(): its floating point puts 10:00 in the 9 o'clock hour.
    hours_since: LiteralString = "(CAST(strftime('%s', at) AS INTEGER) - CAST(strftime('%s', ?) AS INTEGER)) / 3600"
    ordered_join: LiteralString = "CROSS JOIN"
    lock_row: LiteralString = ""  # one writer at a time already

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.where = display_path(path)
        self._timeout = timeout
        self._lock = threading.RLock()
        self._outer = 0  # transaction() depth: writes inside it are savepoints
        create_private(path)
        try:
            # isolation_level=None: the module never opens transactions behind our back;
            # every write below says BEGIN IMMEDIATE itself.
            self._conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._unusable(exc) or HighlightsError(f"{self.where}: cannot open the database: {exc}") from None
        with self.opening(), self._guard():
            self._to_wal()
            self._conn.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA temp_store = MEMORY")

    def _to_wal(self) -> None:
        """Put the file in WAL mode (a no-op once it is). On a new file, connections that
        open it at the same moment race to write the header; SQLite answers the loser
        SQLITE_BUSY at once, without its busy timeout (the pragma reads the header, then
        asks for the write lock while holding the read lock), so the wait is ours."""
        deadline = time.monotonic() + self._timeout
        pause = 0.001
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                busy_now = getattr(exc, "sqlite_errorname", "").startswith("SQLITE_BUSY")
                if not busy_now or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def opening(self) -> Iterator[None]:
        """Around the first steps on a new connection (the migration): a file that is not
        a database is one line, and the connection is closed on any failure."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise HighlightsError(f"{self.where}: not a usable highlightsmail database: {exc}") from None
        except BaseException:
            self._conn.close()
            raise

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        with self._lock, self._guard():
            yield self._conn

    @contextmanager
    def write(self, *, serial: bool = True) -> Iterator[Conn]:
        """One write transaction holding the write lock from its first statement (every
        SQLite write is serial)."""
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
                self._roll_back(exc)
                raise

    def _roll_back(self, exc: BaseException) -> None:
        # Roll back only what is still open: SQLite may have ended the transaction
        # itself (a full disk, a damaged page).
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the error being raised says more than this one
        if isinstance(exc, sqlite3.Error):
            problem = self._unusable(exc)
            if problem is not None:
                raise problem from None

    @contextmanager
    def erasing(self) -> Iterator[Conn]:
        with self._lock:
            self._conn.execute("PRAGMA secure_delete = ON")  # freed space is zeroed, not left
            try:
                with self.write() as conn:
                    yield conn
            finally:
                self._conn.execute("PRAGMA secure_delete = OFF")
            if not self._outer:
                # The pages as they were before the erasure go from the log; readers may
                # hold it a moment, which the busy timeout waits for.
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.write():
            self._outer += 1
            try:
                yield
            finally:
                self._outer -= 1

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
        code = getattr(exc, "sqlite_errorname", "") or ""
        where = self.where
        folder = display_path(self.path.parent) if str(self.path.parent) else "."
        beside = f"(SQLite keeps {self.path.name}-wal and -shm beside it)"
        if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return busy(where, self._timeout)
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
                f"the file and to its folder {folder} {beside}"
            )
        if code.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
            return UnusableDatabase(
                f"{where}: cannot open the database ({exc}); let the user running highlights read and write "
                f"the file and its folder {folder} {beside}"
            )
        if code.startswith("SQLITE_FULL"):
            return UnusableDatabase(f"{where}: the disk is full ({exc}); free some space and try again")
        if code.startswith("SQLITE_IOERR"):
            return UnusableDatabase(
                f"{where}: reading or writing the database failed ({exc}); check the disk, and that the "
                f"user running highlights may write to the file and its folder {folder}"
            )
        return None

    def schema_version(self, conn: Conn | None = None) -> int:
        if conn is not None:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        with self.connection() as own:
            return int(own.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, conn: Conn, version: int) -> None:
        # A PRAGMA takes no parameters: the number is formatted as an integer.
        conn.execute(trusted(f"PRAGMA user_version = {version:d}"))

    def stage(
        self,
        conn: Conn,
        table: LiteralString,
        definition: LiteralString,
        names: tuple[LiteralString, ...],
        rows: Iterable[Sequence[Any]],
        *,
        key: LiteralString,
    ) -> None:
        conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
        conn.execute(f"CREATE TEMP TABLE {table} ({definition})")
        marks = ", ".join("?" for _ in names)
        conn.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", rows)
        conn.execute(f"CREATE INDEX temp.{table}_{key} ON {table} ({key})")

    def gather_statistics(self, conn: Conn, tables: Sequence[LiteralString]) -> None:
        # SQLite plans these queries well without them (by the index on status), and
        # `ANALYZE` would make its plans depend on when it last ran.
        return None

    @contextmanager
    def staged_write(self, staged: StagedFile) -> Iterator[Conn]:
        """The staged file attached, so the statements read its table in place (no second
        copy of the rows; a name not found in the database itself is looked up there).
        SQLite detaches a file only outside a transaction: hence around the write."""
        assert not self._outer, "an import is a transaction of its own"
        with self._lock:
            with self._guard():
                self._conn.execute(f"ATTACH DATABASE ? AS {_STAGED}", (str(staged.path),))
                # The staged values were checked as they were read; SQLite spends more
                # on the schema's CHECK (x IN (...)) lists than on the rest of an event's
                # insert (2 us a row, of 2.5).
                self._conn.execute("PRAGMA ignore_check_constraints = ON")
                # The import's rows that name a subscriber (events, consents, topics) take
                # its id from the subscribers row they are joined with, in the same
                # statement: the foreign key look-up per row (a fifth of the events'
                # insert) cannot fail. (SQLite takes this pragma outside a transaction.)
                self._conn.execute("PRAGMA foreign_keys = OFF")
            try:
                with self.write() as conn:
                    yield conn
            finally:
                with self._guard():
                    self._conn.execute("PRAGMA foreign_keys = ON")
                    self._conn.execute("PRAGMA ignore_check_constraints = OFF")
                    self._conn.execute(f"DETACH DATABASE {_STAGED}")

    # -- several senders: not on SQLite ---------------------------------------------------

    def join_senders(self, issue: str) -> int:
        raise ValueError("join_dispatch needs a PostgreSQL Store with its own connection")

    def sender_gone(self) -> tuple[LiteralString, tuple[Any, ...]]:
        return "1 = 1", ()  # one sender: whoever left rows in flight has stopped

    def sending_now(self, issue: str) -> bool:
        return False

    # -- db copy: the source ---------------------------------------------------------------

    @staticmethod
    def table_names(conn: Conn) -> list[str]:
        return [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name"
            )
        ]

    @staticmethod
    def column_names(conn: Conn, table: str) -> list[str]:
        return [r[0] for r in conn.execute("SELECT name FROM pragma_table_info(?) ORDER BY cid", (table,))]

    @contextmanager
    def snapshot(self) -> Iterator[Conn]:
        """One read transaction: every table as it was at one moment."""
        with self._lock, self._guard():
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    @staticmethod
    def table_rows(conn: Conn, table: LiteralString, names: LiteralString) -> Iterator[Any]:
        return iter(conn.execute(f"SELECT {names} FROM {table} ORDER BY rowid"))
