"""The send ledger kept per batch (how it is read: ledger_state.py).

When a dispatch begins, its recipients (every subscriber active then) are fixed as chunks
of ids; nothing is written per recipient. A claim takes the next recipients after
`dispatches.claimed_to`, as one `ledger_batches` row `in_flight` (committed before the
request), and moves `claimed_to` on; anyone who left since the dispatch began gets an
exception row, `skipped`. Finishing a batch is one update of its row; only recipients
whose fate differs from the batch's (a refusal inside a sent batch) get exception rows.
A batch found in flight by a later run becomes in doubt. Retries (failed or in-doubt
recipients put back to pending) and the welcome issue go per recipient, as exceptions,
in batches of their own. Nothing here deletes a ledger row.

One sender per issue on SQLite (the per-issue lock file in dispatch). Where the engine
has `several_senders` (PostgreSQL), any number share a dispatch, each known by its
advisory lock: a claim locks the dispatch's row (`lock_row`) for its transaction, so two
senders never take the same recipients, batch numbers come from the dispatch's counter,
and each batch names its sender (`claimed_by`)."""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from highlightsmail.errors import HighlightsError
from highlightsmail.store.base import marks
from highlightsmail.store.engine import Conn
from highlightsmail.store.ledger_state import LedgerState, holds, parse_ids, people_now, recipient_state
from highlightsmail.store.preferences import audience_filter
from highlightsmail.store.records import Delivery, DispatchInfo, TestSend, check
from highlightsmail.tokens import new_dispatch_tag

#: Recipients per chunk of a dispatch's fixed list.
CHUNK = 1000
#: Chunks read (and written) at a time when the list is fixed.
READ_CHUNKS = 10


