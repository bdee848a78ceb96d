"""`subscribers import` reports a hostile file's bad rows exactly as it always has:
the same lines, numbers and messages (bad addresses of every kind, duplicates in any
spelling, bad cells, blank lines, line breaks inside quotes, files that are not UTF-8),
imports the same rows, and never makes anyone who left active again, on both engines."""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from highlightsmail.addresses import BadAddress, normalize_address
from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.store import Store
from highlightsmail.store.importing import stage_row
from highlightsmail.subscribers import reading
from highlightsmail.subscribers.reading import _columns, _plain_domain, _RecordCheck, fast_normalize_address

HOSTILE = (
    "\ufeff Email ,name,status,created,updated,source,consented,Phone\r\n"  # 1 BOM, spaces, extra column
    "ada@example.org,Ada,,,,,,1\n"  # 2
    "\n"  # 3 blank
    "  \n"  # 4 blank (spaces)
    ",,,,,,,\n"  # 5 only empty cells
    "ADA@EXAMPLE.ORG,Ada again,,,,,,\n"  # 6 duplicate of 2 by case
    "bob@,Bob,,,,,,\n"  # 7 invalid
    "@example.org,,,,,,,\n"  # 8 no local part
    "a..b@example.org,,,,,,,\n"  # 9 consecutive dots
    ".a@example.org,,,,,,,\n"  # 10 leading dot
    "a.@example.org,,,,,,,\n"  # 11 trailing dot
    "a b@example.org,,,,,,,\n"  # 12 space
    "a@b@example.org,,,,,,,\n"  # 13 two at signs
    '"""quoted""@example.org",,,,,,,\n'  # 14 quoted local part
    "Ada <ada2@example.org>,,,,,,,\n"  # 15 display name
    "x@localhost,,,,,,,\n"  # 16 special-use domain
    "x@example,,,,,,,\n"  # 17 no dot in domain
    "x@exa_mple.org,,,,,,,\n"  # 18 underscore in domain
    "x@-example.org,,,,,,,\n"  # 19 hyphen at start of label
    "x@[127.0.0.1],,,,,,,\n"  # 20 domain literal
    "y@localhost,,,,,,,\n"  # 21 the same bad domain again
    "Postmaster@Example.org,,,,,,,\n"  # 22 role name: lower-cased
    "POSTMASTER@example.ORG,,,,,,,\n"  # 23 duplicate of 22
    "zoë@bücher.de,Zoë,,,,,,\n"  # 24 internationalised
    "ZOË@BÜCHER.DE,,,,,,,\n"  # 25 duplicate of 24
    "x@xn--bcher-kva.de,,,,,,,\n"  # 26 IDNA ASCII form
    "a@xn--bcher-kva.de,,,,,,,\n"  # 27
    f"{'l' * 64}@example.org,,,,,,,\n"  # 28 longest local part
    f"{'l' * 65}@example.org,,,,,,,\n"  # 29 local part too long
    f"m@{'d' * 63}.{'e' * 63}.{'f' * 63}.{'g' * 57}.org,,,,,,,\n"  # 30 long domain
    f"{'n' * 10}@{'d' * 63}.{'e' * 63}.{'f' * 63}.{'g' * 50}.org,,,,,,,\n"  # 31 address too long
    '"eve\nx@example.org",Eve,,,,,,\n'  # 32-33 quoted newline in the address
    'hal@example.org,"Hal\nNine",,,,,,\n'  # 34-35 quoted newline in the name
    'ok@example.org,"Ok, ""Quoted""",active,,,,,\n'  # 36
    "carl@example.org,Carl,paused,,,,,\n"  # 37 unknown status
    "dan@example.org,Dan,BOUNCED,,,,,\n"  # 38
    "x@example.org,a,b,c,d,e,f,g,h\n"  # 39 too many cells
    "short@example.org\n"  # 40 too few cells: fine
    "t@example.org,,,yesterday,,,,\n"  # 41 bad time
    "u@example.org,,,2024-01-12T08:30:00Z,2024-01-13T08:30:00+02:00,form,2024-01-12T09:00:00Z,\n"  # 42
    "v@example.org,=cmd,,,,,,\n"  # 43 formula name, kept as typed
    "'=w@example.org,,,,,,,\n"  # 44 protected formula address
    "w@example.org,,,,,,,x\n"  # 45
    "src@example.org,,,,,bad\tsource,,\n"  # 46 bad source
    "Ada@Example.org,,,,,,,\n"  # 47 third spelling of 2
    "info@example.org,,unsubscribed,,,,,\n"  # 48
    "\u00e9@example.org,,,,,,,\n"  # 49 unicode local
    "e\u0301@example.org,,,,,,,\n"  # 50 duplicate of 49 after NFC
    "x@\u0338example.org,,,,,,,\n"  # 51 combining mark after @
    "x@example.org.,,,,,,,\n"  # 52 trailing dot in domain
    "x@ex..ample.org,,,,,,,\n"  # 53 empty label
    "x@,,,,,,,\n"  # 54 nothing after @
    "noat,,,,,,,\n"  # 55 no @
    "x\uff20example.org,,,,,,,\n"  # 56 full-width at
    "x@example.test,,,,,,,\n"  # 57 special-use TLD
    "X@EXAMPLE.ORG,,,,,,,\n"  # 58 duplicate of 39's address? (39 was rejected) -> first good row
    "x@example.org,,,,,,,\n"  # 59 duplicate of 58
)

