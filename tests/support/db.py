"""Database files in the states a user's disk can leave them: damaged pages, a read-only
file or folder (for root too, who ignores permission bits)."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def damage_pages_holding(db: Path, marker: bytes) -> list[int]:
    """Overwrite, with noise, every page of the database `db` whose bytes hold `marker`
    (an address, say): a page in the middle of the file, as a failing disk or a torn
    copy leaves it. Everything is first moved from the WAL into the file, so the WAL is
    empty and readers go to the damaged pages. Returns the 0-based page numbers, never
    page 0 (the header)."""
    conn = sqlite3.connect(db)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0, "a reader kept the WAL from being emptied"
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    data = bytearray(db.read_bytes())
    pages = sorted({i // page_size for i in _find_all(data, marker)} - {0})
    assert pages, f"no page holds {marker!r}"
    noise = random.Random(2024)
    for page in pages:
        data[page * page_size : (page + 1) * page_size] = noise.randbytes(page_size)
    db.write_bytes(bytes(data))
    return pages


def _find_all(data: bytearray, marker: bytes) -> Iterator[int]:
    start = data.find(marker)
    while start >= 0:
        yield start
        start = data.find(marker, start + 1)


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` (a file or a folder) cannot be written while the block runs. Mode 0555/0444
    for a normal user; root ignores modes, so for root the file system's immutable flag
    (chattr +i), which stops root too; where that flag is not supported, the test is
    skipped, saying why."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root and chattr is missing: nothing can make a file read-only for root here")
    done = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"running as root and this file system has no immutable flag: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


# -- either engine -------------------------------------------------------------------------


class _PgRaw:
    """A PostgreSQL connection (autocommit) that reads `?` placeholders, as the store's SQL does."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)

    def execute(self, sql: str, params: tuple = ()):
        return self.conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)

    def close(self) -> None:
        self.conn.close()


@contextmanager
def raw_connection(target: Path | str) -> Iterator[sqlite3.Connection | _PgRaw]:
    """A connection of its own to the store's database (a SQLite path or a PostgreSQL URL),
    each statement committed by itself, for looking behind the store's back."""
    conn: sqlite3.Connection | _PgRaw
    if isinstance(target, str) and target.startswith("postgresql://"):
        conn = _PgRaw(target)
    else:
        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("PRAGMA foreign_keys = ON")
    try:
        yield conn
    finally:
        conn.close()


def integrity_errors() -> tuple[type[Exception], ...]:
    """What either engine raises for a row its schema refuses."""
    import psycopg

    return (sqlite3.IntegrityError, psycopg.IntegrityError, psycopg.DataError)


TABLES = (
    "subscribers",
    "events",
    "ledger_recipients",
    "ledger_batches",
    "ledger_exceptions",
    "dispatches",
    "test_sends",
    "delivery_events",
    "scanned_mail",
)


def dump_tables(target: Path | str, tables: tuple[str, ...] = TABLES) -> dict[str, list[tuple]]:
    """Every row of these tables, in order, read through a connection of its own."""
    with raw_connection(target) as conn:
        return {t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2")] for t in tables}


def target_of(root: Path) -> Path | str:
    """Where the workspace at `root` keeps its state: its SQLite file, or the PostgreSQL
    URL it is pointed at (HIGHLIGHTS_DATABASE_URL)."""
    from highlightsmail.authoring.workspace import load_workspace

    ws = load_workspace(root)
    return ws.database_url or ws.db_path
