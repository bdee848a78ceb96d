"""Delivery events and the report's queries: what SendGrid's Event Webhook and bounce mail
say about the message an issue sent to a subscriber.

Each event is kept once (by its key); the statuses it implies only ever move up
records.STATUS_ORDER (active < unsubscribed < bounced < complained), so the end state is
the same whatever order, and however often, events arrive."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import LiteralString

from highlightsmail.store.base import Part, marks
from highlightsmail.store.engine import Conn
from highlightsmail.store.ledger_state import went_to
from highlightsmail.store.records import (
    DELIVERY_KINDS,
    SOURCES,
    STATUSES,
    DeliveryEventRow,
    RecordResult,
    Source,
    check,
    leaving_rank,
)

# Whether the issue `d.issue` soft-bounced for subscriber `d.subscriber_id` (SQL).
_SOFT_ISSUE: LiteralString = """(
    NOT EXISTS (SELECT 1 FROM delivery_events AS x WHERE x.subscriber_id = d.subscriber_id
                AND x.issue = d.issue AND x.kind = 'delivered')
    AND (EXISTS (SELECT 1 FROM delivery_events AS x WHERE x.subscriber_id = d.subscriber_id
                 AND x.issue = d.issue AND x.kind IN ('blocked', 'dsn-temporary'))
         OR (EXISTS (SELECT 1 FROM delivery_events AS x WHERE x.subscriber_id = d.subscriber_id
                     AND x.issue = d.issue AND x.kind = 'deferred')
             AND EXISTS (SELECT 1 FROM delivery_events AS x WHERE x.subscriber_id = d.subscriber_id
                         AND x.issue = d.issue AND x.kind = 'dropped'))))"""


def _sent_address(conn: Conn, issue: str, sid: int) -> str | None:
    """The subscriber's address, if the issue went to them (addresses never change)."""
    if not went_to(conn, issue, sid):
        return None
    row = conn.execute("SELECT email FROM subscribers WHERE id = ?", (sid,)).fetchone()
    return str(row[0]) if row else None


class _Recording:
    """One call of record_delivery_events: its transaction, the ledger rows it has looked
    up, and what it did."""

    def __init__(self, conn: Conn, same_address: Callable[[str, str], bool] | None) -> None:
        self.conn = conn
        self.same_address = same_address
        self.ledger: dict[tuple[str, int], str | None] = {}
        self.result = RecordResult()

    def keep(self, row: DeliveryEventRow) -> bool:
        """Record one event; False when it is unknown or a duplicate (nothing more to do)."""
        if row.issue is None:
            found = self.conn.execute("SELECT 1 FROM subscribers WHERE id = ?", (row.subscriber_id,)).fetchone()
            if found is None:
                self.result.unknown += 1
                return False
            self.result.recorded += 1
            return True
        pair = (row.issue, row.subscriber_id)
        if pair not in self.ledger:
            self.ledger[pair] = _sent_address(self.conn, *pair)
        sent_to = self.ledger[pair]
        if sent_to is None or (row.email and self.same_address and not self.same_address(sent_to, row.email)):
            self.result.unknown += 1
            return False
        cur = self.conn.execute(
            "INSERT INTO delivery_events (event_key, issue, subscriber_id, kind, at, url, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (row.key, row.issue, row.subscriber_id, row.kind, row.at, row.url, row.detail),
        )
        if not cur.rowcount:
            self.result.duplicates += 1
            return False
        self.result.recorded += 1
        return True


