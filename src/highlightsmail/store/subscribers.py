"""Subscribers: who they are, their status and its history, and importing a list.

Addresses are compared by `addresses.address_key` (Unicode NFC and case folding), kept
in `email_key` under a unique index; a row merged into another (`merged_into`, the same
address) drops out of lists and counts, and its id stands for the row it joined."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, LiteralString

from highlightsmail.addresses import address_key
from highlightsmail.store.base import PAGE, SUBSCRIBER_COLUMNS, Part, in_list
from highlightsmail.store.engine import Conn, UnknownSubscriber
from highlightsmail.store.records import (
    SOURCES,
    STATUSES,
    SUPPRESSED,
    UNDELIVERABLE,
    Event,
    ImportResult,
    ImportRow,
    Source,
    Status,
    Subscriber,
    check,
)

# The rows of an import, staged in a temporary table: the database matches them and
# writes in a handful of set-based statements (100,000 rows take well under a second).
_STAGE_NAMES: tuple[LiteralString, ...] = (
    "email",
    "email_key",
    "name",
    "status",
    "created",
    "updated",
    "detail",
    "consented",
    "consent_source",
)
_STAGE_COLUMNS: LiteralString = """
                email      TEXT NOT NULL,
                email_key  TEXT NOT NULL UNIQUE,
                name       TEXT NOT NULL,
                status     TEXT NOT NULL,
                created    TEXT NOT NULL,
                updated    TEXT NOT NULL,
                detail     TEXT,
                consented  TEXT,
                consent_source TEXT,
                sid        BIGINT,
                old_status TEXT,
                old_name   TEXT,
                is_new     INTEGER NOT NULL DEFAULT 1"""
# Conditions on the staged row `i`: the person left (and was not already in that state,
# nor bounced or complained), or the row brings a different, non-empty name.
_LEAVES: LiteralString = (
    f"i.status IN ({in_list(sorted(SUPPRESSED))}) AND i.status <> i.old_status"
    f" AND i.old_status NOT IN ({in_list(sorted(UNDELIVERABLE))})"
)
_RENAMES: LiteralString = "i.name <> '' AND i.name <> i.old_name"


class _Rollback(Exception):
    def __init__(self, result: ImportResult) -> None:
        self.result = result


class Subscribers(Part):
    """The subscribers part of the Store."""

    def get(self, subscriber_id: int) -> Subscriber | None:
        """The subscriber with this id, or None. An id whose row was merged into another
        (the same address) gives that one: the links in mail sent to it act on it."""
        rows = self._query(
            f"SELECT {SUBSCRIBER_COLUMNS} FROM subscribers"
            " WHERE id = (SELECT coalesce(merged_into, id) FROM subscribers WHERE id = ?)",
            (subscriber_id,),
        )
        return Subscriber(*rows[0]) if rows else None

    def find(self, email: str) -> Subscriber | None:
        """The subscriber with this address (compared by `address_key`), or None."""
        rows = self._query(
            f"SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE email_key = ? AND merged_into IS NULL",
            (address_key(email),),
        )
        return Subscriber(*rows[0]) if rows else None

    def add(
        self,
        email: str,
        name: str = "",
        *,
        status: Status = "active",
        source: Source = "cli",
        detail: str | None = None,
    ) -> tuple[Subscriber, bool]:
        """Add a subscriber; `(subscriber, True)` if new, `(existing, False)` if the address
        is already there in any spelling (then nothing is changed). `email` must already
        be validated."""
        check(status, STATUSES, "status")
        check(source, SOURCES, "source")
        key = address_key(email)
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE email_key = ? AND merged_into IS NULL", (key,)
            ).fetchone()
            if row:
                return Subscriber(*row), False
            now = self.now()
            sid = conn.execute(
                "INSERT INTO subscribers (email, email_key, name, status, created, updated) VALUES (?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                (email, key, name, status, now, now),
            ).fetchone()[0]
            self._event(conn, sid, now, None, status, source, detail)
            return Subscriber(sid, email, name, status, now, now), True

    def set_name(self, ident: int | str, name: str) -> bool:
        """Change a subscriber's name; True if it changed."""
        with self._write() as conn:
            sid, _status, old_name = self._locate(conn, ident)
            if old_name == name:
                return False
            conn.execute("UPDATE subscribers SET name = ?, updated = ? WHERE id = ?", (name, self.now(), sid))
            return True

    def set_status(
        self,
        ident: int | str,
        status: Status,
        source: Source,
        detail: str | None = None,
        *,
        only_from: Status | None = None,
    ) -> bool:
        """Move a subscriber (by id or address) to `status`, recording an event in the same
        transaction. True if the status changed; False (and no event) if it already was,
        or if `only_from` is given and the status is another (checked inside the
        transaction, so a bounce recorded meanwhile is never overwritten).
        Raises UnknownSubscriber."""
        check(status, STATUSES, "status")
        check(source, SOURCES, "source")
        with self._write() as conn:
            sid, old, _name = self._locate(conn, ident)
            if old == status or (only_from is not None and old != only_from):
                return False
            now = self.now()
            conn.execute("UPDATE subscribers SET status = ?, updated = ? WHERE id = ?", (status, now, sid))
            self._event(conn, sid, now, old, status, source, detail)
            return True

    @staticmethod
    def _locate(conn: Conn, ident: int | str) -> tuple[int, str, str]:
        """(id, status, name) of the subscriber with this id (a merged row gives the row
        it was merged into, as `get` does) or address."""
        if isinstance(ident, int):
            sql: LiteralString = (
                "SELECT id, status, name FROM subscribers"
                " WHERE id = (SELECT coalesce(merged_into, id) FROM subscribers WHERE id = ?)"
            )
            row = conn.execute(sql, (ident,)).fetchone()
        else:
            sql = "SELECT id, status, name FROM subscribers WHERE email_key = ? AND merged_into IS NULL"
            row = conn.execute(sql, (address_key(ident),)).fetchone()
        if row is None:
            raise UnknownSubscriber(f"no subscriber {ident}")
        return (row[0], row[1], row[2])

    def iter_subscribers(self, status: Status | None = None, *, page: int = PAGE) -> Iterator[Subscriber]:
        """Every subscriber (or those with `status`) in id order, fetched a page at a time.

        Pages are read by id (keyset), each in its own short statement, so nothing holds a
        read transaction open while a slow consumer (a pager, a network) takes its time,
        and other calls on this Store can run between pages. A subscriber added while
        iterating appears at the end; none appears twice.
        """
        if status is not None:
            check(status, STATUSES, "status")
        where: LiteralString = "id > ?" if status is None else "status = ? AND id > ?"
        sql: LiteralString = (
            f"SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE {where} AND merged_into IS NULL ORDER BY id LIMIT ?"
        )
        last = 0
        while True:
            params: tuple[Any, ...] = (last, page) if status is None else (status, last, page)
            rows = self._fetch_page(sql, params, page)
            for row in rows:
                yield Subscriber(*row)
            if len(rows) < page:
                return
            last = rows[-1][0]

    def count_by_status(self) -> dict[str, int]:
        """How many subscribers have each status (every status present, zeros included)."""
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        counts.update(self._query("SELECT status, count(*) FROM subscribers WHERE merged_into IS NULL GROUP BY status"))
        return counts

    def events(self, subscriber_id: int) -> list[Event]:
        """A subscriber's history, oldest first."""
        rows = self._query(
            "SELECT id, subscriber_id, at, from_status, to_status, source, detail FROM events"
            " WHERE subscriber_id = ? ORDER BY id",
            (subscriber_id,),
        )
        return [Event(*row) for row in rows]

    def apply_suppressions(self, suppressions: Iterable[Any]) -> int:
        """Mark active subscribers whom the provider suppresses (items with `email`,
        `status`, `detail`), source `sendgrid`; returns how many changed. The iterable is
        read whole before writing, so a failure while reading it changes nothing."""
        wanted = [(x.email, x.status, x.detail or None) for x in suppressions]
        if not wanted:
            return 0
        now = self.now()
        changed = 0
        with self._write() as conn:
            for email, status, detail in wanted:
                check(status, STATUSES, "status")
                row = conn.execute(
                    "SELECT id FROM subscribers WHERE email_key = ? AND merged_into IS NULL AND status = 'active'",
                    (address_key(email),),
                ).fetchone()
                if row is None:
                    continue
                conn.execute("UPDATE subscribers SET status = ?, updated = ? WHERE id = ?", (status, now, row[0]))
                self._event(conn, row[0], now, "active", status, "sendgrid", detail)
                changed += 1
        return changed

    # -- import ---------------------------------------------------------------------------

    def write_transaction(self) -> AbstractContextManager[Conn]:
        """One write transaction and its connection, for the import's merge
        (store/importing.py), which runs its statements on it."""
        return self._write()

    def stage_rows(
        self,
        conn: Conn,
        table: LiteralString,
        definition: LiteralString,
        names: tuple[LiteralString, ...],
        rows: Iterable[Sequence[Any]],
    ) -> None:
        """Load `rows` into a temporary `table` by the engine's bulk load (see Engine.stage)."""
        self._db.stage(conn, table, definition, names, rows)

    def import_rows(
        self, rows: Iterable[ImportRow], *, source: Source = "import", dry_run: bool = False
    ) -> ImportResult:
        """Import validated rows in ONE transaction; with `dry_run`, roll it back.

        Rules (so a list moved from another tool keeps its suppressions, and nobody who
        left is mailed again):
        - a new address is added with the row's status (`created`/`updated` from the row
          when given, e.g. from `subscribers export`, else now);
        - an existing address keeps its status unless the row says the person left
          (unsubscribed, bounced, complained), in which case that change is recorded;
          an import never makes anyone active again, and a bounced or complained
          address keeps that status (as on the web and with `remove`: an unsubscribed
          one could resubscribe itself);
        - an existing address takes the row's name only when the name is not empty
          (a list without names never erases the names you have).
        Every creation and status change gets an event with `source` and the row's detail;
        a new address whose row says when the person consented gets that consent too.
        Addresses are matched by `address_key` and must be unique by it within `rows`
        (ValueError otherwise).
        """
        check(source, SOURCES, "source")
        now = self.now()
        params = (
            (
                r.email,
                address_key(r.email),
                r.name,
                check(r.status, STATUSES, "status"),
                r.created or now,
                r.updated or r.created or now,
                r.detail,
                r.consented,
                r.consent_source,
            )
            for r in rows
        )
        try:
            with self._write() as conn:
                try:
                    self._db.stage(conn, "import_rows", _STAGE_COLUMNS, _STAGE_NAMES, params)
                except ValueError as exc:
                    raise ValueError(f"an address appears twice in the rows to import: {exc}") from None
                result = self._import_staged(conn, now, source)
                if dry_run:
                    raise _Rollback(result)
        except _Rollback as rollback:
            return rollback.result
        return result

    @classmethod
    def _import_staged(cls, conn: Conn, now: str, source: str) -> ImportResult:
        conn.execute(
            "UPDATE import_rows SET sid = s.id, old_status = s.status, old_name = s.name, is_new = 0"
            " FROM subscribers AS s WHERE s.email_key = import_rows.email_key AND s.merged_into IS NULL"
        )
        total, new = conn.execute("SELECT count(*), coalesce(sum(is_new), 0) FROM import_rows").fetchone()
        cls._import_new(conn, now, source)
        conn.execute(
            "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail)"
            f" SELECT i.sid, ?, i.old_status, i.status, ?, i.detail FROM import_rows AS i"
            f" WHERE i.is_new = 0 AND {_LEAVES} ORDER BY i.pos",
            (now, source),
        )
        cur = conn.execute(
            f"""UPDATE subscribers SET
                    status = CASE WHEN {_LEAVES} THEN i.status ELSE subscribers.status END,
                    name = CASE WHEN {_RENAMES} THEN i.name ELSE subscribers.name END,
                    updated = ?
                FROM import_rows AS i
                WHERE subscribers.id = i.sid AND i.is_new = 0 AND (({_LEAVES}) OR ({_RENAMES}))""",
            (now,),
        )
        updated = cur.rowcount
        conn.execute("DROP TABLE import_rows")  # the temporary one: it hides any other of that name
        return ImportResult(new=int(new), updated=updated, unchanged=int(total) - int(new) - updated)

    @staticmethod
    def _import_new(conn: Conn, now: str, source: str) -> None:
        """The staged rows whose address is new: subscribers, their events, their consents."""
        conn.execute(
            "INSERT INTO subscribers (email, email_key, name, status, created, updated)"
            " SELECT email, email_key, name, status, created, updated FROM import_rows WHERE is_new = 1 ORDER BY pos"
        )
        conn.execute(
            "UPDATE import_rows SET sid = s.id FROM subscribers AS s"
            " WHERE import_rows.is_new = 1 AND s.email_key = import_rows.email_key AND s.merged_into IS NULL"
        )
        conn.execute(
            "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail)"
            " SELECT sid, ?, NULL, status, ?, detail FROM import_rows WHERE is_new = 1 ORDER BY pos",
            (now, source),
        )
        # A consent the file records (an export from here or another tool) comes along.
        conn.execute(
            "INSERT INTO consents (subscriber_id, at, source, detail)"
            " SELECT sid, consented, coalesce(consent_source, ?), detail FROM import_rows"
            " WHERE is_new = 1 AND consented IS NOT NULL ORDER BY pos",
            (source,),
        )
