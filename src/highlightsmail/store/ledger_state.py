"""Reading the send ledger kept per batch: where a recipient stands, how many stand where.

Three tables hold an issue's ledger (store/sql/*/0007_ledger_by_batch.sql):
`ledger_recipients`, the recipients fixed when the dispatch began, as chunks of ids in
order; `ledger_batches`, one row per batch claimed, with its ids (a batch of retries or
of one welcome has none: its recipients are exceptions); `ledger_exceptions`, one row
per recipient whose fate differs from their batch's (refused inside a sent batch, put
back to pending, skipped, retried, welcomed). `dispatches.claimed_to` is the highest
recipient id the claims have reached. A recipient's state is, in this order: their
exception row; else the state of the batch whose ids hold them; else `pending`, if the
dispatch's recipients hold them. Every recipient is counted once: by a batch's
`counted` (its ids less its exceptions), by an exception row, or as still pending."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, LiteralString

from highlightsmail.store.base import PAGE, Part, marks
from highlightsmail.store.engine import Conn
from highlightsmail.store.records import DELIVERY_STATES, Delivery, check

#: States in which an issue went to a recipient (or may have).
WENT = ("in_flight", "sent", "in_doubt")


def parse_ids(text: str | None) -> list[int]:
    """The ids of a chunk or batch, in order."""
    return sorted(map(int, text.split(","))) if text else []


def holds(text: str | None, sid: int) -> bool:
    """Whether comma-separated ids hold `sid` (without reading them all as numbers)."""
    return bool(text) and f",{sid}," in f",{text},"


def recipient_state(conn: Conn, issue: str, sid: int) -> str | None:
    """A subscriber's state in an issue's ledger; None when they are not a recipient."""
    row = conn.execute(
        "SELECT state FROM ledger_exceptions WHERE issue = ? AND subscriber_id = ?", (issue, sid)
    ).fetchone()
    if row is not None:
        return str(row[0])
    for ids, state in conn.execute(
        "SELECT ids, state FROM ledger_batches WHERE issue = ? AND first_id <= ? AND last_id >= ?", (issue, sid, sid)
    ).fetchall():
        if holds(ids, sid):
            return str(state)
    chunk = conn.execute(
        "SELECT ids FROM ledger_recipients WHERE issue = ? AND first_id <= ? AND last_id >= ?", (issue, sid, sid)
    ).fetchone()
    return "pending" if chunk is not None and holds(chunk[0], sid) else None


def went_to(conn: Conn, issue: str, sid: int) -> bool:
    """Whether the issue went to the subscriber (in flight, sent or in doubt)."""
    return recipient_state(conn, issue, sid) in WENT


class LedgerState(Part):
    """The reading side of the ledger part of the Store."""

    def delivery_counts(self, issue: str) -> dict[str, int]:
        """How many of the issue's recipients are in each state (states with none left out)."""
        with self._db.connection() as conn:
            return self._counts(conn, issue)

    @staticmethod
    def _counts(conn: Conn, issue: str) -> dict[str, int]:
        found = conn.execute("SELECT total FROM dispatches WHERE issue = ?", (issue,)).fetchone()
        if found is None:
            return {}
        counts = dict.fromkeys(DELIVERY_STATES, 0)
        for state, n in conn.execute(
            "SELECT state, sum(counted) FROM ledger_batches WHERE issue = ? GROUP BY state", (issue,)
        ).fetchall():
            counts[state] += int(n)
        for state, n in conn.execute(
            "SELECT state, count(*) FROM ledger_exceptions WHERE issue = ? GROUP BY state", (issue,)
        ).fetchall():
            counts[state] += int(n)
        counts["pending"] += int(found[0]) - sum(counts.values())
        return {state: n for state, n in counts.items() if n}

    def _exceptions(self, conn: Conn, issue: str) -> dict[int, tuple[Any, ...]]:
        """(subscriber id, state, batch, attempts, last_error) of each exception, by id."""
        rows = conn.execute(
            "SELECT subscriber_id, state, batch, attempts, last_error FROM ledger_exceptions WHERE issue = ?", (issue,)
        ).fetchall()
        return {int(r[0]): tuple(r) for r in rows}

    def _rows_in(self, conn: Conn, issue: str, wanted: set[str]) -> list[tuple[Any, ...]]:
        """(id, state, batch, attempts, last_error) of the recipients in these states."""
        exceptions = self._exceptions(conn, issue)
        items = [row for row in exceptions.values() if row[1] in wanted]
        batch_states = tuple(wanted - {"pending", "skipped"})
        if batch_states:
            for number, ids, state, error in conn.execute(
                f"SELECT batch, ids, state, last_error FROM ledger_batches WHERE issue = ? AND counted > 0"
                f" AND state IN ({marks(len(batch_states))})",
                (issue, *batch_states),
            ).fetchall():
                items.extend((sid, state, number, 1, error) for sid in parse_ids(ids) if sid not in exceptions)
        if "pending" in wanted:
            items.extend((sid, "pending", None, 0, None) for sid in self._fresh(conn, issue, exceptions))
        return sorted(items)

    @staticmethod
    def _fresh(conn: Conn, issue: str, exceptions: dict[int, tuple[Any, ...]]) -> Iterator[int]:
        """The recipients no claim has reached yet."""
        found = conn.execute("SELECT claimed_to FROM dispatches WHERE issue = ?", (issue,)).fetchone()
        if found is None:
            return
        reached = int(found[0])
        for (ids,) in conn.execute(
            "SELECT ids FROM ledger_recipients WHERE issue = ? AND last_id > ? ORDER BY last_id", (issue, reached)
        ).fetchall():
            yield from (sid for sid in parse_ids(ids) if sid > reached and sid not in exceptions)

    def iter_deliveries(self, issue: str, states: Iterable[str]) -> Iterator[Delivery]:
        """The recipients of an issue in these states, in id order, with their addresses
        read a page at a time. (Who is in which state is worked out first: meant for the
        states a run leaves few of, failed and in doubt, and for small ledgers.)"""
        wanted = {check(s, DELIVERY_STATES, "state") for s in states}
        with self._db.connection() as conn:
            items = self._rows_in(conn, issue, wanted)
        for start in range(0, len(items), PAGE):
            page = items[start : start + PAGE]
            people = self._people(tuple(row[0] for row in page))
            for sid, state, number, attempts, error in page:
                email, name = people.get(sid, ("", ""))
                yield Delivery(sid, email, name, state, number, attempts, error)

    def _people(self, ids: tuple[int, ...]) -> dict[int, tuple[str, str]]:
        if not ids:
            return {}
        rows = self._query(f"SELECT id, email, name FROM subscribers WHERE id IN ({marks(len(ids))})", ids)
        return {int(sid): (email, name or "") for sid, email, name in rows}

    def peek_recipients(self, issue: str, started: bool, limit: int) -> list[Delivery]:
        """The next recipients a dispatch would take, without claiming them."""
        if not started:
            rows = self._query(
                "SELECT id, email, name, 'pending', NULL, 0, NULL FROM subscribers"
                " WHERE status = 'active' AND merged_into IS NULL ORDER BY id LIMIT ?",
                (limit,),
            )
            return [Delivery(*row) for row in rows]
        found: list[Delivery] = []
        with self._db.connection() as conn:
            exceptions = self._exceptions(conn, issue)
            retries = sorted(sid for sid, row in exceptions.items() if row[1] == "pending")
            candidates: list[int] = []
            for sid in [*retries, *self._fresh(conn, issue, exceptions)]:
                candidates.append(sid)
                if len(candidates) < PAGE:
                    continue
                found.extend(self._active(conn, candidates))
                candidates = []
                if len(found) >= limit:
                    break
            found.extend(self._active(conn, candidates))
        return found[:limit]

    @staticmethod
    def _active(conn: Conn, ids: list[int]) -> list[Delivery]:
        """The pending recipients among `ids` who are active (as people), in that order."""
        if not ids:
            return []
        rows = conn.execute(
            "SELECT s.id, s.email, p.name FROM subscribers AS s JOIN subscribers AS p"
            f" ON p.id = coalesce(s.merged_into, s.id) WHERE s.id IN ({marks(len(ids))}) AND p.status = 'active'",
            tuple(ids),
        ).fetchall()
        people = {int(r[0]): r for r in rows}
        return [Delivery(sid, people[sid][1], people[sid][2], "pending", None, 0, None) for sid in ids if sid in people]


