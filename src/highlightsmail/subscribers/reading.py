"""Reading a subscribers CSV to import: its cells, addresses and names checked, and its
rows streamed in file order, each good one as a row to stage, each bad one as its line
and the reason.

Most rows of a real list are plain (an ASCII address at a domain already seen, a
printable name, a known status): `CsvRows` takes those with a few string tests inline,
and hands every other row to the whole check, which takes it or says what is wrong.
Either way a row gives what the whole check alone would give (the same address, name,
status and times, the same reasons; tests/subscribers/test_import_rejects.py holds a
hostile file to that).
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol, TextIO

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from highlightsmail.addresses import BadAddress, address_key, normalize_address
from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.store import STATUSES, ImportRow, format_time
from highlightsmail.store.importing import StageRow, stage_row
from highlightsmail.text import header_problem, line_problem

CSV_COLUMNS = ("email", "name", "status", "created", "updated", "source", "consented")
#: The column of topic ids (separated by `;`), written and read when there are topics.
TOPICS_COLUMN = "topics"
MAX_SOURCE = 100
MAX_NAME = 200
# OWASP's list of characters that make a spreadsheet cell a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_STATUSES = frozenset(STATUSES)


# -- addresses and cells ----------------------------------------------------------


# RFC 5322 atext, dot-separated: the plain ASCII local parts email-validator takes as
# they are. Anything else (quotes, other scripts, odd dots) gets the full check.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_MAX_ADDRESS = 254  # email-validator's limit, in UTF-8 bytes, on three forms of the address
_ROLE_NAMES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


# Host names of letters, digits and inner hyphens, ending in a TLD of letters: what
# email-validator takes as it is, lower-cased, unless a label has `--` (Punycode and
# the labels RFC 5890 reserves) or the name is one of its special-use ones.
_PLAIN_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", re.IGNORECASE)
_MAX_DOMAIN = 253


def _plain_domain(domain: str) -> str | None:
    """The domain email-validator would give for a plain host name, found without it
    (its Unicode remapping costs more than the rest of an import's row: an import of
    100,000 addresses each at a domain of its own took 5 s); None: ask it."""
    if len(domain) > _MAX_DOMAIN or "--" in domain or not _PLAIN_DOMAIN.fullmatch(domain):
        return None
    import email_validator  # loaded already (this module imports from it)

    if email_validator.TEST_ENVIRONMENT or not email_validator.GLOBALLY_DELIVERABLE:
        return None  # settings changed from their defaults: its own rules
    lowered = domain.lower()
    if any(lowered == name or lowered.endswith("." + name) for name in email_validator.SPECIAL_USE_DOMAIN_NAMES):
        return None
    return lowered


@functools.lru_cache(maxsize=4096)
def _domain_verdict(domain: str) -> tuple[str, int] | str | None:
    """email-validator's verdict on the part after the @, found once per domain with a
    plain local part in front: (the normalised domain, the most UTF-8 bytes any of the
    three forms whose length email-validator checks gives it) when it is good, the
    reason when it is not, None when the reason is the length of the whole address
    (which depends on the part before the @)."""
    plain = _plain_domain(domain)
    if plain is not None:
        return plain, len(domain)  # ASCII: as many bytes as characters, in every form
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


def shown_value(value: str, limit: int = 80) -> str:
    """A user's value quoted for a message, with control characters made visible."""
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return repr(value)