# What `subscribers import hostile.csv` wrote to stderr before the import was made to
# stream: any change to a line, a number or a message is a regression.
REJECTS = [
    "hostile.csv:1: warning: ignoring the column 'Phone'",
    "hostile.csv:6: duplicate of line 2 (ADA@example.org)",
    "hostile.csv:7: invalid address 'bob@': There must be something after the @-sign.",
    "hostile.csv:8: invalid address '@example.org': There must be something before the @-sign.",
    "hostile.csv:9: invalid address 'a..b@example.org': An email address cannot have two periods in a row.",
    "hostile.csv:10: invalid address '.a@example.org': An email address cannot start with a period.",
    "hostile.csv:11: invalid address 'a.@example.org': An email address cannot have a period immediately before the @-sign.",
    "hostile.csv:12: invalid address 'a b@example.org': The email address contains invalid characters before the @-sign: SPACE.",
    "hostile.csv:13: invalid address 'a@b@example.org': The part after the @-sign contains invalid characters: '@'.",
    "hostile.csv:14: invalid address '\"quoted\"@example.org': Quoting the part before the @-sign is not allowed here.",
    "hostile.csv:15: invalid address 'Ada <ada2@example.org>': A display name and angle brackets around the email address are not permitted here.",
    "hostile.csv:16: invalid address 'x@localhost': The part after the @-sign is not valid. It should have a period.",
    "hostile.csv:17: invalid address 'x@example': The part after the @-sign is not valid. It should have a period.",
    "hostile.csv:18: invalid address 'x@exa_mple.org': The part after the @-sign contains invalid characters: '_'.",
    "hostile.csv:19: invalid address 'x@-example.org': An email address cannot have a hyphen immediately after the @-sign.",
    "hostile.csv:20: invalid address 'x@[127.0.0.1]': A bracketed IP address after the @-sign is not allowed here.",
    "hostile.csv:21: invalid address 'y@localhost': The part after the @-sign is not valid. It should have a period.",
    "hostile.csv:23: duplicate of line 22 (postmaster@example.org)",
    "hostile.csv:25: duplicate of line 24 (ZOË@bücher.de)",
    "hostile.csv:30: invalid address 'm@ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd.eeeeeeeeeeeee…': The email address is too long (1 character too many).",
    "hostile.csv:31: invalid address 'nnnnnnnnnn@ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd.eeee…': The email address is too long (3 characters too many).",
    "hostile.csv:32: invalid address 'eve\\nx@example.org': The email address contains invalid characters before the @-sign: U+000A.",
    "hostile.csv:34: the name must be a single line (it holds a line break, U+000A) (hal@example.org)",
    "hostile.csv:37: unknown status 'paused' (carl@example.org); use one of active, unsubscribed, bounced, complained, pending",
    "hostile.csv:39: 9 cells but the header has 8 (a name with a comma needs double quotes around it)",
    "hostile.csv:41: created 'yesterday' is not an ISO 8601 time like 2024-01-12T08:30:00Z (t@example.org)",
    "hostile.csv:46: source 'bad\\tsource' must be one line of at most 100 characters (src@example.org)",
    "hostile.csv:47: duplicate of line 2 (Ada@example.org)",
    "hostile.csv:50: duplicate of line 49 (é@example.org)",
    "hostile.csv:51: invalid address 'x@̸example.org': The email address contains unsafe characters: COMBINING LONG SOLIDUS OVERLAY.",
    "hostile.csv:52: invalid address 'x@example.org.': An email address cannot end with a period.",
    "hostile.csv:53: invalid address 'x@ex..ample.org': An email address cannot have two periods in a row.",
    "hostile.csv:54: invalid address 'x@': There must be something after the @-sign.",
    "hostile.csv:55: invalid address 'noat': An email address must have an @-sign.",
    "hostile.csv:56: invalid address 'x＠example.org': The email address has the \"full-width\" at-sign (@) character instead of a regular at-sign.",
    "hostile.csv:57: invalid address 'x@example.test': The part after the @-sign is a special-use or reserved name that cannot be used with email.",
    "hostile.csv:59: duplicate of line 58 (x@example.org)",
]

