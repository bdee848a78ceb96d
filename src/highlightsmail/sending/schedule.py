"""Sending later: `send --at` (after the same checks and test-send gate as `send`, the
approved fingerprint recorded with the time), `send --cancel`, and `schedule` (every
schedule, one line each). The runner that starts what is due is `runner.py`.

A time is read in a zone (`--tz`, else the workspace's `timezone:`), to the minute or
the second; one that does not exist in that zone (the hour skipped when clocks go
forward) or exists twice (the hour repeated when they go back) is refused rather than
guessed, as is one in the past."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from highlightsmail.authoring.issue import load_issue
from highlightsmail.authoring.sendtimes import zone_problem
from highlightsmail.errors import HighlightsError
from highlightsmail.mail.message import fingerprint
from highlightsmail.rendering.once import rendered_issue
from highlightsmail.sending import provider
from highlightsmail.sending.plan import NO_SUBSCRIBERS, audience_of, check_tested
from highlightsmail.sending.when import local_time
from highlightsmail.store import Schedule, Store, format_time
from highlightsmail.store.records import utc_now

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace

__all__ = ["Cancelled", "Scheduled", "cancel", "local_time", "parse_at", "schedule_send", "schedules"]

_AT = re.compile(r"\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?\s*")
_AT_HINT = 'write it as "YYYY-MM-DD HH:MM" or "YYYY-MM-DD HH:MM:SS"'


def parse_at(text: str, zone: str, now: datetime) -> datetime:
    """The moment (UTC) `text` names in `zone`; HighlightsError naming what is wrong."""
    problem = zone_problem(zone)
    if problem:
        raise HighlightsError(f"--tz: {problem}")
    match = _AT.fullmatch(text)
    if match is None:
        raise HighlightsError(f"--at {text!r}: {_AT_HINT}")
    try:
        year, month, day, hour, minute, sec = (int(part or 0) for part in match.groups())
        naive = datetime(year, month, day, hour, minute, sec)
    except ValueError as err:
        raise HighlightsError(f"--at {text!r}: {err}") from None
    tz = ZoneInfo(zone)
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive:
        raise HighlightsError(
            f"--at {text!r}: does not exist in {zone} (the clocks go forward then); pick another time"
        )
    if first.astimezone(UTC) != second.astimezone(UTC):
        # Clocks went back: the local time happens twice.
        raise HighlightsError(f"--at {text!r}: happens twice in {zone} (the clocks go back then); pick another time")
    moment = first.astimezone(UTC)
    if moment <= now:
        raise HighlightsError(f"--at {text!r}: is in the past ({zone}); give a time to come")
    return moment


@dataclass(frozen=True)
class Scheduled:
    """A send scheduled: the issue, its time as given and in UTC, and how many it would reach now."""

    schedule: Schedule
    local: str
    reach: int


def schedule_send(
    ws: Workspace,
    issue_path: Path,
    at: str,
    *,
    zone: str | None = None,
    skip_test_check: bool = False,
    confirm: Callable[[Scheduled], bool] = lambda _s: True,
    clock: Callable[[], datetime] = utc_now,
) -> Scheduled:
    """Schedule the issue at `at` in `zone` (the workspace's timezone by default), after
    the checks `send` makes; `confirm` is asked before anything is recorded."""
    zone = zone or ws.settings.timezone
    moment = parse_at(at, zone, clock())
    loaded = load_issue(issue_path)
    audience = audience_of(loaded, ws.settings)
    rendered = rendered_issue(loaded, ws)
    digest = fingerprint(rendered, ws.settings)
    slug = rendered.slug
    with Store.open(ws, clock=clock) as store:
        check_tested(store, slug, digest, skip=skip_test_check)
        info = store.dispatch_info(slug)
        if info is not None and info.finished:
            raise HighlightsError(f"{slug}: it was sent already ({info.finished}); nothing to schedule")
        counts = store.delivery_counts(slug) if info else {}
        reach = counts.get("pending", 0) + counts.get("failed", 0) if info else store.count_audience(audience)
        if reach == 0:
            raise HighlightsError(NO_SUBSCRIBERS)
        due = format_time(moment)
        view = Scheduled(Schedule(slug, due, zone, digest, "scheduled"), local_time(due, zone), reach)
        if not confirm(view):
            raise HighlightsError("nothing was scheduled")
        if not provider.holds(ws, moment, clock()):
            return Scheduled(store.set_schedule(slug, due, zone, digest), view.local, reach)
    provider.hand_over(ws, issue_path, view.schedule, clock)
    with Store.open(ws, clock=clock) as store:
        held = store.schedule_of(slug)
    assert held is not None
    return Scheduled(held, view.local, reach)


@dataclass(frozen=True)
class Cancelled:
    """What `send --cancel` did: the schedule as it now stands, whether a dispatch was under
    way (it claims no more; batches in flight finish), and how many were never reached."""

    schedule: Schedule
    was: str  # the state before
    unreached: int


def cancel(ws: Workspace, slug: str) -> Cancelled:
    """Cancel the schedule of `slug`, or its send under way."""
    with Store.open(ws) as store:
        before = store.schedule_of(slug)
    held = 0
    if before is not None and before.provider_batch and before.state == "scheduled":
        held = provider.cancel_held(ws, before)  # SendGrid first: if it refuses, nothing changed here
    with Store.open(ws) as store:
        after = store.cancel_schedule(slug)
        if after is None:
            raise HighlightsError(f"{slug}: nothing scheduled or being sent; nothing to cancel")
        unreached = store.delivery_counts(slug).get("pending", 0) if store.dispatch_info(slug) else 0
        return Cancelled(after, before.state if before else "running", unreached + held)


def schedules(ws: Workspace) -> list[Schedule]:
    """Every schedule of the workspace, soonest first."""
    if not ws.database_exists():
        return []
    with Store.open(ws) as store:
        return store.schedules()
