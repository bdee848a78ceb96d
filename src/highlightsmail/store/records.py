"""What the store holds and hands out: the statuses and their one order, the sources of a
change, the states of the send ledger, the kinds of delivery events, and the rows as
records. No SQL here: every module of the store (and its callers) reads these."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, LiteralString, NamedTuple, Protocol, get_args


class Place(Protocol):
    """Where a workspace keeps its data (workspace.Workspace fits): a PostgreSQL URL, or
    None and a SQLite file."""

    @property
    def database_url(self) -> str | None: ...

    @property
    def db_path(self) -> Path: ...


# `pending`: asked to join through the signup form, not confirmed yet; never mailed an issue.
Status = Literal["active", "unsubscribed", "bounced", "complained", "pending"]
Source = Literal["web", "one-click", "cli", "import", "sendgrid", "sendgrid-webhook", "bounce-mail", "form"]
# Spelt out (not get_args) so that the values can go into SQL as literal text.
STATUSES: tuple[LiteralString, ...] = ("active", "unsubscribed", "bounced", "complained", "pending")
SOURCES: tuple[LiteralString, ...] = (
    "web",
    "one-click",
    "cli",
    "import",
    "sendgrid",
    "sendgrid-webhook",
    "bounce-mail",
    "form",
)
#: Statuses that mean "never mail this address again".
SUPPRESSED: frozenset[LiteralString] = frozenset({"unsubscribed", "bounced", "complained"})
#: Statuses that mean mail to the address failed or was reported as unwanted: they
#: stay so whatever an import, `remove` or an unsubscribe link says, and only the
#: person writing to the editors brings the address back.
UNDELIVERABLE: frozenset[LiteralString] = frozenset({"bounced", "complained"})

#: How far each status says "mail no more", weakest first: events and merges only ever
#: move a subscriber up this order (a status not in it, `pending`, ranks with `active`).
STATUS_ORDER: tuple[LiteralString, ...] = ("active", "unsubscribed", "bounced", "complained")
_RANK = {status: rank for rank, status in enumerate(STATUS_ORDER)}


def leaving_rank(status: str) -> int:
    """A status's place in STATUS_ORDER (0 for `active` and `pending`)."""
    return _RANK.get(status, 0)


#: A recipient's state in the send ledger of an issue: pending -> in_flight (committed
#: before the request) -> sent | failed | in_doubt; skipped when they left meanwhile.
DeliveryState = Literal["pending", "in_flight", "sent", "skipped", "failed", "in_doubt"]
DELIVERY_STATES: tuple[LiteralString, ...] = ("pending", "in_flight", "sent", "skipped", "failed", "in_doubt")

#: Where a schedule stands: `scheduled` (waiting for its time), `running`, `held` (what
#: would go is no longer what was approved), `paused` (a sending limit was reached),
#: `cancelled`, `missed` (no runner came within the grace) and `sent` (nothing left).
ScheduleState = Literal["scheduled", "running", "held", "paused", "cancelled", "missed", "sent"]
SCHEDULE_STATES: tuple[LiteralString, ...] = get_args(ScheduleState)


#: What the delivery events of an issue can be: SendGrid's event types (a bounce of
#: type `blocked` is kept as `blocked`), and permanent or temporary failures read from
#: bounce mail (DSNs).
DeliveryKind = Literal[
    "delivered",
    "deferred",
    "bounce",
    "blocked",
    "dropped",
    "spamreport",
    "unsubscribe",
    "group_unsubscribe",
    "open",
    "click",
    "dsn-permanent",
    "dsn-temporary",
]
# The same names as a tuple, for SQL and checks: read off the Literal, so one list says them.
DELIVERY_KINDS: tuple[LiteralString, ...] = get_args(DeliveryKind)


