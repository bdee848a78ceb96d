"""The `highlights subscribers ...` commands: import, add, remove, list, export.

CSV files go both ways with the columns `email,name,status,created,updated,source,consented`:
the last two are the subscriber's latest consent, how and when it was given (`form` and
the time they confirmed), both empty when none is recorded. Import also reads files
without them, or without any column but `email`; a new address whose row has a
`consented` time keeps that consent, with the row's `source`. A cell that
a spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a tab or a CR)
is written with a leading `'`, which import takes off again, so an export imports back
exactly.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from highlightsmail.addresses import BadAddress, normalize_address
from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.store import STATUSES, ImportResult, ImportRow, Store, Subscriber, format_time

if TYPE_CHECKING:
    from highlightsmail.workspace import Workspace

CSV_COLUMNS = ("email", "name", "status", "created", "updated", "source", "consented")
MAX_SOURCE = 100
MAX_NAME = 200
# OWASP's list of characters that make a spreadsheet cell a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


# -- addresses and cells ----------------------------------------------------------


def check_name(raw: str) -> str:
    """A subscriber's name: one line, trimmed, at most MAX_NAME characters (it ends up in
    the To header, so no line breaks or control characters)."""
    name = raw.strip()
    if _CONTROL_RE.search(name):
        raise ValueError("the name contains a line break or a control character")
    if len(name) > MAX_NAME:
        raise ValueError(f"the name is longer than {MAX_NAME} characters")
    return name


def _formula_like(value: str) -> bool:
    # Quotes already in front count too: `'=x` must come back as `'=x`, not `=x`.
    return value.lstrip("'").startswith(_FORMULA_START)


def protect_cell(value: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula: a leading `'` before a value
    that starts with a formula character (after any quotes it already has)."""
    return "'" + value if _formula_like(value) else value


def unprotect_cell(value: str) -> str:
    """Undo `protect_cell`: drop one leading `'` before a formula character (or before
    more quotes and then one), so `unprotect_cell(protect_cell(v)) == v` for any v."""
    return value[1:] if value.startswith("'") and _formula_like(value) else value


def _shown(value: str, limit: int = 80) -> str:
    """A user's value quoted for a message, with control characters made visible."""
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return repr(value)


# -- reading a CSV ------------------------------------------------------------------


