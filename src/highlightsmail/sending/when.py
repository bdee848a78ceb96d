"""How a schedule reads: its times in the editor's zone and its state in the words
`status`, `schedule`, `check` and the preview use (`describe`), and the schedule of an
issue read without anything else of the send path (`note`: `check` and the preview)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from highlightsmail.authoring.sendtimes import zone_problem
from highlightsmail.errors import HighlightsError
from highlightsmail.sending.limits import parse_time
from highlightsmail.store import Schedule, Store

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace

__all__ = ["current", "describe", "local_time", "note", "shown"]


def local_time(stored: str, zone: str) -> str:
    """A stored UTC time as the editor reads it in `zone`: `2024-01-15 08:00`
    (seconds only when it has some)."""
    moment = parse_time(stored).astimezone(ZoneInfo(zone) if not zone_problem(zone) else ZoneInfo("UTC"))
    return moment.strftime("%Y-%m-%d %H:%M" + (":%S" if moment.second else ""))


def shown(stored: str | None, zone: str) -> str:
    """`2024-01-15 08:00 Europe/Berlin`."""
    return f"{local_time(stored, zone)} {zone}" if stored else "-"


def describe(schedule: Schedule, default_zone: str) -> str:
    """Where a schedule stands: `scheduled for ...`, `paused until ...`, `held: why`..."""
    zone = schedule.zone or default_zone
    state = schedule.state
    if state == "scheduled":
        held = ", held by SendGrid" if schedule.provider_batch else ""
        return f"scheduled for {shown(schedule.due, zone)} ({shown(schedule.due, 'UTC')}{held})"
    if state == "paused":
        why = f" ({schedule.reason})" if schedule.reason else ""
        return f"paused until {shown(schedule.paused_until, zone)}{why}"
    if state == "running":
        return f"running since {shown(schedule.started, zone)}"
    if state == "sent":
        return f"sent (scheduled for {shown(schedule.due, zone)})" if schedule.zone else "sent"
    return state + (f": {schedule.reason}" if schedule.reason else "")


def current(ws: Workspace, slug: str) -> Schedule | None:
    """The issue's schedule, or None when it has none or the database cannot say."""
    if not ws.database_exists():
        return None
    try:
        with Store.open(ws) as store:
            return store.schedule_of(slug)
    except HighlightsError:
        return None


def note(ws: Workspace, slug: str) -> str | None:
    """The issue's schedule as one line, when it has one (a check or a preview does not
    stop when the database cannot say)."""
    found = current(ws, slug)
    return f"{slug}: {describe(found, ws.settings.timezone)}" if found else None
