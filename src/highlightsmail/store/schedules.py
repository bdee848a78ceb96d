"""Sending later and the sending limits: the schedules part of the Store.

One schedule per issue: when it is due (UTC), the zone the editor wrote it in (none for
a send begun by hand that was paused by the limits or cancelled: it is due when it
began), the
fingerprint of what was test-sent and scheduled, and where it stands (`ScheduleState`).
A schedule moves only by compare-and-set on its `version`, so of several runners that
see one due schedule exactly one starts it, on either engine.

The limits are kept as the recipients each claim took (`send_counts`, with the time and
the sending domain); a claim reads and adds to them in its own transaction, after taking
the one turn row (`send_limits_turn`), so senders of every issue, on any machine, take
turns over the window and never both spend its last places."""

from __future__ import annotations

from highlightsmail.errors import HighlightsError
from highlightsmail.store.base import Part
from highlightsmail.store.records import SCHEDULE_STATES, Schedule, check

_COLUMNS = "issue, due, zone, fingerprint, state, reason, paused_until, started, provider_batch, version, updated"


class Schedules(Part):
    """The schedules and sending-limits part of the Store."""

    # -- schedules ----------------------------------------------------------------------

    def set_schedule(
        self, issue: str, due: str, zone: str, fingerprint: str, *, provider_batch: str | None = None
    ) -> Schedule:
        """Schedule (or schedule again) the send of `issue` at `due` (stored format, UTC).
        Refused while the issue is being sent now: cancel it first."""
        now = self.now()
        with self._write() as conn:
            found = conn.execute("SELECT state FROM schedules WHERE issue = ?", (issue,)).fetchone()
            if found is not None and found[0] == "running":
                raise HighlightsError(
                    f"{issue}: it is being sent now; cancel it first: highlights send {issue} --cancel"
                )
            conn.execute(
                "INSERT INTO schedules (issue, due, zone, fingerprint, state, provider_batch, updated)"
                " VALUES (?, ?, ?, ?, 'scheduled', ?, ?) ON CONFLICT (issue) DO UPDATE SET"
                " due = excluded.due, zone = excluded.zone, fingerprint = excluded.fingerprint,"
                " state = 'scheduled', reason = NULL, paused_until = NULL, provider_batch = excluded.provider_batch,"
                " version = schedules.version + 1, updated = excluded.updated",
                (issue, due, zone, fingerprint, provider_batch, now),
            )
        found_now = self.schedule_of(issue)
        assert found_now is not None
        return found_now

    def schedule_of(self, issue: str) -> Schedule | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM schedules WHERE issue = ?", (issue,))
        return Schedule(*rows[0]) if rows else None

    def schedules(self) -> list[Schedule]:
        """Every schedule, soonest first."""
        return [Schedule(*r) for r in self._query(f"SELECT {_COLUMNS} FROM schedules ORDER BY due, issue")]

    def due_schedules(self, now: str) -> list[Schedule]:
        """The schedules a runner should look at now: scheduled ones that are due, paused
        ones whose window has opened, and running ones (their runner may be gone)."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM schedules WHERE (state = 'scheduled' AND due <= ?)"
            " OR (state = 'paused' AND coalesce(paused_until, '') <= ?) OR state = 'running' ORDER BY due, issue",
            (now, now),
        )
        return [Schedule(*r) for r in rows]

    def next_wake(self) -> str | None:
        """The soonest time a scheduled or paused send becomes due, or None."""
        rows = self._query(
            "SELECT min(CASE WHEN state = 'paused' THEN coalesce(paused_until, due) ELSE due END)"
            " FROM schedules WHERE state IN ('scheduled', 'paused')"
        )
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def move_schedule(
        self,
        issue: str,
        version: int,
        state: str,
        *,
        reason: str | None = None,
        paused_until: str | None = None,
        started: bool = False,
    ) -> bool:
        """Move the schedule to `state` if it is still at `version` (nobody moved it
        since it was read); True when this call moved it."""
        check(state, SCHEDULE_STATES, "schedule state")
        now = self.now()
        with self._write() as conn:
            moved = conn.execute(
                "UPDATE schedules SET state = ?, reason = ?, paused_until = ?, version = version + 1, updated = ?,"
                " started = CASE WHEN ? THEN coalesce(started, ?) ELSE started END"
                " WHERE issue = ? AND version = ?",
                (state, reason, paused_until, now, started, now, issue, version),
            ).rowcount
        return moved == 1

    def sending_started(self, issue: str) -> None:
        """A send of `issue` is starting now (a plain `send`, or a runner that took its
        schedule): a schedule it has says `running` (a cancelled one resumes)."""
        now = self.now()
        with self._write() as conn:
            conn.execute(
                "UPDATE schedules SET state = 'running', reason = NULL, paused_until = NULL,"
                " started = coalesce(started, ?), version = version + 1, updated = ? WHERE issue = ?",
                (now, now, issue),
            )

    def sending_stopped(
        self, issue: str, state: str, *, reason: str | None = None, until: str | None = None, fingerprint: str = ""
    ) -> None:
        """A send of `issue` stopped (`state`: paused until `until`, sent, cancelled):
        its running schedule says so; a send paused by the limits gets a schedule if it
        had none, so that a runner resumes it. A cancelled schedule stays cancelled."""
        check(state, SCHEDULE_STATES, "schedule state")
        now = self.now()
        with self._write() as conn:
            moved = conn.execute(
                "UPDATE schedules SET state = ?, reason = ?, paused_until = ?, version = version + 1, updated = ?"
                " WHERE issue = ? AND state = 'running'",
                (state, reason, until, now, issue),
            ).rowcount
            if moved or state != "paused":
                return
            conn.execute(
                "INSERT INTO schedules (issue, due, zone, fingerprint, state, reason, paused_until, started, updated)"
                " SELECT ?, started, '', ?, 'paused', ?, ?, started, ? FROM dispatches WHERE issue = ?"
                " ON CONFLICT (issue) DO NOTHING",
                (issue, fingerprint, reason, until, now, issue),
            )

    def cancel_schedule(self, issue: str) -> Schedule | None:
        """Cancel the schedule of `issue`, or the send of it under way (a schedule is made
        for a dispatch begun without one); None when there is nothing to cancel."""
        now = self.now()
        with self._write() as conn:
            found = conn.execute("SELECT state FROM schedules WHERE issue = ?", (issue,)).fetchone()
            if found is None:
                unfinished = conn.execute(
                    "SELECT started FROM dispatches WHERE issue = ? AND finished IS NULL", (issue,)
                ).fetchone()
                if unfinished is None:
                    return None
                conn.execute(
                    "INSERT INTO schedules (issue, due, zone, fingerprint, state, started, updated)"
                    " VALUES (?, ?, '', '', 'cancelled', ?, ?)",
                    (issue, unfinished[0], unfinished[0], now),
                )
            elif found[0] in ("sent", "cancelled"):
                return None
            else:
                conn.execute(
                    "UPDATE schedules SET state = 'cancelled', reason = NULL, paused_until = NULL,"
                    " version = version + 1, updated = ? WHERE issue = ?",
                    (now, issue),
                )
        return self.schedule_of(issue)

    def schedule_cancelled(self, issue: str) -> bool:
        """Whether the send of `issue` was cancelled (read in the claim's transaction)."""
        with self._write(serial=False) as conn:
            row = conn.execute("SELECT state FROM schedules WHERE issue = ?", (issue,)).fetchone()
        return row is not None and row[0] == "cancelled"

    def provider_cancelled(self, issue: str, why: str) -> int:
        """The provider cancelled the mail it held for `issue`: what the ledger has as
        sent was never delivered, so it is failed, with `why` (a later `send` retries
        it), and the dispatch is not finished. Returns how many recipients."""
        now = self.now()
        with self._write() as conn:
            count = conn.execute(
                "SELECT coalesce(sum(counted), 0) FROM ledger_batches WHERE issue = ? AND state = 'sent'", (issue,)
            ).fetchone()[0]
            conn.execute(
                "UPDATE ledger_batches SET state = 'failed', last_error = ?, updated = ? WHERE issue = ? AND state = 'sent'",
                (why, now, issue),
            )
            count += conn.execute(
                "UPDATE ledger_exceptions SET state = 'failed', last_error = ?, updated = ?"
                " WHERE issue = ? AND state = 'sent'",
                (why, now, issue),
            ).rowcount
            conn.execute("UPDATE dispatches SET finished = NULL WHERE issue = ?", (issue,))
        return int(count)

    # -- the limits ---------------------------------------------------------------------

    def limits_turn(self) -> None:
        """Take the limits' turn for the open transaction: every sender of the workspace
        waits here for the one before it to commit what it counted."""
        with self._write(serial=False) as conn:
            conn.execute(
                "INSERT INTO send_limits_turn (id, turns) VALUES (1, 1)"
                " ON CONFLICT (id) DO UPDATE SET turns = send_limits_turn.turns + 1"
            )

    def sent_since(self, since: str, domain: str | None = None) -> int:
        """Recipients claimed since `since` (stored format), from `domain` if given."""
        with self._write(serial=False) as conn:
            if domain is None:
                row = conn.execute("SELECT coalesce(sum(count), 0) FROM send_counts WHERE at >= ?", (since,))
            else:
                row = conn.execute(
                    "SELECT coalesce(sum(count), 0) FROM send_counts WHERE domain = ? AND at >= ?", (domain, since)
                )
            return int(row.fetchone()[0])

    def oldest_since(self, since: str) -> str | None:
        """The oldest count in the window that began at `since`: when it leaves the window,
        places open again."""
        with self._write(serial=False) as conn:
            row = conn.execute("SELECT min(at) FROM send_counts WHERE at >= ?", (since,)).fetchone()
        return str(row[0]) if row and row[0] is not None else None

    def first_sending_day(self, domain: str) -> str | None:
        """When the workspace first sent from `domain` (stored format), or None."""
        with self._write(serial=False) as conn:
            row = conn.execute("SELECT min(at) FROM send_counts WHERE domain = ?", (domain,)).fetchone()
        return str(row[0]) if row and row[0] is not None else None

    def count_sent(self, count: int, domain: str) -> None:
        """Count `count` recipients claimed now from `domain` against the limits."""
        if count <= 0:
            return
        with self._write(serial=False) as conn:
            conn.execute("INSERT INTO send_counts (at, domain, count) VALUES (?, ?, ?)", (self.now(), domain, count))
