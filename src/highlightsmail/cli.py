"""The `highlights` command: parses options and hands off to the module that does the work.

Every import of real work happens inside the command, so `highlights --help` stays fast.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from highlightsmail import __version__

if TYPE_CHECKING:
    from highlightsmail.workspace import Workspace


class _Ctx:
    """Per-invocation state: the workspace is found only when a command needs it."""

    def __init__(self, workspace: str | None) -> None:
        self._override = workspace
        self._ws: Workspace | None = None

    @property
    def ws(self) -> Workspace:
        if self._ws is None:
            from highlightsmail.workspace import load_workspace

            self._ws = load_workspace(self._override)
        return self._ws


pass_ctx = click.make_pass_decorator(_Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="highlights")
@click.option(
    "--workspace",
    "-w",
    metavar="DIR",
    envvar="HIGHLIGHTS_WORKSPACE",
    help="The workspace folder (default: the nearest folder up from here with highlights.yaml).",
)
@click.pass_context
def main(ctx: click.Context, workspace: str | None) -> None:
    """Write a newsletter issue in YAML, preview it, test-send it, then send it."""
    from highlightsmail.errors import show_warnings_plainly

    show_warnings_plainly()
    ctx.obj = _Ctx(workspace)


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Create a new workspace in DIRECTORY (default: here)."""
    from highlightsmail.scaffold import init_workspace

    init_workspace(directory)


@main.command()
@click.option("--date", "date", type=click.DateTime(["%Y-%m-%d"]), help="The issue's date (default: today).")
@pass_ctx
def new(obj: _Ctx, date: dt.datetime | None) -> None:
    """Create the next issues/YYYY-wWW.yaml from a skeleton."""
    from highlightsmail.scaffold import new_issue

    new_issue(obj.ws, date.date() if date else dt.date.today())


@main.command()
@click.argument("issue")
@pass_ctx
def check(obj: _Ctx, issue: str) -> None:
    """Validate and lint ISSUE (a path, a slug or `latest`)."""
    from highlightsmail.lint import check_command

    check_command(obj.ws, obj.ws.issue_path(issue))


@main.command()
@click.argument("issue")
@click.option(
    "--out",
    "out",
    default="out",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the files.",
)
@pass_ctx
def build(obj: _Ctx, issue: str, out: Path) -> None:
    """Write OUT/<slug>.html, OUT/<slug>.txt and a sample OUT/<slug>.eml."""
    from highlightsmail.build import build_command

    build_command(obj.ws, obj.ws.issue_path(issue), out)


@main.command()
@click.argument("issue")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8025, show_default=True, type=int)
@click.option("--no-open", is_flag=True, help="Do not open a browser.")
@pass_ctx
def preview(obj: _Ctx, issue: str, host: str, port: int, no_open: bool) -> None:
    """Serve a live preview of ISSUE that reloads when a file is saved."""
    from highlightsmail.preview import serve_preview

    serve_preview(obj.ws, obj.ws.issue_path(issue), host=host, port=port, open_browser=not no_open)


