"""Sending later: `send --at`, `schedule`, `run-due`, `send --cancel`, and the sending
limits, on SQLite and PostgreSQL (each test that asks for `engine` runs on both).

Real short schedules (a few seconds ahead) for the end-to-end path; an injected clock
for the grace, the windows of the limits and the warm-up's days, so no test waits a
minute for a window to open.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.errors import HighlightsError
from highlightsmail.sending import runner
from highlightsmail.sending.schedule import parse_at
from highlightsmail.store import ImportRow, Store, format_time
from support.clock import Clock

ISSUE = "2024-w02"
pytestmark = pytest.mark.usefixtures("engine")


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def settings(root: Path, **top: Any) -> None:
    """Change highlights.yaml: `delivery` is merged, other keys replaced."""
    path = root / "highlights.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in top.items():
        if key == "delivery":
            data["delivery"].update(value)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def add_subscribers(root: Path, n: int) -> list[str]:
    emails = [f"reader{i:04d}@example.org" for i in range(n)]
    with Store.open(load_workspace(root)) as store:
        store.import_rows(ImportRow(e) for e in emails)
    return emails


def outbox(root: Path) -> list[str]:
    """Recipients of the messages in the outbox (test sends left out), one per file."""
    folder = root / "outbox" / ISSUE
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.glob("*.eml"))


def ledger(root: Path) -> dict[str, str]:
    with Store.open(load_workspace(root)) as store:
        states = ("pending", "in_flight", "sent", "skipped", "failed", "in_doubt")
        return {d.email: d.state for d in store.iter_deliveries(ISSUE, states)}


def schedule_state(root: Path) -> str:
    with Store.open(load_workspace(root)) as store:
        found = store.schedule_of(ISSUE)
        assert found is not None
        return found.state


def scheduled_in(root: Path, seconds: int, *extra: str) -> Any:
    """`send ISSUE --at` this many seconds from now, in UTC, after a test send."""
    assert run("send", ISSUE, "--test").exit_code == 0
    at = (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S")
    return run("send", ISSUE, "--at", at, "--tz", "UTC", "--yes", *extra)


def due_clock(root: Path, after: float = 1) -> Clock:
    """A clock set `after` seconds past the issue's scheduled time."""
    with Store.open(load_workspace(root)) as store:
        found = store.schedule_of(ISSUE)
        assert found is not None
        due = datetime.strptime(found.due, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return Clock(due + timedelta(seconds=after))


# ------------------------------------------------------------------------ reading a time


NOW = datetime(2024, 1, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "zone", "utc"),
    [
        ("2024-01-15 08:00", "Europe/Berlin", datetime(2024, 1, 15, 7, 0, tzinfo=UTC)),
        ("2024-07-15 08:00:30", "Europe/Berlin", datetime(2024, 7, 15, 6, 0, 30, tzinfo=UTC)),
        ("2024-01-15 08:00", "UTC", datetime(2024, 1, 15, 8, 0, tzinfo=UTC)),
        ("2024-03-10 03:30", "America/New_York", datetime(2024, 3, 10, 7, 30, tzinfo=UTC)),
    ],
)
def test_a_time_is_read_in_its_zone(text: str, zone: str, utc: datetime) -> None:
    assert parse_at(text, zone, NOW) == utc


