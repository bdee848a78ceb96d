"""The runner: `run-due` (once, for cron or a systemd timer) and the thread `serve` keeps
(`Runner`), which start every send that is due, as far as the limits allow now.

For each schedule due: one past its time by more than `schedule.grace` is `missed`; one
whose message is no longer the approved one (the issue file, a template or a setting
changed) is `held`; otherwise the runner takes it (`scheduled` or `paused` to `running`
by compare-and-set, so of several runners exactly one starts it) and sends. A send
found `running` whose runner is gone (killed) is taken over the same way and resumes
from the ledger, which keeps everyone to at most one copy. A correction paused by the
limits is resumed the same way, its notice rendered again from the text it kept."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from highlightsmail.errors import HighlightsError, reason
from highlightsmail.mail.message import fingerprint
from highlightsmail.sending import corrections, dispatch
from highlightsmail.sending.limits import parse_time
from highlightsmail.sending.lock import send_running
from highlightsmail.sending.outcome import SendOutcome
from highlightsmail.store import Schedule, Store, UnusableDatabase, format_time
from highlightsmail.store.corrections import CORRECTION_MARK
from highlightsmail.store.records import utc_now

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace

__all__ = ["CHECK_EVERY_S", "HELD", "DueReport", "Runner", "run_due"]

log = logging.getLogger("highlightsmail.runner")

#: The longest a runner in `serve` waits between two looks at the schedules.
CHECK_EVERY_S = 15.0
#: Why a schedule is held (`status` and `schedule` show it).
HELD = "the issue, a template or a setting changed since it was scheduled; test-send it and schedule it again"
#: Why a correction paused by the limits is held instead of resumed.
CORRECTION_HELD = (
    "the notice rendered again is not the one that was test-sent (the issue, a template or a setting changed); "
    "test-send the correction again and run its command"
)
#: A send `running` with no sender alive is taken over only after this long without a
#: change: the runner that took it may not have joined as a sender yet.
TAKEOVER_AFTER = timedelta(seconds=30)
#: A send that stopped on an error is tried again this long after.
RETRY_AFTER = timedelta(minutes=5)


@dataclass(frozen=True)
class DueReport:
    """What the runner did with one schedule: `sent`, `paused`, `cancelled`, `held`,
    `missed`, `failed` (the send raised; `detail` says why) or `stopped`."""

    issue: str
    what: str
    detail: str = ""


def run_due(
    ws: Workspace, *, clock: Callable[[], datetime] = utc_now, stopping: Callable[[], bool] = lambda: False
) -> list[DueReport]:
    """Start (or resume) every send that is due now; send what the limits allow now and
    return, without waiting for the next window. `stopping`: when it says so, a send
    under way claims no more batches and pauses (its batches in flight finish)."""
    if not ws.database_exists():
        return []
    reports: list[DueReport] = []
    with Store.open(ws, clock=clock) as store:
        due = store.due_schedules(format_time(clock()))
        for schedule in due:
            if stopping():
                break
            report = _one(ws, store, schedule, clock, stopping)
            if report is not None:
                reports.append(report)
    return reports


def _one(
    ws: Workspace, store: Store, schedule: Schedule, clock: Callable[[], datetime], stopping: Callable[[], bool]
) -> DueReport | None:
    """Look at one schedule that is due, and send it if it is this runner's to send."""
    now = clock()
    slug = schedule.issue
    if schedule.provider_batch and schedule.state == "scheduled":
        # SendGrid held it and sends it at its time: nothing for a runner but to say so.
        if store.move_schedule(slug, schedule.version, "sent", reason="held and sent by SendGrid"):
            return DueReport(slug, "sent", "held and sent by SendGrid")
        return None
    if schedule.state == "running":
        # The time first: looking for a sender on SQLite takes its lock for a moment,
        # which a runner that has just taken the schedule may be about to take.
        if parse_time(schedule.updated) + TAKEOVER_AFTER > now or send_running(ws, store, slug):
            return None  # its runner is at it
    elif schedule.state == "scheduled" and now > parse_time(schedule.due) + _grace(ws):
        why = f"no runner was up between its time and {ws.settings.schedule.grace} after"
        if store.move_schedule(slug, schedule.version, "missed", reason=why):
            return DueReport(slug, "missed", why)
        return None
    approved = (_correction if CORRECTION_MARK in slug else _issue)(ws, store, schedule, clock, stopping)
    if not callable(approved):
        return approved  # held (or another runner held it first)
    if not store.move_schedule(slug, schedule.version, "running", started=True):
        return None  # another runner took it first
    return _send(ws, slug, approved, clock)


