"""`send` (a test send, or the send to the subscribers) and `status`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import click

from highlightsmail.cli import schedule as later
from highlightsmail.cli.context import Ctx, PathArg, pass_ctx, slug_of

if TYPE_CHECKING:  # for the annotations only: --help loads none of it
    from pathlib import Path

    from highlightsmail.sending.dispatch import Reason, SendOutcome, SendPlan, Summary, TestSendResult


@click.command()
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
@click.option(
    "--correction", metavar="TEXT", help="Mail a correction notice (Markdown) to those who received ISSUE instead."
)
@click.option(
    "--correction-file", metavar="FILE", type=PathArg(dir_okay=False), help="As --correction, the text read from FILE."
)
@click.option("--at", "at", metavar="'YYYY-MM-DD HH:MM[:SS]'", help="Schedule the send for this time, then exit.")
@click.option("--tz", "tz", metavar="ZONE", help="With --at: the time zone (default: timezone: in highlights.yaml).")
@click.option("--cancel", is_flag=True, help="Cancel the scheduled send, or stop the send under way.")
@click.option("--no-wait", is_flag=True, help="When a sending limit is reached, exit and let the runner finish.")
@pass_ctx
def send(
    obj: Ctx,
    issue: str,
    test: bool,
    to: tuple[str, ...],
    yes: bool,
    dry_run: bool,
    limit: int | None,
    resend_in_doubt: bool,
    skip_test_check: bool,
    correction: str | None,
    correction_file: Path | None,
    at: str | None = None,
    tz: str | None = None,
    cancel: bool = False,
    no_wait: bool = False,
) -> None:
    """Test-send ISSUE to the editors, or send it to the subscribers.

    Without --test, ISSUE goes to every active subscriber, after a confirmation; with
    --at, at that time (`highlights run-due` or `serve` sends it). ISSUE is a path, a
    slug or `latest`. With --correction (or --correction-file), a short correction
    notice goes instead, to exactly those the ledger says received ISSUE and who are
    still subscribed, once its own --test was sent."""
    if to and not test:
        raise click.UsageError("--to goes with --test")
    if correction is not None or correction_file is not None:
        if limit or skip_test_check or at or tz or cancel:
            raise click.UsageError(
                "a correction goes with --test, --to, --yes, --dry-run, --resend-in-doubt and --no-wait only"
            )
        again = {"yes": yes, "dry_run": dry_run, "resend_in_doubt": resend_in_doubt, "no_wait": no_wait}
        _send_correction(obj, issue, correction, correction_file, test=test, to=to, **again)
        return
    if later.scheduling(
        obj, issue, at, tz, cancel, alone=not (test or dry_run or limit), yes=yes, skip=skip_test_check
    ):
        return
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.sending import dispatch

    path = obj.ws.issue_path(issue)
    if test:
        _said_test(dispatch.send_test(obj.ws, path, list(to), dry_run=dry_run))
        return
    options = {"dry_run": dry_run, "limit": limit, "resend_in_doubt": resend_in_doubt}
    _send_to_subscribers(obj, path, yes=yes, no_wait=no_wait, skip_test_check=skip_test_check, **options)


def _send_to_subscribers(obj: Ctx, path: Path, *, yes: bool, no_wait: bool, **options: Any) -> None:
    """`send` to the subscribers: run it (waiting for the limits' windows unless
    `no_wait`), then say how it went."""
    outcome = later.send_waiting(obj, _SendTalk(yes=yes), path, no_wait=no_wait, **options)
    if later.said_stopped(obj, outcome):
        return
    _said_sent(obj, outcome, f"highlights send {outcome.plan.slug}")


def _send_correction(
    obj: Ctx,
    issue: str,
    text: str | None,
    file: Path | None,
    *,
    test: bool,
    to: tuple[str, ...],
    yes: bool,
    dry_run: bool,
    resend_in_doubt: bool,
    no_wait: bool,
) -> None:
    """`send ISSUE --correction ...`: its test send, or its dispatch (waiting for the
    limits' windows as `send` does, unless `no_wait`)."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.sending import corrections

    path = obj.ws.issue_path(issue)
    words = corrections.correction_text(text, file)
    if test:
        correction, tested = corrections.send_correction_test(obj.ws, path, words, list(to), dry_run=dry_run)
        if tested.dry_run:
            click.echo(f"Dry run: would send a test of {correction.name} to {', '.join(tested.recipients)}")
            return
        click.echo(
            f"Test of {correction.name} sent to {', '.join(tested.recipients)} "
            f"through {tested.backend} (fingerprint {tested.fingerprint[:12]})."
        )
        click.echo("When it looks right, send it: the same command without --test")
        return
    talk = _SendTalk(yes=yes)
    while True:
        outcome = corrections.send_correction(
            obj.ws, path, words, events=talk, dry_run=dry_run, resend_in_doubt=resend_in_doubt
        )
        if outcome.paused_until is None or no_wait:
            break
        later.wait_for(obj.ws, outcome.plan.slug, outcome.paused_until)
        talk.yes = True  # asked once: the rest of this send goes on by itself
        resend_in_doubt = False
    _said_sent(obj, outcome, None)


def _said_sent(obj: Ctx, outcome: SendOutcome, again: str | None) -> None:
    """What a send did, as its last lines. `again` is the command that goes on; None for
    a correction, whose text names it: the same command again."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.errors import HighlightsError

    plan = outcome.plan
    if outcome.dry_run:
        _said_dry_run(outcome)
        return
    if outcome.stopped:
        raise HighlightsError(
            f"stopped; resume with: {again}" if again else f"{plan.slug}: stopped; resume with the same command"
        )
    summary = outcome.summary
    assert summary is not None
    if outcome.nothing_left:
        click.echo(f"{plan.slug}: nothing left to send ({_summary_line(summary)}).")
    else:
        click.echo(f"{plan.slug}: {_summary_line(summary)}.")
        _show_reasons(outcome.reasons)
    failed, doubt = summary["failed"], summary["in_doubt"]
    if failed or doubt:
        raise HighlightsError(
            f"{failed} failed and {doubt} in doubt: see `highlights status {plan.slug}`; "
            f"{f'`{again}`' if again else 'the same command'} retries the failed ones"
            + (", add --resend-in-doubt for those in doubt" if doubt else "")
        )
    if again is None and outcome.paused_until is not None:  # a correction with --no-wait
        click.echo(
            f"{plan.slug}: paused until {later.shown(obj.ws, outcome.paused_until)} (a sending limit); "
            "`highlights run-due` or serve sends the rest, as does the same command"
        )
    elif summary["pending"]:
        click.echo(f"{summary['pending']} still to send: {again or 'run the same command again'}")


def _said_test(tested: TestSendResult) -> None:
    """What a test send (or its dry run) did."""
    if tested.dry_run:
        click.echo(f"Dry run: would send a test of {tested.slug} to {', '.join(tested.recipients)}")
        return
    click.echo(
        f"Test of {tested.slug} sent to {', '.join(tested.recipients)} "
        f"through {tested.backend} (fingerprint {tested.fingerprint[:12]})."
    )
    if tested.audience:
        click.echo(tested.audience)
    click.echo(f"When it looks right: highlights send {tested.slug}")


def _said_dry_run(outcome: SendOutcome) -> None:
    """What a dry run of the send would have done."""
    plan = outcome.plan
    if outcome.suppressed:
        click.echo(
            f"Dry run: {outcome.suppressed} subscriber(s) would be marked from {plan.backend}'s suppression lists."
        )
    click.echo(
        f"Dry run: would send {plan.slug} to {plan.count} recipient(s){_among(plan)} through {plan.backend}; "
        "nothing sent."
    )


def _among(plan: SendPlan) -> str:
    """Where the recipients come from, when an audience names topics."""
    return f" (subscribers in the topics {', '.join(plan.audience)})" if plan.audience else ""


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
            # Imported when the command runs, not at the top: --help loads none of it.
            from highlightsmail.errors import HighlightsError

            verb = "Resume sending" if plan.resume else "Send"
            try:
                answer = click.confirm(
                    f"{verb} {plan.slug} to {plan.count} recipient(s){_among(plan)} through {plan.backend}?", err=True
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
        if not sys.stderr.isatty():
            return contextlib.nullcontext(lambda n: None)

        @contextlib.contextmanager
        def bar() -> Iterator[Callable[[int], None]]:
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


@click.command()
@click.argument("issue")
@click.option("--verbose", "-v", is_flag=True, help="List the address of every failed or in-doubt recipient.")
@pass_ctx
def status(obj: Ctx, issue: str, verbose: bool) -> None:
    """Show how the sending of ISSUE stands.

    The recipients sent, skipped, failed and in doubt, by batch and reason. ISSUE is a
    path, a slug or `latest`."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.sending import dispatch

    report = dispatch.status(obj.ws, slug_of(obj.ws, issue), verbose=verbose)
    slug = report.slug
    if report.last_test is not None:
        last = report.last_test
        click.echo(f"{slug}: last test send {last.at} to {', '.join(last.recipients)}")
    else:
        click.echo(f"{slug}: no test send yet")
    if report.schedule is not None:
        click.echo(f"{slug}: {later.state_line(obj.ws, report.schedule)}")
    if report.info is None or report.summary is None:
        click.echo(f"{slug}: not sent yet ({report.active} active subscribers)")
        return
    info, summary = report.info, report.summary
    state = "finished" if info.finished else ("sending now" if report.running else "stopped")
    cancelled = report.schedule is not None and report.schedule.state == "cancelled" and not report.running
    click.echo(f"{slug}: dispatch through {info.backend} started {info.started}, {state}")
    click.echo(
        f"  recipients {summary.total}: {_summary_line(summary)}, "
        + (f"cancelled {summary['pending']}" if cancelled else f"pending {summary['pending']}")
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
