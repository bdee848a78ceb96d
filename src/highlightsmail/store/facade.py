"""`Store`: the database of one workspace, SQLite or PostgreSQL, as one object made of the
parts by kind of data over one engine. Callers import it from `highlightsmail.store`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from highlightsmail.dburl import is_postgresql
from highlightsmail.errors import display_path
from highlightsmail.store import migrator
from highlightsmail.store.copying import Copying
from highlightsmail.store.corrections import Corrections
from highlightsmail.store.deliveries import DeliveryEvents
from highlightsmail.store.engine import Engine, MergedAddressesWarning, UnusableDatabase
from highlightsmail.store.ledger import Ledger
from highlightsmail.store.messages import KeptMessages
from highlightsmail.store.preferences import Preferences
from highlightsmail.store.records import Place, utc_now
from highlightsmail.store.schedules import Schedules
from highlightsmail.store.signups import Signups
from highlightsmail.store.sqlite import SqliteEngine
from highlightsmail.store.subscribers import Subscribers

BUSY_TIMEOUT_S = 30.0


class Store(Subscribers, Ledger, DeliveryEvents, Signups, Schedules, Copying, KeptMessages, Corrections, Preferences):
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
        self._clock = clock or utc_now
        self.path: Path | None = None
        self.url: str | None = None
        self._db = self._engine(target, timeout, pooled)
        self.where = self._db.where
        with self._db.opening():
            outcome = migrator.migrate(self._db, upgrade=upgrade, create=create or upgrade)
        self.upgraded_from = outcome.upgraded_from  # the version an upgrade started from, if one ran
        self.created_schema = outcome.created_schema  # whether this opening gave an empty database the schema
        for line in outcome.reports:
            warnings.warn(MergedAddressesWarning(f"{self.where}: {line}"), stacklevel=2)

    def _engine(self, target: Path | str, timeout: float, pooled: bool) -> Engine:
        if isinstance(target, str) and is_postgresql(target):
            # Imported here: psycopg is slow to import, and a SQLite workspace never needs it.
            from highlightsmail.store.postgresql import PgEngine

            self.url = target
            return PgEngine(target, timeout, pooled=pooled)
        self.path = Path(target)
        return SqliteEngine(self.path, timeout)

    @classmethod
    def open(cls, ws: Place, **kwargs: Any) -> Store:
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
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self._db.schema_version()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make the writes inside one transaction, committed at the end (the send loop
        records the batches that came back and claims the next ones with one commit).
        On SQLite each write inside it is a savepoint, undone alone if it fails. With
        several senders (PostgreSQL) it takes no writers' lock: a sender's turn must not
        hold up the others."""
        with self._db.transaction():
            yield

    def checkpoint_later(self) -> None:
        """SQLite: this Store's commits no longer copy the write-ahead log into the file
        when it has grown (SQLite's automatic checkpoint, which syncs the disk), for a
        caller that calls `checkpoint` elsewhere: a commit stays a write to the log."""
        if self.path is not None:
            self._query("PRAGMA wal_autocheckpoint = 0")

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the file as far as readers and writers
        let it now, waiting for none of them (PASSIVE)."""
        if self.path is not None:
            self._query("PRAGMA wal_checkpoint(PASSIVE)")

    def ping(self) -> None:
        """Ask the database something; UnusableDatabase when it cannot answer."""
        self._query("SELECT count(*) FROM dispatches")
