"""The schema as .sql files per engine (store/sql/<engine>/NNNN_name.sql) and the
migrator that reads them."""

from __future__ import annotations

import functools
from importlib.resources import files

import pytest

from highlightsmail.errors import HighlightsError
from highlightsmail.store import SCHEMA_VERSION, migrator, upgrades
from highlightsmail.store.records import STATUS_ORDER, leaving_rank


def test_each_engine_has_one_file_per_migration_number_for_number() -> None:
    for engine in ("sqlite", "postgresql"):
        names = sorted(p.name for p in files("highlightsmail.store").joinpath("sql", engine).iterdir())
        assert [name[:5] for name in names] == [f"{n:04d}_" for n in range(1, SCHEMA_VERSION + 1)], engine
        assert len(migrator.MIGRATIONS[engine]) == SCHEMA_VERSION


def test_a_file_is_statements_ending_with_a_semicolon_and_run_lines_naming_steps() -> None:
    steps = migrator.parse(
        "-- 9: a comment about the migration\n"
        "\n"
        "CREATE TABLE t (\n"
        "    a TEXT -- kept: inside a statement\n"
        ");\n"
        "\n"
        "-- run: tag_dispatches\n"
        "-- run: allow_in_checks events source=form to_status=pending\n"
        "CREATE INDEX t_a ON t (a);\n"
    )
    assert steps[0] == "CREATE TABLE t (\n    a TEXT -- kept: inside a statement\n)"
    assert steps[1] is upgrades.tag_dispatches
    widen = steps[2]
    assert isinstance(widen, functools.partial) and widen.func is upgrades.allow_in_checks
    assert widen.keywords == {"table": "events", "additions": {"source": "form", "to_status": "pending"}}
    assert steps[3] == "CREATE INDEX t_a ON t (a)"


def test_a_statement_without_its_semicolon_is_refused() -> None:
    with pytest.raises(HighlightsError, match="ends inside a statement: CREATE TABLE t"):
        migrator.parse("CREATE TABLE t (a TEXT)\n")


def test_one_status_order_for_merges_and_events() -> None:
    assert STATUS_ORDER == ("active", "unsubscribed", "bounced", "complained")
    assert [leaving_rank(s) for s in STATUS_ORDER] == [0, 1, 2, 3]
    assert leaving_rank("pending") == 0  # asked to join: no further from mail than active
