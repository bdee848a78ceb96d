"""`db copy`: a workspace's SQLite state into an empty PostgreSQL database."""

from __future__ import annotations

from highlightsmail.errors import HighlightsError
from highlightsmail.store.base import Part
from highlightsmail.store.engine import Conn, CopySource, CopyTarget, Engine, identifier
from highlightsmail.store.migrator import SCHEMA_VERSION

# Parents before the rows that point at them.
_FIRST = ("subscribers", "dispatches")


class Copying(Part):
    """The `db copy` part of the Store."""

    def copy_into(self, target: Part) -> dict[str, int]:
        """Copy every row of this (SQLite) database into `target`, an empty PostgreSQL
        database with the current schema, in one transaction there; return the rows per
        table. The counts are checked in the target before it commits, so a copy is whole
        or not there at all. Tables are read from SQLite's own list, so a table a later
        migration adds is copied without a change here."""
        source, sink = self._db, target._db
        if not isinstance(source, CopySource) or not isinstance(sink, CopyTarget):
            raise ValueError("copy_into copies a SQLite database into a PostgreSQL one")
        with source.snapshot() as conn:
            names = source.table_names(conn)
        tables = [t for t in _FIRST if t in names] + [t for t in names if t not in _FIRST]
        with target._write() as there:
            self._check_empty(target._db, there, tables)
            counts: dict[str, int] = {}
            with source.snapshot() as here:  # one snapshot of the source for every table
                for table in map(identifier, tables):
                    theirs = set(target._db.column_names(there, table))
                    columns = ", ".join(identifier(c) for c in source.column_names(here, table) if c in theirs)
                    counts[table] = sink.load(there, table, columns, source.table_rows(here, table, columns))
            for table, n in counts.items():
                found = there.execute(f"SELECT count(*) FROM {identifier(table)}").fetchone()[0]
                if found != n:
                    raise HighlightsError(
                        f"{target._db.where}: {table} has {found} rows after the copy, not {n}; nothing was kept"
                    )
            # Identities continue after the copied ids (batch numbers are copied with their
            # dispatches).
            sink.restart_identities(there)
            # A new database's first send is planned with the statistics of what it holds.
            target._db.gather_statistics(there, [identifier(t) for t in counts])
        return counts

    @staticmethod
    def _check_empty(engine: Engine, there: Conn, tables: list[str]) -> None:
        """Refuse a target that lacks a table, holds rows, or holds other tables."""
        where = engine.where
        theirs = set(engine.table_names(there))
        missing = [t for t in tables if t not in theirs]
        if missing:
            raise HighlightsError(f"{where}: has no table {', '.join(missing)}; is it at schema {SCHEMA_VERSION}?")
        others = sorted(theirs - set(tables) - {"schema_version"})
        filled = [t for t in tables if there.execute(f"SELECT EXISTS (SELECT 1 FROM {identifier(t)})").fetchone()[0]]
        if filled or others:
            what = f"rows in {', '.join(filled)}" if filled else f"other tables ({', '.join(others)})"
            raise HighlightsError(f"{where}: is not empty (it holds {what}); copy only into an empty database")