# The subscribers the file makes, in the order they were created.
IMPORTED = [
    ("ada@example.org", "Ada", "active"),
    ("postmaster@example.org", "", "active"),
    ("zoë@bücher.de", "Zoë", "active"),
    ("x@bücher.de", "", "active"),
    ("a@bücher.de", "", "active"),
    ("l" * 64 + "@example.org", "", "active"),
    ("l" * 65 + "@example.org", "", "active"),
    ("ok@example.org", 'Ok, "Quoted"', "active"),
    ("dan@example.org", "Dan", "bounced"),
    ("short@example.org", "", "active"),
    ("u@example.org", "", "active"),
    ("v@example.org", "=cmd", "active"),
    ("=w@example.org", "", "active"),
    ("w@example.org", "", "active"),
    ("info@example.org", "", "unsubscribed"),
    ("é@example.org", "", "active"),
    ("X@example.org", "", "active"),
]
IMPORTED_LINES = [2, 22, 24, 26, 27, 28, 29, 36, 38, 40, 42, 43, 44, 45, 48, 49, 58]


def _import(*args: str, code: int = 0) -> tuple[str, str]:
    result = CliRunner().invoke(main, ["subscribers", "import", *args])
    assert result.exit_code == code, (result.output, result.exception)
    return result.stdout, result.stderr


def _subscribers(store: Store) -> list[tuple[str, str, str]]:
    return [(s.email, s.name, s.status) for s in store.iter_subscribers()]


def test_a_hostile_file_gets_the_same_rejects_as_always(workspace: Path, engine: str) -> None:
    (workspace / "hostile.csv").write_text(HOSTILE, encoding="utf-8", newline="")
    summary = "17 new, 0 updated, 0 unchanged, 36 rejected"
    assert _import("hostile.csv", "--dry-run") == (
        f"dry run: would import {summary}; nothing was changed\n",
        "\n".join(REJECTS) + "\n",
    )
    assert _import("hostile.csv") == (f"imported {summary}\n", "\n".join(REJECTS) + "\n")
    # Again, every address known: the same rejects, nothing changes.
    again = "0 new, 0 updated, 17 unchanged, 36 rejected"
    assert _import("hostile.csv") == (f"imported {again}\n", "\n".join(REJECTS) + "\n")
    with Store.open(load_workspace(workspace)) as store:
        assert _subscribers(store) == IMPORTED
        details = [e.detail for s in store.iter_subscribers() for e in store.events(s.id)]
        assert details == [f"hostile.csv:{n}" for n in IMPORTED_LINES]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        # A bad byte after a quote left open: the encoding is named, as before.
        (b'email,name\nada@example.org,"Ada\nzo\xeb@example.org,Zo\xeb\n', "list.csv:3:3: not UTF-8 text (byte 0xeb)"),
        # With a byte order mark (its column counted as it always was).
        (b"\xef\xbb\xbfemail\nok@example.org\n\xff\n", "list.csv:2:13: not UTF-8 text (byte 0x72)"),
        # A bad header and a character cut off at the end: the encoding comes first.
        (b"Email Address\nok@example.org\n\xe2\x82", "list.csv:3:1: not UTF-8 text (byte 0xe2)"),
        # Bad CSV before the bad byte: the encoding comes first.
        (b'email\n"ok@example.org"x\nzo\xeb\n', "list.csv:3:3: not UTF-8 text (byte 0xeb)"),
        # Good rows, then one bad byte far down the file.
        (
            b"email\n" + b"".join(b"r%d@example.org\n" % i for i in range(5000)) + b"\xff\n",
            "list.csv:5002:1: not UTF-8",
        ),
        (b'email\nok@example.org\n"open@example.org\n', "list.csv:3: not valid CSV"),
        (b"\n\n", "list.csv: the file is empty"),
        (b"email\n\nbad@\n,\n", "list.csv: no valid rows (1 rejected)"),
    ],
)
def test_a_file_that_cannot_be_used_is_named_as_always_and_nothing_is_written(
    workspace: Path, engine: str, content: bytes, message: str
) -> None:
    (workspace / "list.csv").write_bytes(content)
    before = _state(workspace)
    for args in (["list.csv", "--dry-run"], ["list.csv"]):
        _out, err = _import(*args, code=1)
        assert message in err and "Traceback" not in err
    assert _state(workspace) == before


