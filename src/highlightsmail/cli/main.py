"""The `highlights` command: parses options and hands off to the module that does the work.

Every import of real work happens inside the command, so `highlights --help` stays fast.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from highlightsmail import __version__

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace
    from highlightsmail.sending.dispatch import Reason, SendPlan, Summary


class _Ctx:
    """Per-invocation state: the workspace is found only when a command needs it."""

    def __init__(self, workspace: str | None) -> None:
        self._override = workspace
        self._ws: Workspace | None = None

    @property
    def ws(self) -> Workspace:
        if self._ws is None:
            from highlightsmail.authoring.workspace import load_workspace

            self._ws = load_workspace(self._override)
        return self._ws


pass_ctx = click.make_pass_decorator(_Ctx)


@contextlib.contextmanager
def _one_shot() -> Iterator[None]:
    """Run a command that loads, renders once and exits without cyclic garbage collection.

    Nearly all it makes (modules, models, templates) lives until the process ends, and
    the collector would walk it again and again while the command runs, then once more
    at exit, for next to nothing to free: together a sixth of `check`'s time. The
    files and streams the command opens are closed by then, so no finalizer is lost."""
    import atexit
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # What the command made counts as old from here (frozen, then back in the oldest
        # generation): turning the collector on again does not start by walking it all,
        atexit.unregister(gc.freeze)
        atexit.register(gc.freeze)  # and the last pass, at exit, skips it.
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


class _Commands(click.Group):
    """The command group, with one rule for what no command foresaw from the system: an
    OSError (a name longer than the file system takes, a disk that fails) is a one-line
    error naming its file, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except OSError as exc:
            from highlightsmail.errors import HighlightsError, display_path

            what = exc.strerror or str(exc) or type(exc).__name__
            where = f"{display_path(exc.filename)}: " if exc.filename else ""
            raise HighlightsError(f"{where}{what}") from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of commands, each with the whole first sentence of its help, wrapped
        where it is long: click would cut it short to fit one line ("...")."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=sys.maxsize)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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


@main.command()
@click.option(
    "--date",
    "date",
    type=click.DateTime(["%Y-%m-%d"]),
    help="The issue's date (default: today, or a week later for each week whose file exists).",
)
@pass_ctx
def new(obj: _Ctx, date: dt.datetime | None) -> None:
    """Create this week's issue file from a skeleton.

    The file is issues/YYYY-wWW.yaml for the ISO week of today (or of --date); when
    that one exists already, as right after init, the first later week without one."""
    from highlightsmail.authoring.scaffold import new_issue
    from highlightsmail.errors import display_path

    click.echo(display_path(new_issue(obj.ws, date.date() if date else None)))


@main.command()
@click.argument("issue")
@pass_ctx
def check(obj: _Ctx, issue: str) -> None:
    """Validate and lint ISSUE.

    ISSUE is a path, a slug or `latest`."""
    from highlightsmail.errors import HighlightsError
    from highlightsmail.review.lint import check_command

    # An invalid file raises ValidationFailed, which prints its FILE:LINE:COL lines.
    with _one_shot():
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
    """Build ISSUE into HTML, plain text and a sample email.

    Writes OUT/<slug>.html, OUT/<slug>.txt and OUT/<slug>.eml. ISSUE is a path, a slug
    or `latest`."""
    from highlightsmail.errors import display_path
    from highlightsmail.review.build import build_command

    with _one_shot():
        paths = build_command(obj.ws, obj.ws.issue_path(issue), out)
    for path in paths:
        click.echo(display_path(path))


@main.command()
@click.option(
    "--out",
    "out",
    default="out/site",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The folder to write the site to; only the files publish wrote there before are replaced.",
)
@click.option("--all", "include_all", is_flag=True, help="Also publish the issues not sent yet: every issue file.")
@pass_ctx
def publish(obj: _Ctx, out: Path, include_all: bool) -> None:
    """Write the web archive of the issues sent: pages and a feed.

    Writes OUT/index.html, OUT/<slug>/index.html and OUT/feed.xml."""
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


_PORT = click.IntRange(0, 65535)


