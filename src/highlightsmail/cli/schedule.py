"""Sending later: `schedule` and `run-due`, and what `send --at`, `send --cancel` and a
send paused by the limits print (`send` itself is in sending.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from highlightsmail.cli.context import Ctx, pass_ctx, slug_of

if TYPE_CHECKING:  # for the annotations only: --help loads none of it
    from pathlib import Path

    from highlightsmail.authoring.workspace import Workspace
    from highlightsmail.sending.outcome import SendOutcome
    from highlightsmail.sending.schedule import Scheduled
    from highlightsmail.store import Schedule


def shown(ws: Workspace, stored: str | None, zone: str | None = None) -> str:
    """A stored UTC time as the editor reads it: `2024-01-15 08:00 Europe/Berlin`."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.sending.when import shown as shown_in

    return shown_in(stored, zone or ws.settings.timezone)


def state_line(ws: Workspace, schedule: Schedule) -> str:
    """Where a schedule stands, in the words `status` and `schedule` use."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.sending.when import describe

    return describe(schedule, ws.settings.timezone)


def check_note(ws: Workspace, issue_path: Path) -> str | None:
    """`check`: the issue's schedule as one line, when it has one."""
    if not ws.database_exists():
        return None  # nothing scheduled, and `check` loads nothing of the store (tests/cli/test_startup.py)
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.sending.when import note

    return note(ws, issue_path.stem)


def scheduling(
    obj: Ctx, issue: str, at: str | None, tz: str | None, cancel: bool, *, alone: bool, yes: bool, skip: bool
) -> bool:
    """`send --at` and `send --cancel`: done here (True), or neither was asked (False)."""
    if ((at or tz or cancel) and not alone) or (tz and not at) or (at and cancel):
        raise click.UsageError("--at (with --tz) and --cancel go alone, without --test, --dry-run or --limit")
    if cancel:
        cancel_send(obj, slug_of(obj.ws, issue))
        return True
    if at is not None:
        schedule_send(obj, obj.ws.issue_path(issue), at, tz, yes=yes, skip_test_check=skip)
        return True
    return False


def schedule_send(obj: Ctx, path: Path, at: str, zone: str | None, *, yes: bool, skip_test_check: bool) -> None:
    """`send ISSUE --at TIME [--tz ZONE]`: one line saying what was scheduled."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.sending import schedule

    def confirm(view: Scheduled) -> bool:
        if yes:
            return True
        return click.confirm(
            f"Schedule {view.schedule.issue} for {view.local} {view.schedule.zone} to {view.reach} subscriber(s)?",
            err=True,
        )

    done = schedule.schedule_send(obj.ws, path, at, zone=zone, skip_test_check=skip_test_check, confirm=confirm)
    sched = done.schedule
    click.echo(
        f"{sched.issue}: scheduled for {done.local} {sched.zone} ({shown(obj.ws, sched.due, 'UTC')}); "
        f"it would reach {done.reach} subscriber(s) now (the recipients are fixed when the send starts)"
    )


def send_waiting(obj: Ctx, talk: Any, path: Path, *, no_wait: bool, **options: Any) -> SendOutcome:
    """`send`, honouring the limits: when one is reached it waits for the window (saying
    until when) and goes on, or with `no_wait` returns and leaves the rest to the runner."""
    # Imported when the command runs, not at the top: --help loads none of it.
    import dataclasses

    from highlightsmail.sending import dispatch
    from highlightsmail.sending.when import current

    while True:
        outcome = dispatch.send(obj.ws, path, events=talk, **options)
        if outcome.paused_until is None or no_wait:
            return outcome
        slug = outcome.plan.slug
        wait_for(obj.ws, slug, outcome.paused_until)
        now = current(obj.ws, slug)
        if now is not None and now.state == "cancelled":  # `send --cancel` came meanwhile
            return dataclasses.replace(outcome, paused_until=None, cancelled=True)
        if now is not None and now.state != "paused":  # a runner took it meanwhile
            click.echo(f"{slug}: {state_line(obj.ws, now)}; this send leaves it at that", err=True)
            return outcome
        talk.yes = True  # asked once: the rest of this send goes on by itself
        options["resend_in_doubt"] = False


def said_stopped(obj: Ctx, outcome: SendOutcome) -> bool:
    """Say so when a send was cancelled or left paused (--no-wait); False otherwise."""
    slug = outcome.plan.slug
    if outcome.cancelled:
        click.echo(f"{slug}: cancelled; `highlights send {slug}` resumes from there")
        return True
    if outcome.paused_until is not None:
        until = shown(obj.ws, outcome.paused_until)
        click.echo(f"{slug}: paused until {until} (a sending limit); `highlights run-due` or serve sends the rest")
        return True
    return False


def wait_for(ws: Workspace, slug: str, until: str) -> None:
    """A plain `send` that reached a limit waits for its window, saying until when."""
    # Imported when the command runs, not at the top: --help loads none of it.
    import time

    from highlightsmail.sending.limits import parse_time
    from highlightsmail.store.records import utc_now

    click.echo(f"{slug}: paused until {shown(ws, until)} (a sending limit); waiting (Ctrl-C stops)...", err=True)
    time.sleep(max(0.0, (parse_time(until) - utc_now()).total_seconds()))


def cancel_send(obj: Ctx, slug: str) -> None:
    """`send ISSUE --cancel`."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.sending import schedule

    done = schedule.cancel(obj.ws, slug)
    if done.was in ("running", "paused"):
        click.echo(
            f"{slug}: cancelled; batches in flight finish and are recorded, {done.unreached} recipient(s) "
            f"not reached; `highlights send {slug}` resumes from there"
        )
    else:
        click.echo(f"{slug}: the scheduled send is cancelled (it was {done.was})")


@click.command("schedule")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="One line per send, or JSON for scripts.",
)
@pass_ctx
def schedule_command(obj: Ctx, fmt: str) -> None:
    """List the scheduled, running, paused, held, cancelled and missed sends, one line each."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from dataclasses import asdict

    from highlightsmail.sending import schedule

    found = schedule.schedules(obj.ws)
    if fmt == "json":
        click.echo(json.dumps([{k: v for k, v in asdict(s).items() if k != "version"} for s in found], indent=2))
        return
    if not found:
        click.echo("nothing scheduled")
    for sched in found:
        click.echo(f"{sched.issue}  {state_line(obj.ws, sched)}")


@click.command("run-due")
@pass_ctx
def run_due(obj: Ctx) -> None:
    """Start every send that is due, send what the limits allow now, then exit (for cron).

    Paused sends whose window has opened go on too; a send that reaches a limit pauses
    again and the next run goes on with it."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.errors import HighlightsError
    from highlightsmail.sending import runner

    reports = runner.run_due(obj.ws)
    for report in reports:
        detail = shown(obj.ws, report.detail) if report.what == "paused" else report.detail
        click.echo(
            f"{report.issue}: {report.what}"
            + (f" until {detail}" if report.what == "paused" else "")
            + (f" ({detail})" if detail and report.what != "paused" else "")
        )
    failed = [r for r in reports if r.what == "failed"]
    if failed:
        raise HighlightsError(f"{len(failed)} scheduled send(s) failed: see above")
