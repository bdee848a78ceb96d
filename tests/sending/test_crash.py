"""Crash safety: a 5,000-recipient dispatch through SendGrid (the local server) killed with
SIGKILL at random moments, several times, then resumed.

Every recipient must end with exactly one copy, except those whose batch was under way
at a kill: they are `in_doubt`, listed by `status`, and get a copy again only with
`--resend-in-doubt` (at most once by default).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from highlightsmail.store import ImportRow, Store
from support.sendgrid import SendGridServer
from support.sendproc import ledger, send_process

API_KEY = "SG.crash-tests"
N = 5000
HIGHLIGHTS = [sys.executable, "-m", "highlightsmail"]


def _configure(root: Path) -> None:
    path = root / "highlights.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["delivery"].update({"backend": "sendgrid", "max_attempts": 3, "backoff": 0.01})
    data["delivery"]["sendgrid"].update({"batch_size": 100, "concurrency": 2, "timeout": 5})
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def _status(root: Path, env: dict[str, str], *extra: str) -> str:
    done = subprocess.run(
        [*HIGHLIGHTS, "status", "2024-w02", *extra], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(workspace: Path) -> None:
    rng = random.Random(20240112)
    _configure(workspace)
    emails = [f"reader{i:05d}@example.org" for i in range(N)]
    with Store(workspace / "subscribers" / "highlights.db") as store:
        store.import_rows(ImportRow(e) for e in emails)

    with SendGridServer(api_key=API_KEY, record="ids") as sg:
        env = {
            **os.environ,
            "SENDGRID_API_KEY": API_KEY,
            "HIGHLIGHTS_SENDGRID_HOST": sg.url,
            "HIGHLIGHTS_SECRET": os.environ["HIGHLIGHTS_SECRET"],
        }
        kills = 0
        for _ in range(4):
            before = sg.stats.received
            proc = send_process(workspace, env)
            # Kill once this run has made a random number of requests (a random moment
            # of the dispatch), plus a random slice of a request's time.
            target = before + rng.randint(1, 12)
            deadline = time.monotonic() + 60
            while sg.stats.received < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.03))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=30)
        assert kills >= 3, "the dispatch finished before it could be killed: nothing was tested"

        # Straight after a kill, before any resume, status already counts what was under
        # way as in doubt (the count and the list agree), and names each address.
        before = ledger(workspace)
        in_flight = sorted(e for e, s in before.items() if s == "in_flight")
        doubt_now = sum(1 for s in before.values() if s in ("in_flight", "in_doubt"))
        status = _status(workspace, env, "--verbose")
        assert "stopped" in status
        assert f"in doubt {doubt_now}, pending" in status and "in flight" not in status
        listed = re.findall(r"^      (\S+@example\.org)$", status, re.MULTILINE)
        assert len(listed) == doubt_now and set(in_flight) <= set(listed)
        groups = re.findall(r"^    batch \d+: (\d+) recipient\(s\): ", status, re.MULTILINE)
        assert sum(map(int, groups)) == doubt_now
        assert _status(workspace, env).count("@example.org") == 0  # addresses only with --verbose

        # Resume without --resend-in-doubt: everyone else goes out; in-doubt stays.
        proc = send_process(workspace, env)
        _out, err = proc.communicate(timeout=120)
        state = ledger(workspace)
        doubt = sorted(e for e, s in state.items() if s == "in_doubt")
        assert set(state.values()) <= {"sent", "in_doubt"}, set(state.values())
        assert len(state) == N
        assert proc.returncode == (1 if doubt else 0), err

        copies = sg.recipient_ids
        for email, s in state.items():
            if s == "sent":
                assert copies[email] == 1, (email, copies[email])
            else:
                assert copies[email] <= 1, (email, copies[email])
        assert not set(copies) - set(emails) - {None}

        if doubt:
            status = _status(workspace, env, "--verbose")
            for email in doubt:
                assert email in status
            assert "--resend-in-doubt" in status

        # Only now, and only when asked, do those in doubt get a copy again.
        proc = send_process(workspace, env, "--resend-in-doubt")
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert set(ledger(workspace).values()) == {"sent"}
        for email in emails:
            want = (1, 2) if email in doubt else (1,)
            assert sg.recipient_ids[email] in want, (email, sg.recipient_ids[email])
