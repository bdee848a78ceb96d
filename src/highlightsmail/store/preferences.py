"""What a reader chooses and what is held about them: the topics a subscriber is in, a
pause, everything stored about one person (for "download my data" and `subscribers
show`), and erasure (`subscribers forget`, "erase me").

Topics are ids from the settings (`topics:`), kept per subscriber in
`subscriber_topics`; the store does not know the settings, so callers pass the ids.
An audience (an issue's `audience:`) is every active subscriber in any of its topics
who is not paused; no audience is every active subscriber who is not paused.

Erasure deletes every row that names the person (their subscriber rows, merged ones
included, history, consents, topics, confirmation mails, delivery events, ledger
exceptions) and takes their id out of the ledger's packed lists; only a keyed hash of
the address, made by the caller with the workspace's secret, is kept in
`erased_addresses`, so that an import can refuse to add it back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, LiteralString

from highlightsmail.addresses import address_key
from highlightsmail.store.base import SUBSCRIBER_COLUMNS, Part, marks
from highlightsmail.store.engine import Conn, UnknownSubscriber
from highlightsmail.store.ledger_state import holds, parse_ids, recipient_state
from highlightsmail.store.records import Subscriber, format_time

#: SQL: subscriber `s` is not paused at the time given as the next `?`.
NOT_PAUSED: LiteralString = "(s.paused_until IS NULL OR s.paused_until <= ?)"


def audience_filter(audience: Sequence[str]) -> LiteralString:
    """SQL for subscriber `s`: in any of the topics (one `?` each, after NOT_PAUSED's)."""
    if not audience:
        return NOT_PAUSED
    return (
        f"{NOT_PAUSED} AND EXISTS (SELECT 1 FROM subscriber_topics AS t"
        f" WHERE t.subscriber_id = s.id AND t.topic IN ({marks(len(audience))}))"
    )


class Preferences(Part):
    """The preferences part of the Store."""

    # -- topics ---------------------------------------------------------------------------

    def topics(self, subscriber_id: int) -> list[str]:
        """The topics a subscriber is in, by id."""
        rows = self._query(
            "SELECT topic FROM subscriber_topics WHERE subscriber_id = ? ORDER BY topic", (subscriber_id,)
        )
        return [str(row[0]) for row in rows]

    def topics_of(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """The topics of each of these subscribers (those in none are left out)."""
        found: dict[int, list[str]] = {}
        for start in range(0, len(ids), 500):
            part = tuple(ids[start : start + 500])
            rows = self._query(
                f"SELECT subscriber_id, topic FROM subscriber_topics WHERE subscriber_id IN ({marks(len(part))})"
                " ORDER BY subscriber_id, topic",
                part,
            )
            for sid, topic in rows:
                found.setdefault(int(sid), []).append(str(topic))
        return found

    def set_topics(self, subscriber_id: int, topics: Iterable[str]) -> bool:
        """Put a subscriber in exactly these topics; True if that changed anything."""
        wanted = sorted(set(topics))
        with self._write() as conn:
            have = [
                str(r[0])
                for r in conn.execute(
                    "SELECT topic FROM subscriber_topics WHERE subscriber_id = ? ORDER BY topic", (subscriber_id,)
                ).fetchall()
            ]
            if have == wanted:
                return False
            conn.execute("DELETE FROM subscriber_topics WHERE subscriber_id = ?", (subscriber_id,))
            conn.executemany(
                "INSERT INTO subscriber_topics (subscriber_id, topic) VALUES (?, ?)",
                [(subscriber_id, topic) for topic in wanted],
            )
            conn.execute("UPDATE subscribers SET updated = ? WHERE id = ?", (self.now(), subscriber_id))
            return True

    def in_topic(self, topic: str) -> set[int]:
        """The ids of the subscribers in a topic."""
        return {int(r[0]) for r in self._query("SELECT subscriber_id FROM subscriber_topics WHERE topic = ?", (topic,))}

    # -- a pause --------------------------------------------------------------------------

    def paused_until(self, subscriber_id: int) -> str | None:
        """When a subscriber's pause ends (stored format), or None."""
        rows = self._query("SELECT paused_until FROM subscribers WHERE id = ?", (subscriber_id,))
        return str(rows[0][0]) if rows and rows[0][0] else None

    def pause(self, subscriber_id: int, weeks: int | None) -> None:
        """Pause a subscriber for some weeks from now, or end the pause (None). Sends skip
        them until then, and they come back by themselves."""
        until = None if weeks is None else format_time(self._clock() + timedelta(weeks=weeks))
        with self._write() as conn:
            conn.execute(
                "UPDATE subscribers SET paused_until = ?, updated = ? WHERE id = ?", (until, self.now(), subscriber_id)
            )

    # -- an audience -----------------------------------------------------------------------

    def count_audience(self, audience: Sequence[str]) -> int:
        """How many subscribers a dispatch to this audience would reach now."""
        where = audience_filter(audience)
        rows = self._query(
            f"SELECT count(*) FROM subscribers AS s WHERE s.status = 'active' AND s.merged_into IS NULL AND {where}",
            (self.now(), *audience),
        )
        return int(rows[0][0])

    def dispatch_audience(self, issue: str) -> list[str]:
        """The topics an issue's dispatch went to ([]: every active subscriber)."""
        rows = self._query("SELECT audience FROM dispatches WHERE issue = ?", (issue,))
        return str(rows[0][0]).split(",") if rows and rows[0][0] else []

    # -- what is held about one person ------------------------------------------------------

    def personal_data(self, subscriber_id: int) -> dict[str, Any]:
        """Everything stored about a subscriber, as JSON-ready values: the subscriber row,
        topics, consents, history (`events`), the issues sent to them (`deliveries`) and
        what came back about those messages (`delivery_events`, bounces among them)."""
        with self._db.connection() as conn:
            row = conn.execute(
                f"SELECT {SUBSCRIBER_COLUMNS}, paused_until FROM subscribers WHERE id = ?", (subscriber_id,)
            ).fetchone()
            if row is None:
                raise UnknownSubscriber(f"no subscriber {subscriber_id}")
            sub = Subscriber(*row[:6])

            def rows(sql: LiteralString, names: tuple[str, ...]) -> list[dict[str, Any]]:
                return [dict(zip(names, r, strict=True)) for r in conn.execute(sql, (subscriber_id,)).fetchall()]

            data: dict[str, Any] = {
                "email": sub.email,
                "name": sub.name,
                "status": sub.status,
                "created": sub.created,
                "updated": sub.updated,
                "paused_until": row[6],
                "topics": [
                    str(r[0])
                    for r in conn.execute(
                        "SELECT topic FROM subscriber_topics WHERE subscriber_id = ? ORDER BY topic", (subscriber_id,)
                    ).fetchall()
                ],
                "consents": rows(
                    "SELECT at, source, ip, detail FROM consents WHERE subscriber_id = ? ORDER BY id",
                    ("at", "source", "ip", "detail"),
                ),
                "events": rows(
                    "SELECT at, from_status, to_status, source, detail FROM events WHERE subscriber_id = ? ORDER BY id",
                    ("at", "from_status", "to_status", "source", "detail"),
                ),
                "delivery_events": rows(
                    "SELECT issue, kind, at, url, detail FROM delivery_events WHERE subscriber_id = ? ORDER BY id",
                    ("issue", "kind", "at", "url", "detail"),
                ),
            }
        data["deliveries"] = self._deliveries_of(subscriber_id)
        return data

    def _deliveries_of(self, subscriber_id: int) -> list[dict[str, Any]]:
        """Each issue whose recipients held this subscriber, with where their copy stands:
        one still pending in a send that was cancelled is `cancelled` (the ledger keeps it
        pending, so that a later `send` resumes it)."""
        with self._db.connection() as conn:
            issues = [str(r[0]) for r in conn.execute("SELECT issue FROM dispatches ORDER BY started").fetchall()]
            found = [(issue, recipient_state(conn, issue, subscriber_id)) for issue in issues]
            cancelled = {
                str(r[0]) for r in conn.execute("SELECT issue FROM schedules WHERE state = 'cancelled'").fetchall()
            }
        return [
            {"issue": issue, "state": "cancelled" if state == "pending" and issue in cancelled else state}
            for issue, state in found
            if state is not None
        ]

    # -- erasure ----------------------------------------------------------------------------

    def is_erased(self, address_hash: str) -> bool:
        """Whether an address with this keyed hash was erased on request."""
        return bool(self._query("SELECT 1 FROM erased_addresses WHERE address_hash = ?", (address_hash,)))

    def erased_hashes(self) -> set[str]:
        """The keyed hashes of every address erased on request."""
        return {str(r[0]) for r in self._query("SELECT address_hash FROM erased_addresses")}

    def forget(self, subscriber_id: int, address_hash: str) -> None:
        """Erase a subscriber (and every row merged into them, the same address): every
        row that names them, and their id from the ledger's lists; keep only the keyed
        hash of the address. One transaction."""
        with self._db.erasing() as conn:
            row = conn.execute(
                "SELECT coalesce(merged_into, id) FROM subscribers WHERE id = ?", (subscriber_id,)
            ).fetchone()
            if row is None:
                raise UnknownSubscriber(f"no subscriber {subscriber_id}")
            ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM subscribers WHERE id = ? OR merged_into = ? ORDER BY id", (row[0], row[0])
                ).fetchall()
            ]
            keys = {
                address_key(str(r[0]))
                for r in conn.execute(
                    f"SELECT email FROM subscribers WHERE id IN ({marks(len(ids))})", tuple(ids)
                ).fetchall()
            }
            for sid in ids:
                _forget_one(conn, sid)
            _out_of_test_sends(conn, keys)
            conn.execute(
                "INSERT INTO erased_addresses (address_hash, at) VALUES (?, ?) ON CONFLICT (address_hash) DO NOTHING",
                (address_hash, self.now()),
            )


