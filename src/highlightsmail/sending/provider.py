"""SendGrid holds it for you (`delivery.sendgrid.schedule: provider`): a send due within
72 hours is handed over at once, every batch with `send_at` and one batch id, so no
runner needs to be up at its time; cancelling it cancels the batch through SendGrid's
scheduled-sends API, and the ledger then has its recipients failed (never delivered),
for a later `send` to take up again.

What is handed over is the message approved when it was scheduled: nothing changes it
afterwards. The sending limits cannot apply to mail the provider sends at one moment,
so a workspace with limits is refused here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from highlightsmail.errors import HighlightsError
from highlightsmail.mail.backends import get_backend
from highlightsmail.mail.backends.base import DeliveryError
from highlightsmail.mail.backends.sendgrid import SendGridBackend
from highlightsmail.sending import dispatch
from highlightsmail.sending.limits import parse_time
from highlightsmail.sending.outcome import SendOutcome
from highlightsmail.store import Schedule, Store

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace

__all__ = ["CANCELLED", "MAX_AHEAD", "cancel_held", "hand_over", "holds"]

#: SendGrid takes send_at at most this far ahead.
MAX_AHEAD = timedelta(hours=72)
#: The reason the ledger gives the recipients of a send cancelled at SendGrid.
CANCELLED = "cancelled at SendGrid before its time"


def holds(ws: Workspace, due: datetime, now: datetime) -> bool:
    """Whether SendGrid is to hold a send due at `due`."""
    delivery = ws.settings.delivery
    return delivery.backend == "sendgrid" and delivery.sendgrid.schedule == "provider" and due - now <= MAX_AHEAD


def _sendgrid(ws: Workspace) -> SendGridBackend:
    backend = get_backend(ws)
    assert isinstance(backend, SendGridBackend)
    return backend


def hand_over(ws: Workspace, path: Path, schedule: Schedule, clock: Callable[[], datetime]) -> SendOutcome:
    """Send the scheduled issue now, for SendGrid to deliver at its time."""
    delivery = ws.settings.delivery
    if delivery.rate_limit or delivery.daily_limit or delivery.warmup:
        raise HighlightsError(
            "delivery.sendgrid.schedule: provider hands the whole send to SendGrid at once, so the sending "
            "limits (rate_limit, daily_limit, warmup) cannot hold; use schedule: runner, or drop the limits"
        )
    try:
        backend = _sendgrid(ws)
        backend.open()
        batch_id = backend.new_batch_id()
    except DeliveryError as err:
        raise HighlightsError(f"sendgrid: {err.message}; nothing was scheduled") from None
    slug = schedule.issue
    with Store.open(ws, clock=clock) as store:
        store.set_schedule(slug, schedule.due, schedule.zone, schedule.fingerprint, provider_batch=batch_id)
    send_at = int(parse_time(schedule.due).timestamp())
    try:
        return dispatch.send(
            ws, path, skip_test_check=True, approved=schedule.fingerprint, clock=clock, hold=(send_at, batch_id)
        )
    finally:
        # Held by SendGrid until its time: scheduled, with the batch a cancel needs.
        with Store.open(ws, clock=clock) as store:
            found = store.schedule_of(slug)
            if found is not None and found.state == "running":  # the send stopped on an error
                store.move_schedule(slug, found.version, "scheduled")
            store.set_schedule(slug, schedule.due, schedule.zone, schedule.fingerprint, provider_batch=batch_id)


def cancel_held(ws: Workspace, schedule: Schedule) -> int:
    """Cancel at SendGrid the mail it holds for `schedule`; the ledger's recipients of it
    become failed. Returns how many."""
    assert schedule.provider_batch is not None
    try:
        _sendgrid(ws).cancel_batch(schedule.provider_batch)
    except DeliveryError as err:
        raise HighlightsError(f"sendgrid: could not cancel the scheduled send: {err.message}") from None
    with Store.open(ws) as store:
        return store.provider_cancelled(schedule.issue, CANCELLED)