def check(value: str, allowed: tuple[str, ...], what: str) -> str:
    """`value` if it is one of `allowed`; ValueError naming `what` otherwise."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return value


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC to the second, with a `Z`: how every time is stored."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Not strftime: its %Y leaves out the leading zeros of a year before 1000.
    m = moment.astimezone(UTC)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Subscriber:
    id: int
    email: str
    name: str
    status: str
    created: str
    updated: str


@dataclass(frozen=True)
class Event:
    """One change of a subscriber's status (from_status is None when they were created)."""

    id: int
    subscriber_id: int
    at: str
    from_status: str | None
    to_status: str
    source: str
    detail: str | None


class ImportRow(NamedTuple):
    """One validated row of an import. `email` is already normalised; `created` and
    `updated` (stored format) are used only when the address is new. A tuple, since
    an import makes 100,000 of them and may pass them between processes."""

    email: str
    name: str = ""
    status: str = "active"
    created: str | None = None
    updated: str | None = None
    detail: str | None = None  # recorded with the event, e.g. "subscribers.csv:12"
    consented: str | None = None  # when the person consented (stored format), if the file says
    consent_source: str | None = None  # how they consented, as the file says (else the import's source)
    topics: str | None = None  # topic ids as `;a;b;` (None: the cell was empty)


@dataclass(frozen=True)
class ImportResult:
    new: int
    updated: int
    unchanged: int


@dataclass(frozen=True)
class DispatchInfo:
    """An issue's dispatch: when it began, through what, and for how many recipients."""

    issue: str
    started: str
    backend: str
    total: int
    finished: str | None
    tag: str | None = None  # the dispatch's tag, in every message token (tokens.py)

    @property
    def started_at(self) -> float:
        """When the dispatch began, as a POSIX time."""
        return datetime.fromisoformat(self.started.replace("Z", "+00:00")).timestamp()


class Delivery(NamedTuple):
    """One recipient's row in the ledger of an issue (a named tuple: a claim makes one
    per recipient)."""

    subscriber_id: int
    email: str
    name: str
    state: str
    batch: int | None
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class TestSend:
    issue: str
    fingerprint: str
    recipients: list[str]
    at: str


class DeliveryEventRow(NamedTuple):
    """One event about the message an issue sent to a subscriber, ready to record."""

    key: str  # SendGrid's sg_event_id, or the bounce mail's key and the subscriber
    issue: str | None  # None: bounce mail naming no issue we sent them (only the status moves)
    subscriber_id: int
    kind: str  # one of DELIVERY_KINDS
    at: str  # when it happened, in the stored format
    email: str | None = None  # the address the event names, checked against the ledger's
    url: str | None = None  # a click's link
    detail: str | None = None  # the reason given, kept with the event and any status change
    status: str | None = None  # the status the event moves the subscriber to, if any
    soft: bool = False  # whether it may make the issue a soft bounce


@dataclass
class RecordResult:
    """What recording a batch of delivery events did."""

    recorded: int = 0
    duplicates: int = 0  # already recorded (the same event key)
    unknown: int = 0  # no such issue sent to that subscriber: ignored
    changed: int = 0  # status changes, the soft limit's included
    soft_limited: int = 0  # subscribers made bounced by the soft limit


@dataclass(frozen=True)
class Consent:
    """One consent a subscriber gave: when, how (`form`, or what an imported list said),
    and from which client address (for the form)."""

    subscriber_id: int
    at: str
    source: str
    ip: str | None
    detail: str | None


@dataclass(frozen=True)
class Schedule:
    """The send of an issue at a time: when (UTC, stored format), the zone the editor gave,
    the fingerprint that was approved, and where it stands."""

    issue: str
    due: str
    zone: str  # "" for a send begun by hand (not scheduled) that paused or was cancelled
    fingerprint: str
    state: str  # one of SCHEDULE_STATES
    reason: str | None = None  # why it is held, missed or paused
    paused_until: str | None = None
    started: str | None = None  # when its dispatch began (the runner's, or a plain send's)
    provider_batch: str | None = None  # the provider holds it (SendGrid's batch id)
    version: int = 0  # moved only by compare-and-set on this
    updated: str = ""
