"""What is served on the web: `serve` (the web endpoint) and `publish` (the archive as files)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from highlightsmail.cli.context import PORT, Ctx, PathArg, pass_ctx

if TYPE_CHECKING:  # for the annotations only: --help loads none of it
    from pathlib import Path


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=8000, show_default=True, type=PORT, help="The port to listen on (0: any free one).")
@pass_ctx
def serve(obj: Ctx, host: str, port: int) -> None:
    """Run the web endpoint that base_url points at.

    It answers the unsubscribe pages and one-click unsubscribe, /healthz, the SendGrid
    event webhook, and, when enabled in highlights.yaml, the signup form with its
    confirmation links and the archive."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.urls import urls
    from highlightsmail.web.application import open_server

    server = open_server(obj.ws, host=host, port=port)
    click.echo(f"Serving the web endpoint of {obj.ws.settings.name} on {server.url}")
    base = obj.ws.settings.base_url
    click.echo(
        f"Links in mail point at {urls(obj.ws.settings).unsubscribe('...')}; a proxy there should forward to this address.",
        err=True,
    )
    if not base.startswith("https://"):
        click.echo(
            "Note: base_url is not https, so messages carry no List-Unsubscribe-Post (one-click needs https).", err=True
        )
    server.run()


@click.command()
@click.option(
    "--out",
    "out",
    default="out/site",
    show_default=True,
    type=PathArg(file_okay=False),
    help="The folder to write the site to; only the files publish wrote there before are replaced.",
)
@click.option("--all", "include_all", is_flag=True, help="Also publish the issues not sent yet: every issue file.")
@pass_ctx
def publish(obj: Ctx, out: Path, include_all: bool) -> None:
    """Write the web archive of the issues sent: pages and a feed.

    Writes OUT/index.html, OUT/<slug>/index.html and OUT/feed.xml."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.errors import display_path
    from highlightsmail.rendering.publish import publish as publish_site
    from highlightsmail.urls import urls

    ws = obj.ws
    result = publish_site(ws, out, include_all=include_all)
    for reason in result.skipped:
        click.echo(f"warning: {reason}", err=True)
    count = len(result.entries)
    pages = f"{count} issue page{'' if count == 1 else 's'}"
    click.echo(f"{display_path(result.out_dir)}: index.html, feed.xml and {pages}, for {urls(ws.settings).archive()}")
    if not count and not include_all:
        click.echo("No issue has been sent yet, so none is listed; --all publishes every issue file.", err=True)
    if not ws.settings.archive.enabled:
        click.echo(
            'Note: archive.enabled is false in highlights.yaml, so emails carry no "View in browser" link '
            "and `serve` does not answer the archive's pages.",
            err=True,
        )
