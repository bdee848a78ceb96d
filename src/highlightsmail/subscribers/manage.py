"""The subscriber list from the command line: reading and checking a CSV to import,
adding and removing one subscriber, and writing the list out (CSV, JSON, a table).

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
import functools
import heapq
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from highlightsmail.addresses import BadAddress, normalize_address
from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.files import write_file
from highlightsmail.store import STATUSES, ImportResult, ImportRow, Status, Store, Subscriber, format_time
from highlightsmail.store.importing import Staging
from highlightsmail.text import header_problem, line_problem

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace

CSV_COLUMNS = ("email", "name", "status", "created", "updated", "source", "consented")
MAX_SOURCE = 100
MAX_NAME = 200
# OWASP's list of characters that make a spreadsheet cell a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# -- addresses and cells ----------------------------------------------------------


# RFC 5322 atext, dot-separated: the plain ASCII local parts email-validator takes as
# they are. Anything else (quotes, other scripts, odd dots) gets the full check.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_MAX_ADDRESS = 254  # email-validator's limit, in UTF-8 bytes, on three forms of the address
_ROLE_NAMES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


@functools.lru_cache(maxsize=4096)
def _domain_verdict(domain: str) -> tuple[str, int] | str | None:
    """email-validator's verdict on the part after the @, found once per domain with a
    plain local part in front: (the normalised domain, the most UTF-8 bytes any of the
    three forms whose length email-validator checks gives it) when it is good, the
    reason when it is not, None when the reason is the length of the whole address
    (which depends on the part before the @)."""
    try:
        checked = validate_email("a@" + domain, check_deliverability=False)
    except EmailNotValidError as exc:
        reason = str(exc)
        return None if reason.startswith("The email address is too long") else reason
    forms = (domain, checked.domain, checked.ascii_domain)
    return checked.domain, max(len(form.encode()) for form in forms)


def fast_normalize_address(raw: str) -> str:
    """`normalize_address`, with the costly part done once per domain: a plain ASCII
    local part (no role name such as `postmaster` that email-validator lower-cases)
    needs no check beyond a pattern, and the rest of the address is judged as
    email-validator judges it on its own. Anything else, and an address near the
    length limit, goes through `normalize_address` whole, so results and messages are
    the same (tests/subscribers/test_import_rejects.py compares them)."""
    address = raw.strip()
    local, at, domain = address.rpartition("@")
    if at and _PLAIN_LOCAL.fullmatch(local) and local.lower() not in _ROLE_NAMES:
        verdict = _domain_verdict(domain)
        if isinstance(verdict, str):
            raise BadAddress(verdict)
        # The local part is ASCII: its length in characters is its length in bytes.
        if verdict is not None and len(local) + 1 + verdict[1] <= _MAX_ADDRESS:
            return f"{local}@{verdict[0]}"
    return normalize_address(raw)


def check_name(raw: str) -> str:
    """A subscriber's name: trimmed, at most MAX_NAME characters, and fit for the To
    header as typed (one line, no control characters, no RFC 2047 encoded word)."""
    name = raw.strip()
    # Printable ASCII without "=?" holds nothing header_problem looks for: most names
    # need no more than this quick test.
    problem = None if name.isascii() and name.isprintable() and "=?" not in name else header_problem(name)
    if problem:
        raise ValueError(f"the name {problem}")
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

    rows: list[ImportRow] = field(default_factory=list[ImportRow])
    rejected: list[str] = field(default_factory=list[str])
    warnings: list[str] = field(default_factory=list[str])


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


def _parse_time(value: str) -> str:
    """A created/updated cell in the stored format; ValueError says what is wrong."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("is not an ISO 8601 time like 2024-01-12T08:30:00Z") from None
    try:
        return format_time(moment)
    except OverflowError:  # its offset moves it out of years 1 to 9999 in UTC
        raise ValueError("is out of range (it must fall within the years 1 to 9999 in UTC)") from None