class DeliveryEvents(Part):
    """The delivery events part of the Store, and the report's figures."""

    def record_delivery_events(
        self,
        rows: Iterable[DeliveryEventRow],
        *,
        source: Source,
        soft_limit: int,
        same_address: Callable[[str, str], bool] | None = None,
    ) -> RecordResult:
        """Record events in one transaction and apply what they imply.

        A row whose issue did not go to that subscriber (not in flight, sent or in doubt
        in its ledger), or whose address is not the one the ledger has (`same_address(ledger,
        event)` says no), is counted as unknown and ignored: events of another newsletter
        on the same account must not touch this one. A row with `issue` None (bounce mail
        naming no issue) only moves the status. After the rows, a subscriber whose soft
        bounces now span `soft_limit` issues in a row becomes `bounced`."""
        check(source, SOURCES, "source")
        now = self.now()
        softened: set[int] = set()
        with self._write() as conn:
            recording = _Recording(conn, same_address)
            result = recording.result
            for row in rows:
                check(row.kind, DELIVERY_KINDS, "event kind")
                if not recording.keep(row):
                    continue
                if row.status is not None and self._raise_status(
                    conn, row.subscriber_id, row.status, now, source, row.detail
                ):
                    result.changed += 1
                if row.soft and row.issue is not None:
                    softened.add(row.subscriber_id)
            for sid in sorted(softened):
                run = self._soft_run(conn, sid)
                if len(run) >= soft_limit:
                    detail = f"soft bounces in {len(run)} issues in a row ({', '.join(run)})"
                    if self._raise_status(conn, sid, "bounced", now, source, detail):
                        result.changed += 1
                        result.soft_limited += 1
        return result

    def _raise_status(self, conn: Conn, sid: int, status: str, now: str, source: str, detail: str | None) -> bool:
        """Move a subscriber to `status` only if it says more than their current one."""
        check(status, STATUSES, "status")
        row = conn.execute("SELECT status FROM subscribers WHERE id = ?", (sid,)).fetchone()
        if row is None or leaving_rank(status) <= leaving_rank(row[0]):
            return False
        conn.execute("UPDATE subscribers SET status = ?, updated = ? WHERE id = ?", (status, now, sid))
        self._event(conn, sid, now, row[0], status, source, detail)
        return True

    def _soft_run(self, conn: Conn, sid: int) -> list[str]:
        """The longest run of consecutive issues (in dispatch order, among those sent to
        this subscriber) that soft-bounced: a `blocked` bounce or a temporary DSN, or a
        deferral that ended in a drop, and no delivery. Any other issue breaks the run."""
        # Each dispatch (a few a month), then where the subscriber stands in its ledger.
        issues = [r[0] for r in conn.execute("SELECT issue FROM dispatches ORDER BY started, issue").fetchall()]
        best: list[str] = []
        run: list[str] = []
        for issue in issues:
            if not went_to(conn, issue, sid):
                continue
            soft = conn.execute(
                f"SELECT {_SOFT_ISSUE} FROM (SELECT CAST(? AS TEXT) AS issue, CAST(? AS BIGINT) AS subscriber_id) AS d",
                (issue, sid),
            ).fetchone()[0]
            run = [*run, issue] if soft else []
            if len(run) > len(best):
                best = run
        return best

    def has_delivery_events(self, issue: str) -> bool:
        return bool(self._query("SELECT 1 FROM delivery_events WHERE issue = ? LIMIT 1", (issue,)))

    def latest_issue_sent(self, subscriber_id: int, prefer: str | None = None) -> str | None:
        """The issue a bounce is most likely about: `prefer` if it went to this subscriber,
        else the last dispatch that did."""
        with self._db.connection() as conn:
            issues = [
                r[0]
                for r in conn.execute(
                    "SELECT issue FROM dispatches ORDER BY issue = ? DESC, started DESC, issue DESC", (prefer or "",)
                ).fetchall()
            ]
            return next((str(issue) for issue in issues if went_to(conn, issue, subscriber_id)), None)

    def sent_address(self, issue: str, subscriber_id: int) -> str | None:
        """The address the ledger has for this subscriber in the issue's dispatch, if the
        issue went to them (in flight, sent or in doubt); None otherwise."""
        with self._db.connection() as conn:
            return _sent_address(conn, issue, subscriber_id)

    def scanned_mail(self, keys: Iterable[str]) -> set[str]:
        """Which of these bounce mail keys were read by an earlier scan."""
        wanted = list(dict.fromkeys(keys))
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            found.update(
                r[0]
                for r in self._query(
                    f"SELECT mail_key FROM scanned_mail WHERE mail_key IN ({marks(len(chunk))})", tuple(chunk)
                )
            )
        return found

    def mark_scanned(self, mail_key: str, outcome: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO scanned_mail (mail_key, at, outcome) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (mail_key, self.now(), outcome),
            )

    # -- the report ---------------------------------------------------------------------

    def distinct_subscribers(self, issue: str, kinds: Iterable[str]) -> int:
        """How many subscribers have at least one event of these kinds for the issue."""
        wanted = tuple(check(k, DELIVERY_KINDS, "event kind") for k in kinds)
        return int(
            self._query(
                "SELECT count(DISTINCT subscriber_id) FROM delivery_events"
                f" WHERE issue = ? AND kind IN ({marks(len(wanted))})",
                (issue, *wanted),
            )[0][0]
        )

    def soft_bounced(self, issue: str) -> int:
        """How many recipients of the issue soft-bounced (the rule of `_soft_run`)."""
        return int(
            self._query(
                "SELECT count(*) FROM (SELECT DISTINCT issue, subscriber_id FROM delivery_events WHERE issue = ?)"
                f" AS d WHERE {_SOFT_ISSUE}",
                (issue,),
            )[0][0]
        )

    def link_clicks(self, issue: str) -> list[tuple[str, int, int]]:
        """(url, clicks, distinct subscribers) per clicked link, most clicked first."""
        return self._query(
            "SELECT url, count(*), count(DISTINCT subscriber_id) FROM delivery_events"
            " WHERE issue = ? AND kind = 'click' AND url IS NOT NULL"
            " GROUP BY url ORDER BY count(*) DESC, count(DISTINCT subscriber_id) DESC, url",
            (issue,),
        )

    def unsubscribes_after(self, issue: str) -> int:
        """Recipients of the issue who unsubscribed (by any way) after it went out and
        before the next issue did."""
        started = self._query("SELECT started FROM dispatches WHERE issue = ?", (issue,))
        if not started:
            return 0
        start = started[0][0]
        following = self._query(
            "SELECT min(started) FROM dispatches WHERE started > ? OR (started = ? AND issue > ?)",
            (start, start, issue),
        )[0][0]
        with self._db.connection() as conn:
            left = conn.execute(
                "SELECT DISTINCT subscriber_id FROM events WHERE to_status = 'unsubscribed'"
                " AND at >= ? AND (CAST(? AS TEXT) IS NULL OR at < ?)",
                (start, following, following),
            ).fetchall()
            return sum(1 for (sid,) in left if went_to(conn, issue, sid))

    def events_per_hour(self, issue: str, start: str, hours: int) -> list[tuple[int, str, int]]:
        """(hour since `start`, kind, events) for the first `hours` hours."""
        return self._query(
            "SELECT hour, kind, count(*) FROM ("
            f"  SELECT {self._db.hours_since} AS hour, kind, at"
            "  FROM delivery_events WHERE issue = ? AND at >= ?"
            ") AS e WHERE hour < ? GROUP BY hour, kind ORDER BY hour, kind",
            (start, issue, start, hours),
        )
