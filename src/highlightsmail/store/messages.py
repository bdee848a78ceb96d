"""The rendered message of each dispatch, kept once, and the issue file as it was sent.

`kept_messages` holds each message (its per-recipient parts as placeholders) once, under
the sha256 of its text: a dispatch that sends what another sent adds no copy.
`dispatch_messages` names, for each dispatch (an issue's, or a correction's), the message
it began with and the issue file's text then. Nothing here is written per recipient:
what differs per recipient is derived again from the ledger and the dispatch's tag
(`mail/kept.py`). Rows are written once, when a dispatch begins, and never changed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from highlightsmail.store.base import Part
from highlightsmail.store.ledger_state import recipient_state

__all__ = ["KeptMessage", "KeptMessages", "message_digest"]


def message_digest(message: str) -> str:
    """The address of a kept message: the sha256 of its text, in hex."""
    return hashlib.sha256(message.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeptMessage:
    """What a dispatch began with: its message (placeholders in), that message's digest,
    the issue file's text (None for a correction) and when it was kept."""

    issue: str
    digest: str
    message: str
    source: str | None
    kept: str


class KeptMessages(Part):
    """The kept messages part of the Store."""

    def keep_message(self, issue: str, message: str, source: str | None = None) -> str:
        """Keep the message a dispatch of `issue` begins with (once: a second call for the
        same dispatch changes nothing, so a resumed or shared dispatch keeps its first
        one). Returns the message's digest."""
        digest = message_digest(message)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO kept_messages (digest, message) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING",
                (digest, message),
            )
            conn.execute(
                "INSERT INTO dispatch_messages (issue, digest, source, kept) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (issue) DO NOTHING",
                (issue, digest, source, self.now()),
            )
        return digest

    def kept_message(self, issue: str) -> KeptMessage | None:
        """What the dispatch of `issue` began with, or None (not begun, or begun before
        messages were kept)."""
        rows = self._query(
            "SELECT d.issue, d.digest, k.message, d.source, d.kept FROM dispatch_messages AS d"
            " JOIN kept_messages AS k ON k.digest = d.digest WHERE d.issue = ?",
            (issue,),
        )
        return KeptMessage(*rows[0]) if rows else None

    def kept_count(self) -> int:
        """How many distinct messages are kept."""
        return int(self._query("SELECT count(*) FROM kept_messages")[0][0])

    def delivery_state(self, issue: str, subscriber_id: int) -> str | None:
        """Where the subscriber stands in the ledger of `issue` (sent, in doubt, ...), or
        None when the ledger holds no delivery to them."""
        with self._db.connection() as conn:
            return recipient_state(conn, issue, subscriber_id)
