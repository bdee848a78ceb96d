"""`highlights status`: how the dispatch of an issue stands, with its failed and
in-doubt recipients grouped by batch and reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from highlightsmail.sending.lock import send_running
from highlightsmail.sending.outcome import Summary
from highlightsmail.store import DeliveryState, DispatchInfo, Schedule, Store, TestSend

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace

__all__ = ["STOPPED_REASON", "Group", "StatusReport", "status"]

#: What a recipient in flight when its run died is, as far as anyone knows.
STOPPED_REASON = "the run stopped while this batch was under way"


@dataclass(frozen=True)
class Group:
    """Recipients of one batch that ended in one state for one reason."""

    state: DeliveryState
    batch: int | None
    reason: str
    count: int
    emails: list[str]  # only when asked for (verbose)


@dataclass(frozen=True)
class StatusReport:
    slug: str
    last_test: TestSend | None
    info: DispatchInfo | None
    active: int  # active subscribers (what a first send would take)
    running: bool = False
    summary: Summary | None = None  # in-flight rows of a run that stopped counted as in doubt
    groups: list[Group] = field(default_factory=list)  # in doubt first, then failed
    has_events: bool = False  # delivery events were recorded (`highlights report` has more)
    schedule: Schedule | None = None  # when it is (or was) to go, and where that stands


def status(ws: Workspace, slug: str, *, verbose: bool = False) -> StatusReport:
    """How the dispatch of an issue stands, with its failed and in-doubt recipients
    grouped by batch and reason (their addresses too when `verbose`)."""
    with Store.open(ws) as store:
        tests = store.test_sends(slug)
        last = tests[-1] if tests else None
        info = store.dispatch_info(slug)
        if info is None:
            return StatusReport(
                slug, last, None, active=store.count_by_status()["active"], schedule=store.schedule_of(slug)
            )
        running = send_running(ws, store, slug)
        summary = Summary.from_counts(store.delivery_counts(slug))
        # Rows left in flight by a run that is gone are in doubt already: counted and
        # listed as such, before any resume says so in the ledger.
        doubt_states: tuple[DeliveryState, ...] = ("in_doubt",) if running else ("in_doubt", "in_flight")
        if not running:
            summary = summary.settled()
        groups = [
            *_groups(store, slug, "in_doubt", doubt_states, verbose),
            *_groups(store, slug, "failed", ("failed",), verbose),
        ]
        return StatusReport(
            slug,
            last,
            info,
            active=0,
            running=running,
            summary=summary,
            groups=groups,
            has_events=store.has_delivery_events(slug),
            schedule=store.schedule_of(slug),
        )


def _groups(
    store: Store, slug: str, shown_as: DeliveryState, states: tuple[DeliveryState, ...], verbose: bool
) -> list[Group]:
    counts: Counter[tuple[int | None, str]] = Counter()
    emails: dict[tuple[int | None, str], list[str]] = {}
    for row in store.iter_deliveries(slug, states):
        reason = row.last_error or (STOPPED_REASON if row.state == "in_flight" else "no reason recorded")
        key = (row.batch, reason)
        counts[key] += 1
        if verbose:
            emails.setdefault(key, []).append(row.email)
    return [
        Group(shown_as, batch, reason, n, emails.get((batch, reason), []))
        for (batch, reason), n in sorted(counts.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1]))
    ]