# -- reading a CSV ------------------------------------------------------------------


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
    """A subscribers CSV read as a stream: `staged(rejected)` yields each good data row
    as Staging takes it and puts each bad one in `rejected` as (line, why), in file
    order; `warnings` fills when the header is read. Duplicates are not looked for here
    (see store/importing.py). Raises HighlightsError (naming file and line) when the
    file as a whole cannot be used, with the same precedence as reading it whole: a
    byte that is not UTF-8 anywhere in the file is named before any other problem."""

    def __init__(self, path: Path, topics: tuple[str, ...] = ()) -> None:
        self.path = path
        self.topics = topics  # the settings' topic ids: a `topics` cell may name only these
        self.shown = display_path(path)
        self.warnings: list[str] = []

    def staged(self, rejected: list[tuple[int, str]]) -> Iterator[StageRow]:
        """The good rows by line: a plain row as `_RecordCheck.plain` takes it, any other as
        the whole check judges it; each bad one goes to `rejected`. (One generator: each
        level of `yield from` cost a call per row.)"""
        try:
            with self._open() as stream:
                # csv.reader counts physical lines (newline="" keeps line ends inside
                # quoted cells), so the line a record starts on is one past where the
                # previous one ended.
                reader = csv.reader(stream, strict=True)
                check, line = self._header(reader)
                width, plain = check.width, check.plain
                try:
                    for record in reader:
                        start, line = line, reader.line_num + 1
                        if len(record) == width:
                            staged = plain(record, start)
                            if staged is not None:
                                yield staged
                                continue
                        if not "".join(record).strip():  # a blank line (or only empty cells) is no row
                            continue
                        row, problem = check(record, start)
                        if row is None:
                            assert problem is not None, "a row without a problem is a good row"
                            rejected.append((start, problem))
                        else:
                            yield stage_row(start, row)
                except csv.Error as exc:
                    raise self._bad_csv(exc, line) from None
        except UnicodeDecodeError:
            _decode(self._bytes(), self.shown)  # raises, naming the line and column
            raise
        except HighlightsError:
            _decode(self._bytes(), self.shown)  # a byte that is not UTF-8 is named first
            raise

    def _open(self) -> TextIO:
        try:
            return self.path.open(encoding="utf-8-sig", newline="")
        except FileNotFoundError:
            raise HighlightsError(f"{self.shown}: no such file") from None
        except OSError as exc:
            raise HighlightsError(f"{self.shown}: cannot read it: {exc.strerror or exc}") from None

    def _bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise HighlightsError(f"{self.shown}: no such file") from None
        except OSError as exc:
            raise HighlightsError(f"{self.shown}: cannot read it: {exc.strerror or exc}") from None

    def _bad_csv(self, exc: csv.Error, line: int) -> HighlightsError:
        return HighlightsError(_csv_problem(exc, self.shown, line, _decode(self._bytes(), self.shown)))

    def _header(self, reader: _Reader) -> tuple[_RecordCheck, int]:
        """The check the header makes (the first line with a cell that is not blank), and
        the line the data starts on."""
        line = 1
        try:
            header = next(reader, None)
            while header is not None and not any(cell.strip() for cell in header):
                line = reader.line_num + 1
                header = next(reader, None)
        except csv.Error as exc:
            raise self._bad_csv(exc, line) from None
        if header is None:
            raise HighlightsError(
                f"{self.shown}: the file is empty; its first line must name the columns, e.g. email,name"
            )
        check = _RecordCheck(_columns(header, self.shown, line, self.warnings), len(header))
        check.known_topics = frozenset(self.topics)
        return check, reader.line_num + 1


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
        if name in CSV_COLUMNS or name == TOPICS_COLUMN:
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


class _Reader(Protocol):
    """What CsvRows uses of a csv.reader."""

    @property
    def line_num(self) -> int: ...

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


#: Domains a file's reader keeps at most (a few MB).
_DOMAINS_KEPT = 16384


class _Domains(dict[str, tuple[str, int, str]]):
    """The good domains of a file, as written, each with what the quick path needs: the
    normalised domain, the longest local part the address may have (email-validator's
    length limits), and the domain's part of the address key (`@` and the domain
    lower-cased; empty when it is not ASCII: the whole address is then keyed)."""

    def find(self, domain: str) -> tuple[str, int, str] | None:
        """The entry of a domain not met before, kept when the domain is good; None when
        it is not, or when only the whole check can say (the address's length)."""
        verdict = _domain_verdict(domain)
        if not isinstance(verdict, tuple):
            return None
        normalised, longest = verdict
        entry = (normalised, _MAX_ADDRESS - 1 - longest, "@" + normalised.lower() if normalised.isascii() else "")
        if len(self) >= _DOMAINS_KEPT:
            # Memory stays flat for a list whose addresses each have a domain of their
            # own (1,000,000 of them held 300 MB); a real list's common domains are back
            # at their next address.
            self.clear()
        self[domain] = entry
        return entry


