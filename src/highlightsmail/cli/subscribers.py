"""`subscribers` (import, add, remove, list, export, forget) and `form`, the signup form
to paste. (`subscribers show` is in messages.py.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from highlightsmail.cli.context import Ctx, PathArg, pass_ctx
from highlightsmail.cli.output import streamed_stdout, warn_if_committable

if TYPE_CHECKING:  # for the annotations only: --help loads none of it
    from pathlib import Path


@click.group()
def subscribers() -> None:
    """Manage the subscriber list."""


@subscribers.command("import")
@click.argument("file", type=PathArg(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check the file and report, without changing anything.")
@pass_ctx
def subscribers_import(obj: Ctx, file: Path, dry_run: bool) -> None:
    """Import subscribers from a CSV file.

    The file has a header row: email, and optionally name, status, created, updated,
    source and consented (as export writes them)."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.subscribers import manage as engine

    # Bad and duplicate rows by line on stderr, before anything is written.
    imported = engine.import_file(obj.ws, file, dry_run=dry_run, tell=lambda message: click.echo(message, err=True))
    result = imported.result
    summary = f"{result.new} new, {result.updated} updated, {result.unchanged} unchanged, {imported.rejected} rejected"
    if dry_run:
        click.echo(f"dry run: would import {summary}; nothing was changed")
    else:
        click.echo(f"imported {summary}")


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default="", help="The subscriber's name.")
@click.option("--topic", "topics", multiple=True, metavar="ID", help="A topic (repeatable; default: the default ones).")
@pass_ctx
def subscribers_add(obj: Ctx, email: str, name: str, topics: tuple[str, ...]) -> None:
    """Add one subscriber.

    Someone who left (unsubscribed, bounced or complained) is never made active again
    from here."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.subscribers import manage as engine

    added = engine.add(obj.ws, email, name=name, topics=topics)
    if added.created:
        click.echo(f"added {added.subscriber.email}")
    elif added.renamed:
        click.echo(f"{added.subscriber.email} is already subscribed; name set to {name.strip()!r}")
    else:
        click.echo(f"{added.subscriber.email} is already subscribed")


@subscribers.command("remove")
@click.argument("email")
@pass_ctx
def subscribers_remove(obj: Ctx, email: str) -> None:
    """Unsubscribe EMAIL.

    The address stays in the list, so it is never mailed again."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.subscribers import manage as engine

    subscriber, changed = engine.remove(obj.ws, email)
    if changed:
        click.echo(f"unsubscribed {subscriber.email}")
    else:
        click.echo(f"{subscriber.email} is already {subscriber.status}; it gets no mail")


@subscribers.command("list")
@click.option(
    "--status",
    "status_",
    type=click.Choice(["active", "pending", "unsubscribed", "bounced", "complained"]),
    help="Only the subscribers with this status (default: all).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="csv has export's columns.",
)
@click.option("--topic", metavar="ID", help="Only the subscribers in this topic.")
@pass_ctx
def subscribers_list(obj: Ctx, status_: str | None, fmt: str, topic: str | None) -> None:
    """List subscribers."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.subscribers import manage as engine

    with streamed_stdout() as out:
        engine.write_list(obj.ws, out, status=status_, fmt=fmt, topic=topic)  # type: ignore[arg-type]  # click.Choice
    warn_if_committable(None)


@subscribers.command("export")
@click.argument("file", required=False, type=PathArg(dir_okay=False))
@pass_ctx
def subscribers_export(obj: Ctx, file: Path | None) -> None:
    """Export every subscriber as CSV to FILE (default: standard output).

    Keep the file out of git: in the workspace's private/ folder (made when missing),
    which git ignores. A file that git would offer for a commit gets a warning."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.errors import display_path
    from highlightsmail.subscribers import manage as engine

    if file is None:
        with streamed_stdout() as out:
            engine.export(obj.ws, None, out)
        warn_if_committable(None)
        return
    obj.ws.make_private_dir(file)
    count = engine.export(obj.ws, file)
    click.echo(f"exported {count} subscribers to {display_path(file)}", err=True)
    warn_if_committable(file)


@subscribers.command("forget")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask to confirm.")
@pass_ctx
def subscribers_forget(obj: Ctx, email: str, yes: bool) -> None:
    """Erase EMAIL and everything held about it (on request).

    Only a keyed hash of the address stays, so an import never adds it back; the person
    may still sign up again through the form."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.subscribers import privacy
    from highlightsmail.subscribers.manage import address_argument

    address = address_argument(email)
    if not yes and not click.confirm(f"Erase {address} and everything held about it? This cannot be undone"):
        raise click.ClickException("nothing was erased")
    sub = privacy.forget(obj.ws, address)
    click.echo(f"erased {sub.email}: only a keyed hash of the address is kept, so no import adds it back")


@click.command()
@pass_ctx
def form(obj: Ctx) -> None:
    """Print the signup form as HTML to paste into any website."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.subscribers.signup import form_snippet
    from highlightsmail.urls import urls

    ws = obj.ws
    click.echo(form_snippet(ws), nl=False)
    warn_if_committable(None)
    if not ws.settings.signup.enabled:
        click.echo(
            "Note: signup.enabled is false in highlights.yaml, so `highlights serve` does not answer "
            f"{urls(ws.settings).subscribe()} yet.",
            err=True,
        )
