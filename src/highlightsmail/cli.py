"""The `highlights` command: parses options and hands off to the module that does the work.

Every import of real work happens inside the command, so `highlights --help` stays fast.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from highlightsmail import __version__


class _Ctx:
    """Per-invocation state: the workspace is found only when a command needs it."""

    def __init__(self, workspace: str | None) -> None:
        self._override = workspace
        self._ws = None

    @property
    def ws(self):  # -> Workspace
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
    from highlightsmail.errors import HighlightsError
    from highlightsmail.lint import check_command

    # An invalid file raises ValidationFailed, which prints its FILE:LINE:COL lines.
    report = check_command(obj.ws, obj.ws.issue_path(issue))
    for problem in report.problems:
        click.echo(str(problem), err=True)
    if not report.ok:
        raise HighlightsError(report.summary)
    click.echo(report.summary)


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
@click.option(
    "--out",
    "out",
    default="out/site",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The folder to write the site to (replaced whole).",
)
@click.option("--all", "include_all", is_flag=True, help="Also publish the issues not sent yet: every issue file.")
@pass_ctx
def publish(obj: _Ctx, out: Path, include_all: bool) -> None:
    """Write the web archive: OUT/index.html, OUT/<slug>/index.html and OUT/feed.xml."""
    from highlightsmail.errors import display_path
    from highlightsmail.publish import archive_url
    from highlightsmail.publish import publish as publish_site

    ws = obj.ws
    result = publish_site(ws, out, include_all=include_all)
    for reason in result.skipped:
        click.echo(f"warning: {reason}", err=True)
    count = len(result.entries)
    pages = f"{count} issue page{'' if count == 1 else 's'}"
    click.echo(f"{display_path(result.out_dir)}: index.html, feed.xml and {pages}, for {archive_url(ws.settings)}")
    if not count and not include_all:
        click.echo("No issue has been sent yet, so none is listed; --all publishes every issue file.", err=True)
    if not ws.settings.archive.enabled:
        click.echo(
            'Note: archive.enabled is false in highlights.yaml, so emails carry no "View in browser" link '
            "and `serve` does not answer the archive's pages.",
            err=True,
        )


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
    from highlightsmail.web import serve_command

    serve_command(obj.ws, host=host, port=port)


@main.command()
@pass_ctx
def form(obj: _Ctx) -> None:
    """Print the signup form as HTML to paste into any website."""
    from highlightsmail.signup import form_snippet

    ws = obj.ws
    click.echo(form_snippet(ws), nl=False)
    if not ws.settings.signup.enabled:
        click.echo(
            "Note: signup.enabled is false in highlights.yaml, so `highlights serve` does not answer "
            f"{ws.settings.base_url.rstrip('/')}/subscribe yet.",
            err=True,
        )


@main.group()
def subscribers() -> None:
    """Manage the subscriber list."""


@subscribers.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check the file and report, without changing anything.")
@pass_ctx
def subscribers_import(obj: _Ctx, file: Path, dry_run: bool) -> None:
    """Import subscribers from a CSV file with a header row (email[, name][, status])."""
    from highlightsmail.subscribers import import_command

    import_command(obj.ws, file, dry_run=dry_run)


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default="", help="The subscriber's name.")
@pass_ctx
def subscribers_add(obj: _Ctx, email: str, name: str) -> None:
    """Add one subscriber (someone who left is never made active again from here)."""
    from highlightsmail.subscribers import add_command

    add_command(obj.ws, email, name=name)


@subscribers.command("remove")
@click.argument("email")
@pass_ctx
def subscribers_remove(obj: _Ctx, email: str) -> None:
    """Unsubscribe EMAIL (kept in the list so it is never mailed again)."""
    from highlightsmail.subscribers import remove_command

    remove_command(obj.ws, email)


@subscribers.command("list")
@click.option("--status", "status_", type=click.Choice(["active", "pending", "unsubscribed", "bounced", "complained"]))
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@pass_ctx
def subscribers_list(obj: _Ctx, status_: str | None, fmt: str) -> None:
    """List subscribers."""
    from highlightsmail.subscribers import list_command

    list_command(obj.ws, status=status_, fmt=fmt)


@subscribers.command("export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def subscribers_export(obj: _Ctx, file: Path | None) -> None:
    """Export every subscriber as CSV to FILE (default: standard output)."""
    from highlightsmail.subscribers import export_command

    export_command(obj.ws, file)