def _state(workspace: Path) -> object:
    """The database as it is (None when there is none yet, as a failed import leaves it)."""
    if not (workspace / "subscribers" / "highlights.db").exists() and not _on_postgresql():
        return None
    with Store.open(load_workspace(workspace)) as store:
        return _subscribers(store), store.count_by_status()


def _on_postgresql() -> bool:
    import os

    return bool(os.environ.get("HIGHLIGHTS_DATABASE_URL"))


ADDRESSES = [
    "ada@example.org",
    "Ada.Lovelace+news@Mail.Example.ORG",
    "  spaced@example.org  ",
    "Postmaster@Example.org",
    "INFO@example.org",
    "info.desk@example.org",
    "o'brien@example.org",
    "a!#$%&'*+/=?^_`{|}~-z@example.org",
    "l" * 64 + "@example.org",
    "l" * 65 + "@example.org",
    "m@" + ".".join(["d" * 63, "e" * 63, "f" * 63, "g" * 57]) + ".org",
    "m@" + ".".join(["d" * 63, "e" * 63, "f" * 63, "g" * 56]) + ".org",
    "nn@" + ".".join(["d" * 63, "e" * 63, "f" * 63, "g" * 56]) + ".org",
    "x@" + "d" * 64 + ".org",
    "x@" + ".".join(["d" * 63] * 4) + ".org",
    "x@bücher.de",
    "X@XN--BCHER-KVA.DE",
    "x@" + "ü" * 60 + ".de",
    "y@" + "ü" * 59 + "." + "ü" * 59 + "." + "ü" * 59 + ".de",
    "zoë@bücher.de",
    "e\u0301@example.org",
    '"quoted"@example.org',
    "Ada <ada@example.org>",
    "a@b@example.org",
    "a..b@example.org",
    ".a@example.org",
    "a.@example.org",
    "a b@example.org",
    "a\tb@example.org",
    "@example.org",
    "a@",
    "a",
    "a\uff20example.org",
    "a@\u0338example.org",
    "a@localhost",
    "a@example",
    "a@example.invalid",
    "a@example.test",
    "a@onion.onion",
    "a@[127.0.0.1]",
    "a@[IPv6:::1]",
    "a@exa_mple.org",
    "a@-example.org",
    "a@example-.org",
    "a@example.org.",
    "a@.example.org",
    "a@ex..ample.org",
    "a@example.org:25",
    "a@123.456",
    "a@example.123",
    "a@exämple.org",
    "a@\u2603.example.org",
    "a@xn--.org",
    "a@xn--zz.org",
    "a@EXAMPLE.ORG\u200b",
]


@pytest.mark.parametrize("address", ADDRESSES)
def test_the_quick_address_check_says_what_email_validator_says(address: str) -> None:
    """The import checks a domain once and a plain local part by pattern: the same
    address or the same reason as the full check, whatever the address."""

    def verdict(check: Callable[[str], str]) -> str:
        try:
            return "ok: " + check(address)
        except BadAddress as exc:
            return f"bad: {exc}"

    fast = verdict(fast_normalize_address)
    assert fast == verdict(fast_normalize_address)  # and again, from the domain cache
    assert fast == verdict(normalize_address)


# Rows for the quick path of the reader, each beside what the whole check makes of it.
PLAIN = [
    "ada@example.org,Ada,active",
    " Bob.Smith+news@Example.ORG , Bob ,BOUNCED",
    "cy@example.org,,",
    "x@bücher.de,,",
]
NOT_PLAIN = [
    "Postmaster@example.org,,",  # a role name: email-validator lower-cases it
    "'=w@example.org,,",  # a protected formula
    "'ok@example.org,,",  # a quote that protects nothing
    "zoë@example.org,Zoë,",  # not ASCII before the @
    f"{'l' * 64}@example.org,,",  # the longest local part
    f"{'l' * 65}@example.org,,",
    f"nn@{'d' * 63}.{'e' * 63}.{'f' * 63}.{'g' * 56}.org,,",  # the longest address, and one over
    f"nnn@{'d' * 63}.{'e' * 63}.{'f' * 63}.{'g' * 56}.org,,",
    "a..b@example.org,,",
    "a@example.org,=?utf-8?q?x?=,",  # an encoded word
    "a@example.org,'=x,",  # a protected formula name
    "a@example.org,Ada\x07,",  # a control character
    "a@example.org,Zoë,",  # a name that is not ASCII
    "a@example.org," + "n" * 200 + ",",  # the longest name, and one over
    "a@example.org," + "n" * 201 + ",",
    "a@example.org,Ada,paused",
    "a@example.org,Ada, Unsubscribed ",
    "a@localhost,,",
    "a@example.org,Ada,active,extra",
    ",Ada,",
]


