"""`subscribers show EMAIL [--format table|json] [--issue ISSUE --eml FILE]`: who a
subscriber is, everything held about them (subscribers/privacy.py), and the exact
message of an issue they got, rebuilt (subscribers/rebuild.py). Registered on the
`subscribers` group by main.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from highlightsmail.cli.context import Ctx, PathArg, pass_ctx, slug_of

if TYPE_CHECKING:  # for the annotations only: --help loads none of it
    from pathlib import Path


@click.command("show")
@click.argument("email")
@click.option("--issue", metavar="ISSUE", help="With --eml: the issue whose message to rebuild.")
@click.option(
    "--eml",
    metavar="FILE",
    type=PathArg(dir_okay=False),
    help="With --issue: write the message of ISSUE this subscriber got to FILE.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    help="Everything held about the subscriber: topics, consents, history, deliveries, delivery events.",
)
@pass_ctx
def show(obj: Ctx, email: str, issue: str | None, eml: Path | None, fmt: str | None) -> None:
    """Show a subscriber, or rebuild the message of an issue they got.

    --format shows everything held about them (json: for scripts, and to hand over).
    With --issue and --eml, FILE gets the message as it was handed to the backend: the
    same headers and parts (only MIME boundaries may differ), also after the issue file
    was edited."""
    if (issue is None) != (eml is None):
        raise click.UsageError("--issue and --eml go together")
    if fmt is not None:
        if issue is not None:
            raise click.UsageError("--format shows the subscriber; --issue and --eml rebuild a message")
        # Imported when the command runs, not at the top: --help loads none of it.
        from highlightsmail.subscribers import privacy

        data = privacy.show(obj.ws, email)
        click.echo(privacy.data_json(data) if fmt == "json" else privacy.show_table(data), nl=False)
        return
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.subscribers import rebuild

    if issue is None or eml is None:
        found = rebuild.summary(obj.ws, email)
        name = f" ({found.name})" if found.name else ""
        click.echo(f"{found.email}{name}: {found.status}, on the list since {found.created}")
        return
    done = rebuild.rebuild_message(obj.ws, email, slug_of(obj.ws, issue), eml)
    click.echo(
        f"wrote {eml}: {done.issue} as {done.email} got it ({done.state.replace('_', ' ')}; message {done.digest[:12]})"
    )
