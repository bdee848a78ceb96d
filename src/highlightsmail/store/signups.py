"""Signup with double opt-in, and consents.

The signup form's state: who asked to join (`pending`), the confirmation emails sent,
the POSTs per client, the consents given. The limits live here, not in a process, so
that they hold for every server on one database."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import LiteralString

from highlightsmail.addresses import mailbox_key
from highlightsmail.store.base import SUBSCRIBER_COLUMNS, Part, marks
from highlightsmail.store.engine import Conn
from highlightsmail.store.records import Consent, Subscriber, format_time

# Whether a subscriber left (unsubscribed, bounced, complained) after a given time.
_LEFT_SINCE: LiteralString = (
    "SELECT 1 FROM events WHERE subscriber_id = ? AND at > ?"
    " AND to_status IN ('bounced', 'complained', 'unsubscribed') LIMIT 1"
)


def _same_mailbox(email_key: str) -> tuple[LiteralString, tuple[str, ...]]:
    """A condition on `s.email_key` (and its parameters) for every address of the
    mailbox that `email_key` reaches (addresses.mailbox_key): the mailbox itself, and
    `mailbox+anything@domain`, found by a range of the index on email_key."""
    mailbox = mailbox_key(email_key)
    if mailbox == email_key and "+" in email_key.rpartition("@")[0]:
        return "s.email_key = ?", (email_key,)  # `+tag@`: no mailbox name to share
    local, _, domain = mailbox.rpartition("@")

    def escaped(text: str) -> str:
        return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

    condition: LiteralString = (
        "(s.email_key = ? OR (s.email_key >= ? AND s.email_key < ? AND s.email_key LIKE ? ESCAPE '\\'))"
    )
    # `+` is followed by `,` in ASCII: the range holds every `local+...`.
    return condition, (mailbox, f"{local}+", f"{local},", f"{escaped(local)}+%@{escaped(domain)}")


class Signups(Part):
    """The signup and consent part of the Store."""

    def record_signup_post(self, client: str, *, limit: int, window: timedelta) -> int | None:
        """Count a POST /subscribe from `client` against `limit` per `window`. None when it
        is allowed (it is counted); otherwise the seconds until it would be, and nothing is
        counted. Rows older than the window are deleted on the way: a client's address is
        kept no longer than the limit needs it."""
        now = self._clock()
        with self._write() as conn:
            conn.execute("DELETE FROM signup_posts WHERE at <= ?", (format_time(now - window),))
            count, oldest = conn.execute(
                "SELECT count(*), min(at) FROM signup_posts WHERE client = ?", (client,)
            ).fetchone()
            if count >= limit:
                wait = datetime.fromisoformat(oldest) + window - now
                return max(1, -int(-wait.total_seconds() // 1))
            conn.execute("INSERT INTO signup_posts (client, at) VALUES (?, ?)", (client, format_time(now)))
            return None

    def reserve_confirmation(
        self, subscriber_id: int, limits: Iterable[tuple[timedelta, int]]
    ) -> tuple[int, int] | None:
        """Reserve a confirmation email for a subscriber who asked to join, if they may have
        one now: they are not active, and in each `(window, most)` of `limits` fewer than
        `most` were sent. Returns (the reservation's id, the time it was made in unix
        seconds, which the link carries), or None. A reservation counts at once, so that
        many requests at the same moment make one email."""
        now = self._clock().replace(microsecond=0)
        with self._write() as conn:
            row = conn.execute("SELECT status, email_key FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
            if row is None or row[0] == "active":
                return None
            # Counted by mailbox: bomb+1@, bomb+2@... are one inbox, whoever typed them.
            same_mailbox, params = _same_mailbox(row[1])
            for window, most in limits:
                (sent,) = conn.execute(
                    "SELECT count(*) FROM confirmation_mails AS c JOIN subscribers AS s ON s.id = c.subscriber_id"
                    f" WHERE c.at > ? AND s.merged_into IS NULL AND {same_mailbox}",
                    (format_time(now - window), *params),
                ).fetchone()
                if sent >= most:
                    return None
            (reservation,) = conn.execute(
                "INSERT INTO confirmation_mails (subscriber_id, at, state) VALUES (?, ?, 'sending') RETURNING id",
                (subscriber_id, format_time(now)),
            ).fetchone()
            return int(reservation), int(now.timestamp())

    def confirmation_sent(self, reservation: int) -> None:
        """The reserved confirmation email went out."""
        with self._write() as conn:
            conn.execute("UPDATE confirmation_mails SET state = 'sent' WHERE id = ?", (reservation,))

    def confirmation_not_sent(self, reservation: int) -> None:
        """The reserved confirmation email could not be sent: it no longer counts, so the
        next request may try again."""
        with self._write() as conn:
            conn.execute("DELETE FROM confirmation_mails WHERE id = ? AND state = 'sending'", (reservation,))

    def confirm(self, subscriber_id: int, made: int, ip: str | None) -> tuple[str, Subscriber] | None:
        """A confirmation link (made at unix time `made`) was used: the subscriber becomes
        active, with an event and a consent (source `form`, the client's `ip`), in one
        transaction. Returns (outcome, subscriber): `confirmed`; `already` (active
        before: nothing recorded); `spent` (they left after the link was made, which
        then opens nothing). None for an unknown subscriber."""
        now = self.now()
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE id = ?", (subscriber_id,)
            ).fetchone()
            if row is None:
                return None
            sub = Subscriber(*row)
            if sub.status == "active":
                return "already", sub
            if self._left_since(conn, subscriber_id, made):
                return "spent", sub
            conn.execute("UPDATE subscribers SET status = 'active', updated = ? WHERE id = ?", (now, subscriber_id))
            self._event(conn, subscriber_id, now, sub.status, "active", "form", None)
            conn.execute(
                "INSERT INTO consents (subscriber_id, at, source, ip) VALUES (?, ?, 'form', ?)",
                (subscriber_id, now, ip),
            )
            return "confirmed", Subscriber(sub.id, sub.email, sub.name, "active", sub.created, now)

    def confirmation_state(self, subscriber_id: int, made: int) -> tuple[Subscriber, bool] | None:
        """The subscriber a confirmation link (made at unix time `made`) names, and whether
        they left after it was made; None for an unknown subscriber. Changes nothing."""
        rows = self._query(f"SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE id = ?", (subscriber_id,))
        if not rows:
            return None
        left = self._query(_LEFT_SINCE, (subscriber_id, format_time(datetime.fromtimestamp(made, UTC))))
        return Subscriber(*rows[0]), bool(left)

    @staticmethod
    def _left_since(conn: Conn, subscriber_id: int, made: int) -> bool:
        """Whether the subscriber became unsubscribed, bounced or complained after unix
        time `made`: a confirmation link made before then no longer brings them back."""
        row = conn.execute(_LEFT_SINCE, (subscriber_id, format_time(datetime.fromtimestamp(made, UTC)))).fetchone()
        return row is not None

    def consents(self, subscriber_id: int) -> list[Consent]:
        """A subscriber's consents, oldest first."""
        rows = self._query(
            "SELECT subscriber_id, at, source, ip, detail FROM consents WHERE subscriber_id = ? ORDER BY id",
            (subscriber_id,),
        )
        return [Consent(*row) for row in rows]

    def with_consent(
        self, subscribers: Iterable[Subscriber], *, chunk: int = 500
    ) -> Iterator[tuple[Subscriber, str, str]]:
        """Each subscriber with their latest consent, for the export: how it was given
        (`form`, or what an imported list said) and when; ('', '') when none is recorded
        (an address an editor added, or a list imported without consents). Looked up a
        chunk at a time, so a stream of subscribers stays a stream."""
        pending: list[Subscriber] = []

        def flush() -> Iterator[tuple[Subscriber, str, str]]:
            rows = self._query(
                "SELECT c.subscriber_id, c.source, c.at FROM consents AS c WHERE c.id IN"
                f" (SELECT max(id) FROM consents WHERE subscriber_id IN ({marks(len(pending))}) GROUP BY subscriber_id)",
                tuple(s.id for s in pending),
            )
            found = {sid: (source, at) for sid, source, at in rows}
            for sub in pending:
                source, at = found.get(sub.id, ("", ""))
                yield sub, source, at
            pending.clear()

        for sub in subscribers:
            pending.append(sub)
            if len(pending) >= chunk:
                yield from flush()
        if pending:
            yield from flush()
