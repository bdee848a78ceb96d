"""Topics, audiences, pauses, and a reader's data end to end through the CLI, on both
engines: the `topics` column of import and export, `add --topic`, `list --topic`, an
issue's `audience:` (the counts said equal the messages written), a pause that skips a
reader and ends by itself, `subscribers show` and `subscribers forget` (after which
the address is nowhere in the database, and an import refuses it by line)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.store import DeliveryEventRow, Store
from support.workspace import configure

pytestmark = pytest.mark.usefixtures("engine")
TOPICS = [
    {"id": "llm", "name": "Language models", "default": True},
    {"id": "vision", "name": "Vision"},
    {"id": "rl", "name": "Reinforcement learning", "default": True},
]


def highlights(*args: str, ok: bool = True, given: str | None = None) -> Any:
    result = CliRunner().invoke(main, list(args), input=given)
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture
def ws(workspace: Path) -> Path:
    configure(workspace, topics=TOPICS)
    return workspace


def topics_of(ws: Path) -> dict[str, list[str]]:
    with Store.open(load_workspace(ws)) as store:
        return {s.email: store.topics(s.id) for s in store.iter_subscribers()}


def exported(ws: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(highlights("subscribers", "export").stdout)))


def test_import_reads_topics_and_export_writes_them_back(ws: Path) -> None:
    (ws / "list.csv").write_text(
        "email,name,topics\n"
        "ada@example.org,Ada,vision; LLM\n"  # 2: spaces and case as typed
        "bob@example.org,Bob,\n"  # 3: empty: the defaults
        "cy@example.org,Cy,vision;nope\n"  # 4: an unknown id: the whole row is refused
        "di@example.org,Di,rl\n"  # 5
    )
    result = highlights("subscribers", "import", "list.csv")
    assert result.stdout == "imported 3 new, 0 updated, 0 unchanged, 1 rejected\n"
    assert result.stderr == "list.csv:4: unknown topic 'nope' (cy@example.org); the topics are llm, rl, vision\n"
    assert topics_of(ws) == {
        "ada@example.org": ["llm", "vision"],
        "bob@example.org": ["llm", "rl"],
        "di@example.org": ["rl"],
    }
    rows = exported(ws)
    assert list(rows[0]) == ["email", "name", "status", "created", "updated", "source", "consented", "topics"]
    assert [r["topics"] for r in rows] == ["llm;vision", "llm;rl", "rl"]
    # The export imports back unchanged, topics and all.
    (ws / "back.csv").write_text(highlights("subscribers", "export").stdout)
    assert highlights("subscribers", "import", "back.csv").stdout.startswith("imported 0 new, 0 updated, 3 unchanged")
    assert exported(ws) == rows
    # A known address: an empty cell keeps its topics, a filled one replaces them.
    (ws / "again.csv").write_text("email,topics\nada@example.org,\ndi@example.org,vision;llm\n")
    highlights("subscribers", "import", "again.csv")
    assert topics_of(ws)["ada@example.org"] == ["llm", "vision"]
    assert topics_of(ws)["di@example.org"] == ["llm", "vision"]


def test_a_workspace_without_topics_exports_as_before(workspace: Path) -> None:
    highlights("subscribers", "add", "ada@example.org")
    header = highlights("subscribers", "export").stdout.splitlines()[0]
    assert header == "email,name,status,created,updated,source,consented"
    (workspace / "t.csv").write_text("email,topics\nbob@example.org,llm\n")
    result = highlights("subscribers", "import", "t.csv", ok=False)
    assert result.exit_code == 1
    assert "t.csv:2: unknown topic 'llm' (bob@example.org)" in result.stderr


def test_add_with_topics_and_list_by_topic(ws: Path) -> None:
    highlights("subscribers", "add", "ada@example.org", "--topic", "vision", "--topic", "rl")
    highlights("subscribers", "add", "bob@example.org")  # the defaults
    highlights("subscribers", "add", "bob@example.org", "--topic", "vision")  # one more for a known one
    assert topics_of(ws) == {"ada@example.org": ["rl", "vision"], "bob@example.org": ["llm", "rl", "vision"]}
    listed = highlights("subscribers", "list", "--topic", "llm", "--format", "json").stdout
    assert [(r["email"], r["topics"]) for r in json.loads(listed)] == [("bob@example.org", ["llm", "rl", "vision"])]
    listed = highlights("subscribers", "list", "--topic", "vision").stdout
    assert "ada@example.org" in listed and "bob@example.org" in listed
    for args in (["add", "cy@example.org", "--topic", "nope"], ["list", "--topic", "nope"]):
        result = highlights("subscribers", *args, ok=False)
        assert result.exit_code == 1
        assert result.stderr == "Error: --topic 'nope' is not a topic; the topics are llm, vision, rl\n"
    assert "cy@example.org" not in topics_of(ws)


def _with_audience(ws: Path, audience: str) -> None:
    issue = ws / "issues" / "2024-w02.yaml"
    issue.write_text(issue.read_text() + f"audience: {audience}\n")


def _sent_to(ws: Path) -> list[str]:
    return sorted(p.name.split("-", 1)[1].removesuffix(".eml") for p in (ws / "outbox" / "2024-w02").glob("*.eml"))


def test_an_audience_reaches_its_topics_and_every_count_says_so(ws: Path) -> None:
    (ws / "list.csv").write_text(
        "email,topics\na@example.org,vision\nb@example.org,llm\nc@example.org,rl;vision\n"
        "d@example.org,llm\ne@example.org,rl\n"
    )
    highlights("subscribers", "import", "list.csv")
    highlights("subscribers", "remove", "c@example.org")  # in the audience, but left
    _with_audience(ws, "[vision, rl]")
    said = "audience: subscribers in the topics vision, rl: 2 subscriber(s) now"
    assert said in highlights("check", "2024-w02").stdout
    assert said in highlights("send", "2024-w02", "--test").stdout
    dry = highlights("send", "2024-w02", "--dry-run").stdout
    assert "would send 2024-w02 to 2 recipient(s) (subscribers in the topics vision, rl)" in dry
    sent = highlights("send", "2024-w02", given="y\n")
    assert "Send 2024-w02 to 2 recipient(s) (subscribers in the topics vision, rl) through outbox?" in sent.stderr
    assert _sent_to(ws) == ["a@example.org", "e@example.org"]
    report = json.loads(highlights("report", "2024-w02", "--format", "json").stdout)
    assert report["recipients"] == report["sent"] == 2 and report["audience"] == ["vision", "rl"]
    assert "audience: subscribers in the topics vision, rl" in highlights("report", "2024-w02").stdout


def test_an_audience_nobody_is_in_sends_nothing_and_says_why(ws: Path) -> None:
    highlights("subscribers", "add", "a@example.org", "--topic", "llm")
    _with_audience(ws, "[vision]")
    result = highlights("send", "2024-w02", "--yes", "--skip-test-check", ok=False)
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: 2024-w02: no active subscriber (not paused) is in the topics vision; nothing was sent\n"
    )
    assert not (ws / "outbox" / "2024-w02").exists()


def test_an_unknown_audience_topic_stops_check_and_send(ws: Path) -> None:
    highlights("subscribers", "add", "a@example.org")
    _with_audience(ws, "[vision, robots]")
    for args in (["check", "2024-w02"], ["send", "2024-w02", "--yes", "--skip-test-check"]):
        result = highlights(*args, ok=False)
        assert result.exit_code == 1
        assert result.stderr.splitlines()[-1] == (
            "Error: issues/2024-w02.yaml: audience names unknown topics 'robots'; the topics are llm, vision, rl"
        )
    assert not (ws / "outbox" / "2024-w02").exists()


def test_a_pause_skips_a_reader_and_ends_by_itself(ws: Path) -> None:
    for address in ("a@example.org", "b@example.org"):
        highlights("subscribers", "add", address)
    w = load_workspace(ws)
    with Store.open(w) as store:
        paused = store.find("b@example.org")
        assert paused is not None
        store.pause(paused.id, 4)
        assert store.count_audience(()) == 1
    highlights("send", "2024-w02", "--yes", "--skip-test-check")
    assert _sent_to(ws) == ["a@example.org"]
    # Four weeks on: the pause is over by itself, and the next issue reaches them.
    with Store(w.database_url or w.db_path, clock=lambda: datetime.now(UTC) + timedelta(weeks=4, minutes=1)) as store:
        assert store.count_audience(()) == 2
        assert store.begin_dispatch("2024-w03", "outbox") == 2


def test_a_pause_that_begins_mid_send_is_honoured_by_the_next_claim(ws: Path) -> None:
    """Like leaving: a reader who pauses after the dispatch began is skipped by every
    batch not yet claimed, and the dispatch says why."""
    for address in ("a@example.org", "b@example.org"):
        highlights("subscribers", "add", address)
    with Store.open(load_workspace(ws)) as store:
        assert store.begin_dispatch("2024-w02", "outbox") == 2
        paused = store.find("b@example.org")
        assert paused is not None
        store.pause(paused.id, 1)
        if store.shares_dispatch:
            store.join_dispatch("2024-w02")
        claimed, skipped, _ = store.claim_batch("2024-w02", 1, 10)
        assert [d.email for d in claimed] == ["a@example.org"] and skipped == 1
        assert store.delivery_counts("2024-w02")["skipped"] == 1


def test_the_welcome_issue_is_the_latest_one_written_for_the_reader(ws: Path) -> None:
    """A reader who joins gets the latest issue whose audience they are in, not one sent
    to topics they did not choose."""
    highlights("subscribers", "add", "vision@example.org", "--topic", "vision")
    highlights("subscribers", "add", "llm@example.org", "--topic", "llm")
    with Store.open(load_workspace(ws)) as store:
        store.begin_dispatch("2024-w02", "outbox", ["vision"])
        store.begin_dispatch("2024-w03", "outbox", ["llm", "rl"])
        ids = {a: store.find(a) for a in ("vision@example.org", "llm@example.org")}
        assert store.latest_dispatch() == "2024-w03"
        assert store.latest_dispatch(ids["vision@example.org"].id) == "2024-w02"  # type: ignore[union-attr]
        assert store.latest_dispatch(ids["llm@example.org"].id) == "2024-w03"  # type: ignore[union-attr]
        store.set_topics(ids["vision@example.org"].id, [])  # type: ignore[union-attr]
        assert store.latest_dispatch(ids["vision@example.org"].id) is None  # type: ignore[union-attr]


# -- a reader's data --------------------------------------------------------------------


def _a_reader_with_history(ws: Path) -> None:
    highlights("subscribers", "add", "ada.lovelace@example.org", "--name", "Ada Byron", "--topic", "vision")
    highlights("send", "2024-w02", "--yes", "--skip-test-check")
    highlights("subscribers", "add", "grace@example.org", "--name", "Grace")


def test_show_gives_everything_held(ws: Path) -> None:
    _a_reader_with_history(ws)
    data = json.loads(highlights("subscribers", "show", "ADA.lovelace@example.org", "--format", "json").stdout)
    assert {"email", "status", "topics", "consents", "deliveries", "events", "delivery_events"} <= data.keys()
    assert data["email"] == "ada.lovelace@example.org" and data["status"] == "active"
    assert data["topics"] == ["vision"] and data["name"] == "Ada Byron"
    assert data["deliveries"] == [{"issue": "2024-w02", "state": "sent"}]
    assert data["events"][0]["source"] == "cli"
    table = highlights("subscribers", "show", "ada.lovelace@example.org", "--format", "table").stdout
    assert "topics:    vision" in table and "2024-w02  sent" in table
    result = highlights("subscribers", "show", "nobody@example.org", "--format", "json", ok=False)
    assert result.exit_code == 1 and result.stderr == "Error: nobody@example.org: not on the list\n"


def _everything_as_text(ws: Path) -> bytes:
    """Every byte the database holds: the SQLite file and its log, or every text value
    of every column of every table on PostgreSQL (the rows a dump would write)."""
    w = load_workspace(ws)
    if w.database_url is None:
        db = w.db_path
        return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    import psycopg

    found: list[str] = []
    with psycopg.connect(w.database_url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                found.extend(str(v) for v in row)
    return "\n".join(found).encode()


def test_forget_leaves_no_trace_but_a_keyed_hash(ws: Path) -> None:
    _a_reader_with_history(ws)
    w = load_workspace(ws)
    with Store.open(w) as store:
        ada = store.find("ada.lovelace@example.org")
        assert ada is not None
        # What came back about her message: an open, a click, a soft bounce naming her.
        store.record_delivery_events(
            [
                DeliveryEventRow("sg-1", "2024-w02", ada.id, "open", "2024-01-12T10:00:00Z"),
                DeliveryEventRow("sg-2", "2024-w02", ada.id, "click", "2024-01-12T10:01:00Z", url="https://x.org/"),
                DeliveryEventRow(
                    "sg-3", "2024-w02", ada.id, "deferred", "2024-01-12T10:02:00Z",
                    detail="mailbox ada.lovelace@example.org full", soft=True,
                ),
            ],
            source="sendgrid-webhook",
            soft_limit=3,
        )  # fmt: skip
        store.record_test_send("2024-w02", "f" * 64, ["ada.lovelace@example.org", "grace@example.org"])
    before = _everything_as_text(ws)
    assert b"ada.lovelace@example.org" in before and b"Ada Byron" in before

    # Asked first; "no" erases nothing.
    refused = highlights("subscribers", "forget", "ada.lovelace@example.org", given="n\n", ok=False)
    assert refused.exit_code == 1 and "nothing was erased" in refused.stderr
    assert b"ada.lovelace@example.org" in _everything_as_text(ws)

    result = highlights("subscribers", "forget", "Ada.Lovelace@example.org", "--yes")
    assert result.stdout.startswith("erased ada.lovelace@example.org")
    after = _everything_as_text(ws)
    for trace in (b"ada.lovelace", b"Ada Byron", b"lovelace"):
        assert trace not in after, trace
    assert b"grace@example.org" in after  # the others stay
    with Store.open(w) as store:
        assert store.find("ada.lovelace@example.org") is None
        assert len(store.erased_hashes()) == 1
        assert store.test_sends("2024-w02")[-1].recipients == ["grace@example.org"]

    # An import never brings the address back: named by line.
    (ws / "old.csv").write_text("email,name\nnew@example.org,New\nADA.LOVELACE@example.org,Ada\n")
    imported = highlights("subscribers", "import", "old.csv")
    assert imported.stdout == "imported 1 new, 0 updated, 0 unchanged, 1 rejected\n"
    assert imported.stderr == "old.csv:3: erased on request (ADA.LOVELACE@example.org); it is not added back\n"
    assert b"lovelace" not in _everything_as_text(ws).lower()


def test_forget_on_sqlite_leaves_no_byte_in_the_file(ws: Path, engine: str) -> None:
    if engine != "sqlite":
        pytest.skip("about SQLite's file")
    many = ws / "many.csv"
    many.write_text("email,name\n" + "".join(f"reader{i}@example.org,Reader {i}\n" for i in range(300)))
    highlights("subscribers", "import", "many.csv")
    highlights("send", "2024-w02", "--yes", "--skip-test-check")
    highlights("subscribers", "forget", "reader150@example.org", "--yes")
    db = load_workspace(ws).db_path
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    data = db.read_bytes()
    assert b"reader150@" not in data and b"Reader 150" not in data
    assert b"reader149@" in data and b"reader151@" in data
