"""What every part of the store shares: the engine, the clock, and the few ways a query
reaches the database. Each kind of data is a part (subscribers.py, ledger.py,
deliveries.py, signups.py, copying.py); facade.Store is all of them over one engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, LiteralString

from highlightsmail.store.engine import Conn, Engine
from highlightsmail.store.records import format_time

SUBSCRIBER_COLUMNS: LiteralString = "id, email, name, status, created, updated"
#: Rows per page when streaming subscribers or ledger rows.
PAGE = 1000


class Part:
    """The base of every part of the store."""

    _db: Engine
    _clock: Callable[[], datetime]

    def now(self) -> str:
        """The current time in the stored format (the clock is injectable for tests)."""
        return format_time(self._clock())

    def _query(self, sql: LiteralString, params: Sequence[Any] = ()) -> list[Any]:
        with self._db.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _fetch_page(self, sql: LiteralString, params: Sequence[Any], page: int) -> list[Any]:
        """At most `page` rows of a statement, read in one short step."""
        with self._db.connection() as conn:
            return conn.execute(sql, params).fetchmany(page)

    def _write(self, *, serial: bool = True) -> AbstractContextManager[Conn]:
        return self._db.write(serial=serial)

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
        """Record a change of a subscriber's status."""
        conn.execute(
            "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (subscriber_id, at, from_status, to_status, source, detail),
        )


def in_list(values: Sequence[LiteralString]) -> LiteralString:
    """SQL: the values as a list of string literals, for `IN (...)`."""
    return ", ".join(f"'{v}'" for v in values)


def marks(count: int) -> LiteralString:
    """SQL: `count` placeholders, for `IN (...)`."""
    return ", ".join("?" for _ in range(count))
