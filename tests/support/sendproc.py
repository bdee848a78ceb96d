"""`highlights send` as a process of its own, as an editor runs it (the crash and worker
process tests), and the ledger it leaves, read straight from the SQLite file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from highlightsmail.store import Store

ALL_STATES = ("pending", "in_flight", "sent", "skipped", "failed", "in_doubt")


def send_process(root: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    """`highlights send 2024-w02 --yes --skip-test-check` started in `root`. In a session
    of its own, as a terminal's foreground job is a group of its own: a Ctrl-C there
    (os.killpg) signals every process of the group, its workers too."""
    return subprocess.Popen(
        [sys.executable, "-m", "highlightsmail", "send", "2024-w02", "--yes", "--skip-test-check", *extra],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def ledger(root: Path, issue: str = "2024-w02") -> dict[str, str]:
    """Each recipient's address and state in the issue's ledger."""
    with Store(root / "subscribers" / "highlights.db") as store:
        return {d.email: d.state for d in store.iter_deliveries(issue, ALL_STATES)}