@pytest.mark.parametrize("header", ["email,name,status", "email,name,status,created,source"])
@pytest.mark.parametrize("line", PLAIN + NOT_PLAIN)
def test_the_quick_path_stages_a_row_as_the_whole_check_does(header: str, line: str) -> None:
    check = _RecordCheck(_columns(header.split(","), "list.csv", 1, []), header.count(",") + 1)
    record = next(csv.reader([line + "," * (header.count(",") - line.count(","))]))
    quick = check.plain(record, 7) if len(record) == check.width else None
    row, problem = check(record, 7)
    if line in PLAIN:
        assert quick is not None  # taken without the whole check: the point of the quick path
    if quick is not None:
        assert row is not None and quick == stage_row(7, row), problem
    # A row with a time or a source is the whole check's.
    record[-1] = "form" if header.endswith("source") else record[-1]
    assert header == "email,name,status" or check.plain(record, 7) is None


def _domains(count: int) -> list[str]:
    """Host names near every edge of the pattern the import takes without asking
    email-validator: case, digits, hyphens, `--`, Punycode, label and name lengths,
    numeric and one-letter TLDs, special-use names."""
    rng = random.Random(20240102)
    pieces = ["a", "Z", "0", "9", "-", "--", "xn--", "mail", "EXAMPLE", "x" * 62, "y" * 63, "z" * 64]
    pieces += ["news", "b1", "c-d", "Lists", "e"] * 6  # most names plain
    tlds = ["org", "COM", "de", "io", "a", "123", "x1", "1x", "local", "localhost", "arpa", "invalid", "onion", "test"]
    tlds += ["example", "home.arpa", "", "-org", "org-", "o-rg"]
    tlds += ["org", "com", "Net", "museum"] * 8
    found = []
    for _ in range(count):
        labels = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(0, 4))]
        found.append(".".join([*labels, rng.choice(tlds)]))
    found += [".".join(["d" * 63] * 3 + ["e" * n]) + ".org" for n in range(55, 66)]  # about 253 characters
    return found


def test_the_quick_domain_pattern_says_what_email_validator_says() -> None:
    """A plain host name is taken by pattern, without email-validator: for thousands of
    names near the pattern's edges, the import says what the full check says (the
    address, or the reason), and both the pattern and email-validator decide some."""

    def verdict(check: Callable[[str], str], address: str) -> str:
        try:
            return "ok: " + check(address)
        except BadAddress as exc:
            return f"bad: {exc}"

    seen = {"by pattern": 0, "ok": 0, "bad": 0}
    for domain in _domains(4000):
        address = f"ada.lovelace@{domain}"
        fast = verdict(fast_normalize_address, address)
        assert fast == verdict(normalize_address, address), address
        seen["ok" if fast.startswith("ok") else "bad"] += 1
        seen["by pattern"] += _plain_domain(domain) is not None
    assert seen["by pattern"] > 1000 and seen["ok"] > seen["by pattern"] and seen["bad"] > 500, seen


def test_the_reader_keeps_a_bounded_number_of_domains_and_stages_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A list whose addresses each have a domain of their own must not hold every domain
    in memory: the reader keeps at most so many, and a domain it let go of is judged
    again at its next address, staged as the first time."""
    header = "email,name,status"
    lines = [f"r{i}@d{i % 7}.example.org,Reader {i},active" for i in range(40)]

    def staged(kept: int) -> tuple[list[object], int]:
        monkeypatch.setattr(reading, "_DOMAINS_KEPT", kept)
        check = _RecordCheck(_columns(header.split(","), "list.csv", 1, []), 3)
        rows, most = [], 0
        for n, line in enumerate(lines, start=2):
            rows.append(check.plain(next(csv.reader([line])), n))
            most = max(most, len(check.domains))
        return rows, most

    unbounded, held = staged(1000)
    bounded, held_bounded = staged(3)
    assert held == 7 and held_bounded <= 3
    assert None not in bounded and bounded == unbounded
