"""The sending limits, and a cancel, as the send loop's gate (`loop.Gate`).

Before each claim the loop asks how many recipients it may take now. The answer is the
least room left under `delivery.rate_limit` (a sliding window), `delivery.daily_limit`
(per UTC day) and `delivery.warmup` (the cap for this day of the sending domain's
use), all read from the counts every sender of the workspace keeps in the database
(`store/schedules.py`), in the claim's own transaction; what a claim takes is counted
in it too. No room: the loop stops claiming, and `paused_until` says when the first
window that was full opens again. A cancelled send gets no room at all.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import TYPE_CHECKING

from highlightsmail.authoring.sendtimes import rate_of
from highlightsmail.store import format_time

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Settings
    from highlightsmail.store import Store

__all__ = ["Limits", "count_welcome", "parse_time", "sending_domain"]

#: Stored times have whole seconds: a count leaves the window the second after its end.
_TICK = timedelta(seconds=1)


def parse_time(stored: str) -> datetime:
    """A time in the stored format (`2024-01-15T07:00:00Z`) as an aware datetime."""
    return datetime.strptime(stored, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def sending_domain(settings: Settings) -> str:
    """The domain mail goes out from (the warm-up is per domain)."""
    return parseaddr(settings.from_)[1].rpartition("@")[2].lower()


def count_welcome(store: Store, settings: Settings) -> None:
    """Count a welcome issue (one message, to a reader who has just confirmed) in the
    window every sender shares, so the sends after it leave room for it.

    It is counted but never held: it is one message, a reader who has just confirmed
    should not wait for the window (up to a day under `daily_limit`), and holding it
    would need a queue beside the mailer's thread that outlives a restart. So it may
    take the window one past its limit, and the next send waits that much longer."""
    store.count_sent(1, sending_domain(settings))


def _midnight_after(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC) + timedelta(days=1)


class Limits:
    """The gate of one send: `allowance` and `spend` are called by the loop in the claim's
    transaction; afterwards `paused_until` (the limits were reached) or `cancelled` say
    why it stopped claiming, if it did."""

    def __init__(
        self, store: Store, settings: Settings, slug: str, stopping: Callable[[], bool] = lambda: False
    ) -> None:
        delivery = settings.delivery
        self.stopping = stopping  # the runner's server is shutting down: pause now
        self.store = store
        self.slug = slug
        self.rate = rate_of(delivery.rate_limit) if delivery.rate_limit else None
        self.daily = delivery.daily_limit
        self.warmup = list(delivery.warmup)
        self.domain = sending_domain(settings)
        self.paused_until: datetime | None = None
        self.reason = "a sending limit was reached"  # why it paused
        self.cancelled = False

    def clock(self) -> datetime:
        """Now, by the store's clock (injectable: tests move it by days)."""
        return parse_time(self.store.now())

    @property
    def limited(self) -> bool:
        return self.rate is not None or self.daily is not None or bool(self.warmup)

    def allowance(self, wanted: int) -> int:
        """How many of `wanted` recipients may be claimed now (0: stop claiming)."""
        if self.store.schedule_cancelled(self.slug):
            self.cancelled = True
            return 0
        if self.stopping():
            self.paused_until, self.reason = self.clock(), "the runner stopped; the next one goes on"
            return 0
        if not self.limited:
            return wanted
        self.store.limits_turn()  # senders of every issue take turns over the counts
        now = self.clock()
        rooms = [self._rate_room(now), self._daily_room(now), self._warmup_room(now)]
        room = min([wanted, *(left for left, _opens in rooms if left is not None)])
        if room <= 0:
            self.paused_until = max(opens for left, opens in rooms if left is not None and left <= 0)
            return 0
        return room

    def spend(self, count: int) -> None:
        """Count `count` recipients just claimed against the limits."""
        self.store.count_sent(count, self.domain)

    # -- each limit: the room left (None: no such limit) and when a full one opens

    def _rate_room(self, now: datetime) -> tuple[int | None, datetime]:
        if self.rate is None:
            return None, now
        most, seconds = self.rate
        since = format_time(now - timedelta(seconds=seconds))
        left = most - self.store.sent_since(since)
        oldest = self.store.oldest_since(since) if left <= 0 else None
        opens = parse_time(oldest) + timedelta(seconds=seconds) + _TICK if oldest else now + _TICK
        return left, opens

    def _daily_room(self, now: datetime) -> tuple[int | None, datetime]:
        if self.daily is None:
            return None, now
        day = datetime(now.year, now.month, now.day, tzinfo=UTC)
        return self.daily - self.store.sent_since(format_time(day)), _midnight_after(now)

    def _warmup_room(self, now: datetime) -> tuple[int | None, datetime]:
        cap = self.warmup_cap(now)
        if cap is None:
            return None, now
        day = datetime(now.year, now.month, now.day, tzinfo=UTC)
        return cap - self.store.sent_since(format_time(day), self.domain), _midnight_after(now)

    def warmup_cap(self, now: datetime) -> int | None:
        """Today's warm-up cap for the sending domain (None once the warm-up is over):
        day 1 is the first day anything went out from it."""
        if not self.warmup:
            return None
        first = self.store.first_sending_day(self.domain)
        days = (now.date() - parse_time(first).date()).days if first else 0
        return self.warmup[days] if 0 <= days < len(self.warmup) else None
