"""The subscriber list from the command line: importing a CSV (read and checked by
reading.py), adding and removing one subscriber, and writing the list out (CSV, JSON, a
table).

Nothing here prints: each function returns what happened or writes to the stream it
is given, and the CLI says it. CSV files go both ways with the columns
`email,name,status,created,updated,source,consented`: the last two are the subscriber's
latest consent, how and when it was given (`form` and the time they confirmed), both
empty when none is recorded. Import also reads files without them, or without any
column but `email`; a new address whose row has a `consented` time keeps that consent,
with the row's `source`. A cell that a spreadsheet would run as a formula (it starts
with `=`, `+`, `-`, `@`, a tab or a CR) is written with a leading `'`, which import
takes off again, so an export imports back exactly.
"""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from highlightsmail.addresses import BadAddress, normalize_address
from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.files import write_file
from highlightsmail.store import ImportResult, Status, Store, Subscriber
from highlightsmail.store.importing import Staging
from highlightsmail.store.subscribers import TopicChoice
from highlightsmail.subscribers.reading import (
    CSV_COLUMNS,
    TOPICS_COLUMN,
    CsvRows,
    check_name,
    protect_cell,
    shown_value,
)
from highlightsmail.tokens import load_signer

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace


def _rejects(
    shown: str,
    rejected: list[tuple[int, str]],
    duplicates: list[tuple[int, int, str]],
    erased: Sequence[tuple[int, str]] = (),
) -> Iterator[str]:
    """One message per rejected row, by line: bad rows, duplicates and addresses erased
    on request in one order."""
    marked = heapq.merge(
        rejected,
        ((line, f"duplicate of line {first} ({email})") for line, first, email in duplicates),
        erased,
    )
    return (f"{shown}:{line}: {problem}" for line, problem in marked)


# -- what the commands do -------------------------------------------------------------


@dataclass(frozen=True)
class Imported:
    """What `subscribers import` did: the counts, and how many rows it rejected."""

    result: ImportResult
    rejected: int


def import_file(ws: Workspace, file: Path, *, dry_run: bool = False, tell: Callable[[str], None]) -> Imported:
    """`subscribers import FILE [--dry-run]`: read the file as a stream, pass each
    warning and rejected row (by line) to `tell` once the whole file is read, then
    import every good row in one transaction (rolled back for a dry run). Raises
    HighlightsError when the file cannot be used, or had rows and none was usable;
    either way nothing is written."""
    topics = ws.settings.topic_ids()
    rows = CsvRows(file, topics)
    rejected: list[tuple[int, str]] = []  # only the rejects are held in memory
    with Staging(file.name) as staging:
        staging.load(rows.staged(rejected))
        duplicates = staging.drop_duplicates()
        erased = erased_lines(ws, staging)
        for message in rows.warnings:
            tell(message)
        count = len(rejected) + len(duplicates) + len(erased)
        for message in _rejects(rows.shown, rejected, duplicates, erased):
            tell(message)
        good = staging.count()
        if count and not good:
            raise HighlightsError(f"{rows.shown}: no valid rows ({count} rejected); nothing imported")
        if dry_run and not ws.database_exists():
            # Nothing to compare with, and a dry run must not even create the database.
            return Imported(ImportResult(new=good, updated=0, unchanged=0), count)
        with Store.open(ws) as store:
            choice = TopicChoice(topics, ws.settings.default_topics())
            return Imported(store.import_staged(staging, detail=staging.detail, dry_run=dry_run, topics=choice), count)


@dataclass(frozen=True)
class Added:
    """What `subscribers add` did: `created`, or found the address (`renamed` when the
    name given replaced another)."""

    subscriber: Subscriber
    created: bool
    renamed: bool = False