@main.command()
@click.argument("issue")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=8025, show_default=True, type=_PORT, help="The port to listen on (0: any free one).")
@click.option("--no-open", is_flag=True, help="Do not open a browser.")
@pass_ctx
def preview(obj: _Ctx, issue: str, host: str, port: int, no_open: bool) -> None:
    """Preview ISSUE in a browser, reloading when a file is saved.

    ISSUE is a path, a slug or `latest`."""
    from highlightsmail.errors import display_path
    from highlightsmail.review.preview import serve_preview

    path = obj.ws.issue_path(issue)

    def log(line: str) -> None:
        click.echo(line, err=True)

    def started(url: str) -> None:
        click.echo(f"Previewing {display_path(path)} at {url} (Ctrl-C to stop)")
        if not no_open:
            import threading
            import webbrowser

            # A console browser could block; the server must not wait for it.
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()

    serve_preview(obj.ws, path, host=host, port=port, log=log, on_started=started)
    click.echo("Preview stopped.", err=True)


@main.command()
@click.argument("issue")
@click.option("--test", "test", is_flag=True, help="Send only to the editors (or --to), with [TEST] in the subject.")
@click.option(
    "--to", "to", multiple=True, metavar="EMAIL", help="With --test: send to these addresses instead of the editors."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Do everything but hand messages to the backend.")
@click.option("--limit", metavar="N", type=click.IntRange(min=1), help="Send only the next N recipients (a canary).")
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
    """Test-send ISSUE to the editors, or send it to the subscribers.

    Without --test, ISSUE goes to every active subscriber, after a confirmation. ISSUE
    is a path, a slug or `latest`."""
    if to and not test:
        raise click.UsageError("--to goes with --test")
    from highlightsmail.sending import dispatch

    path = obj.ws.issue_path(issue)
    if test:
        tested = dispatch.send_test(obj.ws, path, list(to), dry_run=dry_run)
        if tested.dry_run:
            click.echo(f"Dry run: would send a test of {tested.slug} to {', '.join(tested.recipients)}")
            return
        click.echo(
            f"Test of {tested.slug} sent to {', '.join(tested.recipients)} "
            f"through {tested.backend} (fingerprint {tested.fingerprint[:12]})."
        )
        click.echo(f"When it looks right: highlights send {tested.slug}")
        return
    outcome = dispatch.send(
        obj.ws,
        path,
        events=_SendTalk(yes=yes),
        dry_run=dry_run,
        limit=limit,
        resend_in_doubt=resend_in_doubt,
        skip_test_check=skip_test_check,
    )
    plan = outcome.plan
    if outcome.dry_run:
        if outcome.suppressed:
            click.echo(
                f"Dry run: {outcome.suppressed} subscriber(s) would be marked from {plan.backend}'s suppression lists."
            )
        click.echo(
            f"Dry run: would send {plan.slug} to {plan.count} recipient(s) through {plan.backend}; nothing sent."
        )
        return
    if outcome.stopped:
        from highlightsmail.errors import HighlightsError

        raise HighlightsError(f"stopped; resume with: highlights send {plan.slug}")
    summary = outcome.summary
    assert summary is not None
    if outcome.nothing_left:
        click.echo(f"{plan.slug}: nothing left to send ({_summary_line(summary)}).")
    else:
        click.echo(f"{plan.slug}: {_summary_line(summary)}.")
        _show_reasons(outcome.reasons)
    _finish(plan.slug, summary)


_STATE_WORDS = {"failed": "failed", "in_doubt": "in doubt"}
_MAX_REASONS = 10  # distinct reasons shown at the end of a send; `status` has them all


class _SendTalk:
    """What the command line says and asks while a send runs (a dispatch.SendEvents)."""

    def __init__(self, *, yes: bool) -> None:
        self.yes = yes

    def suppressions_applied(self, count: int, backend: str) -> None:
        click.echo(f"{count} subscriber(s) marked from {backend}'s suppression lists.", err=True)

    def found_in_doubt(self, count: int) -> None:
        click.echo(
            f"{count} recipient(s) were in a batch under way when an earlier run stopped: now in doubt.", err=True
        )

    def retrying_failed(self, count: int) -> None:
        click.echo(f"Retrying {count} recipient(s) whose delivery failed before.", err=True)

    def confirm(self, plan: SendPlan) -> bool:
        if not self.yes:
            from highlightsmail.errors import HighlightsError

            verb = "Resume sending" if plan.resume else "Send"
            try:
                answer = click.confirm(
                    f"{verb} {plan.slug} to {plan.count} recipient(s) through {plan.backend}?", err=True
                )
            except (click.Abort, RuntimeError) as exc:  # Ctrl-C, or no input at all (RuntimeError: none open)
                if isinstance(exc, RuntimeError) or _input_ended():  # cron, CI, a pipe: say what to do
                    click.echo(err=True)  # end the question's line
                    raise HighlightsError(
                        f"{plan.slug}: nothing sent; no answer to the question (standard input ended): "
                        "pass --yes to send without asking"
                    ) from None
                raise
            if not answer:
                raise click.Abort()
        return True

    def progress(self, total: int) -> AbstractContextManager[Callable[[int], None]]:
        """A progress bar on a terminal only: logs and pipes get the summary alone."""
        import contextlib
        import sys

        if not sys.stderr.isatty():
            return contextlib.nullcontext(lambda n: None)

        @contextlib.contextmanager
        def bar():
            with click.progressbar(
                length=total, label="Sending", file=sys.stderr, show_pos=True, show_eta=True
            ) as progress:
                yield progress.update

        return bar()

    def stopping(self) -> None:
        click.echo("\nStopping after the batches under way (Ctrl-C again to stop at once)...", err=True)


def _input_ended() -> bool:
    """Whether a question went unanswered because standard input is no terminal (it
    ended: /dev/null, a pipe, a closed stream), rather than because of Ctrl-C."""
    try:
        return sys.stdin is None or not sys.stdin.isatty()
    except (OSError, ValueError):  # closed: nobody is typing there either
        return True


def _summary_line(summary: Summary) -> str:
    return (
        f"sent {summary['sent']}, skipped {summary['skipped']}, failed {summary['failed']}, "
        f"in doubt {summary['in_doubt']}"
    )


def _show_reasons(reasons: list[Reason]) -> None:
    """Each distinct reason this run failed or left recipients in doubt, with how many."""
    for reason in reasons[:_MAX_REASONS]:
        click.echo(f"  {_STATE_WORDS[reason.state]} {reason.count}: {reason.reason}")
    if len(reasons) > _MAX_REASONS:
        click.echo(f"  ... and {len(reasons) - _MAX_REASONS} other reason(s): see highlights status")


def _finish(slug: str, summary: Summary) -> None:
    from highlightsmail.errors import HighlightsError

    failed, doubt = summary["failed"], summary["in_doubt"]
    if failed or doubt:
        raise HighlightsError(
            f"{failed} failed and {doubt} in doubt: see `highlights status {slug}`; "
            f"`highlights send {slug}` retries the failed ones"
            + (", add --resend-in-doubt for those in doubt" if doubt else "")
        )
    if summary["pending"]:
        click.echo(f"{summary['pending']} still to send: highlights send {slug}")


@main.command()
@click.argument("issue")
@click.option("--verbose", "-v", is_flag=True, help="List the address of every failed or in-doubt recipient.")
@pass_ctx
def status(obj: _Ctx, issue: str, verbose: bool) -> None:
    """Show how the sending of ISSUE stands.

    The recipients sent, skipped, failed and in doubt, by batch and reason. ISSUE is a
    path, a slug or `latest`."""
    from highlightsmail.sending import dispatch

    report = dispatch.status(obj.ws, _slug_of(obj.ws, issue), verbose=verbose)
    slug = report.slug
    if report.last_test is not None:
        last = report.last_test
        click.echo(f"{slug}: last test send {last.at} to {', '.join(last.recipients)}")
    else:
        click.echo(f"{slug}: no test send yet")
    if report.info is None or report.summary is None:
        click.echo(f"{slug}: not sent yet ({report.active} active subscribers)")
        return
    info, summary = report.info, report.summary
    state = "finished" if info.finished else ("sending now" if report.running else "stopped")
    click.echo(f"{slug}: dispatch through {info.backend} started {info.started}, {state}")
    click.echo(
        f"  recipients {summary.total}: {_summary_line(summary)}, pending {summary['pending']}"
        + (f", in flight {summary['in_flight']}" if summary["in_flight"] else "")
    )
    shown = None
    for group in report.groups:
        if group.state != shown:
            shown = group.state
            click.echo(f"  {_STATE_WORDS[group.state]}:")
        click.echo(f"    batch {group.batch}: {group.count} recipient(s): {group.reason}")
        for email in group.emails:
            click.echo(f"      {email}")
    if report.groups and not verbose:
        click.echo(f"  list their addresses with: highlights status {slug} --verbose")
    if summary["in_doubt"] or summary["in_flight"]:
        click.echo(f"  send those in doubt again with: highlights send {slug} --resend-in-doubt")
    if report.has_events:
        click.echo(f"  delivery events recorded: see highlights report {slug}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=8000, show_default=True, type=_PORT, help="The port to listen on (0: any free one).")
@pass_ctx
def serve(obj: _Ctx, host: str, port: int) -> None:
    """Run the web endpoint that base_url points at.

    It answers the unsubscribe pages and one-click unsubscribe, /healthz, the SendGrid
    event webhook, and, when enabled in highlights.yaml, the signup form with its
    confirmation links and the archive."""
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


@main.command()
@pass_ctx
def form(obj: _Ctx) -> None:
    """Print the signup form as HTML to paste into any website."""
    from highlightsmail.subscribers.signup import form_snippet
    from highlightsmail.urls import urls

    ws = obj.ws
    click.echo(form_snippet(ws), nl=False)
    _warn_if_committable(None)
    if not ws.settings.signup.enabled:
        click.echo(
            "Note: signup.enabled is false in highlights.yaml, so `highlights serve` does not answer "
            f"{urls(ws.settings).subscribe()} yet.",
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
    """Import subscribers from a CSV file.

    The file has a header row: email, and optionally name, status, created, updated,
    source and consented (as export writes them)."""
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
@pass_ctx
def subscribers_add(obj: _Ctx, email: str, name: str) -> None:
    """Add one subscriber.

    Someone who left (unsubscribed, bounced or complained) is never made active again
    from here."""
    from highlightsmail.subscribers import manage as engine

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
    """Unsubscribe EMAIL.

    The address stays in the list, so it is never mailed again."""
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
@pass_ctx
def subscribers_list(obj: _Ctx, status_: str | None, fmt: str) -> None:
    """List subscribers."""
    from highlightsmail.subscribers import manage as engine

    with _streamed_stdout() as out:
        engine.write_list(obj.ws, out, status=status_, fmt=fmt)  # type: ignore[arg-type]  # click.Choice
    _warn_if_committable(None)


@subscribers.command("export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def subscribers_export(obj: _Ctx, file: Path | None) -> None:
    """Export every subscriber as CSV to FILE (default: standard output).

    Keep the file out of git: in the workspace's private/ folder (made when missing),
    which git ignores. A file that git would offer for a commit gets a warning."""
    from highlightsmail.errors import display_path
    from highlightsmail.subscribers import manage as engine

    if file is None:
        with _streamed_stdout() as out:
            engine.export(obj.ws, None, out)
        _warn_if_committable(None)
        return
    obj.ws.make_private_dir(file)
    count = engine.export(obj.ws, file)
    click.echo(f"exported {count} subscribers to {display_path(file)}", err=True)
    _warn_if_committable(file)


@main.group()
def db() -> None:
    """Upgrade the database's schema, or move the state to PostgreSQL."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(obj: _Ctx) -> None:
    """Bring the database's schema up to this version.

    Back the database up first: an upgrade cannot be undone. An empty PostgreSQL
    database gets the schema, to start a list there from nothing."""
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
def db_copy(obj: _Ctx, to: str) -> None:
    """Copy the SQLite state into an empty PostgreSQL database.

    Run it while highlights.yaml still points at the SQLite file; the counts are
    checked, and a database that is not empty is refused."""
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


@main.group()
def bounces() -> None:
    """Read bounce mail (delivery failures of mail sent over SMTP)."""


@bounces.command("scan")
@click.argument("mailbox", required=False)
@click.option("--verbose", "-v", is_flag=True, help="List each unmatched failure, with why it proves nothing.")
@pass_ctx
def bounces_scan(obj: _Ctx, mailbox: str | None, verbose: bool) -> None:
    """Mark the addresses that bounced, reading a mailbox.

    MAILBOX is an mbox file, a Maildir, or imaps://user@host[:port]/FOLDER (password
    from HIGHLIGHTS_IMAP_PASSWORD); default: the setting delivery.bounces.mailbox. Mail
    read before is skipped. With delivery.bounces.accept: matched (the default), a
    bounce counts only when it carries a Message-ID, signed link or return address of a
    message sent to that subscriber; the rest is unmatched and changes nothing."""
    from highlightsmail.feedback.bounces import scan
    from highlightsmail.store import Store
    from highlightsmail.tokens import load_signer

    ws = obj.ws
    with Store.open(ws) as store:
        result = scan(ws, mailbox, store=store, signer=load_signer(ws.secret_path))
    click.echo(
        f"{result.mailbox}: {result.mails} mail(s), {result.already_scanned} read before, "
        f"{result.bounces} bounce(s), {result.not_bounces} not bounces"
        + (f", {len(result.unreadable)} unreadable" if result.unreadable else "")
    )
    if result.bounces:
        click.echo(
            f"  permanent failures {result.permanent}, temporary {result.temporary}, "
            f"status changes {result.status_changes}"
            + (f", unmatched {len(result.unmatched)}" if result.unmatched else "")
            + (f", bounces of test sends {result.test_sends}" if result.test_sends else "")
        )
    for line in result.unreadable:
        click.echo(f"  unreadable (recorded as read, skipped): {line}")
    for line in result.skipped:
        click.echo(f"  skipped, not a mail: {line}")
    if verbose:
        for line in result.unmatched:
            click.echo(f"  unmatched: {line}")
    elif result.unmatched:
        click.echo(
            f"  {len(result.unmatched)} unmatched failure(s) proved no message of ours and changed nothing; "
            "list them with --verbose"
        )


@main.command()
@click.argument("issue")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "html"]),
    default="table",
    show_default=True,
    help="json has fixed keys for scripts; html is one self-contained page with a chart.",
)
@click.option(
    "--out",
    "out",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to FILE instead of standard output.",
)
@pass_ctx
def report(obj: _Ctx, issue: str, fmt: str, out: Path | None) -> None:
    """Show how ISSUE did: deliveries, bounces, opens and clicks.

    Also complaints, unsubscribes after it, and the rates against the bulk-sender
    limits. ISSUE is a path, a slug or `latest`."""
    import json

    from highlightsmail.errors import HighlightsError, display_path
    from highlightsmail.feedback import report as reporting
    from highlightsmail.store import Store

    ws = obj.ws
    if out is not None:
        ws.check_output(out)
        ws.make_private_dir(out)
    slug = _slug_of(ws, issue)
    with Store.open(ws) as store:
        figures = reporting.build_report(store, slug)
    if fmt == "json":
        text = json.dumps(figures.as_json(), indent=2, ensure_ascii=False) + "\n"
    elif fmt == "html":
        text = reporting.render_html(figures, ws.settings)
    else:
        text = reporting.format_table(figures)
    if out is None:
        click.echo(text, nl=False)
        _warn_if_committable(None)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise HighlightsError(f"{display_path(out)}: cannot write the report: {exc.strerror or exc}") from None
    click.echo(f"Wrote {display_path(out)}", err=True)
    _warn_if_committable(out)


def _slug_of(ws: Workspace, issue: str) -> str:
    """The slug of ISSUE (a path, a slug or `latest`), for commands about a dispatch: an
    issue that was sent keeps its record when its file is removed or renamed since."""
    from highlightsmail.errors import HighlightsError

    try:
        return ws.issue_path(issue).stem
    except HighlightsError:
        if ws.database_exists():
            from highlightsmail.store import Store

            with Store.open(ws) as store:
                if store.dispatch_info(issue) is not None:
                    return issue
        raise


def _warn_if_committable(path: Path | None) -> None:
    """One warning line when the file just written (`path`, or for None the file that
    standard output was redirected to) would be offered by `git status` for a commit:
    exports and reports hold personal data, and a `git add .` would publish them."""
    from highlightsmail.authoring.workspace import PRIVATE_DIR, git_would_offer
    from highlightsmail.errors import display_path

    target = path if path is not None else _stdout_file()
    if target is not None and git_would_offer(target):
        click.echo(
            f"warning: {display_path(target)} is in a git repository and not ignored, so git would offer it "
            f"for a commit; write it in {PRIVATE_DIR}/ (git-ignored) or add it to .gitignore",
            err=True,
        )


def _stdout_file() -> Path | None:
    """The file standard output goes to (`> FILE`), where the system tells (Linux's
    /proc); None for a terminal, a pipe, or when it cannot be told."""
    import stat

    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd)
        if not stat.S_ISREG(mode.st_mode):
            return None
        name = os.readlink(f"/proc/self/fd/{fd}")
        found = os.stat(name)
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return None
    return Path(name) if (found.st_dev, found.st_ino) == (mode.st_dev, mode.st_ino) else None


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
