"""What delivery events mean for the list: SendGrid's events and bounce mail, turned into
rows for the store with the status each one implies.

The rules:
- `bounce` (type `bounce`), and `dropped` for a bounced or invalid address -> `bounced`;
- `spamreport`, and `dropped` for an address that reported spam -> `complained`;
- `unsubscribe`, `group_unsubscribe`, and `dropped` for an unsubscribed address -> `unsubscribed`;
- a `bounce` of type `blocked`, a `deferred` that ends in a drop, and a temporary failure
  in bounce mail are soft bounces: soft bounces in `delivery.bounces.soft_limit` issues
  in a row make the address `bounced`, and a delivery in between breaks the row;
- `delivered`, `open` and `click` (with its URL) are counted for the report.
Statuses only ever move towards "mail no more" (store.record_delivery_events).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from highlightsmail.addresses import address_key, ascii_address
from highlightsmail.store import DeliveryEventRow, RecordResult, Source, Store, format_time
from highlightsmail.text import MAX_INT64, parse_number

#: SendGrid event types kept; `processed` (one per recipient, says nothing new) and
#: anything else are ignored.
SENDGRID_KINDS = frozenset(
    {"delivered", "deferred", "bounce", "dropped", "spamreport", "unsubscribe", "group_unsubscribe", "open", "click"}
)
_STATUS_OF = {"spamreport": "complained", "unsubscribe": "unsubscribed", "group_unsubscribe": "unsubscribed"}
# A `dropped` event's reason, as SendGrid words it, and the status it means. Other
# reasons ("Invalid SMTPAPI header", spam content, over quota) say nothing about the
# address; "Invalid" alone is an invalid address.
_DROPPED_BECAUSE = {
    "bounced address": "bounced",
    "invalid": "bounced",
    "invalid address": "bounced",
    "invalid email": "bounced",
    "spam reporting address": "complained",
    "unsubscribed address": "unsubscribed",
}
_MAX_DETAIL = 1000
_MAX_URL = 2048


def sendgrid_row(event: Any) -> DeliveryEventRow | None:
    """One SendGrid Event Webhook event as a row, or None when it is not for us (no
    `issue` and `subscriber_id` custom args, a test send, an event type we don't keep)
    or malformed. Custom args arrive as top-level fields of the event."""
    if not isinstance(event, Mapping):
        return None
    kind = event.get("event")
    key = event.get("sg_event_id")
    if kind not in SENDGRID_KINDS or not isinstance(key, str) or not key or len(key) > 200:
        return None
    ours = _ours(event)
    at = _event_time(event.get("timestamp"))
    if ours is None or at is None:
        return None
    issue, subscriber_id = ours
    email = event.get("email") if isinstance(event.get("email"), str) else None
    reason = _text(event.get("reason")) or _text(event.get("response"))
    kind, status, soft, url = _meaning(str(kind), event, reason)
    return DeliveryEventRow(
        key=key,
        issue=issue,
        subscriber_id=subscriber_id,
        kind=kind,
        at=at,
        email=email,
        url=url,
        detail=reason,
        status=status,
        soft=soft,
    )


def _ours(event: Mapping[str, Any]) -> tuple[str, int] | None:
    """(issue, subscriber id) of the custom args we sent the message with; None when
    they are missing or malformed."""
    args = _custom_args(event)
    issue, sid = args.get("issue"), args.get("subscriber_id")
    if not isinstance(issue, str) or not issue or len(issue) > 200:
        return None
    # As we sent it (a string of digits), or a JSON number; never true/false, which are ints too.
    subscriber_id = parse_number(sid, low=1) if isinstance(sid, str) else None
    if isinstance(sid, int) and not isinstance(sid, bool) and 1 <= sid <= MAX_INT64:
        subscriber_id = sid
    return None if subscriber_id is None else (issue, subscriber_id)


def _meaning(kind: str, event: Mapping[str, Any], reason: str | None) -> tuple[str, str | None, bool, str | None]:
    """(kind as stored, the status it implies, whether it is a soft bounce, the clicked URL)."""
    status: str | None = _STATUS_OF.get(kind)
    if kind == "bounce":
        if str(event.get("type") or "bounce").lower() == "blocked":
            return "blocked", status, True, None
        return kind, "bounced", False, None
    if kind == "dropped":
        # ends a deferral: soft only together with a `deferred` of the same message
        return kind, _DROPPED_BECAUSE.get((reason or "").strip().rstrip(".").lower()), True, None
    if kind == "deferred":
        return kind, status, True, None
    if kind == "click":
        return kind, status, False, _text(event.get("url"), _MAX_URL)
    return kind, status, False, None


def _custom_args(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """Custom args are top-level fields; older webhooks nested them in `unique_args`."""
    if "issue" in event or "subscriber_id" in event:
        return event
    for name in ("unique_args", "custom_args"):
        nested = event.get(name)
        if isinstance(nested, Mapping):
            return nested
    return {}


def _event_time(value: Any) -> str | None:
    """SendGrid's timestamp (Unix seconds) in the stored format."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str):  # digits, as any number from outside (float() takes `١٢`, `1_0`, `nan`)
        value = parse_number(value)
        if value is None:
            return None
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            return None
        return format_time(datetime.fromtimestamp(seconds, UTC))
    except (ValueError, OverflowError, OSError):
        return None


def _text(value: Any, limit: int = _MAX_DETAIL) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return " ".join(value.split())[:limit]


@functools.lru_cache(maxsize=65536)
def _comparable(address: str) -> str:
    """An address as SendGrid reports it (the domain in its xn-- form), by the key every
    address is compared by (Unicode normalisation and case do not matter)."""
    return address_key(ascii_address(address) or address)


def same_address(ledger: str, reported: str) -> bool:
    """Whether the address an event names is the one the issue was sent to."""
    return _comparable(ledger) == _comparable(reported)


def record(
    store: Store, rows: Iterable[DeliveryEventRow], *, source: Source, soft_limit: int, check_address: bool = True
) -> RecordResult:
    """Record rows and apply their statuses and the soft-bounce limit, in one transaction."""
    return store.record_delivery_events(
        rows, source=source, soft_limit=soft_limit, same_address=same_address if check_address else None
    )


__all__ = ["SENDGRID_KINDS", "record", "same_address", "sendgrid_row"]
