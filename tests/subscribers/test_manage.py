"""`highlights subscribers ...` end to end: the CLI on a real workspace and database."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from highlightsmail.cli import main
from highlightsmail.store import SCHEMA_VERSION, ImportRow, Store
from highlightsmail.subscribers import manage as subscribers_module
from highlightsmail.subscribers.reading import protect_cell, unprotect_cell
from support.db import damage_pages_holding, read_only

HIGHLIGHTS = Path(sys.executable).with_name("highlights")


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, ["subscribers", *args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def db_of(ws: Path) -> Path:
    return ws / "subscribers" / "highlights.db"


def rows_of(ws: Path) -> dict[str, tuple[str, str]]:
    """address -> (name, status), straight from the database file."""
    conn = sqlite3.connect(db_of(ws))
    try:
        return {e: (n, s) for e, n, s in conn.execute("SELECT email, name, status FROM subscribers")}
    finally:
        conn.close()


def dump(ws: Path) -> tuple[list, list]:
    conn = sqlite3.connect(db_of(ws))
    try:
        return (
            conn.execute("SELECT * FROM subscribers ORDER BY id").fetchall(),
            conn.execute("SELECT * FROM events ORDER BY id").fetchall(),
        )
    finally:
        conn.close()


# -- import ------------------------------------------------------------------------------

MESSY = (
    "\ufeffEmail, Name ,STATUS,Phone\r\n"  # 1 header: BOM, odd case, an extra column
    'ada@example.org,"Lovelace, Ada",,555\r\n'  # 2
    "\r\n"  # 3 blank
    "bob@,Bob,,\r\n"  # 4 invalid
    "ADA@Example.org,Ada again,,\r\n"  # 5 duplicate of 2
    '"eve\r\nx@example.org",Eve,,\r\n'  # 6-7 a line break in the address
    'grace@example.org,"Hopper, ""Amazing"" Grace",unsubscribed,\r\n'  # 8
    'hal@example.org,"Hal\r\nNine",,\r\n'  # 9-10 a line break in the name
    ",,,\r\n"  # 11 only empty cells
    "carl@example.org,Carl,paused,\r\n"  # 12 unknown status
    " dan@example.org , Dan ,BOUNCED,\r\n"  # 13 spaces, status in capitals
    "x@example.org,a,b,c,d\r\n"  # 14 too many cells
    "  \r\n"  # 15 blank
    "zoë@bücher.de,Zoë,,\r\n"  # 16 internationalised
    "GRACE@example.org,,active,\r\n"  # 17 duplicate of 8
)


def test_import_reports_each_bad_row_by_line_and_imports_the_rest(workspace: Path) -> None:
    (workspace / "list.csv").write_bytes(MESSY.encode("utf-8"))
    result = run("import", "list.csv")
    assert result.stdout == "imported 4 new, 0 updated, 0 unchanged, 7 rejected\n"
    messages = result.stderr.splitlines()
    assert [m.split(": ")[0] for m in messages] == [
        "list.csv:1",
        "list.csv:4",
        "list.csv:5",
        "list.csv:6",
        "list.csv:9",
        "list.csv:12",
        "list.csv:14",
        "list.csv:17",
    ]
    assert messages[0] == "list.csv:1: warning: ignoring the column 'Phone'"
    assert messages[1].startswith("list.csv:4: invalid address 'bob@': ")
    assert messages[2] == "list.csv:5: duplicate of line 2 (ADA@example.org)"
    assert messages[3].startswith("list.csv:6: invalid address 'eve\\r\\nx@example.org': ")
    assert "line break" in messages[4] and "hal@example.org" in messages[4]
    assert messages[5].startswith("list.csv:12: unknown status 'paused'")
    assert messages[6].startswith("list.csv:14: 5 cells but the header has 4")
    assert messages[7] == "list.csv:17: duplicate of line 8 (GRACE@example.org)"
    assert rows_of(workspace) == {
        "ada@example.org": ("Lovelace, Ada", "active"),
        "grace@example.org": ('Hopper, "Amazing" Grace', "unsubscribed"),
        "dan@example.org": ("Dan", "bounced"),
        "zoë@bücher.de": ("Zoë", "active"),
    }
    with Store(db_of(workspace)) as store:
        grace = store.find("grace@example.org")
        assert [(e.to_status, e.source, e.detail) for e in store.events(grace.id)] == [
            ("unsubscribed", "import", "list.csv:8")
        ]


def test_import_keeps_suppressions_and_never_reactivates(workspace: Path) -> None:
    (workspace / "a.csv").write_text("email\ngone@example.org\nstays@example.org\nleaves@example.org\n")
    run("import", "a.csv")
    run("remove", "gone@example.org")
    (workspace / "b.csv").write_text(
        "email,name,status\n"
        "Gone@example.org,Back Again,active\n"  # unsubscribed stays so (the name may change)
        "stays@example.org,,\n"  # unchanged
        "leaves@example.org,,complained\n"  # the old tool knew they complained
        "new@example.org,,bounced\n"
    )
    result = run("import", "b.csv")
    assert result.stdout == "imported 1 new, 2 updated, 1 unchanged, 0 rejected\n"
    assert rows_of(workspace) == {
        "gone@example.org": ("Back Again", "unsubscribed"),
        "stays@example.org": ("", "active"),
        "leaves@example.org": ("", "complained"),
        "new@example.org": ("", "bounced"),
    }


def test_dry_run_reports_the_same_counts_and_changes_nothing(workspace: Path) -> None:
    (workspace / "a.csv").write_text("email,name\nada@example.org,Ada\nbob@example.org,\n")
    (workspace / "b.csv").write_text(
        "email,name,status\nada@example.org,Ada L.,\nbob@example.org,,\ncy@example.org,,\nbad@,,\n"
    )
    dry = run("import", "a.csv", "--dry-run")
    assert dry.stdout == "dry run: would import 2 new, 0 updated, 0 unchanged, 0 rejected; nothing was changed\n"
    assert not db_of(workspace).exists()  # not even an empty database
    run("import", "a.csv")
    before = dump(workspace)
    dry = run("import", "b.csv", "--dry-run")
    assert dry.stdout == "dry run: would import 1 new, 1 updated, 1 unchanged, 1 rejected; nothing was changed\n"
    assert dump(workspace) == before
    real = run("import", "b.csv")
    assert real.stdout == "imported 1 new, 1 updated, 1 unchanged, 1 rejected\n"


def test_a_file_with_only_a_header_is_fine(workspace: Path) -> None:
    (workspace / "empty.csv").write_text("email,name,status\n")
    assert run("import", "empty.csv").stdout == "imported 0 new, 0 updated, 0 unchanged, 0 rejected\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"email,name\nada@example.org,Ada\nzo\xeb@example.org,Zo\xeb\n",
            "list.csv:3:3: not UTF-8 text (byte 0xeb); save the file as CSV UTF-8",
        ),
        (
            b"Email Address,First Name\nada@example.org,Ada\n",
            "list.csv:1: no `email` column (found 'Email Address', 'First Name'); name the column of addresses `email`",
        ),
        (b"email;name\nada@example.org;Ada\n", "separate the columns with commas, not semicolons"),
        (b"email,name,email\n", "list.csv:1: the column 'email' appears twice"),
        (b"", "list.csv: the file is empty"),
        (b'email,name\nada@example.org,"Ada\nbob@example.org,Bob\n', "list.csv:2: not valid CSV"),
        (b"email\nbob@\n@example.org\n", "list.csv: no valid rows (2 rejected); nothing imported"),
    ],
)
def test_a_file_that_cannot_be_used_fails_and_writes_nothing(workspace: Path, content: bytes, message: str) -> None:
    (workspace / "list.csv").write_bytes(content)
    result = run("import", "list.csv", ok=False)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not db_of(workspace).exists()


def test_a_missing_file_is_named(workspace: Path) -> None:
    result = run("import", "nowhere.csv", ok=False)
    assert result.exit_code == 1 and "nowhere.csv: no such file" in result.stderr


def test_created_and_updated_must_be_times(workspace: Path) -> None:
    (workspace / "list.csv").write_text(
        "email,created,updated\n"
        "a@example.org,2023-03-04T05:06:07Z,2023-04-05T06:07:08Z\n"
        "b@example.org,last tuesday,\n"
        "c@example.org,2023-03-04 05:06:07+02:00,\n"
    )
    result = run("import", "list.csv")
    assert result.stdout == "imported 2 new, 0 updated, 0 unchanged, 1 rejected\n"
    assert result.stderr.startswith("list.csv:3: created 'last tuesday' is not an ISO 8601 time")
    with Store(db_of(workspace)) as store:
        a, c = store.find("a@example.org"), store.find("c@example.org")
    assert (a.created, a.updated) == ("2023-03-04T05:06:07Z", "2023-04-05T06:07:08Z")
    assert c.created == "2023-03-04T03:06:07Z"  # stored in UTC


# -- export and the round trip -------------------------------------------------------------

TRICKY_NAMES = [
    '=HYPERLINK("https://evil.example/?q=1","click me")',
    "-1",
    "@x",
    "+44 20 7946 0000",
    'Zoë, "Z" O\'Brien',
    "'quoted",
    "",
]


def fill(ws: Path) -> None:
    lines = io.StringIO()
    writer = csv.writer(lines)
    writer.writerow(["email", "name", "status"])
    for i, name in enumerate(TRICKY_NAMES):
        writer.writerow([f"reader{i}@example.org", name, ["active", "unsubscribed", "bounced"][i % 3]])
    writer.writerow(["-dash@example.org", "", "complained"])
    (ws / "in.csv").write_text(lines.getvalue(), encoding="utf-8")
    run("import", "in.csv")
    run("add", "=eq@example.org", "--name", "'=already escaped")


def test_export_neutralises_formulas_and_imports_back_unchanged(workspace: Path, tmp_path: Path) -> None:
    fill(workspace)
    assert run("export", "out.csv").stderr == "exported 9 subscribers to out.csv\n"
    exported = (workspace / "out.csv").read_text(encoding="utf-8")
    cells = list(csv.reader(io.StringIO(exported)))
    assert cells[0] == ["email", "name", "status", "created", "updated", "source", "consented"]
    by_email = {row[0]: row for row in cells[1:]}
    assert by_email["reader0@example.org"][1] == "'" + TRICKY_NAMES[0]
    assert by_email["reader1@example.org"][1] == "'-1"
    assert by_email["reader2@example.org"][1] == "'@x"
    assert by_email["reader3@example.org"][1] == "'+44 20 7946 0000"
    assert by_email["reader5@example.org"][1] == "'quoted"  # not a formula: left alone
    assert by_email["'-dash@example.org"][2] == "complained"
    assert by_email["'=eq@example.org"][1] == "''=already escaped"
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in cells for cell in row)

    # Back into the same database: nothing changes.
    before = dump(workspace)
    assert run("import", "out.csv").stdout == "imported 0 new, 0 updated, 9 unchanged, 0 rejected\n"
    assert dump(workspace) == before

    # Into a new workspace: the same subscribers, byte for byte the same export.
    other = tmp_path / "other"
    (other / "subscribers").mkdir(parents=True)
    shutil.copy(workspace / "highlights.yaml", other / "highlights.yaml")
    runner = CliRunner()
    moved = runner.invoke(main, ["--workspace", str(other), "subscribers", "import", str(workspace / "out.csv")])
    assert moved.stdout == "imported 9 new, 0 updated, 0 unchanged, 0 rejected\n", moved.output
    again = runner.invoke(main, ["--workspace", str(other), "subscribers", "export"])
    assert again.exit_code == 0
    assert again.stdout == exported
    with Store(other / "subscribers" / "highlights.db") as store:
        assert store.find("reader0@example.org").name == TRICKY_NAMES[0]
        assert store.find("=eq@example.org").name == "'=already escaped"


def test_export_replaces_a_file_whole_or_not_at_all(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(workspace)
    target = workspace / "out.csv"
    target.write_text("the previous export\n")

    def broken(out, store, rows, *, with_topics=False):
        out.write("email,name,status,created,updated\nhalf")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(subscribers_module, "_write_csv", broken)
    result = run("export", "out.csv", ok=False)
    assert result.exit_code == 1
    assert "out.csv: cannot write it: No space left on device; any previous file there is unchanged" in result.stderr
    assert target.read_text() == "the previous export\n"
    assert sorted(p.name for p in workspace.iterdir() if p.name.startswith(".out.csv")) == []


@pytest.mark.parametrize(
    ("target", "what"),
    [
        ("subscribers/highlights.db", "is this workspace's database"),
        ("subscribers/highlights.db-wal", "is this workspace's database"),
        ("./subscribers/../subscribers/highlights.db", "is this workspace's database"),
        ("subscribers/.secret", "is this workspace's signing secret"),
        ("highlights.yaml", "is this workspace's settings"),
        ("issues/2024-w02.yaml", "is in this workspace's issues folder"),
        ("templates/issue.txt.j2", "is in this workspace's templates folder"),
    ],
)
def test_export_never_writes_over_the_workspace_s_own_files(workspace: Path, target: str, what: str) -> None:
    """`export subscribers/highlights.db` replaced the database (every subscriber, every
    dispatch) with its own CSV."""
    fill(workspace)
    run("list")  # the database and the secret exist
    (workspace / "subscribers" / ".secret").write_text("s" * 40)
    before = {p: p.read_bytes() for p in workspace.rglob("*") if p.is_file()}
    result = run("export", target, ok=False)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {target.replace('./subscribers/../', '')}: {what}; write to another file\n"
    assert {p: p.read_bytes() for p in workspace.rglob("*") if p.is_file()} == before


def test_export_to_a_missing_folder_is_a_clear_error(workspace: Path) -> None:
    result = run("export", "no/such/folder/out.csv", ok=False)
    assert result.exit_code == 1 and "does not exist" in result.stderr


# -- list ----------------------------------------------------------------------------------------


def test_list_formats_and_status_filter(workspace: Path) -> None:
    fill(workspace)
    exported = run("export").stdout
    assert run("list", "--format", "csv").stdout == exported

    items = json.loads(run("list", "--format", "json").stdout)
    assert [i["email"] for i in items][:2] == ["reader0@example.org", "reader1@example.org"]
    assert set(items[0]) == {"id", "email", "name", "status", "created", "updated"}
    assert items[0]["name"] == TRICKY_NAMES[0]  # JSON carries the name as it is

    active = json.loads(run("list", "--status", "active", "--format", "json").stdout)
    assert {i["email"] for i in active} == {
        "reader0@example.org",
        "reader3@example.org",
        "reader6@example.org",
        "=eq@example.org",
    }
    assert (
        json.loads(run("list", "--status", "complained", "--format", "json").stdout)[0]["email"] == "-dash@example.org"
    )
    assert json.loads(run("list", "--status", "complained", "--format", "json").stdout) != []

    table = run("list", "--status", "bounced").stdout.splitlines()
    assert table[0].split() == ["ID", "EMAIL", "NAME", "STATUS", "UPDATED"]
    assert [line.split()[1] for line in table[1:]] == ["reader2@example.org", "reader5@example.org"]
    # fixed columns: every row puts the status at the same place
    assert {line.index("bounced") for line in table[1:]} == {table[0].index("STATUS")}


def test_list_of_an_empty_database(workspace: Path) -> None:
    assert json.loads(run("list", "--format", "json").stdout) == []
    assert run("list", "--format", "csv").stdout == "email,name,status,created,updated,source,consented\n"


@pytest.mark.slow
def test_list_stops_quietly_when_the_reader_goes_away(workspace: Path) -> None:
    """`highlights subscribers list | head -1` ends without a traceback."""
    with Store(db_of(workspace)) as store:
        store.import_rows(ImportRow(f"reader{i}@example.org", f"Reader {i}") for i in range(5000))
    proc = subprocess.Popen(
        [str(HIGHLIGHTS), "subscribers", "list"], cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.readline().split() == [b"ID", b"EMAIL", b"NAME", b"STATUS", b"UPDATED"]
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert b"Traceback" not in err and b"Error" not in err


# -- add and remove -----------------------------------------------------------------------------


def test_add_and_remove(workspace: Path) -> None:
    assert run("add", " Ada@EXAMPLE.org ", "--name", "Ada").stdout == "added Ada@example.org\n"
    assert run("add", "ada@example.org").stdout == "Ada@example.org is already subscribed\n"
    assert (
        run("add", "ADA@example.org", "--name", "Ada Lovelace").stdout
        == "Ada@example.org is already subscribed; name set to 'Ada Lovelace'\n"
    )
    assert run("remove", "ada@example.org").stdout == "unsubscribed Ada@example.org\n"
    assert run("remove", "ada@example.org").stdout == "Ada@example.org is already unsubscribed; it gets no mail\n"

    again = run("add", "ada@example.org", ok=False)
    assert again.exit_code == 1
    assert "is unsubscribed and stays so" in again.stderr and "resubscribe" in again.stderr
    assert rows_of(workspace) == {"Ada@example.org": ("Ada Lovelace", "unsubscribed")}
    with Store(db_of(workspace)) as store:
        events = store.events(store.find("ada@example.org").id)
    assert [(e.from_status, e.to_status, e.source) for e in events] == [
        (None, "active", "cli"),
        ("active", "unsubscribed", "cli"),
    ]


def test_add_and_remove_refuse_bad_input(workspace: Path) -> None:
    bad = run("add", "bob@", ok=False)
    assert bad.exit_code == 1 and "invalid address 'bob@'" in bad.stderr
    newline = run("add", "eve@example.org", "--name", "Eve\nBcc: x@example.org", ok=False)
    assert newline.exit_code == 1
    assert "--name: the name must be a single line (it holds a line break, U+000A)" in newline.stderr
    unknown = run("remove", "nobody@example.org", ok=False)
    assert unknown.exit_code == 1 and "nobody@example.org is not a subscriber" in unknown.stderr
    assert rows_of(workspace) == {}


def test_add_of_a_pending_address_points_to_its_confirmation_not_an_unsubscribe_link(workspace: Path) -> None:
    """Someone who joined through the form and has not confirmed has no unsubscribe link
    and no resubscribe button: the message named both."""
    (workspace / "list.csv").write_text("email,status\np@example.org,pending\n")
    run("import", "list.csv")
    again = run("add", "p@example.org", ok=False)
    assert again.exit_code == 1
    assert again.stderr == (
        "Error: p@example.org is pending: it becomes active when the subscriber presses Confirm "
        "on the page the link in their confirmation email opens\n"
    )
    assert rows_of(workspace) == {"p@example.org": ("", "pending")}


def test_remove_leaves_a_bounced_address_bounced(workspace: Path) -> None:
    (workspace / "list.csv").write_text("email,status\nb@example.org,bounced\n")
    run("import", "list.csv")
    assert run("remove", "b@example.org").stdout == "b@example.org is already bounced; it gets no mail\n"
    assert rows_of(workspace) == {"b@example.org": ("", "bounced")}


# -- cells and addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["", "plain", "=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'", "'=x", "''=x", "'plain", "a=b"]
)
def test_protect_and_unprotect_cells_round_trip(value: str) -> None:
    protected = protect_cell(value)
    assert not protected.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert unprotect_cell(protected) == value


# -- one address, whatever the case or Unicode form of its letters ------------------------------


def test_unicode_case_is_one_subscriber_in_add_remove_import_and_list(workspace: Path) -> None:
    assert run("add", "Äda@example.org", "--name", "Ada").stdout == "added Äda@example.org\n"
    assert run("add", "äda@example.org").stdout == "Äda@example.org is already subscribed\n"
    assert run("add", "A\u0308DA@example.org").stdout == "Äda@example.org is already subscribed\n"
    (workspace / "list.csv").write_text(
        "email,name\n"
        "äda@example.org,Ada L.\n"  # 2: the one subscriber, renamed
        "Zoë@example.org,Zoë\n"  # 3
        "ZOË@example.org,Zoë again\n",  # 4: the same address as line 3
        encoding="utf-8",
    )
    result = run("import", "list.csv")
    assert result.stdout == "imported 1 new, 1 updated, 0 unchanged, 1 rejected\n"
    assert result.stderr == "list.csv:4: duplicate of line 3 (ZOË@example.org)\n"
    assert rows_of(workspace) == {"Äda@example.org": ("Ada L.", "active"), "Zoë@example.org": ("Zoë", "active")}
    assert run("remove", "ÄDA@example.org").stdout == "unsubscribed Äda@example.org\n"
    assert run("add", "äda@example.org", ok=False).exit_code == 1  # left: stays so
    listed = json.loads(run("list", "--format", "json").stdout)
    assert [(i["email"], i["status"]) for i in listed] == [
        ("Äda@example.org", "unsubscribed"),
        ("Zoë@example.org", "active"),
    ]


def test_an_older_database_is_refused_until_db_upgrade_which_says_what_it_merged(workspace: Path) -> None:
    db = db_of(workspace)
    conn = sqlite3.connect(db)
    from highlightsmail.store.migrator import MIGRATIONS

    for statement in MIGRATIONS["sqlite"][0]:
        conn.execute(statement)  # type: ignore[arg-type]
    conn.executemany(
        "INSERT INTO subscribers (email, status, created, updated) VALUES (?, ?, 't', 't')",
        [("Äda@example.org", "active"), ("äda@example.org", "active"), ("bob@example.org", "active")],
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    def state() -> tuple:
        with sqlite3.connect(db_of(workspace)) as conn:
            return conn.execute("PRAGMA user_version").fetchone(), conn.execute("SELECT * FROM subscribers").fetchall()

    before = state()
    refused = run("list", "--format", "csv", ok=False)
    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr == (
        f"Error: subscribers/highlights.db: the database has schema 1 and this highlightsmail needs {SCHEMA_VERSION}; "
        "back it up, then run `highlights db upgrade`\n"
    )
    assert state() == before  # refused before anything changed
    upgraded = CliRunner().invoke(main, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.stdout == f"subscribers/highlights.db: upgraded from schema 1 to {SCHEMA_VERSION}\n"
    assert upgraded.stderr == (
        "warning: subscribers/highlights.db: Äda@example.org (#1, active) and äda@example.org (#2, active) "
        "are the same address: merged into #1 Äda@example.org, now active; links in mail sent to any of them "
        "still work and nobody gets two copies. Nothing to do, but keep one spelling in your own lists\n"
    )
    first = run("list", "--format", "csv")
    assert first.stderr == ""
    assert [line.split(",")[0] for line in first.stdout.splitlines()] == ["email", "Äda@example.org", "bob@example.org"]
    again = CliRunner().invoke(main, ["db", "upgrade"])
    assert (again.exit_code, again.stdout, again.stderr) == (
        0,
        f"subscribers/highlights.db: schema {SCHEMA_VERSION}, up to date\n",
        "",
    )


# -- rows that cannot be imported, named by line -----------------------------------------------


def test_times_out_of_range_are_rejected_by_line(workspace: Path) -> None:
    (workspace / "list.csv").write_text(
        "email,created,updated\n"
        "a@example.org,0001-01-01T00:00:00+01:00,\n"  # 2: before year 1 in UTC
        "b@example.org,2023-03-04T05:06:07Z,9999-12-31T23:00:00-05:00\n"  # 3: after 9999
        "c@example.org,0001-01-01T05:00:00+01:00,\n"  # 4: year 1 is fine
    )
    result = run("import", "list.csv")
    assert result.stdout == "imported 1 new, 0 updated, 0 unchanged, 2 rejected\n"
    assert result.stderr.splitlines() == [
        "list.csv:2: created '0001-01-01T00:00:00+01:00' is out of range "
        "(it must fall within the years 1 to 9999 in UTC) (a@example.org)",
        "list.csv:3: updated '9999-12-31T23:00:00-05:00' is out of range "
        "(it must fall within the years 1 to 9999 in UTC) (b@example.org)",
    ]
    with Store(db_of(workspace)) as store:
        assert store.find("c@example.org").created == "0001-01-01T04:00:00Z"  # four digits, sorts as text
    export = run("export").stdout
    assert ",0001-01-01T04:00:00Z," in export


def test_a_huge_cell_is_named_as_too_large_at_its_line(workspace: Path) -> None:
    big = "x" * 10_000_000
    (workspace / "list.csv").write_text(f"email,name\nada@example.org,Ada\nbob@example.org,{big}\n")
    result = run("import", "list.csv", ok=False)
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: list.csv:3: a cell is too large (over 131,072 characters; "
        "no address, name, status or time is that long)\n"
    )
    assert not db_of(workspace).exists()
    # A quote left open swallows the lines after it into one cell: then that is the hint.
    rows = "".join(f"reader{i}@example.org,Reader {i}\n" for i in range(10_000))
    (workspace / "list.csv").write_text(f'email,name\nada@example.org,"Ada\n{rows}')
    result = run("import", "list.csv", ok=False)
    assert result.stderr.startswith("Error: list.csv:2: a cell is too large")
    assert result.stderr.endswith("; is a quote left open?\n")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("=?utf-8?q?Hi=0D=0ABcc:_victim@example.net?=", "must not contain an RFC 2047 encoded word"),
        ("Ada\u2028Bcc: victim@example.net", "must be a single line (it holds a line break, U+2028)"),
        ("Ada\u2029Lovelace", "must be a single line (it holds a line break, U+2029)"),
        ("Ada\u0085Lovelace", "must be a single line (it holds a line break, U+0085)"),
        ("Ada\x1bLovelace", "must not contain control characters (U+001B)"),
    ],
)
def test_a_name_that_could_become_a_header_is_refused(workspace: Path, name: str, why: str) -> None:
    lines = io.StringIO()
    csv.writer(lines).writerows([["email", "name"], ["ada@example.org", "Ada"], ["eve@example.org", name]])
    (workspace / "list.csv").write_text(lines.getvalue(), encoding="utf-8")
    result = run("import", "list.csv")
    assert result.stdout == "imported 1 new, 0 updated, 0 unchanged, 1 rejected\n"
    assert result.stderr.startswith(f"list.csv:3: the name {why}")
    assert result.stderr.endswith("(eve@example.org)\n")
    refused = run("add", "eve@example.org", "--name", name, ok=False)
    assert refused.exit_code == 1 and f"--name: the name {why}" in refused.stderr
    assert rows_of(workspace) == {"ada@example.org": ("Ada", "active")}


# -- a database that cannot be used: one line naming the file and what to do ---------------------


def _filled(ws: Path, n: int = 3000) -> Path:
    with Store(db_of(ws)) as store:
        store.import_rows(ImportRow(f"reader{i:04d}@example.org", f"Reader {i}") for i in range(n))
    return db_of(ws)


def _one_line(result, start: str) -> None:
    assert result.exit_code == 1, result.output
    # A one-line error is click's SystemExit; anything else would have been a traceback.
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: subscribers/highlights.db: {start}"), result.stderr


def test_every_command_on_a_damaged_database_says_how_to_rescue_it(workspace: Path) -> None:
    db = _filled(workspace)
    damage_pages_holding(db, b"reader1500@example.org")
    (workspace / "list.csv").write_text("email\n" + "".join(f"reader{i:04d}@example.org\n" for i in range(3000)))
    rescue = '`sqlite3 subscribers/highlights.db ".recover" | sqlite3 subscribers/highlights-recovered.db`'
    for args in (
        ["list"],
        ["list", "--format", "json"],
        ["export"],
        ["export", "out.csv"],
        ["import", "list.csv"],
        ["add", "reader1500@example.org"],
        ["remove", "reader1500@example.org"],
    ):
        result = run(*args, ok=False)
        _one_line(result, "the database is damaged (database disk image is malformed); ")
        assert rescue in result.stderr, args
    assert not (workspace / "out.csv").exists()


def test_a_read_only_database_file_is_read_and_not_written(workspace: Path) -> None:
    db = _filled(workspace, 3)
    (workspace / "list.csv").write_text("email\nnew@example.org\n")
    with read_only(db):
        assert len(json.loads(run("list", "--format", "json").stdout)) == 3
        assert run("export").stdout.count("\n") == 4
        for args in (["add", "new@example.org"], ["import", "list.csv"], ["remove", "reader0001@example.org"]):
            _one_line(
                run(*args, ok=False),
                "cannot write to the database (attempt to write a readonly database); "
                "let the user running highlights write to the file and to its folder subscribers ",
            )
    assert len(rows_of(workspace)) == 3


def test_a_read_only_folder_says_what_to_do(workspace: Path) -> None:
    db = _filled(workspace, 3)
    (workspace / "list.csv").write_text("email\nnew@example.org\n")
    with read_only(db.parent):
        for args in (["list"], ["export"], ["add", "new@example.org"], ["import", "list.csv"]):
            _one_line(
                run(*args, ok=False),
                "cannot open the database (unable to open database file); "
                "let the user running highlights read and write the file and its folder subscribers ",
            )


def highlights(*args: str):
    return CliRunner().invoke(main, list(args))


def test_send_and_status_on_an_unusable_database_say_what_to_do(workspace: Path) -> None:
    db = _filled(workspace)
    assert highlights("send", "latest", "--test").exit_code == 0
    damage_pages_holding(db, b"reader1500@example.org")
    for args in (["send", "latest", "--yes"], ["status", "latest"]):
        _one_line(highlights(*args), "the database is damaged (database disk image is malformed); ")

    db.unlink()
    db = _filled(workspace, 3)
    with read_only(db.parent):
        for args in (["send", "latest", "--yes", "--skip-test-check"], ["status", "latest"]):
            result = highlights(*args)
            assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
            assert len(result.stderr.splitlines()) == 1
            assert "let the user running highlights" in result.stderr and "subscribers" in result.stderr
    with read_only(db):
        assert "not sent yet (3 active subscribers)" in highlights("status", "latest").stdout
        _one_line(highlights("send", "latest", "--yes", "--skip-test-check"), "cannot write to the database")
    assert not list((workspace / "outbox").glob("2024-w02/*.eml"))  # nothing went out


def test_the_engine_prints_nothing_and_returns_what_happened(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """subscribers/manage.py reports through return values; only the CLI writes to the terminal."""
    from highlightsmail.authoring.workspace import load_workspace

    ws = load_workspace(workspace)
    (workspace / "list.csv").write_text("email,name\nada@example.org,Ada\nbob@,Bob\n")
    told: list[str] = []
    imported = subscribers_module.import_file(ws, workspace / "list.csv", tell=told.append)
    assert len(told) == 1 and told[0].startswith("list.csv:3: invalid address 'bob@': ")
    assert imported.result.new == 1 and imported.rejected == 1
    added = subscribers_module.add(ws, "grace@example.org", "Grace")
    assert added.created and added.subscriber.email == "grace@example.org"
    assert subscribers_module.add(ws, "GRACE@example.org", "Grace H.").renamed
    subscriber, changed = subscribers_module.remove(ws, "ada@example.org")
    assert changed and subscriber.status == "active"  # as it was before
    assert subscribers_module.export(ws, workspace / "out.csv") == 2
    out = io.StringIO()
    subscribers_module.write_list(ws, out, fmt="csv")
    assert out.getvalue() == (workspace / "out.csv").read_text()
    assert capsys.readouterr() == ("", "")
