"""A `run-due` killed with SIGKILL in the middle of a scheduled send, then another
runner: the send resumes from the ledger; nobody is lost, nobody gets two copies (those
whose batch was under way at the kill are in doubt, as with a plain `send`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.sending import runner
from highlightsmail.store import ImportRow, Store
from support.sendgrid import SendGridServer

API_KEY = "SG.schedule-crash-tests"
N = 2000
ISSUE = "2024-w02"
pytestmark = pytest.mark.usefixtures("engine")


def _configure(root: Path) -> None:
    path = root / "highlights.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["delivery"].update({"backend": "sendgrid", "max_attempts": 3, "backoff": 0.01})
    data["delivery"]["sendgrid"].update({"batch_size": 50, "concurrency": 2, "timeout": 5})
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def _ledger(root: Path) -> dict[str, str]:
    with Store.open(load_workspace(root)) as store:
        states = ("pending", "in_flight", "sent", "skipped", "failed", "in_doubt")
        return {d.email: d.state for d in store.iter_deliveries(ISSUE, states)}


@pytest.mark.slow
def test_run_due_killed_mid_send_then_resumed_by_another_runner(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(workspace)
    emails = [f"reader{i:05d}@example.org" for i in range(N)]
    with Store.open(load_workspace(workspace)) as store:
        store.import_rows(ImportRow(e) for e in emails)

    with SendGridServer(api_key=API_KEY, record="ids") as sg:
        monkeypatch.setenv("SENDGRID_API_KEY", API_KEY)
        monkeypatch.setenv("HIGHLIGHTS_SENDGRID_HOST", sg.url)
        cli = CliRunner()
        assert cli.invoke(main, ["send", ISSUE, "--test"]).exit_code == 0
        at = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%d %H:%M:%S")
        assert cli.invoke(main, ["send", ISSUE, "--at", at, "--tz", "UTC", "--yes"]).exit_code == 0
        time.sleep(2.2)
        before = sg.stats.received
        proc = subprocess.Popen(
            [sys.executable, "-m", "highlightsmail", "run-due"],
            cwd=workspace,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while sg.stats.received < before + 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "the send finished before it could be killed: nothing was tested"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert 0 < sum(1 for s in _ledger(workspace).values() if s == "sent") < N

        # The schedule still says running; another runner takes it over once its
        # runner is gone, and resumes from the ledger.
        with Store.open(load_workspace(workspace)) as store:
            found = store.schedule_of(ISSUE)
            assert found is not None and found.state == "running"
        later = datetime.now(UTC) + runner.TAKEOVER_AFTER + timedelta(seconds=5)
        reports = runner.run_due(load_workspace(workspace), clock=lambda: later)
        assert [r.what for r in reports] == ["sent"], reports

        state = _ledger(workspace)
        assert len(state) == N
        assert set(state.values()) <= {"sent", "in_doubt"}, set(state.values())
        copies = sg.recipient_ids
        for email, s in state.items():
            assert copies[email] == 1 if s == "sent" else copies[email] <= 1, (email, s, copies[email])
        editors = set(load_workspace(workspace).settings.editors)  # the test send
        assert not set(copies) - set(emails) - editors - {None}