class CsvRows:
    """A subscribers CSV read as a stream: iterating yields (line, row, None) for each
    good data row and (line, None, why) for each bad one, in file order; `warnings`
    fills when the header is read. Duplicates are not looked for here (see
    store/importing.py). Raises HighlightsError (naming file and line) when the file as
    a whole cannot be used, with the same precedence as reading it whole: a byte that
    is not UTF-8 anywhere in the file is named before any other problem."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shown = display_path(path)
        self.warnings: list[str] = []

    def __iter__(self) -> Iterator[tuple[int, ImportRow | None, str | None]]:
        try:
            yield from self._records()
        except UnicodeDecodeError:
            _decode(self._bytes(), self.shown)  # raises, naming the line and column
            raise
        except HighlightsError:
            _decode(self._bytes(), self.shown)  # a byte that is not UTF-8 is named first
            raise

    def _bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise HighlightsError(f"{self.shown}: no such file") from None
        except OSError as exc:
            raise HighlightsError(f"{self.shown}: cannot read it: {exc.strerror or exc}") from None

    def _records(self) -> Iterator[tuple[int, ImportRow | None, str | None]]:
        shown = self.shown
        try:
            # newline="" keeps line ends inside quoted cells, and csv.reader counts
            # physical lines, so the line a record starts on is one past where the
            # previous one ended.
            stream = self.path.open(encoding="utf-8-sig", newline="")
        except FileNotFoundError:
            raise HighlightsError(f"{shown}: no such file") from None
        except OSError as exc:
            raise HighlightsError(f"{shown}: cannot read it: {exc.strerror or exc}") from None
        with stream:
            reader = csv.reader(stream, strict=True)
            line = 1
            try:
                header = next(reader, None)
                while header is not None and not any(cell.strip() for cell in header):
                    line = reader.line_num + 1
                    header = next(reader, None)
                if header is None:
                    raise HighlightsError(
                        f"{shown}: the file is empty; its first line must name the columns, e.g. email,name"
                    )
                check = _RecordCheck(_columns(header, shown, line, self.warnings), len(header))
                line = reader.line_num + 1
                for record in reader:
                    start, line = line, reader.line_num + 1
                    if "".join(record).strip():  # a blank line (or only empty cells) is no row
                        yield (start, *check(record, start))
            except csv.Error as exc:
                raise HighlightsError(_csv_problem(exc, shown, line, _decode(self._bytes(), shown))) from None


def parse_csv(path: Path) -> ParsedFile:
    """Read and check a subscribers CSV whole (the rows in a list: for small files and
    tests; `import_file` streams). Raises HighlightsError (naming file and line) when
    the file as a whole cannot be used; bad rows are collected, not raised."""
    rows = CsvRows(path)
    rejected: list[tuple[int, str]] = []
    with Staging(path.name) as staging:
        staging.load(_good_rows(rows, rejected))
        duplicates = staging.drop_duplicates()
        return ParsedFile(
            rows=list(staging.import_rows()),
            rejected=list(_rejects(rows.shown, rejected, duplicates)),
            warnings=rows.warnings,
        )


def _good_rows(
    rows: Iterable[tuple[int, ImportRow | None, str | None]], rejected: list[tuple[int, str]]
) -> Iterator[tuple[int, ImportRow]]:
    """The good rows with their lines; each bad one goes to `rejected` as (line, why)."""
    for line, row, problem in rows:
        if row is None:
            assert problem is not None, "a row without a problem is a good row"
            rejected.append((line, problem))
        else:
            yield line, row


def _rejects(shown: str, rejected: list[tuple[int, str]], duplicates: list[tuple[int, int, str]]) -> Iterator[str]:
    """One message per rejected row, by line: bad rows and duplicates in one order."""
    marked = heapq.merge(
        rejected, ((line, f"duplicate of line {first} ({email})") for line, first, email in duplicates)
    )
    return (f"{shown}:{line}: {problem}" for line, problem in marked)


def _csv_problem(exc: csv.Error, shown: str, line: int, text: str) -> str:
    """The one line for a file the csv module cannot read, at the line of its record."""
    if "field larger than field limit" in str(exc):
        # A quote left open makes one cell of the rest of the file: say so only when
        # the line where the record starts has an odd number of quotes.
        lines = text.split("\n", line)
        start = lines[line - 1] if len(lines) >= line else ""
        hint = "; is a quote left open?" if start.count('"') % 2 else ""
        return (
            f"{shown}:{line}: a cell is too large (over {csv.field_size_limit():,} characters; "
            f"no address, name, status or time is that long){hint}"
        )
    return f"{shown}:{line}: not valid CSV ({exc}); is a quote left open?"


def _columns(header: list[str], shown: str, line: int, warnings: list[str]) -> dict[str, int]:
    names = [cell.strip().lower() for cell in header]
    columns: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in columns:
            raise HighlightsError(f"{shown}:{line}: the column {name!r} appears twice")
        if name in CSV_COLUMNS:
            columns[name] = index
        elif name:
            warnings.append(f"{shown}:{line}: warning: ignoring the column {header[index].strip()!r}")
    if "email" not in columns:
        hint = "name the column of addresses `email`"
        if len(header) == 1 and ";" in header[0]:
            hint = "separate the columns with commas, not semicolons"
        found = ", ".join(repr(h.strip()) for h in header if h.strip()) or "nothing"
        raise HighlightsError(f"{shown}:{line}: no `email` column (found {found}); {hint}")
    return columns


_NO_TIMES: dict[str, str | None] = {"created": None, "updated": None, "consented": None}  # never changed


class _RecordCheck:
    """Checks one data row at a time against the header: `(row, None)` or `(None, why
    it is rejected)`. Duplicates are found later, by the database."""

    def __init__(self, columns: dict[str, int], width: int) -> None:
        self.width = width
        self.email_at = columns["email"]
        self.name_at = columns.get("name")
        self.status_at = columns.get("status")
        self.source_at = columns.get("source")
        # Only the time columns the file has, in the order their errors are named.
        self.times = [(column, columns[column]) for column in ("created", "updated", "consented") if column in columns]

    def __call__(self, record: list[str], line: int) -> tuple[ImportRow | None, str | None]:
        width = self.width
        if len(record) != width:
            if len(record) > width:
                return None, (
                    f"{len(record)} cells but the header has {width} "
                    "(a name with a comma needs double quotes around it)"
                )
            record = record + [""] * (width - len(record))
        raw_email = unprotect_cell(record[self.email_at].strip())
        if not raw_email:
            return None, "no address"
        try:
            email = fast_normalize_address(raw_email)
        except BadAddress as exc:
            return None, f"invalid address {_shown(raw_email)}: {exc}"
        return self._rest(record, email, line)

    def _rest(self, record: list[str], email: str, line: int) -> tuple[ImportRow | None, str | None]:
        name = "" if self.name_at is None else record[self.name_at].strip()
        if name:
            try:
                name = check_name(unprotect_cell(name))
            except ValueError as exc:
                return None, f"{exc} ({email})"
        raw_status = "" if self.status_at is None else record[self.status_at].strip()
        status = raw_status.lower() or "active"
        if status not in STATUSES:
            return None, f"unknown status {_shown(raw_status)} ({email}); use one of {', '.join(STATUSES)}"
        times: dict[str, str | None] = _NO_TIMES
        for column, index in self.times:
            value = record[index].strip()
            if value:
                if times is _NO_TIMES:
                    times = dict(_NO_TIMES)
                try:
                    times[column] = _parse_time(value)
                except ValueError as exc:
                    return None, f"{column} {_shown(value)} {exc} ({email})"
        source = None if self.source_at is None else (unprotect_cell(record[self.source_at].strip()) or None)
        if source is not None and (line_problem(source) or len(source) > MAX_SOURCE):
            return None, f"source {_shown(source)} must be one line of at most {MAX_SOURCE} characters ({email})"
        # No detail: the staging makes each row's "FILE:line" from its line.
        return ImportRow(
            email, name, status, times["created"], times["updated"], None, times["consented"], source
        ), None


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
    rows = CsvRows(file)
    rejected: list[tuple[int, str]] = []  # only the rejects are held in memory
    with Staging(file.name) as staging:
        staging.load(_good_rows(rows, rejected))
        duplicates = staging.drop_duplicates()
        for message in rows.warnings:
            tell(message)
        count = len(rejected) + len(duplicates)
        for message in _rejects(rows.shown, rejected, duplicates):
            tell(message)
        good = staging.count()
        if count and not good:
            raise HighlightsError(f"{rows.shown}: no valid rows ({count} rejected); nothing imported")
        if dry_run and not ws.database_exists():
            # Nothing to compare with, and a dry run must not even create the database.
            return Imported(ImportResult(new=good, updated=0, unchanged=0), count)
        with Store.open(ws) as store:
            return Imported(store.import_staged(staging, detail=staging.detail, dry_run=dry_run), count)


def import_parsed(ws: Workspace, file: Path, parsed: ParsedFile, dry_run: bool = False) -> ImportResult:
    """Import the good rows of a file `parse_csv` read, in one transaction (rolled back
    for a dry run). Raises HighlightsError when the file had rows and none was usable."""
    rejected = len(parsed.rejected)
    if rejected and not parsed.rows:
        raise HighlightsError(f"{display_path(file)}: no valid rows ({rejected} rejected); nothing imported")
    if dry_run and not ws.database_exists():
        return ImportResult(new=len(parsed.rows), updated=0, unchanged=0)
    with Store.open(ws) as store:
        return store.import_rows(parsed.rows, dry_run=dry_run)


@dataclass(frozen=True)
class Added:
    """What `subscribers add` did: `created`, or found the address (`renamed` when the
    name given replaced another)."""

    subscriber: Subscriber
    created: bool
    renamed: bool = False


def add(ws: Workspace, email: str, name: str = "") -> Added:
    """`subscribers add EMAIL [--name NAME]`: add an active subscriber. Someone who left
    is not made active by the editor; only their own resubscribe link does that."""
    address = address_argument(email)
    try:
        name = check_name(name)
    except ValueError as exc:
        raise HighlightsError(f"--name: {exc}") from None
    with Store.open(ws) as store:
        subscriber, created = store.add(address, name, source="cli")
        if created:
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
        raise HighlightsError(f"invalid address {_shown(raw.strip())}: {exc}") from None


_TABLE = "{:>7}  {:<40}  {:<24}  {:<12}  {}"  # fixed widths: printing starts at the first row


def write_list(ws: Workspace, out: TextIO, status: Status | None = None, fmt: str = "table") -> None:
    """`subscribers list [--status S] [--format table|csv|json]`, streamed row by row to `out`."""
    with Store.open(ws) as store:
        rows = store.iter_subscribers(status)
        if fmt == "csv":
            _write_csv(out, store, rows)
        elif fmt == "json":
            _write_json(out, rows)
        else:
            _write_table(out, rows)


def export(ws: Workspace, file: Path | None, out: TextIO | None = None) -> int:
    """`subscribers export [FILE]`: every subscriber as CSV, to FILE (written atomically:
    a reader never sees half a file) or else to `out`. Returns how many."""
    if file is not None:
        ws.check_output(file)
    with Store.open(ws) as store:
        if file is None:
            assert out is not None, "export to a stream needs the stream"
            return _write_csv(out, store, store.iter_subscribers())
        return _atomic_write(file, lambda stream: _write_csv(stream, store, store.iter_subscribers()))


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
