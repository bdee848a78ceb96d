"""The signing secret does not change under the editor: mail sent before HIGHLIGHTS_SECRET
was set is signed with the secret the first command made in `subscribers/.secret`, and its
links keep working once the variable is set (the README's uvicorn example sets one), in
every place that signs or checks a link: `send`, `serve`, the app under uvicorn, and
`bounces scan`. One warning line says so, and how to end it."""

from __future__ import annotations

import email
import email.policy
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from click.testing import CliRunner

from highlightsmail.cli import main
from support.ports import free_port
from support.webapp import serve_process

NEW_SECRET = "a-new-secret-set-later-0123456789abcdef"
WARNING = "warning: subscribers/.secret holds another secret than HIGHLIGHTS_SECRET"
HIGHLIGHTS = str(Path(sys.executable).with_name("highlights"))


@pytest.fixture
def sent_before(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The example issue sent through the outbox with no HIGHLIGHTS_SECRET set (so with
    the secret made in subscribers/.secret); returns the paths of its unsubscribe links.
    HIGHLIGHTS_SECRET is set, to another secret, from then on."""
    monkeypatch.delenv("HIGHLIGHTS_SECRET")
    (workspace / "list.csv").write_text("email\nada@example.org\ngrace@example.org\n", encoding="utf-8")
    runner = CliRunner()
    for args in (["subscribers", "import", "list.csv"], ["send", "2024-w02", "--yes", "--skip-test-check"]):
        done = runner.invoke(main, args, catch_exceptions=False)
        assert done.exit_code == 0, done.output
    assert (workspace / "subscribers" / ".secret").is_file()
    paths = []
    for eml in sorted((workspace / "outbox" / "2024-w02").glob("*.eml")):
        message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
        paths.append(urlsplit(str(message["List-Unsubscribe"]).strip("<>")).path)
    assert len(paths) == 2
    monkeypatch.setenv("HIGHLIGHTS_SECRET", NEW_SECRET)
    return paths


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_the_web_app_accepts_the_links_sent_before_the_variable_was_set(
    workspace: Path, sent_before: list[str]
) -> None:
    from starlette.testclient import TestClient

    from highlightsmail.authoring.workspace import load_workspace
    from highlightsmail.tokens import SecretWarning
    from highlightsmail.web.application import create_app

    with pytest.warns(SecretWarning) as caught:
        app = create_app(load_workspace())
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "holds another secret than HIGHLIGHTS_SECRET" in message
    secret = (workspace / "subscribers" / ".secret").read_text().strip()
    assert secret not in message and NEW_SECRET not in message
    with TestClient(app) as client:
        for path in sent_before:
            page = client.get(path)
            assert page.status_code == 200, page.text
            assert "not valid" not in page.text
        done = client.post(
            sent_before[0],
            content="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert done.status_code == 200


def test_a_send_signs_with_the_variable_and_says_so_in_one_line(workspace: Path, sent_before: list[str]) -> None:
    done = subprocess.run(
        [HIGHLIGHTS, "send", "2024-w02", "--test"], cwd=workspace, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    [line] = _warnings(done.stderr)
    assert line.startswith(WARNING)
    assert "HIGHLIGHTS_SECRET_PREVIOUS" in line


def test_bounces_scan_says_so_in_one_line(workspace: Path, sent_before: list[str]) -> None:
    (workspace / "empty.mbox").write_text("", encoding="utf-8")
    done = subprocess.run(
        [HIGHLIGHTS, "bounces", "scan", "empty.mbox"], cwd=workspace, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert [w[: len(WARNING)] for w in _warnings(done.stderr)] == [WARNING]


@pytest.mark.parametrize("how", ["serve", "uvicorn"])
def test_serve_and_uvicorn_accept_the_earlier_links_and_warn_once(
    workspace: Path, sent_before: list[str], how: str
) -> None:
    command, port = None, None
    if how == "uvicorn":
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", "highlightsmail.web:app", "--port", str(port)]
    with serve_process(workspace, command=command, port=port, check=False) as served, httpx.Client() as client:
        answers = [client.get(f"{served.url}{path}") for path in sent_before]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    stderr = "".join(served.stderr).splitlines()
    warned = _warnings("\n".join(stderr))
    assert [w[: len(WARNING)] for w in warned] == [WARNING], stderr
