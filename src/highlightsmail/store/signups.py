"""Signup with double opt-in, and consents.

The signup form's state: who asked to join (`pending`), the confirmation emails sent,
the POSTs per client, the consents given. The limits live here, not in a process, so
that they hold for every server on one database.

A confirmation email's row (`confirmation_mails`) is written with the request that asks
for it, as `sending`: reserved and not yet handed to a mail backend, so a server that
stops (or is killed) before handing it over leaves it for the next start to send. The
mailer takes the rows it hands over in one transaction (`take_confirmations`, which makes
them `sent`) before handing them over, so no row is handed over twice, by one server or
several; one that could not be sent is deleted afterwards and no longer counts. A server
killed while a backend had its batch leaves those rows `sent`: they may have arrived, and
are never sent again by themselves (the reader may ask again once the limits allow)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import LiteralString, NamedTuple

from highlightsmail.addresses import address_key, mailbox_key
from highlightsmail.store.base import SUBSCRIBER_COLUMNS, Part, marks
from highlightsmail.store.engine import Conn
from highlightsmail.store.records import Consent, Subscriber, format_time

# Whether a subscriber left (unsubscribed, bounced, complained) after a given time.
_LEFT_SINCE: LiteralString = (
    "SELECT 1 FROM events WHERE subscriber_id = ? AND at > ?"
    " AND to_status IN ('bounced', 'complained', 'unsubscribed') LIMIT 1"
)


def _same_mailbox(email_key: str) -> tuple[LiteralString, tuple[str | int, ...]]:
    """A query (and its parameters) for the ids of every address of the mailbox that
    `email_key` reaches (addresses.mailbox_key): the mailbox itself, and
    `mailbox+anything@domain`, each found in the index on email_key (as one condition
    joined by OR, SQLite read the whole index: a signup's cost grew with the list)."""
    mailbox = mailbox_key(email_key)
    if mailbox == email_key and "+" in email_key.rpartition("@")[0]:
        # `+tag@`: no mailbox name to share
        return "SELECT id FROM subscribers WHERE email_key = ? AND merged_into IS NULL", (email_key,)
    local, _, domain = mailbox.rpartition("@")
    ids: LiteralString = (
        "SELECT id FROM subscribers WHERE email_key = ? AND merged_into IS NULL UNION ALL"
        " SELECT id FROM subscribers WHERE email_key >= ? AND email_key < ?"
        " AND substr(email_key, length(email_key) + 1 - ?) = ? AND length(email_key) >= ? AND merged_into IS NULL"
    )
    # `+` is followed by `,` in ASCII: the range holds every `local+...`; of those, the
    # ones at `@domain`. Not a LIKE with its pattern as a parameter: SQLite prepares such
    # a statement again for each new pattern, which made this the costliest query of a
    # signup (45 us, where the rest of it takes 5).
    at_domain = f"@{domain}"
    return ids, (mailbox, f"{local}+", f"{local},", len(at_domain), at_domain, len(local) + 1 + len(at_domain))


class Joining(NamedTuple):
    """What a request to join did (`Signups.ask_to_join`). `wait`: the client asked too
    often, the seconds until it may again, and nothing else was done. Otherwise
    `subscriber` (None for a request caught in the trap) and, when a confirmation email
    was reserved for them, `reservation` and `made` (its unix time, which the link carries)."""

    wait: int | None = None
    subscriber: Subscriber | None = None
    reservation: int | None = None
    made: int = 0


class QueuedConfirmation(NamedTuple):
    """A confirmation email reserved and not yet handed to a mail backend."""

    reservation: int
    subscriber_id: int
    email: str
    name: str
    made: int


class Signups(Part):
    """The signup and consent part of the Store."""

    def record_signup_post(self, client: str, *, limit: int, window: timedelta) -> int | None:
        """Count a POST /subscribe from `client` against `limit` per `window`. None when it
        is allowed (it is counted); otherwise the seconds until it would be, and nothing is
        counted. Rows older than the window are deleted on the way: a client's address is
        kept no longer than the limit needs it."""
        with self._write() as conn:
            return self._count_post(conn, client, limit, window)

    def _count_post(self, conn: Conn, client: str, limit: int, window: timedelta) -> int | None:
        now = self._clock()
        conn.execute("DELETE FROM signup_posts WHERE at <= ?", (format_time(now - window),))
        count, oldest = conn.execute(
            "SELECT count(*), min(at) FROM signup_posts WHERE client = ?", (client,)
        ).fetchone()
        if count >= limit:
            wait = datetime.fromisoformat(oldest) + window - now
            return max(1, -int(-wait.total_seconds() // 1))
        conn.execute("INSERT INTO signup_posts (client, at) VALUES (?, ?)", (client, format_time(now)))
        return None

    def ask_to_join(
        self,
        client: str,
        email: str | None,
        name: str,
        *,
        posts: tuple[int, timedelta],
        limits: Iterable[tuple[timedelta, int]],
    ) -> Joining:
        """A request to join from `client`, whole in one transaction: counted against
        `posts` (at most, per window) as `record_signup_post` counts it; then, unless
        `email` is None (the request fell in the trap), the address added as `pending`
        (an address already there keeps its status and name), and a confirmation email
        reserved as `reserve_confirmation` reserves it. `email` must already be validated."""
        key = address_key(email) if email is not None else ""
        with self._write() as conn:
            wait = self._count_post(conn, client, *posts)
            if wait is not None:
                return Joining(wait)
            if email is None:
                return Joining()
            sub = self._pending(conn, email, key, name)
            reserved = self._reserve(conn, sub.id, sub.status, key, limits)
            if reserved is None:
                return Joining(None, sub)
            return Joining(None, sub, *reserved)

    def _pending(self, conn: Conn, email: str, key: str, name: str) -> Subscriber:
        """The subscriber with this address, added as `pending` (source `form`) if new:
        what `Subscribers.add` does, inside the caller's transaction."""
        row = conn.execute(
            f"SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE email_key = ? AND merged_into IS NULL", (key,)
        ).fetchone()
        if row:
            return Subscriber(*row)
        now = self.now()
        (sid,) = conn.execute(
            "INSERT INTO subscribers (email, email_key, name, status, created, updated)"
            " VALUES (?, ?, ?, 'pending', ?, ?) RETURNING id",
            (email, key, name, now, now),
        ).fetchone()
        self._event(conn, sid, now, None, "pending", "form", None)
        return Subscriber(sid, email, name, "pending", now, now)

    def reserve_confirmation(
        self, subscriber_id: int, limits: Iterable[tuple[timedelta, int]]
    ) -> tuple[int, int] | None:
        """Reserve a confirmation email for a subscriber who asked to join, if they may have
        one now: they are not active, and in each `(window, most)` of `limits` fewer than
        `most` were sent. Returns (the reservation's id, the time it was made in unix
        seconds, which the link carries), or None. A reservation counts at once, so that
        many requests at the same moment make one email."""
        with self._write() as conn:
            row = conn.execute("SELECT status, email_key FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
            if row is None:
                return None
            return self._reserve(conn, subscriber_id, row[0], row[1], limits)

    def _reserve(
        self, conn: Conn, subscriber_id: int, status: str, email_key: str, limits: Iterable[tuple[timedelta, int]]
    ) -> tuple[int, int] | None:
        if status == "active":
            return None
        now = self._clock().replace(microsecond=0)
        limits = list(limits)
        if limits:
            # Counted by mailbox: bomb+1@, bomb+2@... are one inbox, whoever typed them;
            # every window in one query.
            same_mailbox, params = _same_mailbox(email_key)
            in_window: LiteralString = "coalesce(sum(CASE WHEN at > ? THEN 1 ELSE 0 END), 0)"
            since = [format_time(now - window) for window, _most in limits]
            counts = conn.execute(
                f"SELECT {', '.join(in_window for _ in limits)} FROM confirmation_mails"
                f" WHERE at > ? AND subscriber_id IN ({same_mailbox})",
                (*since, min(since), *params),
            ).fetchone()
            if any(sent >= most for sent, (_window, most) in zip(counts, limits, strict=True)):
                return None
        (reservation,) = conn.execute(
            "INSERT INTO confirmation_mails (subscriber_id, at, state) VALUES (?, ?, 'sending') RETURNING id",
            (subscriber_id, format_time(now)),
        ).fetchone()
        return int(reservation), int(now.timestamp())

    def take_confirmations(self, reservations: Iterable[int]) -> set[int]:
        """Take reserved confirmation emails to hand to a mail backend now: each becomes
        `sent` in this one transaction, unless another mailer took it first. The ones
        taken: only those are to be sent, by the caller alone."""
        wanted = sorted(set(reservations))
        if not wanted:
            return set()
        with self._write() as conn:
            rows = conn.execute(
                f"UPDATE confirmation_mails SET state = 'sent' WHERE state = 'sending' AND id IN ({marks(len(wanted))})"
                " RETURNING id",
                tuple(wanted),
            ).fetchall()
        return {int(r[0]) for r in rows}

    def queued_confirmations(self, since: int) -> list[QueuedConfirmation]:
        """The confirmation emails reserved since unix time `since` and never handed to a
        mail backend (a server stopped first), oldest first, with their subscribers'
        addresses now; not those of subscribers who are active by now, or merged into
        another."""
        rows = self._query(
            "SELECT c.id, s.id, s.email, s.name, c.at FROM confirmation_mails AS c"
            " JOIN subscribers AS s ON s.id = c.subscriber_id"
            " WHERE c.state = 'sending' AND c.at >= ? AND s.status <> 'active' AND s.merged_into IS NULL"
            " ORDER BY c.id",
            (format_time(datetime.fromtimestamp(since, UTC)),),
        )
        return [
            QueuedConfirmation(int(reservation), int(sid), email, name, int(datetime.fromisoformat(at).timestamp()))
            for reservation, sid, email, name, at in rows
        ]

    def confirmation_sent(self, reservation: int) -> None:
        """The reserved confirmation email went out (without `take_confirmations`)."""
        with self._write() as conn:
            conn.execute("UPDATE confirmation_mails SET state = 'sent' WHERE id = ?", (reservation,))

    def confirmation_not_sent(self, reservation: int) -> None:
        """The reserved confirmation email could not be sent: it no longer counts, so the
        next request may try again."""
        self.confirmations_not_sent([reservation])

    def confirmations_not_sent(self, reservations: Iterable[int]) -> None:
        """Confirmation emails taken (or only reserved) that could not be sent, in one
        transaction: they no longer count, so the next request may try again."""
        gone = sorted(set(reservations))
        if not gone:
            return
        with self._write() as conn:
            conn.execute(f"DELETE FROM confirmation_mails WHERE id IN ({marks(len(gone))})", tuple(gone))

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