def add(ws: Workspace, email: str, name: str = "", topics: Sequence[str] = ()) -> Added:
    """`subscribers add EMAIL [--name NAME] [--topic ID]...`: add an active subscriber, in
    the topics given (else the default ones); a subscriber already there is put in the
    topics given as well. Someone who left is not made active by the editor; only their
    own resubscribe link does that."""
    address = address_argument(email)
    chosen = topic_arguments(ws, topics)
    try:
        name = check_name(name)
    except ValueError as exc:
        raise HighlightsError(f"--name: {exc}") from None
    with Store.open(ws) as store:
        subscriber, created = store.add(address, name, source="cli")
        if created:
            store.set_topics(subscriber.id, chosen or ws.settings.default_topics())
            return Added(subscriber, created=True)
        if subscriber.status == "pending":
            # Joined through the form and not confirmed: only their confirmation makes
            # them active (double opt-in), and they have no unsubscribe link yet.
            raise HighlightsError(
                f"{subscriber.email} is pending: it becomes active when the subscriber presses Confirm "
                "on the page the link in their confirmation email opens"
            )
        if subscriber.status != "active":
            raise HighlightsError(
                f"{subscriber.email} is {subscriber.status} and stays so: only the subscriber can come back, "
                "with the resubscribe button on the page their unsubscribe link opens"
            )
        renamed = bool(name) and name != subscriber.name and store.set_name(subscriber.id, name)
        if chosen:
            store.set_topics(subscriber.id, {*store.topics(subscriber.id), *chosen})
        return Added(subscriber, created=False, renamed=renamed)


def remove(ws: Workspace, email: str) -> tuple[Subscriber, bool]:
    """`subscribers remove EMAIL`: unsubscribe (the row stays, so the address is never
    mailed again); returns the subscriber as it was and whether anything changed. A
    bounced or complained address keeps that status."""
    address = address_argument(email)
    with Store.open(ws) as store:
        subscriber = store.find(address)
        if subscriber is None:
            raise HighlightsError(f"{address} is not a subscriber; nothing changed")
        if subscriber.status != "active":
            return subscriber, False
        store.set_status(subscriber.id, "unsubscribed", "cli")
        return subscriber, True


def address_argument(raw: str) -> str:
    """An address typed on the command line, normalised, or a one-line error."""
    try:
        return normalize_address(raw)
    except BadAddress as exc:
        raise HighlightsError(f"invalid address {shown_value(raw.strip())}: {exc}") from None


_TABLE = "{:>7}  {:<40}  {:<24}  {:<12}  {}"  # fixed widths: printing starts at the first row


def write_list(
    ws: Workspace, out: TextIO, status: Status | None = None, fmt: str = "table", topic: str | None = None
) -> None:
    """`subscribers list [--status S] [--topic ID] [--format table|csv|json]`, streamed
    row by row to `out`."""
    if topic is not None:
        topic_arguments(ws, [topic])
    with Store.open(ws) as store:
        rows = store.iter_subscribers(status)
        if topic is not None:
            members = store.in_topic(topic)
            rows = (s for s in rows if s.id in members)
        if fmt == "csv":
            _write_csv(out, store, rows, with_topics=bool(ws.settings.topics))
        elif fmt == "json":
            _write_json(out, rows, store if ws.settings.topics else None)
        else:
            _write_table(out, rows)


def export(ws: Workspace, file: Path | None, out: TextIO | None = None) -> int:
    """`subscribers export [FILE]`: every subscriber as CSV, to FILE (written atomically:
    a reader never sees half a file) or else to `out`. Returns how many."""
    if file is not None:
        ws.check_output(file)
    topics = bool(ws.settings.topics)
    with Store.open(ws) as store:
        if file is None:
            assert out is not None, "export to a stream needs the stream"
            return _write_csv(out, store, store.iter_subscribers(), with_topics=topics)
        return _atomic_write(
            file, lambda stream: _write_csv(stream, store, store.iter_subscribers(), with_topics=topics)
        )


