"""The schema and its migrations: store/sql/<engine>/NNNN_name.sql, one file per
migration and engine, number for number.

Each file is a list of steps run in order inside one transaction: SQL statements, each
ending with `;` at the end of a line, and `-- run: name words...` lines naming a step of
upgrades.py. The schema's version is the number of migrations applied. Files are
appended, never edited. No PostgreSQL database is older than migration 3, so its first
file makes the schema as it stands after migration 3 and the next two have nothing to do.
Beyond SQLite's tables, PostgreSQL keeps what several senders share: which sender claimed
each row in flight (`claimed_by`), the last batch number handed out for an issue
(`dispatches.batches`), and the numbers senders take. Its text columns compare and sort
by code point (COLLATE "C"), as SQLite's do, whatever the server's locale.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from typing import LiteralString

from highlightsmail.errors import HighlightsError
from highlightsmail.store.engine import Conn, Engine, NoHighlightsData, OutdatedSchema, trusted
from highlightsmail.store.upgrades import STEPS

#: A step of a migration: an SQL statement, or a function run on the connection inside
#: the migration's transaction, returning lines to tell the editor.
Step = LiteralString | Callable[[Conn], list[str]]


def parse(text: str) -> tuple[Step, ...]:
    """The steps of one migration file."""
    steps: list[Step] = []
    lines: list[str] = []
    for line in text.splitlines():
        if not lines and line.startswith("-- run: "):
            name, *words = line.removeprefix("-- run: ").split()
            steps.append(_step(name, words))
        elif not lines and (not line.strip() or line.startswith("--")):
            continue  # between statements: a blank line or a comment
        elif line.rstrip().endswith(";"):
            lines.append(line.rstrip().removesuffix(";"))
            # The package's own file: literal SQL text, as if written in the code.
            steps.append(trusted("\n".join(lines)))
            lines = []
        else:
            lines.append(line)
    if lines:
        raise HighlightsError(f"a migration ends inside a statement: {lines[0]}")
    return tuple(steps)


def _step(name: str, words: list[str]) -> Callable[[Conn], list[str]]:
    function = STEPS[name]
    if not words:
        return function
    table, *pairs = words
    return functools.partial(function, table=table, additions=dict(p.split("=", 1) for p in pairs))


def load(engine: str) -> tuple[tuple[Step, ...], ...]:
    """Every migration of one engine, in order."""
    folder = files("highlightsmail.store").joinpath("sql", engine)
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    for number, name in enumerate(names, 1):
        if not name.startswith(f"{number:04d}_"):
            raise HighlightsError(f"store/sql/{engine}/{name}: expected migration {number:04d} here")
    return tuple(parse(folder.joinpath(name).read_text(encoding="utf-8")) for name in names)


MIGRATIONS: dict[str, tuple[tuple[Step, ...], ...]] = {"sqlite": load("sqlite"), "postgresql": load("postgresql")}
SCHEMA_VERSION = len(MIGRATIONS["sqlite"])
assert len(MIGRATIONS["postgresql"]) == SCHEMA_VERSION, "every migration needs its PostgreSQL file"


@dataclass
class Outcome:
    """What bringing a database up to date did."""

    reports: list[str] = field(default_factory=list)  # lines the steps have for the editor
    upgraded_from: int | None = None  # the version an upgrade started from, if one ran
    created_schema: bool = False  # whether an empty database got the schema


def check_version(where: str, version: int, *, upgrade: bool) -> None:
    if version > SCHEMA_VERSION:
        raise HighlightsError(
            f"{where}: this database was made by a newer highlightsmail "
            f"(schema {version}, this version knows up to {SCHEMA_VERSION}); upgrade highlightsmail"
        )
    if 0 < version < SCHEMA_VERSION and not upgrade:
        raise OutdatedSchema(
            f"{where}: the database has schema {version} and this highlightsmail needs {SCHEMA_VERSION}; "
            "back it up, then run `highlights db upgrade`"
        )


def migrate(engine: Engine, *, upgrade: bool, create: bool) -> Outcome:
    """Bring the schema up to date.

    An empty database gets the whole schema at once. An older one is upgraded only when
    asked (`upgrade`, the `db upgrade` command): an upgrade cannot be undone, the older
    highlightsmail that other machines may still run refuses the newer schema, and some
    upgrades merge rows, so it is the editor's step, not a side effect of whichever
    command runs first. An empty PostgreSQL database gets the schema only when asked too
    (`create`): see NoHighlightsData."""
    outcome = Outcome()
    version = engine.schema_version()
    check_version(engine.where, version, upgrade=upgrade)
    if version == SCHEMA_VERSION:
        return outcome
    if version == 0 and engine.empty_needs_asking and not create:
        raise NoHighlightsData(
            f"{engine.where}: no highlightsmail data here; run `highlights db copy` (to move a SQLite "
            "state in) or `highlights db upgrade` (to start an empty list here)"
        )
    with engine.write() as conn:
        # Another process may have migrated while we waited for the write lock.
        version = engine.schema_version(conn)
        check_version(engine.where, version, upgrade=upgrade)
        if version == SCHEMA_VERSION:
            return outcome
        if version:
            outcome.upgraded_from = version
        else:
            outcome.created_schema = True
        for migration in MIGRATIONS[engine.name][version:SCHEMA_VERSION]:
            for step in migration:
                if callable(step):
                    outcome.reports.extend(step(conn) or [])
                else:
                    conn.execute(step)
        engine.set_schema_version(conn, SCHEMA_VERSION)
    return outcome
