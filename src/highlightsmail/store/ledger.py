"""The send ledger: one row per (issue, recipient), fixed when a dispatch begins.

The dispatcher's contract: rows move pending -> in_flight (committed before the request)
-> sent | failed (committed after it). in_flight rows found by a later run become
in_doubt. Nothing here deletes a delivery row.

One sender per issue on SQLite (the per-issue lock file in dispatch). Where the engine
has `several_senders` (PostgreSQL), any number share a dispatch, each known by its
advisory lock: claims lock the rows they take and skip rows another sender is taking,
batch numbers come from the dispatch's counter, and each claimed row names its sender."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, LiteralString

from highlightsmail.errors import HighlightsError
from highlightsmail.store.base import PAGE, Part, marks
from highlightsmail.store.engine import Conn
from highlightsmail.store.records import DELIVERY_STATES, Delivery, DispatchInfo, TestSend, check
from highlightsmail.tokens import new_dispatch_tag

# A ledger row's subscriber as a person, `p`: the row it was merged into, if any, whose
# status and name are the ones that count.
_PERSON_JOIN: LiteralString = (
    "JOIN subscribers AS s ON s.id = d.subscriber_id JOIN subscribers AS p ON p.id = coalesce(s.merged_into, s.id)"
)
# One round of a shared claim: lock up to `size` pending rows after `after`, skipping rows
# locked by another sender's claim; take a batch number from the dispatch (the first
# round of a claim, when some row is still active); mark the active ones in flight for
# this sender and the others skipped, as the serial claim does.
# Parameters: issue, after, size, issue, batch, batch, sender, now, issue.
_SHARED_CLAIM: LiteralString = """
WITH picked AS (
    SELECT d.subscriber_id FROM deliveries AS d
    WHERE d.issue = ? AND d.state = 'pending' AND d.subscriber_id > ?
    ORDER BY d.subscriber_id LIMIT ?
    FOR UPDATE SKIP LOCKED
), people AS (
    -- One primary-key lookup per picked row: the planner, which cannot tell how many rows
    -- `picked` holds, would otherwise hash every subscriber. (LIMIT 1 keeps each
    -- LATERAL subquery from being folded back into a plain join.)
    SELECT k.subscriber_id, p.name, p.status FROM picked AS k
    CROSS JOIN LATERAL (SELECT coalesce(s.merged_into, s.id) AS id FROM subscribers AS s
                        WHERE s.id = k.subscriber_id LIMIT 1) AS s
    CROSS JOIN LATERAL (SELECT p.name, p.status FROM subscribers AS p WHERE p.id = s.id LIMIT 1) AS p
), numbered AS (
    UPDATE dispatches SET batches = batches + 1
    WHERE issue = ? AND CAST(? AS BIGINT) IS NULL
      AND EXISTS (SELECT 1 FROM people WHERE status = 'active')
    RETURNING batches
), chosen AS (
    SELECT coalesce(CAST(? AS BIGINT), (SELECT batches FROM numbered)) AS batch
)
UPDATE deliveries AS d SET
    state = CASE WHEN x.status = 'active' THEN 'in_flight' ELSE 'skipped' END,
    batch = CASE WHEN x.status = 'active' THEN (SELECT batch FROM chosen) ELSE d.batch END,
    attempts = d.attempts + CASE WHEN x.status = 'active' THEN 1 ELSE 0 END,
    claimed_by = CASE WHEN x.status = 'active' THEN CAST(? AS BIGINT) ELSE d.claimed_by END,
    last_error = CASE WHEN x.status = 'active' THEN d.last_error ELSE x.status || ' since the dispatch began' END,
    updated = ?