def _write_csv(out: TextIO, store: Store, rows: Iterator[Subscriber], *, with_topics: bool = False) -> int:
    """The CSV of export (and `list --format csv`); the `topics` column last when the
    workspace has topics."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + ((TOPICS_COLUMN,) if with_topics else ()))
    count = 0
    for s, source, consented, topics in _with_topics(store if with_topics else None, store.with_consent(rows)):
        cells = (
            protect_cell(s.email),
            protect_cell(s.name),
            s.status,
            s.created,
            s.updated,
            protect_cell(source),
            consented,
        )
        writer.writerow(cells + ((";".join(topics),) if with_topics else ()))
        count += 1
        if count == 1:
            out.flush()  # the first row shows at once, even through a pipe
    return count


def _with_topics(
    store: Store | None, rows: Iterator[tuple[Subscriber, str, str]], chunk: int = 500
) -> Iterator[tuple[Subscriber, str, str, list[str]]]:
    """Each row with its subscriber's topics, looked up a chunk at a time ([] without `store`)."""
    if store is None:
        yield from ((s, source, at, []) for s, source, at in rows)
        return
    while part := list(itertools.islice(rows, chunk)):
        found = store.topics_of([s.id for s, _source, _at in part])
        yield from ((s, source, at, found.get(s.id, [])) for s, source, at in part)


def topic_arguments(ws: Workspace, topics: Iterable[str]) -> tuple[str, ...]:
    """Topic ids typed on the command line, checked against the settings."""
    known = ws.settings.topic_ids()
    chosen = tuple(dict.fromkeys(t.strip().lower() for t in topics))
    unknown = [t for t in chosen if t not in known]
    if unknown:
        hint = f"the topics are {', '.join(known)}" if known else "highlights.yaml has no `topics:`"
        raise HighlightsError(f"--topic {unknown[0]!r} is not a topic; {hint}")
    return chosen


def erased_lines(ws: Workspace, staging: Staging) -> list[tuple[int, str]]:
    """Take out of the staged rows every address erased on request, and return them as
    (line, why): an import never adds such an address back."""
    if not ws.database_exists():
        return []
    with Store.open(ws) as store:
        hashes = store.erased_hashes()
    if not hashes:
        return []
    signer = load_signer(ws.secret_path)
    found = [(line, email) for line, key, email in staging.addresses() if signer.address_hash(key) in hashes]
    staging.drop_lines([line for line, _email in found])
    return [(line, f"erased on request ({email}); it is not added back") for line, email in found]


def _write_json(out: TextIO, rows: Iterator[Subscriber], topics_from: Store | None = None) -> None:
    """One JSON array, one subscriber per line: valid JSON as a whole, and still streamed;
    each with its `topics` when the workspace has topics (`topics_from`)."""
    out.write("[")
    separator = "\n"
    for s, _source, _at, topics in _with_topics(topics_from, ((s, "", "") for s in rows)):
        row: dict[str, object] = {
            "id": s.id,
            "email": s.email,
            "name": s.name,
            "status": s.status,
            "created": s.created,
            "updated": s.updated,
        }
        if topics_from is not None:
            row["topics"] = topics
        out.write(separator + json.dumps(row, ensure_ascii=False))
        if separator == "\n":
            out.flush()  # the first row shows at once, even through a pipe
        separator = ",\n"
    out.write("\n]\n")


def _write_table(out: TextIO, rows: Iterator[Subscriber]) -> None:
    out.write(_TABLE.format("ID", "EMAIL", "NAME", "STATUS", "UPDATED").rstrip() + "\n")
    for count, s in enumerate(rows):
        out.write(_TABLE.format(s.id, s.email, s.name, s.status, s.updated) + "\n")
        if count == 0:
            out.flush()  # the first row shows at once, even through a pipe


def _atomic_write(path: Path, write: Callable[[TextIO], int]) -> int:
    """Write a text file whole or not at all (the old file stays until the new one is
    complete). It holds personal data, so it is readable by its owner only."""
    shown = display_path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise HighlightsError(f"{shown}: the folder {display_path(folder)} does not exist")

    def text(fh: BinaryIO) -> int:
        out = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        try:
            return write(out)
        finally:
            out.flush()
            out.detach()

    try:
        count = write_file(path, text, mode=0o600, durable=True)
    except OSError as exc:
        raise HighlightsError(
            f"{shown}: cannot write it: {exc.strerror or exc}; any previous file there is unchanged"
        ) from None
    assert count is not None
    return count
