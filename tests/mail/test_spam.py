"""Every email the product sends through SpamAssassin's local rules (`spamassassin -L -t`,
no network tests): the built sample message, and each kind of email as a reader gets it
(support.emails.EMAIL_KINDS: the issue, the editors' test send, the welcome issue, the
signup's confirmation), with the archive's "View in browser" link and without, all score 0.0.

The hidden preheader once scored HTML_FONT_LOW_CONTRAST (white text on the default white
background SpamAssassin assumes), and so did the confirmation's, written by mj-preview;
dropping only its colour makes FONT_INVIS_MSGID fire (tiny text and a Message-ID with a
host name). Neither may come back.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from highlightsmail.cli import main
from support.emails import EMAIL_KINDS
from support.workspace import configure

pytestmark = pytest.mark.slow

SPAMASSASSIN = shutil.which("spamassassin") or "/usr/bin/spamassassin"
BANNED = {"HTML_FONT_LOW_CONTRAST", "FONT_INVIS_MSGID"}


def spam_report(message: Path, home: Path) -> tuple[float, set[str]]:
    """SpamAssassin's score for `message` and the names of the rules that fired."""
    if not Path(SPAMASSASSIN).exists():
        pytest.fail("spamassassin is missing: install Debian's spamassassin (apt-get install spamassassin)")
    done = subprocess.run(
        [SPAMASSASSIN, "-L", "-t"],
        input=message.read_bytes(),
        capture_output=True,
        timeout=120,
        # Its per-user files go in a temporary home, not the developer's.
        env={**os.environ, "HOME": str(home)},
        check=True,
    )
    report = done.stdout.decode("utf-8", "replace")
    details = report[report.index("Content analysis details:") :]
    score = float(re.search(r"\((-?[\d.]+) points", details)[1])
    rules = set(re.findall(r"^\s*-?\d+\.\d+\s+([A-Z0-9_]+)\s", details, re.M))
    return score, rules


def test_built_and_outbox_messages_score_zero(workspace: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    built = runner.invoke(main, ["build", "2024-w02"], catch_exceptions=False)
    assert built.exit_code == 0, built.output
    (workspace / "people.csv").write_text("email,name\nada.lovelace@example.org,Ada Lovelace\n", encoding="utf-8")
    assert runner.invoke(main, ["subscribers", "import", "people.csv"], catch_exceptions=False).exit_code == 0
    sent = runner.invoke(main, ["send", "2024-w02", "--yes", "--skip-test-check"], catch_exceptions=False)
    assert sent.exit_code == 0, sent.output
    (outbox,) = (workspace / "outbox").rglob("*.eml")

    for message in (workspace / "out" / "2024-w02.eml", outbox):
        score, rules = spam_report(message, tmp_path)
        assert "HTML_MESSAGE" in rules, "the report was read: the HTML part was seen"
        assert not rules & BANNED, f"{message.name}: {sorted(rules)}"
        assert score <= 0.0, f"{message.name}: {score} points from {sorted(rules)}"


@pytest.mark.parametrize("archive", [False, True], ids=["archive-off", "archive-on"])
@pytest.mark.parametrize("kind", EMAIL_KINDS)
def test_every_kind_of_email_scores_zero(workspace: Path, tmp_path: Path, kind: str, archive: bool) -> None:
    configure(workspace, archive={"enabled": archive, "path": "/archive"}, signup={"enabled": True})
    message = EMAIL_KINDS[kind](workspace)
    score, rules = spam_report(message, tmp_path)
    assert "HTML_MESSAGE" in rules, "the report was read: the HTML part was seen"
    assert not rules & BANNED, f"{kind}: {sorted(rules)}"
    assert score <= 0.0, f"{kind}: {score} points from {sorted(rules)}"
