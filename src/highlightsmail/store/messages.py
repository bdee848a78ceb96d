"""The rendered message of each dispatch, kept once, and the issue file as it was sent.

`kept_messages` holds each message (its per-recipient parts as placeholders) once, under
the sha256 of its text: a dispatch that sends what another sent adds no copy.
`dispatch_messages` names, for each dispatch (an issue's, or a correction's), the message
it began with and the issue file's text then, from its first batch on; a later run of
the dispatch that sends another message (the issue was edited and test-sent again)
adds a row from the first batch it claims. Nothing here is written per recipient: what
differs per recipient is derived again from the ledger and the dispatch's tag
(`mail/kept.py`), and which message they got from the number of their batch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import LiteralString

from highlightsmail.store.base import Part
from highlightsmail.store.engine import Conn
from highlightsmail.store.ledger_state import holds, recipient_state
from highlightsmail.store.records import format_time

__all__ = ["KeptMessage", "KeptMessages", "message_digest"]

#: How long a kept message's time stays the Date of what a dispatch sends from it (s).
_FRESH = 24 * 3600


def message_digest(message: str) -> str:
    """The address of a kept message: the sha256 of its text, in hex."""
    return hashlib.sha256(message.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeptMessage:
    """What a dispatch sent from batch `first_batch` on: its message (placeholders in),
    that message's digest, the issue file's text (for a correction, its Markdown), when it was kept."""

    issue: str
    first_batch: int
    digest: str
    message: str
    source: str | None
    kept: str

    @property
    def kept_at(self) -> float:
        """When it was kept, as a POSIX time: the Date of the messages sent from it."""
        return _posix(self.kept)


class KeptMessages(Part):
    """The kept messages part of the Store."""

    def keep_message(self, issue: str, message: str, source: str | None = None) -> float:
        """Keep the message the dispatch of `issue` sends from its next batch on, unless
        it is the one kept last, less than a day ago (a run that shares or resumes the
        dispatch soon after keeps nothing more). Returns the time it was kept (POSIX):
        the Date of the messages sent from it, so a resumed run days later does not
        send messages dated days ago."""
        digest = message_digest(message)
        now = self._clock()
        with self._write() as conn:
            last = conn.execute(
                "SELECT digest, source, kept FROM dispatch_messages WHERE issue = ? ORDER BY first_batch DESC LIMIT 1",
                (issue,),
            ).fetchone()
            if last is not None and (last[0], last[1]) == (digest, source):
                kept = _posix(last[2])
                if now.timestamp() - kept < _FRESH:
                    return kept
            conn.execute(
                "INSERT INTO kept_messages (digest, message) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING",
                (digest, message),
            )
            found = conn.execute("SELECT batches FROM dispatches WHERE issue = ?", (issue,)).fetchone()
            first = int(found[0]) + 1 if found else 1
            conn.execute(
                "INSERT INTO dispatch_messages (issue, first_batch, digest, source, kept) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (issue, first_batch) DO NOTHING",
                (issue, first, digest, source, format_time(now)),
            )
        return _posix(format_time(now))

    def kept_message(self, issue: str, batch: int | None = None) -> KeptMessage | None:
        """What the dispatch of `issue` sent in batch number `batch` (without one: what it
        began with), or None (not begun, or begun before messages were kept)."""
        # The last message kept at or before that batch; without one, the first.
        order: LiteralString = "DESC" if batch is not None else "ASC"
        rows = self._query(
            "SELECT d.issue, d.first_batch, d.digest, k.message, d.source, d.kept FROM dispatch_messages AS d"
            " JOIN kept_messages AS k ON k.digest = d.digest WHERE d.issue = ? AND d.first_batch <= ?"
            f" ORDER BY d.first_batch {order} LIMIT 1",
            (issue, batch if batch is not None else 2**62),
        )
        return KeptMessage(*rows[0]) if rows else None

    def kept_count(self) -> int:
        """How many distinct messages are kept."""
        return int(self._query("SELECT count(*) FROM kept_messages")[0][0])

    def delivery_state(self, issue: str, subscriber_id: int) -> tuple[str, int | None] | None:
        """Where the subscriber stands in the ledger of `issue` (sent, in doubt, ...) and
        the number of the batch that last took them, or None when the ledger holds no
        delivery to them."""
        with self._db.connection() as conn:
            state = recipient_state(conn, issue, subscriber_id)
            return None if state is None else (state, _batch_of(conn, issue, subscriber_id))


def _posix(stored: str) -> float:
    return datetime.fromisoformat(stored.replace("Z", "+00:00")).timestamp()


def _batch_of(conn: Conn, issue: str, sid: int) -> int | None:
    """The batch that last took a recipient: their exception row's, else the one whose ids hold them."""
    row = conn.execute(
        "SELECT batch FROM ledger_exceptions WHERE issue = ? AND subscriber_id = ?", (issue, sid)
    ).fetchone()
    if row is not None and row[0] is not None:
        return int(row[0])
    for number, ids in conn.execute(
        "SELECT batch, ids FROM ledger_batches WHERE issue = ? AND first_id <= ? AND last_id >= ?", (issue, sid, sid)
    ).fetchall():
        if holds(ids, sid):
            return int(number)
    return None