class _RecordCheck:
    """Checks one data row at a time against the header: `(row, None)` or `(None, why
    it is rejected)`. Duplicates are found later, by the database."""

    def __init__(self, columns: dict[str, int], width: int) -> None:
        self.width = width
        self.email_at = columns["email"]
        self.name_at = columns.get("name")
        self.status_at = columns.get("status")
        self.source_at = columns.get("source")
        self.topics_at = columns.get(TOPICS_COLUMN)
        self.known_topics: frozenset[str] = frozenset()
        # Only the time columns the file has, in the order their errors are named.
        self.times = [(column, columns[column]) for column in ("created", "updated", "consented") if column in columns]
        # The cells a plain row leaves empty (a row with one goes through the whole check).
        self.extras = tuple(at for _column, at in self.times) + tuple(
            at for at in (self.source_at, self.topics_at) if at is not None
        )
        self.domains = _Domains()

    def plain(self, record: list[str], line: int) -> StageRow | None:
        """A row of the header's width, staged when it is plain: an ASCII local part
        (no quote in front, no role name) at a good domain, a printable ASCII name, a
        known status, no other cell. None: the whole check must judge it. A few string
        tests and no call of ours: most of an import's time went on calls per row."""
        raw = record[self.email_at].strip()
        local, _, domain = raw.rpartition("@")
        known = self.domains.get(domain) or self.domains.find(domain)
        if not known or len(local) > known[1] or local.startswith("'") or not _PLAIN_LOCAL.fullmatch(local):
            return None
        lower = local.lower()
        name = "" if self.name_at is None else record[self.name_at].strip()
        status = "active" if self.status_at is None else record[self.status_at].strip().lower() or "active"
        # (An empty name passes each test.)
        if (
            lower in _ROLE_NAMES
            or status not in _STATUSES
            or not (name.isascii() and name.isprintable() and "=?" not in name and not name.startswith("'"))
            or len(name) > MAX_NAME
            or (self.extras and any(record[at].strip() for at in self.extras))
        ):
            return None
        email = f"{local}@{known[0]}"
        return line, lower + known[2] if known[2] else address_key(email), email, name, status, ""

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
            return None, f"invalid address {shown_value(raw_email)}: {exc}"
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
            return None, f"unknown status {shown_value(raw_status)} ({email}); use one of {', '.join(STATUSES)}"
        times: dict[str, str | None] = _NO_TIMES
        for column, index in self.times:
            value = record[index].strip()
            if value:
                if times is _NO_TIMES:
                    times = dict(_NO_TIMES)
                try:
                    times[column] = _parse_time(value)
                except ValueError as exc:
                    return None, f"{column} {shown_value(value)} {exc} ({email})"
        source = None if self.source_at is None else (unprotect_cell(record[self.source_at].strip()) or None)
        if source is not None and (line_problem(source) or len(source) > MAX_SOURCE):
            return None, f"source {shown_value(source)} must be one line of at most {MAX_SOURCE} characters ({email})"
        chosen, problem = self._topics(record, email)
        if problem:
            return None, problem
        # No detail: the staging makes each row's "FILE:line" from its line.
        return ImportRow(
            email, name, status, times["created"], times["updated"], None, times["consented"], source, chosen
        ), None

    def _topics(self, record: list[str], email: str) -> tuple[str | None, str | None]:
        """The row's topic ids as `;a;b;` (None: the cell is empty), or why it is refused:
        a row naming a topic the settings do not have is refused whole."""
        cell = "" if self.topics_at is None else record[self.topics_at].strip()
        ids = sorted({t.strip().lower() for t in cell.split(";") if t.strip()})
        unknown = [t for t in ids if t not in self.known_topics]
        if unknown:
            known = ", ".join(sorted(self.known_topics)) or "none (highlights.yaml has no `topics:`)"
            return None, f"unknown topic {shown_value(unknown[0])} ({email}); the topics are {known}"
        return (";" + ";".join(ids) + ";" if ids else None), None