class Ledger(LedgerState):
    """The send ledger part of the Store."""

    _sender: int | None = None
    #: The chunk of recipient ids read last: its text, and its ids.
    _chunk: tuple[str, list[int]] = ("", [])

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

    def latest_dispatch(self, subscriber_id: int | None = None) -> str | None:
        """The issue whose dispatch began last, or None (a correction's is no issue's);
        with `subscriber_id`, the last one whose audience they are in (the welcome issue
        of a reader who chose topics is one written for them)."""
        if subscriber_id is None:
            rows = self._query(
                "SELECT issue FROM dispatches WHERE issue NOT LIKE '%~correction-%'"
                " ORDER BY started DESC, issue DESC LIMIT 1"
            )
            return str(rows[0][0]) if rows else None
        chosen = {
            str(r[0])
            for r in self._query("SELECT topic FROM subscriber_topics WHERE subscriber_id = ?", (subscriber_id,))
        }
        for issue, audience in self._query(
            "SELECT issue, audience FROM dispatches WHERE issue NOT LIKE '%~correction-%' ORDER BY started DESC, issue DESC"
        ):
            if not audience or chosen & set(str(audience).split(",")):
                return str(issue)
        return None

    def begin_dispatch(self, issue: str, backend: str, audience: Sequence[str] = ()) -> int:
        """Fix the recipients of an issue: every subscriber active now (and not paused; in
        any of the `audience`'s topics when it names some), as chunks of ids,
        and the dispatch's tag (the one per-dispatch value its Message-IDs are derived
        from). Returns how many."""
        now = self.now()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM dispatches WHERE issue = ?", (issue,)).fetchone():
                raise HighlightsError(f"{issue}: its dispatch has already begun")
            # Read READ_CHUNKS chunks at a time in id order (the index by status holds
            # them), their rows written in one go: memory stays flat however long the
            # list, where a window over the whole list in SQL would sort it in memory;
            # and a tenth of the round trips (on PostgreSQL, 85-100 -> 65-75 ms at 100,000).
            total, last = 0, 0
            chosen = audience_filter(audience)
            while ids := [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM subscribers AS s WHERE status = 'active' AND merged_into IS NULL AND id > ?"
                    f" AND {chosen} ORDER BY id LIMIT ?",
                    (last, now, *audience, CHUNK * READ_CHUNKS),
                ).fetchall()
            ]:
                last = ids[-1]
                chunks = [ids[at : at + CHUNK] for at in range(0, len(ids), CHUNK)]
                conn.executemany(
                    "INSERT INTO ledger_recipients (issue, chunk, first_id, last_id, size, ids) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (issue, total // CHUNK + n, c[0], c[-1], len(c), ",".join(map(str, c)))
                        for n, c in enumerate(chunks)
                    ],
                )
                total += len(ids)
            conn.execute(
                "INSERT INTO dispatches (issue, started, backend, total, tag, audience) VALUES (?, ?, ?, ?, ?, ?)",
                (issue, now, backend, int(total), new_dispatch_tag(), ",".join(audience) or None),
            )
            return int(total)

    def finish_dispatch_if_done(self, issue: str) -> bool:
        """Mark the dispatch finished once every recipient is sent or skipped."""
        with self._write() as conn:
            counts = self._counts(conn, issue)
            if any(n for state, n in counts.items() if state not in ("sent", "skipped")):
                return False
            conn.execute("UPDATE dispatches SET finished = coalesce(finished, ?) WHERE issue = ?", (self.now(), issue))
            return True

    # -- the state of the rows ----------------------------------------------------------

    def mark_in_doubt(self, issue: str) -> int:
        """A run that died left batches in flight: nobody knows whether they went out. With
        several senders, only the batches of senders that are gone (their lock is free).
        Returns how many recipients."""
        gone, params = self._db.sender_gone()
        now = self.now()
        with self._write(serial=False) as conn:
            batches = conn.execute(
                f"SELECT batch, counted FROM ledger_batches WHERE issue = ? AND state = 'in_flight' AND {gone}",
                (issue, *params),
            ).fetchall()
            count = 0
            for number, counted in batches:
                count += int(counted)
                count += conn.execute(
                    "UPDATE ledger_exceptions SET state = 'in_doubt', updated = ?"
                    " WHERE issue = ? AND batch = ? AND state = 'in_flight'",
                    (now, issue, number),
                ).rowcount
                conn.execute(
                    "UPDATE ledger_batches SET state = 'in_doubt', updated = ? WHERE issue = ? AND batch = ?",
                    (now, issue, number),
                )
            return count

    def requeue(self, issue: str, state: str) -> int:
        """Put recipients in `state` (failed, in_doubt) back to pending, each as an exception
        row the next claims take first; returns how many."""
        check(state, ("failed", "in_doubt"), "state")
        now = self.now()
        with self._write() as conn:
            count = conn.execute(
                "UPDATE ledger_exceptions SET state = 'pending', updated = ? WHERE issue = ? AND state = ?",
                (now, issue, state),
            ).rowcount
            batches = conn.execute(
                "SELECT batch, ids, last_error FROM ledger_batches WHERE issue = ? AND state = ? AND counted > 0",
                (issue, state),
            ).fetchall()
            for number, ids, error in batches:
                members = parse_ids(ids)
                excepted = {
                    r[0]
                    for r in conn.execute(
                        "SELECT subscriber_id FROM ledger_exceptions WHERE issue = ? AND subscriber_id >= ?"
                        " AND subscriber_id <= ?",
                        (issue, members[0], members[-1]),
                    ).fetchall()
                }
                again = [(issue, sid, number, error, now) for sid in members if sid not in excepted]
                conn.executemany(
                    "INSERT INTO ledger_exceptions (issue, subscriber_id, state, batch, attempts, last_error, updated)"
                    " VALUES (?, ?, 'pending', ?, 1, ?, ?)",
                    again,
                )
                conn.execute("UPDATE ledger_batches SET counted = 0 WHERE issue = ? AND batch = ?", (issue, number))
                count += len(again)
            return count

    def next_batch_number(self, issue: str) -> int:
        rows = self._query("SELECT batches + 1 FROM dispatches WHERE issue = ?", (issue,))
        return int(rows[0][0]) if rows else 1

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
        """Take up to `size` pending recipients in one transaction: recipients put back to
        pending first (a batch of retries), else the next ones after `claimed_to`. Anyone
        no longer active becomes `skipped`, the rest `in_flight` in a new batch, whose
        number is the dispatch's next one (`batch` and `after_id` are not needed: the
        dispatch keeps both, which is what lets several senders share it).
        Returns (claimed, skipped count, how far the claims have reached)."""
        if self._db.several_senders and self._sender is None:
            raise ValueError("claim_batch on PostgreSQL needs join_dispatch first")
        now = self.now()
        with self._write(serial=False) as conn:
            # Whether any are put back to pending, asked with the row: one round trip
            # to the server fewer per batch, where nearly always none are.
            found = conn.execute(
                "SELECT claimed_to, batches, EXISTS (SELECT 1 FROM ledger_exceptions"
                " WHERE issue = dispatches.issue AND state = 'pending')"
                f" FROM dispatches WHERE issue = ?{self._db.lock_row}",
                (issue,),
            ).fetchone()
            if found is None:
                return [], 0, 0
            reached, number = int(found[0]), int(found[1]) + 1
            claimed: list[Delivery] = []
            skipped = 0
            if found[2]:
                claimed, skipped = self._claim_retries(conn, issue, number, size, now)
            if not claimed and not skipped:
                claimed, skipped, reached = self._claim_fresh(conn, issue, number, size, reached, now)
            if claimed or skipped:
                conn.execute(
                    "UPDATE dispatches SET claimed_to = ?, batches = ? WHERE issue = ?",
                    (reached, number if claimed else number - 1, issue),
                )
        return claimed, skipped, reached

    def _claim_retries(self, conn: Conn, issue: str, number: int, size: int, now: str) -> tuple[list[Delivery], int]:
        """Claim recipients put back to pending (exception rows), as batch `number`."""
        rows = conn.execute(
            "SELECT subscriber_id, attempts FROM ledger_exceptions WHERE issue = ? AND state = 'pending'"
            " ORDER BY subscriber_id LIMIT ?",
            (issue, size),
        ).fetchall()
        if not rows:
            return [], 0
        people = people_now(conn, f"s.id IN ({marks(len(rows))})", [r[0] for r in rows], now)
        claimed: list[Delivery] = []
        gone: list[tuple[Any, ...]] = []
        for sid, attempts in rows:
            email, name, status = people.get(sid, ("", "", "unknown"))
            if status == "active":
                claimed.append(Delivery(sid, email, name, "in_flight", number, attempts + 1, None))
            else:
                gone.append((f"{status} since the dispatch began", now, issue, sid))
        conn.executemany(
            "UPDATE ledger_exceptions SET state = 'skipped', last_error = ?, updated = ? WHERE issue = ? AND subscriber_id = ?",
            gone,
        )
        conn.executemany(
            "UPDATE ledger_exceptions SET state = 'in_flight', batch = ?, attempts = attempts + 1, updated = ?"
            " WHERE issue = ? AND subscriber_id = ?",
            [(number, now, issue, d.subscriber_id) for d in claimed],
        )
        if claimed:
            self._new_batch(conn, issue, number, None, 0, now)
        return claimed, len(gone)

    def _claim_fresh(
        self, conn: Conn, issue: str, number: int, size: int, reached: int, now: str
    ) -> tuple[list[Delivery], int, int]:
        """Claim the next recipients after `reached` as batch `number`."""
        claimed: list[Delivery] = []
        gone: list[tuple[Any, ...]] = []
        while len(claimed) < size:
            wanted = self._next_ids(conn, issue, reached, size - len(claimed))
            if not wanted:
                break
            low, high = reached, wanted[-1]
            excepted = {
                r[0]
                for r in conn.execute(
                    "SELECT subscriber_id FROM ledger_exceptions WHERE issue = ? AND subscriber_id > ? AND subscriber_id <= ?",
                    (issue, low, high),
                ).fetchall()
            }
            people = people_now(conn, "s.id > ? AND s.id <= ?", (low, high), now)
            for sid in wanted:
                if sid in excepted or sid not in people:  # not there: erased since the chunk was read
                    continue
                email, name, status = people[sid]
                if status == "active":
                    claimed.append(Delivery(sid, email, name, "in_flight", number, 1, None))
                else:
                    gone.append((issue, sid, f"{status} since the dispatch began", now))
            reached = high
        conn.executemany(
            "INSERT INTO ledger_exceptions (issue, subscriber_id, state, last_error, updated)"
            " VALUES (?, ?, 'skipped', ?, ?)",
            gone,
        )
        if claimed:
            ids = [d.subscriber_id for d in claimed]
            self._new_batch(conn, issue, number, ids, len(ids), now)
        return claimed, len(gone), reached

    def _next_ids(self, conn: Conn, issue: str, reached: int, count: int) -> list[int]:
        """The next `count` recipient ids after `reached`, from the dispatch's chunks."""
        found: list[int] = []
        while len(found) < count:
            row = conn.execute(
                "SELECT ids FROM ledger_recipients WHERE issue = ? AND last_id > ? ORDER BY last_id LIMIT 1",
                (issue, reached),
            ).fetchone()
            if row is None:
                break
            # Parsed once, however many batches it makes; read again each time, since an
            # erasure takes an id out of the chunk (its person then left no row to name).
            if self._chunk[0] != row[0]:
                self._chunk = (str(row[0]), parse_ids(row[0]))
            ids = self._chunk[1]
            start = bisect_right(ids, reached)
            found.extend(ids[start : start + count - len(found)])
            reached = found[-1]
        return found

    def _new_batch(self, conn: Conn, issue: str, number: int, ids: list[int] | None, counted: int, now: str) -> None:
        conn.execute(
            "INSERT INTO ledger_batches (issue, batch, first_id, last_id, ids, counted, state, claimed_by, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, 'in_flight', ?, ?)",
            (
                issue,
                number,
                ids[0] if ids else None,
                ids[-1] if ids else None,
                ",".join(map(str, ids)) if ids else None,
                counted,
                self._sender,
                now,
            ),
        )

    def claim_one(self, issue: str, subscriber_id: int) -> Delivery | None:
        """Put one more subscriber into the ledger of an issue whose dispatch has begun
        (someone who has just joined), `in_flight` in a batch of their own, as an exception
        row. Nothing (None) when they are not active, or the ledger has them sent, in
        flight or in doubt already: neither this nor a later resume of the dispatch makes
        a second copy. A recipient still pending, failed or skipped (they had left) is
        taken over."""
        now = self.now()
        with self._write() as conn:
            found = conn.execute(
                f"SELECT batches FROM dispatches WHERE issue = ?{self._db.lock_row}", (issue,)
            ).fetchone()
            if found is None:
                return None
            sub = conn.execute("SELECT email, name, status FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
            if sub is None or sub[2] != "active":
                return None
            email, name, _status = sub
            state = recipient_state(conn, issue, subscriber_id)
            if state not in (None, "pending", "failed", "skipped"):
                return None
            number = int(found[0]) + 1
            row = conn.execute(
                "SELECT attempts FROM ledger_exceptions WHERE issue = ? AND subscriber_id = ?", (issue, subscriber_id)
            ).fetchone()
            attempts = (int(row[0]) if row else (1 if state == "failed" else 0)) + 1
            if row is None and state == "failed":  # one of a failed batch: it counts them no more
                self._uncount(conn, issue, subscriber_id)
            conn.execute(
                "INSERT INTO ledger_exceptions (issue, subscriber_id, state, batch, attempts, updated)"
                " VALUES (?, ?, 'in_flight', ?, ?, ?) ON CONFLICT (issue, subscriber_id) DO UPDATE SET"
                " state = 'in_flight', batch = excluded.batch, attempts = excluded.attempts, last_error = NULL,"
                " updated = excluded.updated",
                (issue, subscriber_id, number, attempts, now),
            )
            self._new_batch(conn, issue, number, None, 0, now)
            total = 1 if state is None else 0  # not among the recipients fixed at the start
            conn.execute("UPDATE dispatches SET batches = ?, total = total + ? WHERE issue = ?", (number, total, issue))
            return Delivery(subscriber_id, email, name, "in_flight", number, attempts, None)

    @staticmethod
    def _uncount(conn: Conn, issue: str, sid: int) -> None:
        """A recipient of a batch gets an exception row: the batch counts one fewer."""
        for number, ids in conn.execute(
            "SELECT batch, ids FROM ledger_batches WHERE issue = ? AND first_id <= ? AND last_id >= ?",
            (issue, sid, sid),
        ).fetchall():
            if holds(ids, sid):
                conn.execute(
                    "UPDATE ledger_batches SET counted = counted - 1 WHERE issue = ? AND batch = ?", (issue, number)
                )
                return

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
        """Record what the backend said about claimed batch number `batch`: one update of
        its row when all its recipients fared alike; an exception row for each one who
        fared otherwise. Without `batch`, each recipient named is finished as an exception
        row, and the rest of their batches stay in flight."""
        outcomes: dict[int, tuple[str, str | None]] = {sid: ("sent", None) for sid in sent}
        outcomes.update((sid, ("failed", why[:2000])) for sid, why in failed.items())
        outcomes.update((sid, ("in_doubt", why[:2000])) for sid, why in (in_doubt or {}).items())
        if not outcomes:
            return
        now = self.now()
        with self._write(serial=False) as conn:
            if batch is not None:
                self._finish(conn, issue, batch, outcomes, message_id, now)
                return
            for number in self._batches_of(conn, issue, list(outcomes)):
                self._finish_some(conn, issue, number, outcomes, message_id, now)

    @staticmethod
    def _batches_of(conn: Conn, issue: str, ids: list[int]) -> list[int]:
        """The batches in flight that hold these recipients."""
        found: set[int] = set()
        for sid in ids:
            row = conn.execute(
                "SELECT batch FROM ledger_exceptions WHERE issue = ? AND subscriber_id = ? AND state = 'in_flight'",
                (issue, sid),
            ).fetchone()
            if row is not None:
                found.add(int(row[0]))
                continue
            for number, members in conn.execute(
                "SELECT batch, ids FROM ledger_batches WHERE issue = ? AND state = 'in_flight' AND first_id <= ?"
                " AND last_id >= ?",
                (issue, sid, sid),
            ).fetchall():
                if holds(members, sid):
                    found.add(int(number))
        return sorted(found)

    @staticmethod
    def _finish(
        conn: Conn,
        issue: str,
        number: int,
        outcomes: dict[int, tuple[str, str | None]],
        message_id: str | None,
        now: str,
    ) -> None:
        """Finish one batch: its row takes the commonest outcome; the others are exceptions."""
        (state, error), _n = Counter(outcomes.values()).most_common(1)[0]
        others = [(sid, how) for sid, how in outcomes.items() if how != (state, error)]
        apart = 0  # those of its ids that become exceptions
        if others:  # (a batch that fared as one, nearly all of them, needs not read its ids)
            row = conn.execute(
                "SELECT ids FROM ledger_batches WHERE issue = ? AND batch = ? AND state = 'in_flight'", (issue, number)
            ).fetchone()
            if row is None:  # finished or found in doubt already
                return
            members = set(parse_ids(row[0]))
            apart = sum(1 for sid, _how in others if sid in members)
        updated = conn.execute(
            "UPDATE ledger_batches SET state = ?, last_error = ?, message_id = ?, updated = ?,"
            " counted = counted - ? WHERE issue = ? AND batch = ? AND state = 'in_flight'",
            (state, error, message_id, now, apart, issue, number),
        )
        if updated.rowcount == 0:  # finished or found in doubt already
            return
        # A batch of retries or of one: its recipients are exceptions, in flight in it.
        conn.execute(
            "UPDATE ledger_exceptions SET state = ?, last_error = ?, message_id = ?, updated = ?"
            " WHERE issue = ? AND batch = ? AND state = 'in_flight'",
            (state, error, message_id, now, issue, number),
        )
        _except(conn, issue, number, others, message_id, now)

    @staticmethod
    def _finish_some(
        conn: Conn,
        issue: str,
        number: int,
        outcomes: dict[int, tuple[str, str | None]],
        message_id: str | None,
        now: str,
    ) -> None:
        """Finish the recipients named of a batch, each as an exception; the rest stay in flight."""
        row = conn.execute(
            "SELECT ids FROM ledger_batches WHERE issue = ? AND batch = ? AND state = 'in_flight'", (issue, number)
        ).fetchone()
        if row is None:
            return
        members = parse_ids(row[0])
        flying = {
            int(r[0])
            for r in conn.execute(
                "SELECT subscriber_id FROM ledger_exceptions WHERE issue = ? AND batch = ? AND state = 'in_flight'",
                (issue, number),
            ).fetchall()
        }
        excepted = set(flying)
        if members:
            excepted |= {
                int(r[0])
                for r in conn.execute(
                    "SELECT subscriber_id FROM ledger_exceptions WHERE issue = ? AND subscriber_id >= ?"
                    " AND subscriber_id <= ?",
                    (issue, members[0], members[-1]),
                ).fetchall()
            }
        fresh = [sid for sid in members if sid in outcomes and sid not in excepted]
        named = [(sid, outcomes[sid]) for sid in (*fresh, *sorted(flying)) if sid in outcomes]
        conn.execute(
            "UPDATE ledger_batches SET counted = counted - ?, updated = ? WHERE issue = ? AND batch = ?",
            (len(fresh), now, issue, number),
        )
        _except(conn, issue, number, named, message_id, now)


def _except(
    conn: Conn,
    issue: str,
    number: int,
    rows: list[tuple[int, tuple[str, str | None]]],
    message_id: str | None,
    now: str,
) -> None:
    """Exception rows for recipients of batch `number` whose fate differs from the batch's
    (but for one erased since the batch was claimed: no row may name them again)."""
    if not rows:
        return
    ids = [sid for sid, _how in rows]
    found = {
        int(r[0]) for r in conn.execute(f"SELECT id FROM subscribers WHERE id IN ({marks(len(ids))})", ids).fetchall()
    }
    conn.executemany(
        "INSERT INTO ledger_exceptions (issue, subscriber_id, state, batch, attempts, last_error, message_id, updated)"
        " VALUES (?, ?, ?, ?, 1, ?, ?, ?) ON CONFLICT (issue, subscriber_id) DO UPDATE SET"
        " state = excluded.state, last_error = excluded.last_error, message_id = excluded.message_id,"
        " updated = excluded.updated",
        [(issue, sid, how[0], number, how[1], message_id, now) for sid, how in rows if sid in found],
    )