#: What a runner sends for a schedule it may take; a DueReport (or None) when it holds it instead.
_Approved = Callable[[], SendOutcome] | DueReport | None


def _issue(
    ws: Workspace, store: Store, schedule: Schedule, clock: Callable[[], datetime], stopping: Callable[[], bool]
) -> _Approved:
    """An issue's send, if the message is still the one that was scheduled."""
    try:
        path = ws.issue_path(schedule.issue)
        digest = dispatch.approved_fingerprint(ws, path)
    except HighlightsError as err:
        return _hold(store, schedule, f"it cannot be rendered now: {err.format_message()}")
    if digest != schedule.fingerprint:
        return _hold(store, schedule, HELD)
    return lambda: dispatch.send(ws, path, skip_test_check=True, approved=digest, clock=clock, stopping=stopping)


def _correction(
    ws: Workspace, store: Store, schedule: Schedule, clock: Callable[[], datetime], stopping: Callable[[], bool]
) -> _Approved:
    """A correction the limits paused: its notice rendered again from the text it kept,
    and sent on if that is still the notice that was test-sent."""
    slug = schedule.issue
    text = corrections.kept_text(store, slug)
    if text is None:
        return _hold(store, schedule, "its text was not kept; run its `send --correction` command again")
    try:
        path = ws.issue_path(slug.split(CORRECTION_MARK)[0])
        correction = corrections.prepare(ws, store, path, text)
        digest = fingerprint(correction.rendered, ws.settings)
    except HighlightsError as err:
        return _hold(store, schedule, f"it cannot be rendered now: {err.format_message()}")
    if correction.name != slug or digest != schedule.fingerprint:
        return _hold(store, schedule, CORRECTION_HELD)
    return lambda: corrections.send_correction(ws, path, text, clock=clock, approved=digest, stopping=stopping)


def _grace(ws: Workspace) -> timedelta:
    return timedelta(seconds=ws.settings.schedule.grace_seconds)


def _hold(store: Store, schedule: Schedule, why: str) -> DueReport | None:
    if store.move_schedule(schedule.issue, schedule.version, "held", reason=why):
        return DueReport(schedule.issue, "held", why)
    return None


def _send(ws: Workspace, slug: str, sending: Callable[[], SendOutcome], clock: Callable[[], datetime]) -> DueReport:
    """Run `sending` (the send of the schedule `slug`) and say how it went."""
    try:
        outcome = sending()
    except HighlightsError as err:
        # Paused, not dropped: the next look after RETRY_AFTER tries again, and `status`
        # says why meanwhile (a missing key, a server down, another send of it running).
        until = format_time(clock() + RETRY_AFTER)
        with Store.open(ws, clock=clock) as store:
            store.sending_stopped(slug, "paused", reason=f"the send stopped: {err.format_message()}", until=until)
        return DueReport(slug, "failed", err.format_message())
    if outcome.cancelled:
        return DueReport(slug, "cancelled")
    if outcome.paused_until is not None:
        return DueReport(slug, "paused", outcome.paused_until)
    summary = outcome.summary
    detail = ""
    if summary is not None:
        detail = f"sent {summary['sent']}, failed {summary['failed']}, in doubt {summary['in_doubt']}"
    return DueReport(slug, "sent", detail)


class Runner:
    """The runner `serve` keeps: a thread that runs `run_due` at least every
    CHECK_EVERY_S seconds (sooner when a schedule is due sooner), until `stop`."""

    def __init__(self, ws: Workspace, *, every: float = CHECK_EVERY_S, clock: Callable[[], datetime] = utc_now) -> None:
        self.ws = ws
        self.every = every
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="schedule-runner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop looking; a send under way claims no more, finishes its batches in flight
        and pauses (the next runner goes on with it)."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for report in run_due(self.ws, clock=self.clock, stopping=self._stop.is_set):
                    log.info("scheduled send of %s: %s %s", report.issue, report.what, report.detail)
            except UnusableDatabase as err:  # the web app says so already, once (web/database.py)
                log.debug("the schedule runner could not reach the database: %s", reason(err))
            except Exception as err:  # the server keeps serving; the next look tries again
                log.error("the schedule runner could not run: %s", reason(err))
            self._stop.wait(self._wait())

    def _wait(self) -> float:
        """Seconds until the next look: CHECK_EVERY_S, or less when a send is due sooner."""
        try:
            with Store.open(self.ws, clock=self.clock) as store:
                wake = store.next_wake()
        except Exception:
            return self.every
        if wake is None:
            return self.every
        soon = (parse_time(wake) - self.clock()).total_seconds() + 0.2
        return max(0.2, min(self.every, soon))
