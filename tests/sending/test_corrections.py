"""`send ISSUE --correction TEXT` end to end through the outbox, with the ledger in a real
SQLite file or a PostgreSQL database (each test runs on both): the notice goes only
after its own test send, only to those the ledger says received the issue and who are
still on the list, once each, as a dispatch of its own."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.store import ImportRow, Store, format_time
from support.clock import Clock

pytestmark = pytest.mark.usefixtures("engine")
ISSUE = "2024-w02"
FIRST = f"{ISSUE}~correction-1"
TEXT = "The second item said **eight** experts per token; it is [two](https://arxiv.org/abs/2401.04088)."


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def add(root: Path, numbers: range) -> list[str]:
    emails = [f"reader{i}@example.org" for i in numbers]
    with Store.open(load_workspace(root)) as store:
        store.import_rows(ImportRow(e, f"Reader {i}") for i, e in zip(numbers, emails, strict=True))
    return emails


def addressees(folder: Path) -> list[str]:
    return sorted(str(message_from_bytes(p.read_bytes(), policy=default_policy)["To"]) for p in folder.glob("*.eml"))


def sent_issue(root: Path) -> list[str]:
    emails = add(root, range(1, 6))
    assert run("send", ISSUE, "--test").exit_code == 0
    assert run("send", ISSUE, "--yes").exit_code == 0
    return emails


def test_a_correction_goes_to_who_received_the_issue_and_is_still_here(workspace: Path) -> None:
    emails = sent_issue(workspace)
    add(workspace, range(8, 10))  # joined after the issue went out
    with Store.open(load_workspace(workspace)) as store:
        store.set_status(emails[0], "unsubscribed", "web")
        store.set_status(emails[1], "bounced", "bounce-mail")
    outbox = workspace / "outbox" / FIRST

    untested = run("send", ISSUE, "--correction", TEXT, "--yes")
    assert untested.exit_code == 1
    assert f"{FIRST}: it has not been test-sent" in untested.output
    assert not outbox.exists()

    tested = run("send", ISSUE, "--correction", TEXT, "--test")
    assert tested.exit_code == 0, tested.output
    assert tested.output.startswith(f"Test of {FIRST} sent to ada@example.org, grace@example.org through outbox")
    test_copies = sorted((outbox / "test").glob("*.eml"))
    assert len(test_copies) == 2
    first = message_from_bytes(test_copies[0].read_bytes(), policy=default_policy)
    assert first["Subject"] == "[TEST] Correction: AI Research Highlights | Week 2, 2024"

    changed = run("send", ISSUE, "--correction", TEXT + " Sorry.", "--yes")
    assert changed.exit_code == 1 and f"{FIRST}: this version was not test-sent" in changed.output

    sent = run("send", ISSUE, "--correction", TEXT, "--yes")
    assert sent.exit_code == 0, sent.output
    assert f"{FIRST}: sent 3, skipped 2, failed 0, in doubt 0." in sent.output
    assert addressees(outbox) == [f"Reader {i} <reader{i}@example.org>" for i in (3, 4, 5)]
    msg = message_from_bytes(sorted(outbox.glob("*.eml"))[0].read_bytes(), policy=default_policy)
    assert msg["X-Highlights-Issue"] == FIRST and msg["List-Unsubscribe"]
    body = msg.get_body(("plain",)).get_content()
    assert "it is two [1]" in body and "https://arxiv.org/abs/2401.04088" in body
    # Like every email, it links the reader's own preference page beside unsubscribe.
    assert "Manage preferences" in body and "/p/p" in body
    assert "Manage preferences</a>" in msg.get_body(("html",)).get_content()

    again = run("send", ISSUE, "--correction", TEXT, "--yes")
    assert again.exit_code == 0 and "nothing left to send" in again.output
    assert len(list(outbox.glob("*.eml"))) == 3
    with Store.open(load_workspace(workspace)) as store:
        assert store.delivery_counts(ISSUE) == {"sent": 5}  # the issue's own ledger is untouched
        assert [name for name, _s, _f in store.corrections_of(ISSUE)] == [FIRST]
    status = run("status", FIRST)
    assert "sent 3, skipped 2" in status.output and "finished" in status.output

    # The rebuilt notice is what the reader got.
    rebuilt = workspace / "rebuilt.eml"
    shown = run("subscribers", "show", emails[2], "--issue", FIRST, "--eml", str(rebuilt))
    assert shown.exit_code == 0, shown.output
    ours = message_from_bytes(rebuilt.read_bytes(), policy=default_policy)
    theirs = message_from_bytes((outbox / f"000003-{emails[2]}.eml").read_bytes(), policy=default_policy)
    assert [(k, str(v)) for k, v in ours.items() if k != "Content-Type"] == [
        (k, str(v)) for k, v in theirs.items() if k != "Content-Type"
    ]


def test_a_second_correction_is_its_own_dispatch_with_its_own_test(workspace: Path) -> None:
    sent_issue(workspace)
    assert run("send", ISSUE, "--correction", TEXT, "--test").exit_code == 0
    assert run("send", ISSUE, "--correction", TEXT, "--yes").exit_code == 0
    second = f"{ISSUE}~correction-2"
    note = workspace / "note.md"
    note.write_text("One more: the *third* item's link was wrong.\n", encoding="utf-8")
    refused = run("send", ISSUE, "--correction-file", str(note), "--yes")
    assert refused.exit_code == 1 and f"{second}: it has not been test-sent" in refused.output
    assert run("send", ISSUE, "--correction-file", str(note), "--test").exit_code == 0
    sent = run("send", ISSUE, "--correction-file", str(note), "--yes")
    assert sent.exit_code == 0 and f"{second}: sent 5," in sent.output
    assert len(list((workspace / "outbox" / second).glob("*.eml"))) == 5


def test_what_a_correction_refuses(workspace: Path) -> None:
    add(workspace, range(1, 3))
    unsent = run("send", ISSUE, "--correction", TEXT, "--test")
    assert unsent.exit_code == 1
    assert unsent.output == f"Error: {ISSUE}: the ledger has it sent to nobody, so there is nobody to correct it for\n"
    assert run("send", ISSUE, "--test").exit_code == 0 and run("send", ISSUE, "--yes").exit_code == 0
    empty = run("send", ISSUE, "--correction", "  ", "--test")
    assert empty.exit_code == 1 and "the correction is empty" in empty.output
    both = run("send", ISSUE, "--correction", TEXT, "--correction-file", "x.md")
    assert both.exit_code == 1 and "give the correction once" in both.output
    limited = CliRunner().invoke(main, ["send", ISSUE, "--correction", TEXT, "--limit", "1"])
    assert limited.exit_code == 2 and "a correction goes with" in limited.output
    missing = run("send", ISSUE, "--correction-file", "nowhere.md", "--test")
    assert missing.exit_code == 1 and missing.output.startswith("Error: nowhere.md: cannot read it")
    dry = run("send", ISSUE, "--correction", TEXT, "--test", "--dry-run")
    assert (
        dry.exit_code == 0
        and dry.output == f"Dry run: would send a test of {FIRST} to ada@example.org, grace@example.org\n"
    )
    assert run("send", ISSUE, "--correction", TEXT, "--test").exit_code == 0
    dry = run("send", ISSUE, "--correction", TEXT, "--dry-run")
    assert dry.exit_code == 0 and f"would send {FIRST} to 2 recipient(s)" in dry.output
    assert list((workspace / "outbox" / FIRST).glob("*.eml")) == []


def test_a_correction_is_never_the_issue_a_newcomer_is_welcomed_with(workspace: Path) -> None:
    """The welcome issue is the latest dispatch's: an issue's, never a correction's."""
    sent_issue(workspace)
    assert run("send", ISSUE, "--correction", TEXT, "--test").exit_code == 0
    assert run("send", ISSUE, "--correction", TEXT, "--yes").exit_code == 0
    with Store.open(load_workspace(workspace)) as store:
        assert store.latest_dispatch() == ISSUE
    named = workspace / "issues" / f"{ISSUE}~correction-7.yaml"
    named.write_text((workspace / "issues" / f"{ISSUE}.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    checked = CliRunner().invoke(main, ["check", str(named)])
    assert checked.exit_code == 1 and "holds '~correction-'" in checked.output


def test_a_correction_left_in_flight_is_in_doubt_until_asked(workspace: Path) -> None:
    """A run that died with a batch under way: those readers are in doubt, sent again
    only with --resend-in-doubt; nobody else gets a second copy."""
    sent_issue(workspace)
    assert run("send", ISSUE, "--correction", TEXT, "--test").exit_code == 0
    with Store.open(load_workspace(workspace)) as store:
        store.begin_correction(FIRST, ISSUE, "outbox")
        if store.shares_dispatch:
            store.join_dispatch(FIRST)
        claimed, _skipped, _reached = store.claim_batch(FIRST, 1, 2)
        assert len(claimed) == 2  # in flight when the run "died" (this Store closes)
    resumed = run("send", ISSUE, "--correction", TEXT, "--yes")
    assert resumed.exit_code == 1
    assert f"{FIRST}: sent 3, skipped 0, failed 0, in doubt 2." in resumed.output
    assert "add --resend-in-doubt for those in doubt" in resumed.output
    outbox = workspace / "outbox" / FIRST
    assert len(list(outbox.glob("*.eml"))) == 3
    again = run("send", ISSUE, "--correction", TEXT, "--yes", "--resend-in-doubt")
    assert again.exit_code == 0, again.output
    assert f"{FIRST}: sent 5, skipped 0, failed 0, in doubt 0." in again.output
    assert addressees(outbox) == [f"Reader {i} <reader{i}@example.org>" for i in range(1, 6)]


# ---------------------------------------------------------------- the sending limits


def rate_limit(root: Path, rate: str) -> None:
    path = root / "highlights.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["delivery"]["rate_limit"] = rate
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def correction_tested_at_3_a_minute(root: Path) -> tuple[Any, Path, Clock]:
    """The issue sent to 5 readers, a limit of 3 a minute and the correction test-sent:
    the workspace, the correction's outbox, and a clock 5 minutes on (the issue's own
    counts have left the window)."""
    sent_issue(root)
    rate_limit(root, "3/minute")
    assert run("send", ISSUE, "--correction", TEXT, "--test").exit_code == 0
    return load_workspace(root), root / "outbox" / FIRST, Clock(datetime.now(UTC) + timedelta(minutes=5))


def test_a_correction_counts_toward_the_limits_and_pauses_when_they_are_reached(workspace: Path) -> None:
    """3 a minute, 5 readers: 3 go, it pauses until the window opens, then the other 2."""
    from highlightsmail.sending.corrections import send_correction

    ws, outbox, clock = correction_tested_at_3_a_minute(workspace)

    first = send_correction(ws, ws.issue_path(ISSUE), TEXT, clock=clock)
    assert first.paused_until == format_time(clock.now + timedelta(seconds=61))
    assert first.summary is not None and (first.summary["sent"], first.summary["pending"]) == (3, 2)
    assert len(addressees(outbox)) == 3
    with Store.open(ws, clock=clock) as store:  # in the window every sender shares
        assert store.sent_since(format_time(clock.now - timedelta(minutes=1))) == 3

    clock.advance(30)  # the window is still full: nothing more goes
    again = send_correction(ws, ws.issue_path(ISSUE), TEXT, clock=clock)
    assert again.paused_until is not None and len(addressees(outbox)) == 3

    clock.advance(32)
    rest = send_correction(ws, ws.issue_path(ISSUE), TEXT, clock=clock)
    assert rest.paused_until is None
    assert rest.summary is not None and (rest.summary["sent"], rest.summary["pending"]) == (5, 0)
    assert addressees(outbox) == [f"Reader {i} <reader{i}@example.org>" for i in range(1, 6)]
    # Paused, it had a schedule a runner could resume; sent, the schedule says so.
    with Store.open(ws) as store:
        schedule = store.schedule_of(FIRST)
        assert schedule is not None and schedule.state == "sent"


def test_the_runner_sends_the_rest_of_a_correction_the_limits_paused(workspace: Path) -> None:
    """3 a minute, 5 readers: the command sends 3; run-due, too early, sends nothing; a
    minute on it renders the notice again from the kept text and sends the other 2."""
    from highlightsmail.sending.corrections import send_correction
    from highlightsmail.sending.runner import run_due

    ws, outbox, clock = correction_tested_at_3_a_minute(workspace)

    first = send_correction(ws, ws.issue_path(ISSUE), TEXT, clock=clock)
    assert first.paused_until is not None and len(addressees(outbox)) == 3
    with Store.open(ws) as store:
        schedule = store.schedule_of(FIRST)
        assert schedule is not None and (schedule.state, schedule.paused_until) == ("paused", first.paused_until)

    clock.advance(30)
    assert run_due(ws, clock=clock) == [] and len(addressees(outbox)) == 3  # not due yet

    clock.advance(32)
    reports = run_due(ws, clock=clock)
    assert [(r.issue, r.what) for r in reports] == [(FIRST, "sent")], reports
    assert addressees(outbox) == [f"Reader {i} <reader{i}@example.org>" for i in range(1, 6)]
    with Store.open(ws) as store:
        schedule = store.schedule_of(FIRST)
        assert schedule is not None and schedule.state == "sent"
        assert store.delivery_counts(FIRST)["sent"] == 5
    assert run_due(ws, clock=clock) == []  # nothing due any more: nobody gets it twice


def test_the_runner_holds_a_paused_correction_whose_notice_changed(workspace: Path) -> None:
    """A template edited after the correction's test send: the runner renders another
    notice, so it holds the correction and says why instead of sending it."""
    from highlightsmail.sending.corrections import send_correction
    from highlightsmail.sending.runner import CORRECTION_HELD, run_due

    ws, outbox, clock = correction_tested_at_3_a_minute(workspace)
    assert send_correction(ws, ws.issue_path(ISSUE), TEXT, clock=clock).paused_until is not None

    template = workspace / "templates" / "correction.txt.j2"
    template.write_text(template.read_text(encoding="utf-8") + "\nOne more line.\n", encoding="utf-8")
    clock.advance(62)
    reports = run_due(load_workspace(workspace), clock=clock)
    assert [(r.issue, r.what, r.detail) for r in reports] == [(FIRST, "held", CORRECTION_HELD)]
    assert len(addressees(outbox)) == 3  # nobody more got anything
    with Store.open(ws) as store:
        schedule = store.schedule_of(FIRST)
        assert schedule is not None and (schedule.state, schedule.reason) == ("held", CORRECTION_HELD)


def test_a_correction_on_the_command_line_waits_or_leaves_the_rest_to_the_same_command(workspace: Path) -> None:
    sent_issue(workspace)
    rate_limit(workspace, "3/second")
    assert run("send", ISSUE, "--correction", TEXT, "--test").exit_code == 0
    outbox = workspace / "outbox" / FIRST
    time.sleep(2.1)  # the issue's own counts leave the window (times are kept to the second)

    left = run("send", ISSUE, "--correction", TEXT, "--yes", "--no-wait")
    assert left.exit_code == 0, left.output
    assert f"{FIRST}: sent 3, skipped 0, failed 0, in doubt 0." in left.output
    assert f"{FIRST}: paused until " in left.output and "`highlights run-due` or serve sends the rest" in left.output
    assert len(addressees(outbox)) == 3

    time.sleep(1.2)
    add(workspace, range(6, 9))  # joined after the issue: not the correction's
    with Store.open(load_workspace(workspace)) as store:
        store.count_sent(3, "example.org")  # another sender fills the window meanwhile
    waited = CliRunner().invoke(main, ["send", ISSUE, "--correction", TEXT, "--yes"])
    assert waited.exit_code == 0, waited.output
    assert "paused until" in waited.output and "waiting" in waited.output
    assert f"{FIRST}: sent 5, skipped 0, failed 0, in doubt 0." in waited.output
    assert len(addressees(outbox)) == 5
