"""The commands about one issue before it is sent: `init`, `new`, `check`, `build`, `preview`."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import click

from highlightsmail.cli import schedule
from highlightsmail.cli.context import PORT, Ctx, PathArg, one_shot, pass_ctx

if TYPE_CHECKING:  # for the annotations only: --help loads none of it
    from pathlib import Path


@click.command()
@click.argument("directory", default=".", type=PathArg(file_okay=False))
def init(directory: Path) -> None:
    """Create a new workspace in DIRECTORY (default: here)."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from pathlib import Path

    from highlightsmail.authoring.scaffold import init_workspace
    from highlightsmail.errors import display_path

    created = init_workspace(directory)
    for path in created.kept:
        click.echo(f"kept the existing {display_path(path)}", err=True)
    where = display_path(created.directory)
    steps = [] if Path(where) == Path(".") else [f"cd {where}"]
    slug = created.first_issue
    steps += [
        "edit highlights.yaml: the name, sender, base_url, postal address and editors",
        f"highlights preview {slug}    (the first issue, live in a browser)",
        f"highlights check {slug}",
        f"highlights send {slug} --test    (to the editors; the outbox backend writes .eml files)",
        "highlights subscribers import subscribers/subscribers.csv",
        "highlights new    (next week's issue)",
    ]
    click.echo(f"Created a newsletter workspace in {where}\n\nNext steps:\n" + "\n".join(f"  {s}" for s in steps))


@click.command()
@click.option(
    "--date",
    "date",
    type=click.DateTime(["%Y-%m-%d"]),
    help="The issue's date (default: today, or a week later for each week whose file exists).",
)
@click.option(
    "--from-feed",
    "feeds",
    multiple=True,
    metavar="SOURCE",
    help="Draft the issue from a feed's new entries: a URL, a file, or a name from `feeds:` (repeatable).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 30),
    metavar="N",
    help="With --from-feed: at most N items (default 20), shared in turns between the feeds.",
)
@click.option(
    "--since", metavar="DATE|last", help="With --from-feed: entries dated from DATE on, or from the last issue's date."
)
@pass_ctx
def new(obj: Ctx, date: dt.datetime | None, feeds: tuple[str, ...], limit: int | None, since: str | None) -> None:
    """Create this week's issue file from a skeleton, or from feeds.

    The file is issues/YYYY-wWW.yaml for the ISO week of today (or of --date); when
    that one exists already, as right after init, the first later week without one.
    With --from-feed, each new entry becomes an item; entries whose link is in an issue
    file already are skipped, and when none is new no file is written."""
    day = date.date() if date else None
    if feeds:
        # Imported when the command runs, not at the top: --help loads none of it.
        from highlightsmail.authoring.feeds import draft_from_feeds

        click.echo(draft_from_feeds(obj.ws, feeds, limit=limit, since=since, date=day).describe())
        return
    if limit is not None or since is not None:
        raise click.UsageError("--limit and --since go with --from-feed")
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.authoring.scaffold import new_issue
    from highlightsmail.errors import display_path

    click.echo(display_path(new_issue(obj.ws, day)))


@click.command()
@click.argument("issue")
@pass_ctx
def check(obj: Ctx, issue: str) -> None:
    """Validate and lint ISSUE.

    ISSUE is a path, a slug or `latest`."""
    # An invalid file raises ValidationFailed, which prints its FILE:LINE:COL lines.
    # The imports too run without the collector: they are most of what the command makes.
    with one_shot():
        # Imported when the command runs, not at the top: --help loads none of it.
        from highlightsmail.errors import HighlightsError
        from highlightsmail.review.lint import check_command

        path = obj.ws.issue_path(issue)
        report = check_command(obj.ws, path)
        scheduled = schedule.check_note(obj.ws, path)  # when it is to go, if it is scheduled
    for problem in report.problems:
        click.echo(str(problem), err=True)
    if not report.ok:
        raise HighlightsError(report.summary)
    click.echo(report.summary)
    if scheduled:
        click.echo(scheduled)
    if report.audience:
        click.echo(report.audience)


@click.command()
@click.argument("issue")
@click.option(
    "--out",
    "out",
    default="out",
    show_default=True,
    type=PathArg(file_okay=False),
    help="Where to write the files.",
)
@pass_ctx
def build(obj: Ctx, issue: str, out: Path) -> None:
    """Build ISSUE into HTML, plain text and a sample email.

    Writes OUT/<slug>.html, OUT/<slug>.txt and OUT/<slug>.eml. ISSUE is a path, a slug
    or `latest`."""
    # The imports too run without the collector: they are most of what the command makes.
    with one_shot():
        # Imported when the command runs, not at the top: --help loads none of it.
        from highlightsmail.errors import display_path
        from highlightsmail.review.build import build_command

        paths = build_command(obj.ws, obj.ws.issue_path(issue), out)
    for path in paths:
        click.echo(display_path(path))


@click.command()
@click.argument("issue")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=8025, show_default=True, type=PORT, help="The port to listen on (0: any free one).")
@click.option("--no-open", is_flag=True, help="Do not open a browser.")
@pass_ctx
def preview(obj: Ctx, issue: str, host: str, port: int, no_open: bool) -> None:
    """Preview ISSUE in a browser, reloading when a file is saved.

    ISSUE is a path, a slug or `latest`."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.errors import display_path
    from highlightsmail.review.preview import serve_preview

    path = obj.ws.issue_path(issue)

    def log(line: str) -> None:
        click.echo(line, err=True)

    def started(url: str) -> None:
        click.echo(f"Previewing {display_path(path)} at {url} (Ctrl-C to stop)")
        if not no_open:
            # Imported only to open a browser, not at the top: --help loads none of it.
            import threading
            import webbrowser

            # A console browser could block; the server must not wait for it.
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()

    serve_preview(obj.ws, path, host=host, port=port, log=log, on_started=started)
    click.echo("Preview stopped.", err=True)
