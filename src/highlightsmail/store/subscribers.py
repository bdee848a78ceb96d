"""Subscribers: who they are, their status and its history, and importing a list.

Addresses are compared by `addresses.address_key` (Unicode NFC and case folding), kept
in `email_key` under a unique index; a row merged into another (`merged_into`, the same
address) drops out of lists and counts, and its id stands for the row it joined."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, LiteralString

from highlightsmail.addresses import address_key
from highlightsmail.store.base import PAGE, SUBSCRIBER_COLUMNS, Part, in_list
from highlightsmail.store.engine import Conn, StagedFile, UnknownSubscriber
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

# The rows of an import, staged where the statements of `_merge` read them: a temporary
# table (`import_rows`) or an import's scratch file (`import_staged`). `pos` numbers
# them (a file's line); `detail` is their events' detail, or NULL for the import's
# detail prefix followed by `pos` ("list.csv:12"); NULL times are the import's time.
IMPORT_STAGE: LiteralString = "import_stage"
IMPORT_COLUMNS: LiteralString = (
    "pos INTEGER PRIMARY KEY, email_key TEXT NOT NULL, email TEXT NOT NULL, name TEXT NOT NULL,"
    " status TEXT NOT NULL, created TEXT, updated TEXT, consented TEXT, consent_source TEXT, detail TEXT,"
    " topics TEXT"
)
IMPORT_NAMES: tuple[LiteralString, ...] = (
    "pos", "email_key", "email", "name", "status", "created", "updated", "consented", "consent_source", "detail",
    "topics",
)  # fmt: skip
IMPORT_KEY: LiteralString = "email_key"


def _leaves(old_status: LiteralString) -> LiteralString:
    """SQL: the staged row `i` says the person left, and the address (whose status before
    the import is `old_status`) was not already in that state, nor bounced or complained."""
    return (
        f"i.status IN ({in_list(sorted(SUPPRESSED))}) AND i.status <> {old_status}"
        f" AND {old_status} NOT IN ({in_list(sorted(UNDELIVERABLE))})"
    )


def _renames(old_name: LiteralString) -> LiteralString:
    """SQL: the staged row `i` brings a name, and another than `old_name`."""
    return f"i.name <> '' AND i.name <> {old_name}"


_DETAIL: LiteralString = "coalesce(i.detail, CAST(? AS TEXT) || i.pos)"  # `?`: the detail prefix


@dataclass(frozen=True)
class TopicChoice:
    """The topics an import knows (the settings' ids) and gives a new address whose row
    names none."""

    known: tuple[str, ...]
    defaults: tuple[str, ...] = ()


def _one_of(ids: Sequence[str]) -> LiteralString:
    """SQL: a table `t` of one column `id`, one `?` per id."""
    return " UNION ALL ".join("SELECT CAST(? AS TEXT) AS id" for _ in ids)


def import_topics(conn: Conn, before: int, topics: TopicChoice) -> None:
    """The staged rows' topics (`;a;b;`): a row that names some puts its address in
    exactly those; a new address (id above `before`) whose row names none gets the
    defaults; a known one whose row names none keeps its topics."""
    conn.execute(
        "DELETE FROM subscriber_topics WHERE subscriber_id IN (SELECT s.id FROM import_stage AS i"
        " JOIN subscribers AS s ON s.email_key = i.email_key AND s.merged_into IS NULL WHERE i.topics IS NOT NULL)"
    )
    conn.execute(
        "INSERT INTO subscriber_topics (subscriber_id, topic) SELECT s.id, t.id"
        " FROM import_stage AS i JOIN subscribers AS s ON s.email_key = i.email_key AND s.merged_into IS NULL"
        f" JOIN ({_one_of(topics.known)}) AS t ON i.topics LIKE '%;' || t.id || ';%'"
        " WHERE i.topics IS NOT NULL ON CONFLICT DO NOTHING",
        topics.known,
    )
    if topics.defaults:
        conn.execute(
            f"INSERT INTO subscriber_topics (subscriber_id, topic) SELECT s.id, t.id FROM subscribers AS s,"
            f" ({_one_of(topics.defaults)}) AS t"
            " WHERE s.id > ? AND s.merged_into IS NULL AND NOT EXISTS"
            " (SELECT 1 FROM import_stage AS i WHERE i.email_key = s.email_key AND i.topics IS NOT NULL)"
            " ON CONFLICT DO NOTHING",
            (*topics.defaults, before),
        )


#: Rows an import adds or changes from which the database's statistics are gathered again.
_MANY = 1000


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

    def leave(self, subscriber_id: int, source: Source) -> Subscriber | None:
        """A subscriber's own unsubscribe (a link's one-click POST, the page's form): an
        `active` subscriber (the one the id names, as `get` finds it) becomes
        `unsubscribed`, with an event, in one transaction; any other status is left as it
        is (a bounced address stays so, a repeat records nothing). The subscriber as it
        is afterwards, or None for an unknown id.

        What `set_status(..., only_from="active")` does, in fewer statements (a request's
        work, under load): the update finds the row the id names and checks its status
        itself, so a change made meanwhile (a bounce) is never overwritten; only when it
        changes nothing is the subscriber read, to say how they are."""
        check(source, SOURCES, "source")
        with self._write() as conn:
            now = self.now()
            changed = conn.execute(
                "UPDATE subscribers SET status = 'unsubscribed', updated = ?"
                " WHERE id = (SELECT coalesce(merged_into, id) FROM subscribers WHERE id = ?) AND status = 'active'"
                f" RETURNING {SUBSCRIBER_COLUMNS}",
                (now, subscriber_id),
            ).fetchone()
            if changed is not None:
                sub = Subscriber(*changed)
                self._event(conn, sub.id, now, "active", "unsubscribed", source, None)
                return sub
        return self.get(subscriber_id)  # not active, or unknown: as it is

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

    def import_rows(
        self,
        rows: Iterable[ImportRow],
        *,
        source: Source = "import",
        dry_run: bool = False,
        topics: TopicChoice | None = None,
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
        (ValueError otherwise). `subscribers import` stages its file first and comes
        in through `import_staged`, by the same statements.
        """
        check(source, SOURCES, "source")
        params = (
            (
                pos,
                address_key(r.email),
                r.email,
                r.name,
                check(r.status, STATUSES, "status"),
                r.created,
                r.updated,
                r.consented,
                r.consent_source,
                r.detail,
                r.topics,
            )
            for pos, r in enumerate(rows, start=1)
        )

        def stage(conn: Conn) -> None:
            self._db.stage(conn, IMPORT_STAGE, IMPORT_COLUMNS, IMPORT_NAMES, params, key=IMPORT_KEY)
            twice = conn.execute(
                "SELECT min(email) FROM import_stage GROUP BY email_key HAVING count(*) > 1 LIMIT 1"
            ).fetchone()
            if twice:
                raise ValueError(f"an address appears twice in the rows to import: {twice[0]}")

        return self._import(self._write(), source, None, dry_run, topics, stage)

    def import_staged(
        self,
        staged: StagedFile,
        *,
        detail: str,
        source: Source = "import",
        dry_run: bool = False,
        topics: TopicChoice | None = None,
    ) -> ImportResult:
        """Import the rows of a staged file (store/importing.Staging: the columns
        IMPORT_NAMES, unique by `email_key`) by the rules of `import_rows`, in ONE
        transaction (rolled back for a dry run). A row whose `detail` is NULL records
        `detail` followed by its `pos` (a file's line) with its event."""
        check(source, SOURCES, "source")
        assert staged.table == IMPORT_STAGE and staged.definition == IMPORT_COLUMNS, "the layout the statements read"
        return self._import(self._db.staged_write(staged), source, detail, dry_run, topics)

    def _import(
        self,
        transaction: AbstractContextManager[Conn],
        source: str,
        detail: str | None,
        dry_run: bool,
        topics: TopicChoice | None,
        stage: Callable[[Conn], None] | None = None,
    ) -> ImportResult:
        now = self.now()
        try:
            with transaction as conn:
                if stage is not None:
                    stage(conn)
                before = int(conn.execute("SELECT coalesce(max(id), 0) FROM subscribers").fetchone()[0])
                result = self._merge(conn, now, source, detail)
                if topics is not None and topics.known:
                    import_topics(conn, before, topics)
                if stage is not None:
                    conn.execute("DROP TABLE import_stage")  # the temporary one: it would hide a staged file's
                if dry_run:
                    raise _Rollback(result)
                if result.new + result.updated >= _MANY:
                    # The next send is planned with what the list holds now (postgresql.py).
                    self._db.gather_statistics(conn, ("subscribers", "subscriber_topics"))
        except _Rollback as rollback:
            return rollback.result
        return result

    @classmethod
    def _merge(cls, conn: Conn, now: str, source: str, detail: str | None) -> ImportResult:
        """Apply the rules to the staged rows: the new addresses first, then the changes to
        the known ones. The new rows are those with an id above the largest one before
        (SQLite takes the next rowid, PostgreSQL counts its identity up, and every write
        that adds subscribers holds the writers' lock), so the stage is only read; their
        ids follow `pos`, as they are inserted by it."""
        total = int(conn.execute("SELECT count(*) FROM import_stage").fetchone()[0])
        before = int(conn.execute("SELECT coalesce(max(id), 0) FROM subscribers").fetchone()[0])
        new = conn.execute(
            "INSERT INTO subscribers (email, email_key, name, status, created, updated)"
            " SELECT email, email_key, name, status, coalesce(created, ?), coalesce(updated, created, ?)"
            " FROM import_stage ORDER BY pos"
            " ON CONFLICT (email_key) WHERE merged_into IS NULL DO NOTHING",
            (now, now),
        ).rowcount
        if new:
            cls._new_history(conn, now, source, detail, before)
        updated = cls._known(conn, now, source, detail, before) if new < total else 0
        return ImportResult(new=new, updated=updated, unchanged=total - new - updated)

    @staticmethod
    def _new_history(conn: Conn, now: str, source: str, detail: str | None, before: int) -> None:
        """Each new address's creation event, and its consent when the row records one (an
        export from here or another tool), in the order of their ids (which is `pos`)."""
        conn.execute(
            "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail)"
            f" SELECT s.id, ?, NULL, s.status, ?, {_DETAIL}"
            " FROM subscribers AS s JOIN import_stage AS i ON i.email_key = s.email_key"
            " WHERE s.id > ? AND s.merged_into IS NULL ORDER BY s.id",
            (now, source, detail, before),
        )
        conn.execute(
            "INSERT INTO consents (subscriber_id, at, source, detail)"
            f" SELECT s.id, i.consented, coalesce(i.consent_source, ?), {_DETAIL}"
            " FROM import_stage AS i JOIN subscribers AS s ON s.email_key = i.email_key"
            " WHERE i.consented IS NOT NULL AND s.id > ? AND s.merged_into IS NULL ORDER BY i.pos",
            (source, detail, before),
        )

    @staticmethod
    def _known(conn: Conn, now: str, source: str, detail: str | None, before: int) -> int:
        """The known addresses' changes (an event for each who left, then the new statuses
        and names); how many changed."""
        leaves = _leaves("s.status")
        conn.execute(
            "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail)"
            f" SELECT s.id, ?, s.status, i.status, ?, {_DETAIL}"
            " FROM import_stage AS i JOIN subscribers AS s ON s.email_key = i.email_key"
            f" WHERE s.id <= ? AND s.merged_into IS NULL AND {leaves} ORDER BY i.pos",
            (now, source, detail, before),
        )
        leaves, renames = _leaves("subscribers.status"), _renames("subscribers.name")
        return conn.execute(
            f"UPDATE subscribers SET status = CASE WHEN {leaves} THEN i.status ELSE subscribers.status END,"
            f" name = CASE WHEN {renames} THEN i.name ELSE subscribers.name END, updated = ?"
            " FROM import_stage AS i WHERE subscribers.email_key = i.email_key AND subscribers.merged_into IS NULL"
            f" AND subscribers.id <= ? AND (({leaves}) OR ({renames}))",
            (now, before),
        ).rowcount
