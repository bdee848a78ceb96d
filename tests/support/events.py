"""Shared by the delivery-event tests (webhook, bounce mail, report): issues marked as
sent in the real ledger, and a dump of every row events can change."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from highlightsmail.store import ImportRow, Store
from support.db import dump_tables, raw_connection


def add_readers(store: Store, n: int, *, start: int = 1) -> list[int]:
    """n active subscribers reader<i>@example.org; their ids."""
    store.import_rows(ImportRow(f"reader{i}@example.org", f"Reader {i}") for i in range(start, start + n))
    ids = []
    for i in range(start, start + n):
        sub = store.find(f"reader{i}@example.org")
        assert sub is not None
        ids.append(sub.id)
    return ids


def sent_to_everyone(store: Store, issue: str, *, backend: str = "sendgrid", leave: Iterable[int] = ()) -> int:
    """Begin the issue's dispatch (every active subscriber) and mark it sent through the
    store's own ledger steps, as `send` does; ids in `leave` stay pending. Returns the count."""
    total = store.begin_dispatch(issue, backend)
    if store.shares_dispatch:
        store.join_dispatch(issue)
    leave = set(leave)
    batch, after = 1, 0
    while True:
        claimed, _skipped, after = store.claim_batch(issue, batch, 1000, after)
        if not claimed:
            break
        store.finish_batch(
            issue,
            sent=[d.subscriber_id for d in claimed if d.subscriber_id not in leave],
            failed={d.subscriber_id: "left for the test" for d in claimed if d.subscriber_id in leave},
            message_id=f"msg-{issue}-{batch}",
        )
        batch += 1
    return total


def dump(db: Path | str) -> dict[str, list[tuple]]:
    """Every row events can touch (`db`: a SQLite path or a PostgreSQL URL): equal dumps
    mean nothing changed."""
    return dump_tables(
        db,
        (
            "subscribers",
            "events",
            "delivery_events",
            "scanned_mail",
            "ledger_recipients",
            "ledger_batches",
            "ledger_exceptions",
        ),
    )


def statuses(db: Path | str) -> dict[str, str]:
    with raw_connection(db) as conn:
        return {email: status for email, status in conn.execute("SELECT email, status FROM subscribers ORDER BY id")}


def event_facts(db: Path | str) -> list[tuple]:
    """The delivery events without row ids or arrival order: (key, issue, subscriber, kind, url)."""
    with raw_connection(db) as conn:
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT event_key, issue, subscriber_id, kind, url FROM delivery_events ORDER BY event_key"
            )
        ]
