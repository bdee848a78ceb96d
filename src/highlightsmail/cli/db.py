"""`db upgrade` and `db copy`."""

from __future__ import annotations

import click

from highlightsmail.cli.context import Ctx, pass_ctx


@click.group()
def db() -> None:
    """Upgrade the database's schema, or move the state to PostgreSQL."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(obj: Ctx) -> None:
    """Bring the database's schema up to this version.

    Back the database up first: an upgrade cannot be undone. An empty PostgreSQL
    database gets the schema, to start a list there from nothing."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.store import SCHEMA_VERSION, Store

    with Store.open(obj.ws, upgrade=True) as store:
        where, before, created = store.where, store.upgraded_from, store.created_schema
    if created:
        click.echo(f"{where}: created schema {SCHEMA_VERSION}, with no subscribers yet")
    elif before is None:
        click.echo(f"{where}: schema {SCHEMA_VERSION}, up to date")
    else:
        click.echo(f"{where}: upgraded from schema {before} to {SCHEMA_VERSION}")


@db.command("copy")
@click.option("--to", "to", required=True, metavar="URL", help="postgresql://user@host:port/dbname, an empty database.")
@pass_ctx
def db_copy(obj: Ctx, to: str) -> None:
    """Copy the SQLite state into an empty PostgreSQL database.

    Run it while highlights.yaml still points at the SQLite file; the counts are
    checked, and a database that is not empty is refused."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.authoring.workspace import ENV_DATABASE_URL
    from highlightsmail.dburl import describe_url, is_postgresql
    from highlightsmail.errors import HighlightsError
    from highlightsmail.store import Store

    ws = obj.ws
    if not is_postgresql(to):
        raise click.BadParameter("must be postgresql://user@host:port/dbname", param_hint="--to")
    if ws.database_url is not None:
        raise HighlightsError(
            f"this workspace's state is already in PostgreSQL ({describe_url(ws.database_url)}); "
            "db copy copies the SQLite file that `database:` names: run it before pointing `database:` "
            f"(or {ENV_DATABASE_URL}) at PostgreSQL"
        )
    if not ws.db_path.is_file():
        raise HighlightsError(f"{ws.db_path}: no database to copy")
    with Store(ws.db_path) as source, Store(to) as target:
        counts = source.copy_into(target)
        where = target.where
    rows = ", ".join(f"{table} {n}" for table, n in counts.items())
    click.echo(f"Copied into {where}, counts checked: {rows}")
    click.echo(
        f"To use it: set `database: {where}` in highlights.yaml and the password in PGPASSWORD "
        "(or the whole URL in HIGHLIGHTS_DATABASE_URL)",
        err=True,
    )