@dataclass
class ParsedFile:
    """What a CSV file holds: the valid rows, and a message per rejected row or warning."""

    rows: list[ImportRow] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _decode(data: bytes, shown: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise HighlightsError(
            f"{shown}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
            "save the file as CSV UTF-8 and import it again"
        ) from None


def _parse_time(value: str) -> str | None:
    """A created/updated cell in the stored format, or None when it is not a time."""
    try:
        return format_time(datetime.fromisoformat(value))
    except ValueError:
        return None


def parse_csv(path: Path) -> ParsedFile:
    """Read and check a subscribers CSV. Raises HighlightsError (naming file and line)
    when the file as a whole cannot be used; bad rows are collected, not raised."""
    shown = display_path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HighlightsError(f"{shown}: no such file") from None
    except OSError as exc:
        raise HighlightsError(f"{shown}: cannot read it: {exc.strerror or exc}") from None
    text = _decode(data, shown)

    # newline="" keeps line ends inside quoted cells, and csv.reader counts physical
    # lines, so the line a record starts on is one past where the previous one ended.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    result = ParsedFile()
    records: list[tuple[int, list[str]]] = []
    line = 1
    try:
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            line = reader.line_num + 1
            header = next(reader, None)
        if header is None:
            raise HighlightsError(f"{shown}: the file is empty; its first line must name the columns, e.g. email,name")
        columns = _columns(header, shown, line, result)
        line = reader.line_num + 1
        for record in reader:
            start, line = line, reader.line_num + 1
            if "".join(record).strip():  # a blank line (or only empty cells) is no row
                records.append((start, record))
    except csv.Error as exc:
        raise HighlightsError(f"{shown}:{line}: not valid CSV ({exc}); is a quote left open?") from None

    with _domain_checks_memoized():
        checked = [_check_record(record, columns, len(header), start, path.name) for start, record in records]
    seen: dict[str, int] = {}  # lower-cased address -> line of its first good row
    for (start, _record), (row, problem) in zip(records, checked, strict=False):
        if row is not None:
            first = seen.setdefault(row.email.lower(), start)
            if first == start:
                result.rows.append(row)
                continue
            problem = f"duplicate of line {first} ({row.email})"
        result.rejected.append(f"{shown}:{start}: {problem}")
    return result


@contextmanager
def _domain_checks_memoized() -> Iterator[None]:
    """Check each distinct domain once during an import.

    email-validator spends about two thirds of its time on the part after the @, and a
    list repeats the same domains over and over; that check is a pure function of its
    arguments (its result is only read), so it is cached for the length of one import.
    This is what keeps 100,000 rows within a few seconds. Should a later email-validator
    move the function, the import is merely slower.
    """
    import importlib

    # By module path: the package's attribute of that name is the function, not the module.
    module = importlib.import_module("email_validator.validate_email")
    original = getattr(module, "validate_email_domain_name", None)
    if not callable(original):
        yield
        return
    # A list where every domain differs gets no help from that cache; there the time
    # goes to a per-character Unicode check, also pure, and a list has few characters.
    syntax = importlib.import_module("email_validator.syntax")
    char_check = getattr(syntax, "uts46_valid_char", None)
    module.validate_email_domain_name = functools.lru_cache(maxsize=20_000)(original)
    if callable(char_check):
        syntax.uts46_valid_char = functools.lru_cache(maxsize=4096)(char_check)
    try:
        yield
    finally:
        module.validate_email_domain_name = original
        if callable(char_check):
            syntax.uts46_valid_char = char_check


def _columns(header: list[str], shown: str, line: int, result: ParsedFile) -> dict[str, int]:
    names = [cell.strip().lower() for cell in header]
    columns: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in columns:
            raise HighlightsError(f"{shown}:{line}: the column {name!r} appears twice")
        if name in CSV_COLUMNS:
            columns[name] = index
        elif name:
            result.warnings.append(f"{shown}:{line}: warning: ignoring the column {header[index].strip()!r}")
    if "email" not in columns:
        hint = "name the column of addresses `email`"
        if len(header) == 1 and ";" in header[0]:
            hint = "separate the columns with commas, not semicolons"
        found = ", ".join(repr(h.strip()) for h in header if h.strip()) or "nothing"
        raise HighlightsError(f"{shown}:{line}: no `email` column (found {found}); {hint}")
    return columns


def _check_record(
    record: list[str], columns: dict[str, int], width: int, line: int, file_name: str
) -> tuple[ImportRow | None, str | None]:
    """One data row -> (row, None) or (None, why it is rejected). Duplicates are found later."""
    if len(record) > width:
        return None, (
            f"{len(record)} cells but the header has {width} (a name with a comma needs double quotes around it)"
        )
    if len(record) < width:
        record = record + [""] * (width - len(record))
    cells = {column: record[index].strip() for column, index in columns.items()}

    raw_email = unprotect_cell(cells["email"])
    if not raw_email:
        return None, "no address"
    try:
        email = normalize_address(raw_email)
    except BadAddress as exc:
        return None, f"invalid address {_shown(raw_email)}: {exc}"
    try:
        name = check_name(unprotect_cell(cells.get("name", "")))
    except ValueError as exc:
        return None, f"{exc} ({email})"
    status = cells.get("status", "").lower() or "active"
    if status not in STATUSES:
        return None, f"unknown status {_shown(cells['status'])} ({email}); use one of {', '.join(STATUSES)}"
    times: dict[str, str | None] = {"created": None, "updated": None, "consented": None}
    for column in times:
        value = cells.get(column)
        if value:
            times[column] = _parse_time(value)
            if times[column] is None:
                return None, f"{column} {_shown(value)} is not an ISO 8601 time like 2024-01-12T08:30:00Z ({email})"
    source = unprotect_cell(cells.get("source", "")) or None
    if source is not None and (_CONTROL_RE.search(source) or len(source) > MAX_SOURCE):
        return None, f"source {_shown(source)} must be one line of at most {MAX_SOURCE} characters ({email})"
    row = ImportRow(email, name, status, times["created"], times["updated"], f"{file_name}:{line}")
    return row._replace(consented=times["consented"], consent_source=source), None


# -- commands -------------------------------------------------------------------------


def _open_store(ws: Workspace) -> Store:
    return Store.open(ws)


def import_command(ws: Workspace, file: Path, dry_run: bool = False) -> None:
    """`subscribers import FILE [--dry-run]`: every good row in one transaction; bad and
    duplicate rows reported by line on stderr. Exit 1 only when nothing could be used."""
    parsed = parse_csv(file)
    for message in parsed.warnings + parsed.rejected:
        click.echo(message, err=True)
    rejected = len(parsed.rejected)
    if rejected and not parsed.rows:
        raise HighlightsError(f"{display_path(file)}: no valid rows ({rejected} rejected); nothing imported")
    if dry_run and not ws.db_path.exists():
        # Nothing to compare with, and a dry run must not even create the database.
        result = ImportResult(new=len(parsed.rows), updated=0, unchanged=0)
    else:
        with _open_store(ws) as store:
            result = store.import_rows(parsed.rows, dry_run=dry_run)
    summary = f"{result.new} new, {result.updated} updated, {result.unchanged} unchanged, {rejected} rejected"
    if dry_run:
        click.echo(f"dry run: would import {summary}; nothing was changed")
    else:
        click.echo(f"imported {summary}")


def add_command(ws: Workspace, email: str, name: str = "") -> None:
    """`subscribers add EMAIL [--name NAME]`: add an active subscriber. Someone who left
    is not made active by the editor; only their own resubscribe link does that."""
    address = _address_arg(email)
    try:
        name = check_name(name)
    except ValueError as exc:
        raise HighlightsError(f"--name: {exc}") from None
    with _open_store(ws) as store:
        subscriber, created = store.add(address, name, source="cli")
        if created:
            click.echo(f"added {subscriber.email}")
            return
        if subscriber.status != "active":
            raise HighlightsError(
                f"{subscriber.email} is {subscriber.status} and stays so: only the subscriber can come back, "
                "with the resubscribe button on the page their unsubscribe link opens"
            )
        if name and name != subscriber.name:
            store.set_name(subscriber.id, name)
            click.echo(f"{subscriber.email} is already subscribed; name set to {name!r}")
        else:
            click.echo(f"{subscriber.email} is already subscribed")


def remove_command(ws: Workspace, email: str) -> None:
    """`subscribers remove EMAIL`: unsubscribe (the row stays, so the address is never
    mailed again). A bounced or complained address keeps that status."""
    address = _address_arg(email)
    with _open_store(ws) as store:
        subscriber = store.find(address)
        if subscriber is None:
            raise HighlightsError(f"{address} is not a subscriber; nothing changed")
        if subscriber.status != "active":
            click.echo(f"{subscriber.email} is already {subscriber.status}; it gets no mail")
            return
        store.set_status(subscriber.id, "unsubscribed", "cli")
        click.echo(f"unsubscribed {subscriber.email}")


def _address_arg(raw: str) -> str:
    try:
        return normalize_address(raw)
    except BadAddress as exc:
        raise HighlightsError(f"invalid address {_shown(raw.strip())}: {exc}") from None


_TABLE = "{:>7}  {:<40}  {:<24}  {:<12}  {}"  # fixed widths: printing starts at the first row


def list_command(ws: Workspace, status: str | None = None, fmt: str = "table") -> None:
    """`subscribers list [--status S] [--format table|csv|json]`, streamed row by row."""
    with _open_store(ws) as store, _stdout() as out:
        rows = store.iter_subscribers(status)  # type: ignore[arg-type]
        if fmt == "csv":
            _write_csv(out, store, rows)
        elif fmt == "json":
            _write_json(out, rows)
        else:
            _write_table(out, rows)


def export_command(ws: Workspace, file: Path | None = None) -> None:
    """`subscribers export [FILE]`: every subscriber as CSV, to FILE (written atomically:
    a reader never sees half a file) or to standard output."""
    with _open_store(ws) as store:
        if file is None:
            with _stdout() as out:
                _write_csv(out, store, store.iter_subscribers())
            return
        count = _atomic_write(file, lambda out: _write_csv(out, store, store.iter_subscribers()))
    click.echo(f"exported {count} subscribers to {display_path(file)}", err=True)


def _write_csv(out: TextIO, store: Store, rows: Iterator[Subscriber]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    for s, source, consented in store.with_consent(rows):
        writer.writerow(
            (
                protect_cell(s.email),
                protect_cell(s.name),
                s.status,
                s.created,
                s.updated,
                protect_cell(source),
                consented,
            )
        )
        count += 1
        if count == 1:
            out.flush()  # the first row shows at once, even through a pipe
    return count


def _write_json(out: TextIO, rows: Iterator[Subscriber]) -> None:
    # One JSON array, one subscriber per line: valid JSON as a whole, and still streamed.
    out.write("[")
    separator = "\n"
    for s in rows:
        out.write(
            separator
            + json.dumps(
                {
                    "id": s.id,
                    "email": s.email,
                    "name": s.name,
                    "status": s.status,
                    "created": s.created,
                    "updated": s.updated,
                },
                ensure_ascii=False,
            )
        )
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


@contextmanager
def _stdout() -> Iterator[TextIO]:
    """Standard output for streaming; a reader that stops early (`| head`) ends the
    command quietly instead of with a BrokenPipeError traceback."""
    out = sys.stdout
    try:
        yield out
        out.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)


def _atomic_write(path: Path, write) -> int:
    """Write a text file through a temporary file in the same folder, then rename it
    into place, so the file is either the old one or the whole new one. It holds
    personal data, so it is readable by its owner only (mode 0600, as mkstemp makes it)."""
    shown = display_path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise HighlightsError(f"{shown}: the folder {display_path(folder)} does not exist")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise HighlightsError(f"{shown}: cannot write there: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            result = write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        Path(temp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise HighlightsError(
                f"{shown}: cannot write it: {exc.strerror or exc}; any previous file there is unchanged"
            ) from None
        raise
    return result
