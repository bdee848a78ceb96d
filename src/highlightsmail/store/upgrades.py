"""The steps of migrations that SQL alone cannot take, named in the .sql files by a
`-- run: name arguments` line and run inside the migration's transaction. Each returns
lines to tell the editor (without the database's name). Frozen like every migration:
a later change to the rules is a new migration."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from highlightsmail.addresses import address_key
from highlightsmail.errors import HighlightsError
from highlightsmail.store.engine import Conn, identifier, trusted
from highlightsmail.store.records import format_time, leaving_rank, utc_now
from highlightsmail.tokens import new_dispatch_tag

#: Recipient ids per chunk of a dispatch's list (as store/ledger.py makes them).
_CHUNK = 1000
_LEDGER_WEIGHT = {"sent": 5, "in_flight": 4, "in_doubt": 3, "failed": 2, "pending": 1}


def merge_same_addresses(conn: Conn) -> list[str]:
    """Migration 2: fill `email_key`, and make one subscriber of each group of rows
    whose addresses are one address (they differ only in Unicode form or case).

    Nothing is deleted, since events, the send ledger and the links in mail already
    sent name every row by id. In each group the oldest row (lowest id) is kept: it
    takes the strongest status of the group (complained, bounced, unsubscribed, then
    active), so nobody who left under one spelling is mailed under the other, and the
    name of another row when it has none. The others point at it (`merged_into`):
    they drop out of lists, counts and sends, and their links act on the kept row. In
    a dispatch under way, the group keeps one recipient (the one furthest along) and
    the others' open rows become `skipped`, so nobody gets two copies.
    """
    rows = conn.execute("SELECT id, email, name, status FROM subscribers ORDER BY id").fetchall()
    keys = [address_key(email) for _id, email, _name, _status in rows]
    conn.executemany("UPDATE subscribers SET email_key = ? WHERE id = ?", zip(keys, (r[0] for r in rows), strict=True))
    groups: dict[str, list[tuple[int, str, str, str]]] = {}
    for key, row in zip(keys, rows, strict=True):
        groups.setdefault(key, []).append(row)
    return [_merge_group(conn, members) for members in groups.values() if len(members) > 1]


def _merge_group(conn: Conn, members: list[tuple[int, str, str, str]]) -> str:
    """Merge one group of rows (id order) into the first; returns the line to report."""
    keeper_id, keeper_email, keeper_name, keeper_status = members[0]
    strongest = max(members, key=lambda m: (leaving_rank(m[3]), -m[0]))
    now = format_time(utc_now())
    if strongest[3] != keeper_status:
        # The change has the cause of the other row's status as its source (an
        # unsubscribe link, a bounce, an import), and says where it came from.
        found = conn.execute(
            "SELECT source FROM events WHERE subscriber_id = ? AND to_status = ? ORDER BY id DESC LIMIT 1",
            (strongest[0], strongest[3]),
        ).fetchone()
        conn.execute("UPDATE subscribers SET status = ?, updated = ? WHERE id = ?", (strongest[3], now, keeper_id))
        conn.execute(
            "INSERT INTO events (subscriber_id, at, from_status, to_status, source, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (
                keeper_id,
                now,
                keeper_status,
                strongest[3],
                found[0] if found else "cli",
                f"the same address as #{strongest[0]} {strongest[1]}, which is {strongest[3]}",
            ),
        )
    if not keeper_name:
        name = next((m[2] for m in members[1:] if m[2]), "")
        if name:
            conn.execute("UPDATE subscribers SET name = ? WHERE id = ?", (name, keeper_id))
    ids = [m[0] for m in members]
    conn.executemany(
        "UPDATE subscribers SET merged_into = ?, updated = ? WHERE id = ?", [(keeper_id, now, i) for i in ids[1:]]
    )
    _one_recipient_each(conn, ids, keeper_id, now)
    spellings = " and ".join(f"{email} (#{sid}, {status})" for sid, email, _name, status in members)
    return (
        f"{spellings} are the same address: merged into #{keeper_id} {keeper_email}, now {strongest[3]}; "
        "links in mail sent to any of them still work and nobody gets two copies. "
        "Nothing to do, but keep one spelling in your own lists"
    )


def _one_recipient_each(conn: Conn, ids: list[int], keeper_id: int, now: str) -> None:
    """In each dispatch, keep the group's row furthest along; the others' open rows are skipped."""
    marks = ", ".join("?" for _ in ids)
    ledger: dict[str, list[tuple[int, str]]] = {}
    for issue, sid, state in conn.execute(
        f"SELECT issue, subscriber_id, state FROM deliveries WHERE subscriber_id IN ({marks}) AND state <> 'skipped'",
        ids,
    ):
        ledger.setdefault(issue, []).append((sid, state))
    for issue, entries in ledger.items():
        kept = max(entries, key=lambda e: (_LEDGER_WEIGHT[e[1]], e[0] == keeper_id, -e[0]))
        conn.executemany(
            "UPDATE deliveries SET state = 'skipped', last_error = ?, updated = ?"
            " WHERE issue = ? AND subscriber_id = ? AND state IN ('pending', 'failed', 'in_doubt')",
            [(f"the same address as #{kept[0]}", now, issue, sid) for sid, _state in entries if sid != kept[0]],
        )


def tag_dispatches(conn: Conn) -> list[str]:
    """Migration 6: a tag for each dispatch begun before tags, so the rest of a dispatch
    still under way goes out with Message-IDs a bounce can be matched by. (Mail it sent
    already had random ones; its bounces are matched by the unsubscribe link they return.)"""
    issues = [r[0] for r in conn.execute("SELECT issue FROM dispatches WHERE tag IS NULL").fetchall()]
    conn.executemany("UPDATE dispatches SET tag = ? WHERE issue = ?", [(new_dispatch_tag(), i) for i in issues])
    return []


def allow_in_checks(conn: Conn, table: str, additions: dict[str, str]) -> list[str]:
    """SQLite: let each `CHECK (column IN (...))` of `table` named in `additions` (column ->
    value) take one more value, keeping every row with its id, and the table's indexes.

    SQLite changes a constraint only by making the table again. Its definition is taken
    from the schema as it stands, so the columns that earlier migrations added come along.
    Rows of other tables point at it by foreign key (events and deliveries at
    subscribers): with foreign keys checked only at COMMIT, dropping the table leaves
    them pointing nowhere for a moment and putting its rows back makes them whole again,
    so a row lost on the way would fail the whole migration. `foreign_key_check`
    confirms it before that.
    """
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    for column, value in additions.items():
        pattern = re.compile(rf"CHECK\s*\(\s*{column}\s+IN\s*\(([^)]*)\)\s*\)", re.IGNORECASE)
        matches = list(pattern.finditer(sql))
        if len(matches) != 1:
            raise HighlightsError(f"the {table} table has no single check on {column} to widen; is this database ours?")
        (match,) = matches
        if f"'{value}'" not in match.group(1):
            sql = f"{sql[: match.start()]}CHECK ({column} IN ({match.group(1)}, '{value}')){sql[match.end() :]}"
    _rebuild(conn, identifier(table), sql, _indexes_and_triggers(conn, table))
    return []


def one_address_index(conn: Conn) -> list[str]:
    """Migration 11 (SQLite): the subscribers table again without the UNIQUE that the first
    schema put on `email` (COLLATE NOCASE kept), every row with its id, and its other
    indexes. Since migration 2 the unique `email_key` (Unicode case folding) is what makes
    one subscriber of an address, as PostgreSQL's schema always had it; the second index
    had every new subscriber pay a third of its insert (tests/store/test_store.py).
    The way the table is made again is `allow_in_checks`'."""
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'subscribers'").fetchone()
    without, found = re.subn(r"(\bemail\s+TEXT\s+NOT\s+NULL)\s+UNIQUE\b", r"\1", sql, flags=re.IGNORECASE)
    if found != 1:
        raise HighlightsError("the subscribers table has no single UNIQUE on email to drop; is this database ours?")
    # The table points at itself (merged_into): taking its rows out and putting them back
    # looks, for each row, for the rows merged into it. The index on merged_into (made by
    # this migration's file, before this step) must be there first, or each look is a
    # scan of the whole table (100,000 subscribers: minutes, not a second).
    extras = _indexes_and_triggers(conn, "subscribers")
    first = [statement for statement in extras if "subscribers_merged" in statement]
    assert first, "the migration's file makes subscribers_merged before this step"
    _rebuild(conn, "subscribers", without, [s for s in extras if s not in first], before_rows=first)
    return []


