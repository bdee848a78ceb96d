"""The PostgreSQL engine (`database: postgresql://user@host:port/dbname`).

- Writes that read before they write (every one but the send ledger's claims and
  finishes) take one transaction-level advisory lock first, so they run one at a time
  as on SQLite and the same rules hold with several processes on several machines.
  Claims lock the rows they take and skip rows another sender is taking
  (`FOR UPDATE SKIP LOCKED`), so several senders share one dispatch without overlap.
- A sender holds a session-level advisory lock naming it (`join_senders`) for as long
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
import logging
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
from psycopg import errors

from highlightsmail.dburl import describe_url
from highlightsmail.errors import HighlightsError
from highlightsmail.store.engine import Conn, StagedFile, UnusableDatabase, busy, first_line, identifier, trusted

if TYPE_CHECKING:
    import psycopg_pool

#: How long the web app's pool keeps retrying a lost connection before it gives up and
#: waits for a request to need one.
POOL_RECONNECT_S = 10.0

# Advisory lock keys (two 32-bit integers): the first names what is locked.
_LOCK_WRITER = 0x686D0001  # (this, 0): one read-then-write transaction at a time
_LOCK_SENDER = 0x686D0002  # (this, sender number): a sender is alive
_LOCK_ISSUE = 0x686D0003  # (this, hash of the slug), shared: a sender of this issue is alive
_IMPORT_WORK_MEM = "128MB"  # a server's memory per sort or hash in an import (see staged_write)
# A sender's session must end soon after its machine is gone, so that its batches are
# found in doubt: the server probes an idle connection after 30 s, every 10 s, 3 times.
_SENDER_KEEPALIVE = ("SET tcp_keepalives_idle = 30", "SET tcp_keepalives_interval = 10", "SET tcp_keepalives_count = 3")
# The advisory locks of this database held now, by their first key (`?`).
_ADVISORY = (
    "locktype = 'advisory' AND granted AND objsubid = 2 AND classid::bigint = ?"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
# A ledger row whose sender is gone: its lock is free (or no sender is named).
_SENDER_GONE = f"(claimed_by IS NULL OR claimed_by NOT IN (SELECT objid::bigint FROM pg_locks WHERE {_ADVISORY}))"


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
def _pg_sql(sql: str) -> LiteralString:
    """A statement written with `?` placeholders, as psycopg reads it (still the literal
    text of the store's code, only its marks changed)."""
    return trusted(sql.replace("%", "%%").replace("?", "%s"))


class PgConn:
    """A psycopg connection that reads the store's `?` statements (a `Conn`)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: LiteralString, parameters: Any = (), /) -> psycopg.Cursor[Any]:
        return self.raw.execute(_pg_sql(sql), parameters)

    def executemany(self, sql: LiteralString, parameters: Iterable[Any], /) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        # Nothing to do costs nothing: psycopg would still sync a pipeline with the
        # server (a claim passes an empty list for those who left, nearly always).
        if not (isinstance(parameters, (list, tuple)) and not parameters):
            cursor.executemany(_pg_sql(sql), parameters)
        return cursor


class PgEngine:
    """One PostgreSQL database (an `Engine`): its own connection, or a pool (`pooled`)."""

    name: LiteralString = "postgresql"
    several_senders = True
    empty_needs_asking = True  # see NoHighlightsData
    hours_since: LiteralString = (
        "CAST(floor((extract(epoch FROM CAST(at AS timestamptz))"
        " - extract(epoch FROM CAST(? AS timestamptz))) / 3600) AS INTEGER)"
    )
    ordered_join: LiteralString = "JOIN"  # PostgreSQL plans the order, and has no CROSS JOIN ... ON
    lock_row: LiteralString = " FOR UPDATE"

    def __init__(self, url: str, timeout: float, *, pooled: bool) -> None:
        self.url = url
        self.where = describe_url(url)
        self._timeout = timeout
        self._lock = threading.RLock()
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._raw: psycopg.Connection[Any] | None = None
        self._sender: int | None = None
        options: dict[str, Any] = {
            "autocommit": True,  # reads see what is committed now; writes say where their transaction begins
            "connect_timeout": max(1, round(min(timeout, 10))),
            "application_name": "highlights",
            # A lock held too long is the same one line as SQLite's busy database.
            "options": f"-c lock_timeout={int(timeout * 1000)}",
        }
        with self.opening():
            if pooled:
                self._pool = self._open_pool(options)
            else:
                self._raw = psycopg.connect(url, **options)

    def _open_pool(self, options: dict[str, Any]) -> psycopg_pool.ConnectionPool[Any]:
        # Here, not at the top: only the web endpoint pools its connections, and a
        # command's start does not pay for loading the pool.
        import psycopg_pool

        _quiet_pool_log()
        # Checked on the way out of the pool: a server restarted since is met with a
        # new connection, not a failed request.
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            self.url,
            min_size=1,
            max_size=8,
            kwargs=options,
            # A request waits this long for a connection, then answers 503.
            timeout=min(self._timeout, 5),
            check=psycopg_pool.ConnectionPool.check_connection,
            # A connection lost with the server is retried at growing intervals
            # (1, 2, 4 s...), then given up, and made anew when a request needs
            # it: a server back after a long outage is used at once, not after
            # the next of ever longer waits (there were minutes between tries).
            reconnect_timeout=POOL_RECONNECT_S,
            name="highlights",
            open=False,
        )
        self._pool = pool  # closed by opening() if the first connection fails
        pool.open(wait=True, timeout=min(self._timeout, 5))
        return pool

    @contextmanager
    def opening(self) -> Iterator[None]:
        """Around connecting and the first steps (the migration): a failure closes what was
        opened and is one line about the server."""
        try:
            yield
        except psycopg.Error as exc:
            self.close()
            raise self._unusable(exc, connecting=True) or HighlightsError(
                f"{self.where}: not a usable highlightsmail database: {first_line(exc)}"
            ) from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._raw is not None:
                self._raw.close()  # also frees the session's advisory locks
            if self._pool is not None:
                self._pool.close()

    @contextmanager
    def _raw_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for one call: the engine's own, or one from the pool."""
        try:
            if self._pool is not None:
                with self._pool.connection() as raw:
                    yield raw
            else:
                assert self._raw is not None
                with self._lock:
                    yield self._raw
        except psycopg.Error as exc:
            problem = self._unusable(exc)
            if problem is None:
                raise
            raise problem from None

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        with self._raw_connection() as raw:
            yield PgConn(raw)

    @contextmanager
    def write(self, *, serial: bool = True) -> Iterator[Conn]:
        """One write transaction; unless `serial` is False, holding the writers' advisory
        lock, so read-then-write transactions run one at a time as on SQLite."""
        with self._raw_connection() as raw, raw.transaction():
            if serial:
                raw.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_WRITER,))
            yield PgConn(raw)

    @contextmanager
    def erasing(self) -> Iterator[Conn]:
        """A write: PostgreSQL keeps no deleted row where a query or a dump can see it
        (its files are the server's, cleared by its own vacuum)."""
        with self.write() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The writes inside it make one transaction. It takes no writers' lock: a sender's
        turn must not hold up the others."""
        with self.write(serial=False):
            yield

    def _unusable(self, exc: Exception, *, connecting: bool = False) -> UnusableDatabase | None:
        """The one-line error for a server that cannot be reached, refuses, or cannot do
        what was asked now (None for anything else: a bug, not a state of the server). It
        names the server as `where` does, never the password."""
        reason = first_line(exc)
        where = self.where
        if isinstance(exc, errors.LockNotAvailable | errors.DeadlockDetected):
            return busy(where, self._timeout)
        if isinstance(exc, errors.InvalidPassword | errors.InvalidAuthorizationSpecification):
            return UnusableDatabase(
                f"{where}: the server refused the login ({reason}); check the user, and the password in "
                "PGPASSWORD or HIGHLIGHTS_DATABASE_URL"
            )
        if isinstance(exc, errors.InvalidCatalogName):
            return UnusableDatabase(f"{where}: no such database on the server ({reason}); create it first")
        if isinstance(exc, errors.InsufficientPrivilege):
            return UnusableDatabase(
                f"{where}: the database user may not do this ({reason}); grant it the rights on the "
                "database's tables (or, for the first run, to create them)"
            )
        if isinstance(exc, errors.ReadOnlySqlTransaction):
            return UnusableDatabase(
                f"{where}: the server accepts no writes ({reason}); point the workspace at the primary server"
            )
        if isinstance(exc, errors.DiskFull | errors.OutOfMemory | errors.TooManyConnections):
            return UnusableDatabase(f"{where}: the database server cannot take this now ({reason}); try again")
        if isinstance(exc, psycopg.OperationalError):
            if connecting or type(exc).__name__ == "PoolTimeout":
                return UnusableDatabase(
                    f"{where}: cannot connect to the database server ({reason}); check that it is running "
                    "and that this machine can reach it; nothing was changed"
                )
            return UnusableDatabase(
                f"{where}: lost the database server ({reason}); what was under way was not kept; "
                "try again once the server is back"
            )
        return None

    def schema_version(self, conn: Conn | None = None) -> int:
        """The schema's version: its one-row table (0: no schema yet)."""
        if conn is not None:
            return self._version(conn)
        with self.connection() as own:
            return self._version(own)

    @staticmethod
    def _version(conn: Conn) -> int:
        # Read from pg_class itself, not to_regclass(): the server's cache of names may
        # still say "no such table" after waiting for a lock behind the transaction that
        # made it, since an advisory lock does not refresh that cache.
        exists = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n"
            " ON n.oid = c.relnamespace WHERE c.relname = 'schema_version' AND n.nspname = current_schema())"
        ).fetchone()
        if not exists or not exists[0]:
            return 0
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def set_schema_version(self, conn: Conn, version: int) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

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
        assert isinstance(conn, PgConn)
        conn.execute(f"DROP TABLE IF EXISTS pg_temp.{table}")
        conn.execute(f"CREATE TEMP TABLE {table} ({definition}) ON COMMIT DROP")
        # COPY: the rows stream to the server without a round trip each.
        with conn.raw.cursor().copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute(f"CREATE INDEX ON {table} ({key})")
        # A temporary table gets no statistics by itself: without them the planner's
        # first guess at joining 1,000,000 rows took minutes.
        conn.execute(f"ANALYZE {table}")

    def gather_statistics(self, conn: Conn, tables: Sequence[LiteralString]) -> None:
        # Autovacuum gathers them a while later; a send begun before then was planned
        # without them: fixing 100,000 recipients scanned every subscriber for each
        # chunk of 1,000 (0.8 s, where 0.04 s with them), a cost that grows with the
        # square of the list. ANALYZE reads a sample of at most 30,000 rows a table.
        conn.execute(f"ANALYZE {', '.join(tables)}")

    @contextmanager
    def staged_write(self, staged: StagedFile) -> Iterator[Conn]:
        """The staged file's rows copied into a temporary table of the same name."""
        with self.write() as conn:
            # Joins and sorts of a whole list in memory, for this transaction only (the
            # default 4 MB sent 1,000,000 rows to disk in 16 batches).
            conn.execute(f"SET LOCAL work_mem = '{_IMPORT_WORK_MEM}'")
            self.stage(conn, staged.table, staged.definition, staged.names, staged.rows(), key=staged.key)
            yield conn

    # -- several senders ------------------------------------------------------------------

    def join_senders(self, issue: str) -> int:
        """Make this engine's own connection a sender of `issue` for as long as it is open:
        it takes a sender number and holds, on its session, the advisory lock naming it
        and a shared lock on the issue. Not with a pool."""
        if self._raw is None:
            raise ValueError("join_dispatch needs a PostgreSQL Store with its own connection")
        if self._sender is not None:
            return self._sender
        with self._raw_connection() as raw:
            for statement in _SENDER_KEEPALIVE:
                raw.execute(statement)
            row = raw.execute("SELECT nextval('sender_ids')").fetchone()
            assert row is not None
            number = int(row[0])
            raw.execute("SELECT pg_advisory_lock(%s, %s)", (_LOCK_SENDER, number))
            raw.execute("SELECT pg_advisory_lock_shared(%s, %s)", (_LOCK_ISSUE, _issue_key(issue)))
        self._sender = number
        return number

    def sender_gone(self) -> tuple[LiteralString, tuple[Any, ...]]:
        return _SENDER_GONE, (_LOCK_SENDER,)

    def sending_now(self, issue: str) -> bool:
        """Whether a sender of `issue` is alive now (on any machine)."""
        with self.connection() as conn:
            row = conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM pg_locks WHERE {_ADVISORY} AND objid::bigint = ?)",
                (_LOCK_ISSUE, _issue_key(issue)),
            ).fetchone()
        return bool(row[0])

    # -- db copy: the target ---------------------------------------------------------------

    @staticmethod
    def table_names(conn: Conn) -> list[str]:
        return [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            )
        ]

    @staticmethod
    def column_names(conn: Conn, table: str) -> list[str]:
        return [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = ?",
                (table,),
            )
        ]

    @staticmethod
    def load(conn: Conn, table: LiteralString, names: LiteralString, rows: Iterable[Sequence[Any]]) -> int:
        """Stream rows into a table (COPY); how many."""
        assert isinstance(conn, PgConn)
        n = 0
        with conn.raw.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                n += 1
        return n

    @staticmethod
    def restart_identities(conn: Conn) -> None:
        """Identities continue after the largest id each table holds (after a copy)."""
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND is_identity = 'YES'"
        ).fetchall():
            conn.execute(
                "SELECT setval(pg_get_serial_sequence(?, ?), coalesce(max("
                + identifier(column)
                + "), 0) + 1, false) FROM "
                + identifier(table),
                (table, column),
            )