@main.command()
@click.argument("issue")
@click.option("--test", "test", is_flag=True, help="Send only to the editors (or --to), with [TEST] in the subject.")
@click.option(
    "--to", "to", multiple=True, metavar="EMAIL", help="With --test: send to these addresses instead of the editors."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Do everything but hand messages to the backend.")
@click.option("--limit", type=click.IntRange(min=1), help="Send only the next N recipients (a canary).")
@click.option(
    "--resend-in-doubt", is_flag=True, help="Send again to recipients whose batch was in flight when a run died."
)
@click.option("--skip-test-check", is_flag=True, help="Send even if this rendering was not test-sent.")
@pass_ctx
def send(
    obj: _Ctx,
    issue: str,
    test: bool,
    to: tuple[str, ...],
    yes: bool,
    dry_run: bool,
    limit: int | None,
    resend_in_doubt: bool,
    skip_test_check: bool,
) -> None:
    """Test-send ISSUE to the editors, or dispatch it to every active subscriber."""
    if to and not test:
        raise click.UsageError("--to goes with --test")
    from highlightsmail import dispatch

    path = obj.ws.issue_path(issue)
    if test:
        dispatch.send_test_command(obj.ws, path, list(to), dry_run=dry_run)
    else:
        dispatch.send_command(
            obj.ws,
            path,
            yes=yes,
            dry_run=dry_run,
            limit=limit,
            resend_in_doubt=resend_in_doubt,
            skip_test_check=skip_test_check,
        )


@main.command()
@click.argument("issue")
@pass_ctx
def status(obj: _Ctx, issue: str) -> None:
    """Show how the dispatch of ISSUE stands, and any recipients in doubt."""
    from highlightsmail import dispatch

    dispatch.status_command(obj.ws, obj.ws.issue_path(issue))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@pass_ctx
def serve(obj: _Ctx, host: str, port: int) -> None:
    """Run the web endpoint: unsubscribe pages and one-click unsubscribe."""
    from highlightsmail.web import open_server

    server = open_server(obj.ws, host=host, port=port)
    click.echo(f"Serving {obj.ws.settings.name} unsubscribe pages on {server.url}")
    base = obj.ws.settings.base_url
    click.echo(
        f"Links in mail point at {base.rstrip('/')}/u/...; a proxy there should forward to this address.", err=True
    )
    if not base.startswith("https://"):
        click.echo(
            "Note: base_url is not https, so messages carry no List-Unsubscribe-Post (one-click needs https).", err=True
        )
    server.run()


@main.group()
def subscribers() -> None:
    """Manage the subscriber list."""


@subscribers.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check the file and report, without changing anything.")
@pass_ctx
def subscribers_import(obj: _Ctx, file: Path, dry_run: bool) -> None:
    """Import subscribers from a CSV file with a header row (email[, name][, status])."""
    from highlightsmail import subscribers as engine

    parsed = engine.parse_csv(file)
    # Bad and duplicate rows by line on stderr, before anything is written.
    for message in parsed.warnings + parsed.rejected:
        click.echo(message, err=True)
    result = engine.import_parsed(obj.ws, file, parsed, dry_run=dry_run)
    summary = (
        f"{result.new} new, {result.updated} updated, {result.unchanged} unchanged, {len(parsed.rejected)} rejected"
    )
    if dry_run:
        click.echo(f"dry run: would import {summary}; nothing was changed")
    else:
        click.echo(f"imported {summary}")


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default="", help="The subscriber's name.")
@pass_ctx
def subscribers_add(obj: _Ctx, email: str, name: str) -> None:
    """Add one subscriber (someone who left is never made active again from here)."""
    from highlightsmail import subscribers as engine

    added = engine.add(obj.ws, email, name=name)
    if added.created:
        click.echo(f"added {added.subscriber.email}")
    elif added.renamed:
        click.echo(f"{added.subscriber.email} is already subscribed; name set to {name.strip()!r}")
    else:
        click.echo(f"{added.subscriber.email} is already subscribed")


@subscribers.command("remove")
@click.argument("email")
@pass_ctx
def subscribers_remove(obj: _Ctx, email: str) -> None:
    """Unsubscribe EMAIL (kept in the list so it is never mailed again)."""
    from highlightsmail import subscribers as engine

    subscriber, changed = engine.remove(obj.ws, email)
    if changed:
        click.echo(f"unsubscribed {subscriber.email}")
    else:
        click.echo(f"{subscriber.email} is already {subscriber.status}; it gets no mail")


@subscribers.command("list")
@click.option("--status", "status_", type=click.Choice(["active", "unsubscribed", "bounced", "complained"]))
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@pass_ctx
def subscribers_list(obj: _Ctx, status_: str | None, fmt: str) -> None:
    """List subscribers."""
    from highlightsmail import subscribers as engine

    with _streamed_stdout() as out:
        engine.write_list(obj.ws, out, status=status_, fmt=fmt)  # type: ignore[arg-type]  # click.Choice


@subscribers.command("export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def subscribers_export(obj: _Ctx, file: Path | None) -> None:
    """Export every subscriber as CSV to FILE (default: standard output)."""
    from highlightsmail import subscribers as engine
    from highlightsmail.errors import display_path

    if file is None:
        with _streamed_stdout() as out:
            engine.export(obj.ws, None, out)
        return
    count = engine.export(obj.ws, file)
    click.echo(f"exported {count} subscribers to {display_path(file)}", err=True)


@contextmanager
def _streamed_stdout() -> Iterator[TextIO]:
    """Standard output for streaming; a reader that stops early (`| head`) ends the
    command quietly instead of with a BrokenPipeError traceback."""
    out = sys.stdout
    try:
        yield out
        out.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