def _indexes_and_triggers(conn: Conn, table: str) -> list[str]:
    """The statements that make the indexes and triggers of `table` (not SQLite's own
    indexes for UNIQUE, which the table's definition makes)."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type IN ('index', 'trigger') AND tbl_name = ? AND sql IS NOT NULL"
            " ORDER BY type, name",
            (table,),
        )
    ]


def _rebuild(conn: Conn, table: str, sql: str, extras: list[str], *, before_rows: list[str] | None = None) -> None:
    """Make `table` again from its new definition `sql`, with its rows, indexes and triggers
    (`before_rows`: those made before the rows go back)."""
    # Every text here is the schema's own (sqlite_master) or a checked name: SQL text
    # that cannot be a parameter, and that the store's code did not spell out.
    run = conn.execute
    run("PRAGMA defer_foreign_keys = ON")  # back to OFF by itself at COMMIT
    run(trusted(f"CREATE TABLE temp.rebuild_{table} AS SELECT * FROM {table}"))
    run(trusted(f"DROP TABLE {table}"))
    run(trusted(sql))
    for statement in before_rows or ():
        run(trusted(statement))
    run(trusted(f"INSERT INTO {table} SELECT * FROM temp.rebuild_{table}"))
    run(trusted(f"DROP TABLE temp.rebuild_{table}"))
    for statement in extras:
        run(trusted(statement))
    broken = run("PRAGMA foreign_key_check").fetchall()
    if broken:
        tables = ", ".join(sorted({row[0] for row in broken}))
        raise HighlightsError(
            f"the upgrade of the {table} table found {len(broken)} rows pointing nowhere (in {tables}): the "
            "database was changed outside highlightsmail. Nothing was changed; sqlite3 lists them with "
            "PRAGMA foreign_key_check"
        )


def ledger_by_batch(conn: Conn) -> list[str]:
    """Migration 7: each dispatch's per-recipient ledger rows into the ledger kept per
    batch (ledger_state.py). Its recipients become chunks of ids; the sent rows of each
    batch one batch row; what the claims have reached is the highest id not pending;
    every other row an exception row as it stands (a pending one below that point too,
    so the claims still take it). A row left in flight is in doubt: the run that left it
    is gone, since nothing sends while the database is upgraded."""
    dispatches = [r[0] for r in conn.execute("SELECT issue FROM dispatches ORDER BY issue").fetchall()]
    for issue in dispatches:
        rows = conn.execute(
            "SELECT subscriber_id, state, batch, attempts, last_error, message_id, updated FROM deliveries"
            " WHERE issue = ? ORDER BY subscriber_id",
            (issue,),
        ).fetchall()
        _convert_dispatch(conn, issue, [tuple(r) for r in rows])
    return []


def _convert_dispatch(conn: Conn, issue: str, rows: list[tuple[Any, ...]]) -> None:
    ids = [int(r[0]) for r in rows]
    conn.executemany(
        "INSERT INTO ledger_recipients (issue, chunk, first_id, last_id, size, ids) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (issue, n, part[0], part[-1], len(part), ",".join(map(str, part)))
            for n, part in enumerate(ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK))
        ],
    )
    reached = max((int(r[0]) for r in rows if r[1] != "pending"), default=0)
    sent: dict[int, list[tuple[Any, ...]]] = {}
    exceptions: list[tuple[Any, ...]] = []
    for sid, state, batch, attempts, error, message_id, updated in rows:
        if state == "sent" and batch is not None:
            sent.setdefault(int(batch), []).append((sid, message_id, updated))
        elif state != "pending" or sid <= reached:
            state = "in_doubt" if state == "in_flight" else state
            exceptions.append((issue, sid, state, batch, attempts, error, message_id, updated))
    conn.executemany(
        "INSERT INTO ledger_batches (issue, batch, first_id, last_id, ids, counted, state, message_id, updated)"
        " VALUES (?, ?, ?, ?, ?, ?, 'sent', ?, ?)",
        [
            (issue, n, m[0][0], m[-1][0], ",".join(str(x[0]) for x in m), len(m), m[0][1], max(x[2] for x in m))
            for n, m in sorted(sent.items())
        ],
    )
    conn.executemany(
        "INSERT INTO ledger_exceptions (issue, subscriber_id, state, batch, attempts, last_error, message_id, updated)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        exceptions,
    )
    numbers = [int(r[2]) for r in rows if r[2] is not None]
    conn.execute(
        "UPDATE dispatches SET claimed_to = ?, total = ?, batches = CASE WHEN batches > ? THEN batches ELSE ? END"
        " WHERE issue = ?",
        (reached, len(rows), max(numbers, default=0), max(numbers, default=0), issue),
    )


#: The steps a `-- run:` line may name: a function of the connection and the line's
#: words (a table, then `column=value` pairs for allow_in_checks).
STEPS: dict[str, Callable[..., list[str]]] = {
    "merge_same_addresses": merge_same_addresses,
    "tag_dispatches": tag_dispatches,
    "allow_in_checks": allow_in_checks,
    "ledger_by_batch": ledger_by_batch,
    "one_address_index": one_address_index,
}
