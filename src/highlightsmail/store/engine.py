"""What the store's queries run on, whatever the engine: the `Engine` protocol that
sqlite.py and postgresql.py fulfil, the `Conn` a query writes through (statements with
`?` placeholders, as both engines then read them), and the store's errors.

Every difference between the engines is an engine's attribute or method, named for
what it does (a date difference, a join order, a bulk load, several senders): the query
modules never import an engine or a driver, nor ask which engine they are on."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, LiteralString, Protocol, runtime_checkable

from highlightsmail.errors import HighlightsError, HighlightsWarning


class Cursor(Protocol):
    """The part of a driver's cursor the queries use."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int = ..., /) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection inside one call or transaction: a SQLite connection, or a PostgreSQL
    one behind postgresql.PgConn (which reads the same `?` placeholders)."""

    def execute(self, sql: LiteralString, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: LiteralString, parameters: Iterable[Any], /) -> Cursor: ...


class Engine(Protocol):
    """One database, SQLite or PostgreSQL, as the store's queries see it."""

    #: Which folder of store/sql/ holds this engine's migrations.
    name: LiteralString
    #: The database as errors name it: the file, or user@host:port/dbname (no password).
    where: str
    #: Whether several senders may share one dispatch (row locks, advisory locks).
    several_senders: bool
    #: Whether an empty database gets the schema only when asked (see NoHighlightsData).
    empty_needs_asking: bool
    #: SQL: whole hours from the time `?` to the column `at` (both stored times).
    hours_since: LiteralString
    #: SQL: a join whose order the engine keeps as written (SQLite's CROSS JOIN).
    ordered_join: LiteralString
    #: SQL after a SELECT: lock the rows read until the transaction ends (PostgreSQL's
    #: FOR UPDATE; nothing on SQLite, whose writers go one at a time).
    lock_row: LiteralString

    def close(self) -> None: ...

    def opening(self) -> AbstractContextManager[None]:
        """Around the first steps on a new connection (the migration): a failure closes it
        and becomes one line naming the database."""
        ...

    def connection(self) -> AbstractContextManager[Conn]:
        """A connection for one call, outside any transaction of its own (each statement
        commits by itself on PostgreSQL)."""
        ...

    def write(self, *, serial: bool = True) -> AbstractContextManager[Conn]:
        """One write transaction; `serial`: one at a time with other serial writers (SQLite's
        writes always are)."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """The writes inside it make one transaction (the send loop's)."""
        ...

    def erasing(self) -> AbstractContextManager[Conn]:
        """One write transaction that deletes a person's rows, leaving no copy of them in
        the database's own files where the engine can (SQLite: deleted content zeroed
        and the write-ahead log emptied into the file)."""
        ...

    def schema_version(self, conn: Conn | None = None) -> int:
        """The schema's version (0: no schema yet), read on `conn` or a connection of its own."""
        ...

    def set_schema_version(self, conn: Conn, version: int) -> None: ...

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
        """Make a temporary `table` (the columns of `definition`) holding `rows` of the
        columns `names`, indexed on the column `key` for joins (PostgreSQL also gathers
        its statistics, which a temporary table lacks); the caller drops it."""
        ...

    def gather_statistics(self, conn: Conn, tables: Sequence[LiteralString]) -> None:
        """After many rows were written to `tables` at once (an import, a copy): PostgreSQL
        gathers their statistics again in the transaction; SQLite needs none."""
        ...

    def staged_write(self, staged: StagedFile) -> AbstractContextManager[Conn]:
        """One write transaction (as `write`) in which `staged.table` reads as the table of
        that name in the SQLite file `staged.path`. SQLite attaches the file and reads it
        in place; PostgreSQL copies its rows into a temporary table (see `stage`)."""
        ...

    def join_senders(self, issue: str) -> int:
        """Make this connection a sender of `issue` for as long as it lives; its number."""
        ...

    def sender_gone(self) -> tuple[LiteralString, tuple[Any, ...]]:
        """SQL (and its parameters): a ledger row in flight whose sender is gone."""
        ...

    def sending_now(self, issue: str) -> bool: ...

    def table_names(self, conn: Conn) -> list[str]:
        """The database's own tables."""
        ...

    def column_names(self, conn: Conn, table: str) -> list[str]: ...


class StagedFile(Protocol):
    """Rows staged for a bulk statement in a SQLite file of their own (an import's
    scratch file): one table, its rows numbered by `pos`, indexed on `key`."""

    #: The SQLite file; nothing writes to it while a transaction reads it.
    path: Path
    #: The table's name in the file, and in the statements that read it.
    table: LiteralString
    #: Its columns as CREATE TABLE lists them, and their names in that order.
    definition: LiteralString
    names: tuple[LiteralString, ...]
    #: The column the table is indexed on, for the joins.
    key: LiteralString

    def rows(self) -> Iterable[Sequence[Any]]:
        """The table's rows (the columns `names`), by `pos`."""
        ...


@runtime_checkable
class CopySource(Protocol):
    """An engine `db copy` reads from (SQLite)."""

    def table_names(self, conn: Conn) -> list[str]: ...

    def column_names(self, conn: Conn, table: str) -> list[str]: ...

    def snapshot(self) -> AbstractContextManager[Conn]:
        """One read transaction: every table as it was at one moment."""
        ...

    def table_rows(self, conn: Conn, table: LiteralString, names: LiteralString) -> Iterator[Any]:
        """A table's rows in the order they were written."""
        ...


@runtime_checkable
class CopyTarget(Protocol):
    """An engine `db copy` writes into (PostgreSQL)."""

    def load(self, conn: Conn, table: LiteralString, names: LiteralString, rows: Iterable[Sequence[Any]]) -> int:
        """Stream rows into a table; how many."""
        ...

    def restart_identities(self, conn: Conn) -> None:
        """Identities continue after the largest id each table holds."""
        ...


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


class MergedAddressesWarning(HighlightsWarning):
    """An upgrade found rows whose addresses are one address, and merged them."""


def first_line(exc: Exception) -> str:
    """The gist of a driver's message, on one line (libpq's run over several, with hints)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
    # "connection failed: connection to server at "h", port 5432 failed: Connection refused"
    text = text.rsplit(" failed: ", 1)[-1] if "failed: " in text else text
    return " ".join(text.removeprefix("FATAL:").split())


def busy(where: str, timeout: float) -> UnusableDatabase:
    """The one line for a lock held too long, the same on both engines."""
    return UnusableDatabase(
        f"{where}: the database stayed busy for more than {timeout:g} s (another highlights process is writing); try again"
    )


def trusted(text: str) -> LiteralString:
    """SQL text the type checkers cannot follow but the store vouches for: its own
    statements with their marks changed, its own .sql files, the schema's own text read
    back from the database, or a name checked by `identifier`."""
    return text  # pyright: ignore[reportReturnType]


def identifier(name: str) -> LiteralString:
    """A table or column name read from a database's catalog, checked to be a plain
    identifier before it goes into SQL text (it cannot be a parameter)."""
    if not name.isidentifier() or not name.isascii():
        raise HighlightsError(f"unexpected name {name!r} in the database's catalog")
    return trusted(name)