FROM people AS x
WHERE d.issue = ? AND d.subscriber_id = x.subscriber_id
RETURNING d.subscriber_id, d.email, x.name, d.state, d.batch, d.attempts
"""


class _Mismatch(Exception):
    """A batch-wide update touched other rows than expected: undone, and done row by row."""


class Ledger(Part):
    """The send ledger part of the Store."""

    _sender: int | None = None

    # -- test sends ---------------------------------------------------------------------

    def record_test_send(self, issue: str, fingerprint: str, recipients: list[str]) -> None:
        """Remember that this rendering (by fingerprint) went to these editors."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO test_sends (issue, fingerprint, recipients, at) VALUES (?, ?, ?, ?)",
                (issue, fingerprint, json.dumps(recipients), self.now()),
            )

    def has_test_send(self, issue: str, fingerprint: str | None = None) -> bool:
        """Whether the issue (this exact rendering, when `fingerprint` is given) was test-sent."""
        if fingerprint is None:
            rows = self._query("SELECT 1 FROM test_sends WHERE issue = ? LIMIT 1", (issue,))
        else:
            rows = self._query(
                "SELECT 1 FROM test_sends WHERE issue = ? AND fingerprint = ? LIMIT 1", (issue, fingerprint)
            )
        return bool(rows)

    def test_sends(self, issue: str) -> list[TestSend]:
        """The issue's test sends, oldest first."""
        rows = self._query(
            "SELECT issue, fingerprint, recipients, at FROM test_sends WHERE issue = ? ORDER BY id", (issue,)
        )
        return [TestSend(i, f, json.loads(r), at) for i, f, r, at in rows]

    # -- dispatches ---------------------------------------------------------------------

    def dispatch_info(self, issue: str) -> DispatchInfo | None:
        rows = self._query(
            "SELECT issue, started, backend, total, finished, tag FROM dispatches WHERE issue = ?", (issue,)
        )
        return DispatchInfo(*rows[0]) if rows else None

    def issues_tagged(self, tag: str) -> list[str]:
        """The issues whose dispatch has this tag (one, unless two random tags met)."""
        return [r[0] for r in self._query("SELECT issue FROM dispatches WHERE tag = ? ORDER BY issue", (tag,))]

    def latest_dispatch(self) -> str | None:
        """The issue whose dispatch began last, or None."""
        rows = self._query("SELECT issue FROM dispatches ORDER BY started DESC, issue DESC LIMIT 1")
        return str(rows[0][0]) if rows else None

    def begin_dispatch(self, issue: str, backend: str) -> int:
        """Fix the recipients of an issue: every subscriber active now, and the
        dispatch's tag (the one per-dispatch value its Message-IDs are derived from).
        Returns how many."""
        now = self.now()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM dispatches WHERE issue = ?", (issue,)).fetchone():
                raise HighlightsError(f"{issue}: its dispatch has already begun")
            cur = conn.execute(
                "INSERT INTO deliveries (issue, subscriber_id, email, state, created, updated)"
                " SELECT ?, id, email, 'pending', ?, ? FROM subscribers"
                " WHERE status = 'active' AND merged_into IS NULL ORDER BY id",
                (issue, now, now),
            )
            total = cur.rowcount
            conn.execute(
                "INSERT INTO dispatches (issue, started, backend, total, tag) VALUES (?, ?, ?, ?, ?)",
                (issue, now, backend, total, new_dispatch_tag()),
            )
            return total

    def finish_dispatch_if_done(self, issue: str) -> bool:
        """Mark the dispatch finished once every recipient is sent or skipped."""
        with self._write() as conn:
            open_rows = conn.execute(
                "SELECT count(*) FROM deliveries WHERE issue = ? AND state NOT IN ('sent', 'skipped')", (issue,)
            ).fetchone()[0]
            if open_rows:
                return False
            conn.execute("UPDATE dispatches SET finished = coalesce(finished, ?) WHERE issue = ?", (self.now(), issue))
            return True

    # -- the state of the rows ----------------------------------------------------------

    def mark_in_doubt(self, issue: str) -> int:
        """A run that died left rows in_flight: nobody knows whether they went out. With
        several senders, only the rows of senders that are gone (their lock is free)."""
        gone, params = self._db.sender_gone()
        with self._write(serial=False) as conn:
            return conn.execute(
                f"UPDATE deliveries SET state = 'in_doubt', updated = ? WHERE issue = ? AND state = 'in_flight' AND {gone}",
                (self.now(), issue, *params),
            ).rowcount

    def requeue(self, issue: str, state: str) -> int:
        """Put rows in `state` (failed, in_doubt) back to pending; returns how many."""
        check(state, ("failed", "in_doubt"), "state")
        with self._write() as conn:
            return conn.execute(
                "UPDATE deliveries SET state = 'pending', updated = ? WHERE issue = ? AND state = ?",
                (self.now(), issue, state),
            ).rowcount

    def next_batch_number(self, issue: str) -> int:
        return int(self._query("SELECT coalesce(max(batch), 0) + 1 FROM deliveries WHERE issue = ?", (issue,))[0][0])

    def delivery_counts(self, issue: str) -> dict[str, int]:
        """How many of the issue's recipients are in each state (states with none left out)."""
        # One pass adding up, rather than GROUP BY: with no index by state, grouping
        # would sort every row of a large ledger in memory.
        sums = ", ".join(
            f"coalesce(sum(CASE WHEN state = '{state}' THEN 1 ELSE 0 END), 0)" for state in DELIVERY_STATES
        )
        (row,) = self._query(f"SELECT {sums} FROM deliveries WHERE issue = ?", (issue,))
        return {state: n for state, n in zip(DELIVERY_STATES, row, strict=True) if n}

    def iter_deliveries(self, issue: str, states: Iterable[str]) -> Iterator[Delivery]:
        """The ledger rows of an issue in these states, in id order, a page at a time."""
        wanted = tuple(check(s, DELIVERY_STATES, "state") for s in states)
        last = 0
        while True:
            rows = self._query(
                "SELECT d.subscriber_id, d.email, coalesce(s.name, ''), d.state, d.batch, d.attempts, d.last_error"
                " FROM deliveries AS d LEFT JOIN subscribers AS s ON s.id = d.subscriber_id"
                f" WHERE d.issue = ? AND d.state IN ({marks(len(wanted))}) AND d.subscriber_id > ?"
                " ORDER BY d.subscriber_id LIMIT ?",
                (issue, *wanted, last, PAGE),
            )
            yield from (Delivery(*row) for row in rows)
            if len(rows) < PAGE:
                return
            last = rows[-1][0]

    def peek_recipients(self, issue: str, started: bool, limit: int) -> list[Delivery]:
        """The next recipients a dispatch would take, without claiming them."""
        if started:
            rows = self._query(
                "SELECT d.subscriber_id, d.email, p.name, d.state, d.batch, d.attempts, d.last_error"
                f" FROM deliveries AS d {_PERSON_JOIN}"
                " WHERE d.issue = ? AND d.state = 'pending' AND p.status = 'active'"
                " ORDER BY d.subscriber_id LIMIT ?",
                (issue, limit),
            )
        else:
            rows = self._query(
                "SELECT id, email, name, 'pending', NULL, 0, NULL FROM subscribers"
                " WHERE status = 'active' AND merged_into IS NULL ORDER BY id LIMIT ?",
                (limit,),
            )
        return [Delivery(*row) for row in rows]

    # -- senders ------------------------------------------------------------------------

    @property
    def shares_dispatch(self) -> bool:
        """Whether several senders may run one dispatch at once on this database."""
        return self._db.several_senders

    def join_dispatch(self, issue: str) -> int:
        """Make this Store a sender of `issue` for as long as it is open: it takes a sender
        number and holds, on its own session, the advisory lock naming it and a shared lock
        on the issue. Returns the sender number. PostgreSQL only, without a pool."""
        self._sender = self._db.join_senders(issue)
        return self._sender

    def sending_now(self, issue: str) -> bool:
        """Whether a sender of `issue` is alive now (on any machine). PostgreSQL only."""
        return self._db.sending_now(issue)

    # -- claims -------------------------------------------------------------------------

    def claim_batch(self, issue: str, batch: int, size: int, after_id: int = 0) -> tuple[list[Delivery], int, int]:
        """Take up to `size` pending recipients after `after_id`, in one transaction:
        anyone no longer active becomes `skipped`, the rest `in_flight` in `batch`.
        Returns (claimed, skipped count, last subscriber id looked at).
        With several senders the batch number is the dispatch's next one (they share the
        numbering); each claimed row carries the number it got."""
        if self._db.several_senders:
            return self._claim_shared(issue, size, after_id)
        now = self.now()
        claimed: list[Delivery] = []
        skipped = 0
        with self._write() as conn:
            while len(claimed) < size:
                first = after_id
                rows = self._pending_after(conn, issue, after_id, size - len(claimed))
                if not rows:
                    break
                after_id = rows[-1][0]
                gone = [
                    (f"{status} since the dispatch began", now, issue, sid)
                    for sid, _e, _n, status, _a in rows
                    if status != "active"
                ]
                if gone:
                    conn.executemany(
                        "UPDATE deliveries SET state = 'skipped', last_error = ?, updated = ?"
                        " WHERE issue = ? AND subscriber_id = ?",
                        gone,
                    )
                    skipped += len(gone)
                # The rows just read are all the pending ones in (first, after_id]: one
                # statement claims the range (set-based; a statement per row cost more
                # than the requests themselves).
                conn.execute(
                    "UPDATE deliveries SET state = 'in_flight', batch = ?, attempts = attempts + 1, updated = ?"
                    " WHERE issue = ? AND state = 'pending' AND subscriber_id > ? AND subscriber_id <= ?",
                    (batch, now, issue, first, after_id),
                )
                claimed.extend(
                    Delivery(sid, email, name, "in_flight", batch, attempts + 1, None)
                    for sid, email, name, status, attempts in rows
                    if status == "active"
                )
        return claimed, skipped, after_id

    @staticmethod
    def _pending_after(conn: Conn, issue: str, after_id: int, limit: int) -> list[Any]:
        """(id, email, name, status, attempts) of the next pending rows, in id order."""
        # The rows come back as one JSON text: one step of SQLite instead of one per row,
        # and each step gives up Python's lock, which the worker threads (busy encoding
        # requests) then hold for milliseconds.
        (packed,) = conn.execute(
            "SELECT json_group_array(json_array(sid, email, name, status, attempts)) FROM ("
            " SELECT d.subscriber_id AS sid, d.email, p.name, p.status, d.attempts"
            f" FROM deliveries AS d {_PERSON_JOIN}"
            " WHERE d.issue = ? AND d.state = 'pending' AND d.subscriber_id > ?"
            " ORDER BY d.subscriber_id LIMIT ?)",
            (issue, after_id, limit),
        ).fetchone()
        return sorted(json.loads(packed))

    def _claim_shared(self, issue: str, size: int, after_id: int) -> tuple[list[Delivery], int, int]:
        """claim_batch with several senders: one statement per round locks the next pending
        rows, skipping rows another sender is claiming this instant, and marks them. Each
        round is a transaction by itself (one round trip, no BEGIN and COMMIT of its own):
        a sender that dies between two rounds leaves the first round's rows in flight, as
        it would had it died after a whole claim and before its request."""
        if self._sender is None:
            raise ValueError("claim_batch on PostgreSQL needs join_dispatch first")
        now = self.now()
        claimed: list[Delivery] = []
        skipped = 0
        batch: int | None = None
        restarted = after_id == 0
        with self._db.connection() as conn:
            while len(claimed) < size:
                params = (issue, after_id, size - len(claimed), issue, batch, batch, self._sender, now, issue)
                rows = conn.execute(_SHARED_CLAIM, params).fetchall()
                if not rows:
                    if restarted:
                        break
                    # Rows that another sender skipped past (it died while claiming them,
                    # and they went back to pending) lie behind `after_id`: look once more
                    # from the start.
                    restarted, after_id = True, 0
                    continue
                rows.sort()
                after_id = max(after_id, rows[-1][0])
                for sid, email, name, state, number, attempts in rows:
                    if state == "skipped":
                        skipped += 1
                    else:
                        batch = number
                        claimed.append(Delivery(sid, email, name, "in_flight", number, attempts, None))
        return claimed, skipped, after_id

    def claim_one(self, issue: str, subscriber_id: int) -> Delivery | None:
        """Put one more subscriber into the ledger of an issue whose dispatch has begun
        (someone who has just joined), `in_flight` in a batch of their own, as
        `claim_batch` does. Nothing (None) when they are not active, or the ledger has
        them sent, in flight or in doubt already: neither this nor a later resume of
        the dispatch makes a second copy. A row still pending, failed or skipped (they
        had left) is taken over."""
        now = self.now()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM dispatches WHERE issue = ?", (issue,)).fetchone() is None:
                return None
            sub = conn.execute("SELECT email, name, status FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
            if sub is None or sub[2] != "active":
                return None
            email, name, _status = sub
            batch = self._one_more_batch(conn, issue)
            row = conn.execute(
                "SELECT state, attempts FROM deliveries WHERE issue = ? AND subscriber_id = ?", (issue, subscriber_id)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO deliveries (issue, subscriber_id, email, state, batch, attempts, created, updated)"
                    " VALUES (?, ?, ?, 'in_flight', ?, 1, ?, ?)",
                    (issue, subscriber_id, email, batch, now, now),
                )
                conn.execute("UPDATE dispatches SET total = total + 1 WHERE issue = ?", (issue,))
                attempts = 1
            elif row[0] in ("pending", "failed", "skipped"):
                attempts = row[1] + 1
                conn.execute(
                    "UPDATE deliveries SET state = 'in_flight', email = ?, batch = ?, attempts = ?, last_error = NULL,"
                    " updated = ? WHERE issue = ? AND subscriber_id = ?",
                    (email, batch, attempts, now, issue, subscriber_id),
                )
            else:
                return None
            return Delivery(subscriber_id, email, name, "in_flight", batch, attempts, None)

    def _one_more_batch(self, conn: Conn, issue: str) -> int:
        """A new batch number for the issue."""
        if self._db.several_senders:  # senders share the dispatch's counter
            sql: LiteralString = "UPDATE dispatches SET batches = batches + 1 WHERE issue = ? RETURNING batches"
        else:
            sql = "SELECT coalesce(max(batch), 0) + 1 FROM deliveries WHERE issue = ?"
        return int(conn.execute(sql, (issue,)).fetchone()[0])

    # -- finishing a batch ------------------------------------------------------------------

    def finish_batch(
        self,
        issue: str,
        *,
        sent: Iterable[int],
        failed: dict[int, str],
        in_doubt: dict[int, str] | None = None,
        message_id: str | None = None,
        batch: int | None = None,
    ) -> None:
        """Record what the backend said about a claimed batch. With `batch` (its number)
        the sent recipients are marked in one statement, not one per recipient."""
        if self._db.several_senders:
            return self._finish_shared(issue, sent, failed, in_doubt or {}, message_id)
        now = self.now()
        ids = list(sent)
        try:
            self._finish(issue, ids, failed, in_doubt or {}, message_id, now, batch)
        except _Mismatch:  # the batch holds rows not named as sent: name each one
            self._finish(issue, ids, failed, in_doubt or {}, message_id, now, None)
        return None

    def _finish(
        self,
        issue: str,
        sent: list[int],
        failed: dict[int, str],
        in_doubt: dict[int, str],
        message_id: str | None,
        now: str,
        batch: int | None,
    ) -> None:
        with self._write() as conn:
            for state, reasons in (("failed", failed), ("in_doubt", in_doubt)):
                conn.executemany(
                    "UPDATE deliveries SET state = ?, last_error = ?, updated = ?"
                    " WHERE issue = ? AND subscriber_id = ? AND state = 'in_flight'",
                    [(state, why[:2000], now, issue, sid) for sid, why in reasons.items()],
                )
            if batch is not None and sent:
                # What is still in flight in the batch should be exactly what was sent;
                # the row count proves it, else the transaction is undone.
                cur = conn.execute(
                    "UPDATE deliveries SET state = 'sent', message_id = ?, last_error = NULL, updated = ?"
                    " WHERE issue = ? AND batch = ? AND state = 'in_flight'",
                    (message_id, now, issue, batch),
                )
                if cur.rowcount != len(sent):
                    raise _Mismatch
                return
            conn.executemany(
                "UPDATE deliveries SET state = 'sent', message_id = ?, last_error = NULL, updated = ?"
                " WHERE issue = ? AND subscriber_id = ? AND state = 'in_flight'",
                [(message_id, now, issue, sid) for sid in sent],
            )

    def _finish_shared(
        self,
        issue: str,
        sent: Iterable[int],
        failed: dict[int, str],
        in_doubt: dict[int, str],
        message_id: str | None,
    ) -> None:
        """finish_batch with several senders: one statement per outcome and reason, in one
        transaction when there are several (the usual batch, all sent, is one statement
        and so one round trip)."""
        now = self.now()
        statements: list[tuple[LiteralString, tuple[Any, ...]]] = []
        ids = list(sent)
        if ids:
            statements.append(
                (
                    "UPDATE deliveries SET state = 'sent', message_id = ?, last_error = NULL, updated = ?"
                    " WHERE issue = ? AND subscriber_id = ANY(?) AND state = 'in_flight'",
                    (message_id, now, issue, ids),
                )
            )
        for state, reasons in (("failed", failed), ("in_doubt", in_doubt)):
            by_reason: dict[str, list[int]] = {}
            for sid, why in reasons.items():
                by_reason.setdefault(why[:2000], []).append(sid)
            statements.extend(
                (
                    "UPDATE deliveries SET state = ?, last_error = ?, updated = ?"
                    " WHERE issue = ? AND subscriber_id = ANY(?) AND state = 'in_flight'",
                    (state, why, now, issue, group),
                )
                for why, group in by_reason.items()
            )
        if len(statements) == 1:
            with self._db.connection() as conn:
                conn.execute(*statements[0])
            return
        with self._write(serial=False) as conn:
            for statement in statements:
                conn.execute(*statement)