def people_now(conn: Conn, where: LiteralString, params: Sequence[Any], now: str) -> dict[int, tuple[str, str, str]]:
    """(email, name, status) of the subscribers `where` says, as people (a row merged
    into another has that one's name and status); one paused at `now` is `paused`, so a
    pause that begins mid-send is honoured for the batches not yet claimed, like leaving."""
    # No join for the merged rows' people: the few there are are read apart (a join let
    # PostgreSQL's planner hash every subscriber for each batch).
    rows = conn.execute(
        f"SELECT id, email, name, status, merged_into, paused_until FROM subscribers AS s WHERE {where}", params
    ).fetchall()
    # `paused_now` spelt out: a claim reads a thousand people, and nearly none is paused.
    people = {
        int(sid): (email, name, "paused" if until is not None and status == "active" and until > now else status)
        for sid, email, name, status, _merged, until in rows
    }
    merged = {int(r[0]): int(r[4]) for r in rows if r[4] is not None}
    for sid, into in merged.items():
        found = conn.execute("SELECT name, status, paused_until FROM subscribers WHERE id = ?", (into,)).fetchone()
        if found is not None:
            people[sid] = (people[sid][0], found[0], paused_now(found[1], found[2], now))
    return people


def paused_now(status: str, until: str | None, now: str) -> str:
    """`paused` for an active subscriber whose pause lasts past `now` (stored times sort
    as text), else their status."""
    return "paused" if status == "active" and until is not None and until > now else status