@pytest.mark.parametrize(
    ("text", "zone", "says"),
    [
        ("2024-03-31 02:30", "Europe/Berlin", "does not exist in Europe/Berlin"),  # clocks go forward
        ("2024-10-27 02:30", "Europe/Berlin", "happens twice in Europe/Berlin"),  # clocks go back
        ("2024-03-10 02:15", "America/New_York", "does not exist"),
        ("2024-01-15 08:00", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("2024-01-09 08:00", "UTC", "is in the past"),
        ("next monday", "UTC", 'write it as "YYYY-MM-DD HH:MM"'),
        ("2024-02-30 08:00", "UTC", "day is out of range"),
    ],
)
def test_a_bad_time_is_one_clear_line(text: str, zone: str, says: str) -> None:
    with pytest.raises(HighlightsError) as caught:
        parse_at(text, zone, NOW)
    message = caught.value.format_message()
    assert says in message and "\n" not in message


def test_send_at_refuses_bad_times_on_the_command_line(workspace: Path) -> None:
    add_subscribers(workspace, 2)
    assert run("send", ISSUE, "--test").exit_code == 0
    past = run("send", ISSUE, "--at", "2020-01-01 08:00", "--yes")
    assert past.exit_code == 1 and "is in the past" in past.output
    zone = run("send", ISSUE, "--at", "2099-01-01 08:00", "--tz", "Nowhere/Land", "--yes")
    assert zone.exit_code == 1 and "unknown time zone 'Nowhere/Land'" in zone.output
    assert "Traceback" not in past.output + zone.output
    assert run("schedule").output == "nothing scheduled\n"


def test_send_at_counts_only_the_issue_s_audience(workspace: Path) -> None:
    """An issue with an `audience:` is scheduled to reach the readers of those topics."""
    settings(workspace, topics=[{"id": "llm", "name": "Language models"}, {"id": "vision", "name": "Vision"}])
    issue = workspace / "issues" / f"{ISSUE}.yaml"
    data = yaml.safe_load(issue.read_text(encoding="utf-8"))
    issue.write_text(yaml.safe_dump({**data, "audience": ["vision"]}, sort_keys=False), encoding="utf-8")
    for address, topic in (("a@example.org", "vision"), ("b@example.org", "llm"), ("c@example.org", "llm")):
        assert run("subscribers", "add", address, "--topic", topic).exit_code == 0
    assert run("send", ISSUE, "--test").exit_code == 0
    done = run("send", ISSUE, "--at", "2099-01-15 08:00", "--yes")
    assert done.exit_code == 0, done.output
    assert "it would reach 1 subscriber(s) now" in done.output


def test_send_at_needs_the_test_send_like_send(workspace: Path) -> None:
    add_subscribers(workspace, 2)
    refused = run("send", ISSUE, "--at", "2099-01-01 08:00", "--yes")
    assert refused.exit_code == 1 and "send 2024-w02 --test" in refused.output


def test_the_zone_defaults_to_the_workspace_timezone(workspace: Path) -> None:
    settings(workspace, timezone="Europe/Berlin")
    add_subscribers(workspace, 3)
    assert run("send", ISSUE, "--test").exit_code == 0
    done = run("send", ISSUE, "--at", "2099-01-15 08:00", "--yes")
    assert done.exit_code == 0, done.output
    assert done.output == (
        "2024-w02: scheduled for 2099-01-15 08:00 Europe/Berlin (2099-01-15 07:00 UTC); "
        "it would reach 3 subscriber(s) now (the recipients are fixed when the send starts)\n"
    )
    listed = json.loads(run("schedule", "--format", "json").output)
    assert [(s["issue"], s["state"], s["due"], s["zone"]) for s in listed] == [
        (ISSUE, "scheduled", "2099-01-15T07:00:00Z", "Europe/Berlin")
    ]
    status = run("status", ISSUE).output
    assert "2024-w02: scheduled for 2099-01-15 08:00 Europe/Berlin" in status


def test_a_bad_timezone_setting_names_the_key(workspace: Path) -> None:
    settings(workspace, timezone="Europe/Nowhere")
    checked = run("schedule")
    assert checked.exit_code == 1
    assert "timezone" in checked.output and "unknown time zone 'Europe/Nowhere'" in checked.output


# ----------------------------------------------------------------- the end-to-end path


def test_a_short_schedule_goes_out_once_through_run_due(workspace: Path) -> None:
    """Scheduled 3 s ahead: run-due before the time sends nothing; after it, everyone
    once; a second run-due sends nobody again."""
    emails = add_subscribers(workspace, 7)
    done = scheduled_in(workspace, 3)
    assert done.exit_code == 0, done.output
    assert "it would reach 7 subscriber(s) now" in done.output

    early = run("run-due")
    assert early.exit_code == 0 and early.output == ""
    assert outbox(workspace) == []
    assert "scheduled for" in run("schedule").output

    import time

    time.sleep(3.5)
    went = run("run-due")
    assert went.exit_code == 0, went.output
    assert went.output.startswith("2024-w02: sent (sent 7, failed 0, in doubt 0)")
    assert len(outbox(workspace)) == 7
    assert set(ledger(workspace)) == set(emails)
    assert run("run-due").output == ""
    assert len(outbox(workspace)) == 7
    assert "sent (scheduled for" in run("schedule").output
    status = run("status", ISSUE).output
    assert "sent 7, skipped 0, failed 0, in doubt 0, pending 0" in status


def test_serve_runs_a_due_send_in_the_background(workspace: Path) -> None:
    """The web app's runner starts a schedule due 2 s after it starts, without any command."""
    from starlette.testclient import TestClient

    from highlightsmail.web.application import create_app

    add_subscribers(workspace, 4)
    assert scheduled_in(workspace, 2).exit_code == 0
    import time

    with TestClient(create_app(load_workspace(workspace))):
        deadline = time.monotonic() + 20
        while len(outbox(workspace)) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert len(outbox(workspace)) == 4
    assert schedule_state(workspace) == "sent"


def test_a_change_after_scheduling_holds_the_send(workspace: Path) -> None:
    add_subscribers(workspace, 3)
    assert scheduled_in(workspace, 60).exit_code == 0
    issue = workspace / "issues" / f"{ISSUE}.yaml"
    issue.write_text(issue.read_text(encoding="utf-8").replace("Week 2, 2024", "Week 2 of 2024"), encoding="utf-8")

    reports = runner.run_due(load_workspace(workspace), clock=due_clock(workspace))
    assert [(r.issue, r.what) for r in reports] == [(ISSUE, "held")]
    assert outbox(workspace) == []
    assert schedule_state(workspace) == "held"
    assert f"{ISSUE}: held: {runner.HELD}" in run("status", ISSUE).output
    assert "held" in run("schedule").output
    # Held stays held: nothing is sent until the editor test-sends and schedules again.
    assert runner.run_due(load_workspace(workspace), clock=due_clock(workspace, 5)) == []
    assert outbox(workspace) == []
    again = scheduled_in(workspace, 60)
    assert again.exit_code == 0, again.output
    reports = runner.run_due(load_workspace(workspace), clock=due_clock(workspace))
    assert [r.what for r in reports] == ["sent"] and len(outbox(workspace)) == 3


def test_a_time_missed_by_more_than_the_grace_is_missed(workspace: Path) -> None:
    settings(workspace, schedule={"grace": "2 hours"})
    add_subscribers(workspace, 2)
    assert scheduled_in(workspace, 60).exit_code == 0
    late = due_clock(workspace, 2 * 3600 + 5)
    reports = runner.run_due(load_workspace(workspace), clock=late)
    assert [(r.issue, r.what) for r in reports] == [(ISSUE, "missed")]
    assert outbox(workspace) == [] and schedule_state(workspace) == "missed"
    assert "missed: no runner was up" in run("schedule").output
    # Within the grace, it goes.
    assert scheduled_in(workspace, 60).exit_code == 0
    reports = runner.run_due(load_workspace(workspace), clock=due_clock(workspace, 2 * 3600 - 5))
    assert [r.what for r in reports] == ["sent"] and len(outbox(workspace)) == 2


# ------------------------------------------------------------------------------ cancel


def test_cancel_before_the_time(workspace: Path) -> None:
    add_subscribers(workspace, 3)
    assert scheduled_in(workspace, 60).exit_code == 0
    cancelled = run("send", ISSUE, "--cancel")
    assert cancelled.exit_code == 0 and "cancelled (it was scheduled)" in cancelled.output
    assert runner.run_due(load_workspace(workspace), clock=due_clock(workspace)) == []
    assert outbox(workspace) == []
    assert "2024-w02  cancelled" in run("schedule").output
    assert "2024-w02: cancelled" in run("status", ISSUE).output


def test_cancel_after_the_send_has_nothing_to_cancel(workspace: Path) -> None:
    add_subscribers(workspace, 2)
    assert scheduled_in(workspace, 60).exit_code == 0
    runner.run_due(load_workspace(workspace), clock=due_clock(workspace))
    assert len(outbox(workspace)) == 2
    late = run("send", ISSUE, "--cancel")
    assert late.exit_code == 1 and "nothing scheduled or being sent" in late.output


def test_cancel_during_the_send_stops_claiming_and_send_resumes(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel while a batch is in flight: that batch finishes and is recorded, no
    other is claimed, `status` shows the rest as cancelled; `send` resumes with them."""
    from highlightsmail.mail.backends.outbox import OutboxBackend

    emails = add_subscribers(workspace, 250)  # the outbox sends 100 a batch
    assert run("send", ISSUE, "--test").exit_code == 0
    real = OutboxBackend.send_batch
    calls: list[int] = []

    def cancelling(self: OutboxBackend, batch: Any) -> Any:
        calls.append(len(batch.envelopes))
        if len(calls) == 1:  # the first batch is in flight: the editor cancels now
            assert run("send", ISSUE, "--cancel").exit_code == 0
        return real(self, batch)

    monkeypatch.setattr(OutboxBackend, "send_batch", cancelling)
    stopped = run("send", ISSUE, "--yes")
    assert stopped.exit_code == 0, stopped.output
    assert "cancelled; `highlights send 2024-w02` resumes from there" in stopped.output
    assert calls == [100]
    states = ledger(workspace)
    assert sum(1 for s in states.values() if s == "sent") == 100
    status = run("status", ISSUE).output
    assert "2024-w02: cancelled" in status and "cancelled 150" in status
    # A reader the cancelled send did not reach sees it so in their data; one it reached, sent.
    reached = {e for e, s in states.items() if s == "sent"}
    left, got = next(e for e in emails if e not in reached), next(iter(reached))
    for email, state in ((left, "cancelled"), (got, "sent")):
        data = json.loads(run("subscribers", "show", email, "--format", "json").output)
        assert data["deliveries"] == [{"issue": ISSUE, "state": state}]
    assert runner.run_due(load_workspace(workspace)) == []  # a runner leaves it alone

    monkeypatch.setattr(OutboxBackend, "send_batch", real)
    resumed = run("send", ISSUE, "--yes")
    assert resumed.exit_code == 0, resumed.output
    assert set(ledger(workspace).values()) == {"sent"} and len(ledger(workspace)) == len(emails)
    assert len(outbox(workspace)) == 250  # one file each: nobody twice
    assert schedule_state(workspace) == "sent"


# ------------------------------------------------------------------------------ limits


def test_a_rate_limit_of_50_a_minute_on_120_subscribers(workspace: Path) -> None:
    """50 in the first minute, paused (`status`: paused until TIME), 50 more once the
    window has moved on, then the last 20."""
    settings(workspace, delivery={"rate_limit": "50/minute"})
    add_subscribers(workspace, 120)
    assert scheduled_in(workspace, 60).exit_code == 0
    clock = due_clock(workspace)
    ws = load_workspace(workspace)

    first = runner.run_due(ws, clock=clock)
    assert [(r.what, r.detail) for r in first] == [("paused", format_time(clock.now + timedelta(seconds=61)))]
    assert len(outbox(workspace)) == 50
    status = run("status", ISSUE).output
    opens = clock.now + timedelta(seconds=61)
    until = opens.strftime("%Y-%m-%d %H:%M" + (":%S" if opens.second else ""))  # as `status` shows a time
    assert f"2024-w02: paused until {until} UTC (a sending limit was reached)" in status
    assert "pending 70" in status

    clock.advance(30)  # the window is still full
    assert runner.run_due(ws, clock=clock) == []
    assert len(outbox(workspace)) == 50
    clock.advance(32)
    assert [r.what for r in runner.run_due(ws, clock=clock)] == ["paused"]
    assert len(outbox(workspace)) == 100
    clock.advance(62)
    assert [r.what for r in runner.run_due(ws, clock=clock)] == ["sent"]
    assert len(outbox(workspace)) == 120
    assert set(ledger(workspace).values()) == {"sent"}
    assert schedule_state(workspace) == "sent"


def test_a_plain_send_with_no_wait_leaves_the_rest_to_the_runner(workspace: Path) -> None:
    settings(workspace, delivery={"rate_limit": "30/hour"})
    add_subscribers(workspace, 45)
    assert run("send", ISSUE, "--test").exit_code == 0
    done = run("send", ISSUE, "--yes", "--no-wait")
    assert done.exit_code == 0, done.output
    assert "2024-w02: paused until " in done.output and "run-due" in done.output
    assert len(outbox(workspace)) == 30
    assert schedule_state(workspace) == "paused"
    later = Clock(datetime.now(UTC) + timedelta(hours=1, seconds=5))
    assert [r.what for r in runner.run_due(load_workspace(workspace), clock=later)] == ["sent"]
    assert len(outbox(workspace)) == 45


def test_a_plain_send_waits_for_the_window(workspace: Path) -> None:
    """Without --no-wait, `send` says until when it waits, then goes on by itself."""
    settings(workspace, delivery={"rate_limit": "5/second"})
    add_subscribers(workspace, 12)
    assert run("send", ISSUE, "--test").exit_code == 0
    done = CliRunner().invoke(main, ["send", ISSUE, "--yes"])
    assert done.exit_code == 0, done.output
    assert "paused until" in done.output and "waiting" in done.output
    assert len(outbox(workspace)) == 12
    assert "sent 12, skipped 0, failed 0, in doubt 0" in done.output


def test_warmup_and_daily_limit_by_day(workspace: Path) -> None:
    """Warm-up [10, 20] then the daily limit of 25: day 1 sends 10, day 2 20, day 3 25."""
    settings(workspace, delivery={"warmup": [10, 20], "daily_limit": 25})
    add_subscribers(workspace, 60)
    assert scheduled_in(workspace, 60).exit_code == 0
    clock = due_clock(workspace)
    ws = load_workspace(workspace)
    sent: list[int] = []
    for _day in range(4):
        runner.run_due(ws, clock=clock)
        sent.append(len(outbox(workspace)))
        clock.advance(86400)
    assert sent == [10, 30, 55, 60]
    # A test send does not count.
    assert run("send", ISSUE, "--test").exit_code == 0


def test_two_runners_at_the_same_due_time_start_it_once(workspace: Path, engine: str) -> None:
    """Two runners (threads, each with its own database connection) look at one due
    schedule at the same moment: exactly one starts it, everyone gets one copy."""
    add_subscribers(workspace, 40)
    assert scheduled_in(workspace, 60).exit_code == 0
    clock = due_clock(workspace)
    ws = load_workspace(workspace)
    barrier = threading.Barrier(2)
    results: list[list[runner.DueReport]] = []
    original = Store.due_schedules

    def together(self: Store, now: str) -> Any:
        found = original(self, now)
        barrier.wait(timeout=10)  # both have read it as due before either moves it
        return found

    def one() -> None:
        results.append(runner.run_due(ws, clock=clock))

    Store.due_schedules = together  # type: ignore[method-assign]
    try:
        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        Store.due_schedules = original  # type: ignore[method-assign]
    started = [r for reports in results for r in reports]
    assert [r.what for r in started] == ["sent"], started
    assert len(outbox(workspace)) == 40
    assert set(ledger(workspace).values()) == {"sent"}


# ------------------------------------------------------------- SendGrid holds it for you

API_KEY = "SG.schedule-tests"


def _provider(root: Path, monkeypatch: pytest.MonkeyPatch, sg: Any, **delivery: Any) -> None:
    path = root / "highlights.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["delivery"].update({"backend": "sendgrid", "max_attempts": 2, "backoff": 0.01, **delivery})
    data["delivery"]["sendgrid"] = {**data["delivery"].get("sendgrid", {}), "schedule": "provider"}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    monkeypatch.setenv("SENDGRID_API_KEY", API_KEY)
    monkeypatch.setenv("HIGHLIGHTS_SENDGRID_HOST", sg.url)


def test_sendgrid_holds_a_send_due_within_72_hours_and_cancels_it(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from support.sendgrid import SendGridServer

    emails = add_subscribers(workspace, 5)
    with SendGridServer(api_key=API_KEY) as sg:
        _provider(workspace, monkeypatch, sg)
        assert run("send", ISSUE, "--test").exit_code == 0
        due = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
        done = run("send", ISSUE, "--at", due.strftime("%Y-%m-%d %H:%M:%S"), "--tz", "UTC", "--yes")
        assert done.exit_code == 0, done.output
        assert not sg.rejected, sg.rejected  # every request fits SendGrid's schema
        [batch_id] = sg.batches
        assert sg.batches[batch_id] == "open"
        assert sorted(sg.held[batch_id]) == emails
        sends = [r.body for r in sg.accepted if not r.body["subject"].startswith("[TEST]")]
        assert sends and all(b["send_at"] == int(due.timestamp()) and b["batch_id"] == batch_id for b in sends)
        assert "held by SendGrid" in run("schedule").output
        # Before its time no runner touches it; after it, a runner only notes it went.
        assert runner.run_due(load_workspace(workspace)) == []

        cancelled = run("send", ISSUE, "--cancel")
        assert cancelled.exit_code == 0, cancelled.output
        assert sg.batches[batch_id] == "cancel"
        assert set(ledger(workspace).values()) == {"failed"}
        status = run("status", ISSUE).output
        assert "2024-w02: cancelled" in status and "cancelled at SendGrid before its time" in status

        # Sent again later (now, by hand): those SendGrid never delivered go, once.
        sg.accepted.clear()
        again = run("send", ISSUE, "--yes")
        assert again.exit_code == 0, again.output
        assert set(ledger(workspace).values()) == {"sent"}
        bodies = [r.body for r in sg.accepted]
        assert sorted(p["to"][0]["email"] for b in bodies for p in b["personalizations"]) == emails
        assert all("send_at" not in b and "batch_id" not in b for b in bodies)


def test_sendgrid_is_not_asked_to_hold_a_send_beyond_72_hours(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from support.sendgrid import SendGridServer

    add_subscribers(workspace, 2)
    with SendGridServer(api_key=API_KEY) as sg:
        _provider(workspace, monkeypatch, sg)
        assert run("send", ISSUE, "--test").exit_code == 0
        sg.accepted.clear()
        due = datetime.now(UTC) + timedelta(hours=80)
        done = run("send", ISSUE, "--at", due.strftime("%Y-%m-%d %H:%M"), "--tz", "UTC", "--yes")
        assert done.exit_code == 0, done.output
        assert sg.accepted == [] and sg.batches == {}
        assert "held by SendGrid" not in run("schedule").output


def test_sendgrid_holding_refuses_the_sending_limits(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from support.sendgrid import SendGridServer

    add_subscribers(workspace, 2)
    with SendGridServer(api_key=API_KEY) as sg:
        _provider(workspace, monkeypatch, sg, rate_limit="10/minute")
        assert run("send", ISSUE, "--test").exit_code == 0
        due = datetime.now(UTC) + timedelta(hours=2)
        done = run("send", ISSUE, "--at", due.strftime("%Y-%m-%d %H:%M"), "--tz", "UTC", "--yes")
        assert done.exit_code == 1
        assert "the sending limits (rate_limit, daily_limit, warmup) cannot hold" in done.output
        assert sg.batches == {}


# ------------------------------------------------------------------- settings and check


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"delivery": {"rate_limit": "fast"}}, "must be a rate like `10000/hour` or `50/minute`"),
        ({"delivery": {"warmup": [500, 0]}}, "warmup"),
        ({"delivery": {"daily_limit": 0}}, "daily_limit"),
        ({"schedule": {"grace": "soon"}}, "must be a duration like `6 hours`"),
    ],
)
def test_bad_limit_settings_name_the_key(workspace: Path, change: dict[str, Any], says: str) -> None:
    settings(workspace, **change)
    done = run("schedule")
    assert done.exit_code == 1
    assert "highlights.yaml" in done.output and says in done.output and "Traceback" not in done.output


def test_check_and_the_preview_show_the_schedule(workspace: Path) -> None:
    from highlightsmail.sending.when import note

    add_subscribers(workspace, 2)
    assert "scheduled" not in run("check", ISSUE).output
    assert run("send", ISSUE, "--test").exit_code == 0
    assert run("send", ISSUE, "--at", "2099-01-15 08:00", "--tz", "Europe/Berlin", "--yes").exit_code == 0
    checked = run("check", ISSUE)
    assert checked.exit_code == 0
    line = "2024-w02: scheduled for 2099-01-15 08:00 Europe/Berlin (2099-01-15 07:00 UTC)"
    assert line in checked.output
    assert note(load_workspace(workspace), ISSUE) == line  # what the preview page shows


def test_report_shows_the_scheduled_time_beside_the_start(workspace: Path) -> None:
    add_subscribers(workspace, 2)
    assert scheduled_in(workspace, 60).exit_code == 0
    with Store.open(load_workspace(workspace)) as store:
        schedule = store.schedule_of(ISSUE)
        assert schedule is not None
    runner.run_due(load_workspace(workspace), clock=due_clock(workspace))
    first = run("report", ISSUE).output.splitlines()[0]
    assert first.startswith("2024-w02: sent through outbox, dispatch started ")
    assert first.endswith(f"(scheduled for {schedule.due})")
    page = workspace / "report.html"
    assert run("report", ISSUE, "--format", "html", "--out", str(page)).exit_code == 0
    assert "(scheduled for " in page.read_text(encoding="utf-8")


def test_a_scheduled_send_that_fails_to_start_is_paused_and_tried_again(workspace: Path) -> None:
    from support.ports import free_port

    add_subscribers(workspace, 2)
    assert scheduled_in(workspace, 60).exit_code == 0
    # The server goes away after the test send: nothing listens there now.
    settings(
        workspace,
        delivery={
            "backend": "smtp",
            "smtp": {"host": "127.0.0.1", "port": free_port(), "security": "none"},
            "max_attempts": 1,
        },
    )
    clock = due_clock(workspace)
    reports = runner.run_due(load_workspace(workspace), clock=clock)
    assert [r.what for r in reports] == ["failed"]
    with Store.open(load_workspace(workspace)) as store:
        found = store.schedule_of(ISSUE)
        assert found is not None and found.state == "paused"
        assert found.reason is not None and found.reason.startswith("the send stopped: ")
        assert found.paused_until == format_time(clock.now + runner.RETRY_AFTER)
    assert runner.run_due(load_workspace(workspace), clock=clock) == []  # not before then


def test_a_runner_that_stops_mid_send_pauses_it_for_the_next(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` shutting down: the send claims no more, its batch in flight is recorded,
    and the schedule is paused for the next runner, which sends the rest once."""
    from highlightsmail.mail.backends.outbox import OutboxBackend

    add_subscribers(workspace, 250)
    assert scheduled_in(workspace, 60).exit_code == 0
    stop = threading.Event()
    real = OutboxBackend.send_batch

    def stopping_now(self: OutboxBackend, batch: Any) -> Any:
        stop.set()  # the server is told to stop while this batch is in flight
        return real(self, batch)

    monkeypatch.setattr(OutboxBackend, "send_batch", stopping_now)
    clock = due_clock(workspace)
    reports = runner.run_due(load_workspace(workspace), clock=clock, stopping=stop.is_set)
    assert [r.what for r in reports] == ["paused"]
    assert len(outbox(workspace)) == 100
    with Store.open(load_workspace(workspace)) as store:
        found = store.schedule_of(ISSUE)
        assert (
            found is not None and found.state == "paused" and found.reason == "the runner stopped; the next one goes on"
        )
    monkeypatch.setattr(OutboxBackend, "send_batch", real)
    assert [r.what for r in runner.run_due(load_workspace(workspace), clock=clock)] == ["sent"]
    assert len(outbox(workspace)) == 250 and set(ledger(workspace).values()) == {"sent"}


def test_a_runner_that_stops_once_the_last_batch_is_in_flight_leaves_the_send_sent(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` told to stop while the last batch is in flight: that batch is recorded and
    nothing is left, so the schedule is sent, not paused for a runner that would find
    nothing to send (a race `serve`'s own test met: stopped right after the mail went)."""
    from highlightsmail.mail.backends.outbox import OutboxBackend

    add_subscribers(workspace, 4)
    assert scheduled_in(workspace, 60).exit_code == 0
    stop = threading.Event()
    real = OutboxBackend.send_batch

    def stopping_now(self: OutboxBackend, batch: Any) -> Any:
        stop.set()
        return real(self, batch)

    monkeypatch.setattr(OutboxBackend, "send_batch", stopping_now)
    reports = runner.run_due(load_workspace(workspace), clock=due_clock(workspace), stopping=stop.is_set)
    assert [r.what for r in reports] == ["sent"]
    assert len(outbox(workspace)) == 4 and set(ledger(workspace).values()) == {"sent"}
    assert schedule_state(workspace) == "sent"


def test_a_waiting_send_cancelled_meanwhile_stops(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from highlightsmail.cli import schedule as cli_schedule

    settings(workspace, delivery={"rate_limit": "5/hour"})
    add_subscribers(workspace, 12)
    assert run("send", ISSUE, "--test").exit_code == 0
    waited: list[str] = []

    def cancelled_while_waiting(ws: Any, slug: str, until: str) -> None:
        waited.append(until)
        assert run("send", ISSUE, "--cancel").exit_code == 0  # from another terminal

    monkeypatch.setattr(cli_schedule, "wait_for", cancelled_while_waiting)
    done = run("send", ISSUE, "--yes")
    assert done.exit_code == 0, done.output
    assert len(waited) == 1
    assert "2024-w02: cancelled; `highlights send 2024-w02` resumes from there" in done.output
    assert len(outbox(workspace)) == 5 and schedule_state(workspace) == "cancelled"