def _out_of_test_sends(conn: Conn, keys: set[str]) -> None:
    """Take the addresses out of the test sends' recipients (a `--to` may have named them)."""
    for ident, recipients in conn.execute("SELECT id, recipients FROM test_sends").fetchall():
        listed = json.loads(recipients)
        kept = [r for r in listed if address_key(r) not in keys]
        if len(kept) != len(listed):
            conn.execute("UPDATE test_sends SET recipients = ? WHERE id = ?", (json.dumps(kept), ident))


#: The tables whose rows name a subscriber by id, deleted on erasure (the subscriber's own
#: row last: the others refer to it).
_NAMING: tuple[LiteralString, ...] = (
    "DELETE FROM subscriber_topics WHERE subscriber_id = ?",
    "DELETE FROM consents WHERE subscriber_id = ?",
    "DELETE FROM events WHERE subscriber_id = ?",
    "DELETE FROM confirmation_mails WHERE subscriber_id = ?",
    "DELETE FROM delivery_events WHERE subscriber_id = ?",
    "DELETE FROM ledger_exceptions WHERE subscriber_id = ?",
)


def _forget_one(conn: Conn, sid: int) -> None:
    """Delete one subscriber row and every row naming it; take it out of packed ids."""
    # A recipient with a row of their own was not counted in their batch's `counted`.
    apart = {
        str(r[0])
        for r in conn.execute("SELECT issue FROM ledger_exceptions WHERE subscriber_id = ?", (sid,)).fetchall()
    }
    for sql in _NAMING:
        conn.execute(sql, (sid,))
    recipient_of = set(apart)  # the dispatches that count them among their recipients
    for issue, chunk, ids in conn.execute(
        "SELECT issue, chunk, ids FROM ledger_recipients WHERE first_id <= ? AND last_id >= ?", (sid, sid)
    ).fetchall():
        if not holds(ids, sid):
            continue
        recipient_of.add(str(issue))
        kept = [i for i in parse_ids(ids) if i != sid]
        if not kept:
            conn.execute("DELETE FROM ledger_recipients WHERE issue = ? AND chunk = ?", (issue, chunk))
        else:
            conn.execute(
                "UPDATE ledger_recipients SET ids = ?, size = ?, first_id = ?, last_id = ? WHERE issue = ? AND chunk = ?",
                (",".join(map(str, kept)), len(kept), kept[0], kept[-1], issue, chunk),
            )
    for issue, batch, ids, counted in conn.execute(
        "SELECT issue, batch, ids, counted FROM ledger_batches WHERE first_id <= ? AND last_id >= ?", (sid, sid)
    ).fetchall():
        if not holds(ids, sid):
            continue
        kept = [i for i in parse_ids(ids) if i != sid]
        conn.execute(
            "UPDATE ledger_batches SET ids = ?, first_id = ?, last_id = ?, counted = ? WHERE issue = ? AND batch = ?",
            (
                ",".join(map(str, kept)) or None,
                kept[0] if kept else None,
                kept[-1] if kept else None,
                int(counted) - (0 if issue in apart else 1),
                issue,
                batch,
            ),
        )
    # One recipient fewer: counted nowhere now, they would show as pending for ever.
    for issue in sorted(recipient_of):
        conn.execute("UPDATE dispatches SET total = total - 1 WHERE issue = ?", (issue,))
    conn.execute("DELETE FROM subscribers WHERE id = ?", (sid,))


__all__ = ["NOT_PAUSED", "Preferences", "audience_filter"]
