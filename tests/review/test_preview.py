"""`highlights preview` over HTTP: the page, the email, errors in place of the email,
re-rendering when files change on disk, and a clean stop."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

import highlightsmail
from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.rendering.rendered import UNSUBSCRIBE_PLACEHOLDER
from highlightsmail.review import preview as preview_module
from highlightsmail.review.preview import PREVIEW_UNSUBSCRIBE_URL, create_preview_app, running_preview
from support.preview import (
    ISSUE,
    break_top_level_title,
    first_item_title,
    fix_top_level_title,
    set_first_item_title,
)

HIGHLIGHTS = Path(sys.executable).with_name("highlights")
DEFAULT_TEMPLATES = Path(highlightsmail.__file__).parent / "templates"


@pytest.fixture
def client(workspace: Path):
    app = create_preview_app(load_workspace(), workspace / ISSUE)
    with TestClient(app) as c:  # runs the lifespan: first render and the watchers
        yield c


def build_of(client: TestClient) -> str:
    return client.get("/wait", params={"v": ""}).json()["build"]


def page_when(client: TestClient, ready: Callable[[str], bool], within: float = 15.0) -> str:
    """The page, once `ready(page)` holds; waits build by build through the long poll."""
    deadline = time.monotonic() + within
    while True:
        build = build_of(client)
        page = client.get("/").text
        if ready(page):
            return page
        left = deadline - time.monotonic()
        assert left > 0, f"the page did not change as expected; it shows:\n{page[:3000]}"
        client.get("/wait", params={"v": build, "timeout": left})


def test_page_shows_both_frames_text_lint_and_envelope(client: TestClient, workspace: Path) -> None:
    title = first_item_title(workspace / ISSUE)
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text

    frames = re.findall(r"<iframe\b[^>]*>", page)
    assert len(frames) == 2
    ids = {re.search(r'id="(\w+)"', f).group(1) for f in frames}
    assert ids == {"desktop", "phone"}
    for frame in frames:
        sandbox = re.search(r'sandbox="([^"]*)"', frame)
        assert sandbox is not None and "allow-scripts" not in sandbox.group(1)
        assert 'src="/email.html' in frame
    assert "#phone { width: 375px; }" in page

    assert 'id="subject"' in page and 'id="preheader"' in page
    text_block = re.search(r'<pre id="text">(.*?)</pre>', page, re.S)
    assert text_block is not None and title.split(":")[0] in text_block.group(1)
    assert '<section id="lint">' in page
    assert "lint failed" not in page
    assert 'id="errors"' not in page


def test_lint_findings_are_listed_with_line_and_column(client: TestClient, workspace: Path) -> None:
    issue = workspace / ISSUE
    # A preheader-less issue always gets a lint warning.
    text = issue.read_text(encoding="utf-8")
    issue.write_text(re.sub(r"^preheader:.*\n", "", text, count=1, flags=re.M), encoding="utf-8")
    page = page_when(client, lambda p: "no preheader" in p)
    finding = re.search(r'<li class="warning">(issues/2024-w02\.yaml):(\d+):(\d+): warning: no preheader', page)
    assert finding is not None, page


def test_the_page_says_how_many_more_items_fit_as_check_does(client: TestClient, workspace: Path) -> None:
    from highlightsmail.review.lint import check_command

    page = client.get("/").text
    shown = re.search(r'<p class="note" id="html-size">HTML ([^<]+)</p>', page)
    assert shown is not None, page
    assert re.fullmatch(r"\d+ KB of 102 KB; about \d+ more items of this size fit", shown[1])
    assert f"HTML {shown[1]})" in check_command(load_workspace(), workspace / ISSUE).summary


def test_email_endpoints_serve_the_current_rendering(client: TestClient, workspace: Path) -> None:
    title = first_item_title(workspace / ISSUE)
    html = client.get("/email.html")
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    assert "script-src 'none'" in html.headers["content-security-policy"]
    assert UNSUBSCRIBE_PLACEHOLDER not in html.text
    assert f'href="{PREVIEW_UNSUBSCRIBE_URL}"' in html.text

    text = client.get("/email.txt")
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert title in text.text
    assert UNSUBSCRIBE_PLACEHOLDER not in text.text and PREVIEW_UNSUBSCRIBE_URL in text.text


def test_saving_the_issue_re_renders_once_for_every_page(client: TestClient, workspace: Path) -> None:
    before = build_of(client)
    set_first_item_title(workspace / ISSUE, "A Brand New Title For Item One", atomic=True)
    page = page_when(client, lambda p: "A Brand New Title For Item One" in p)
    assert build_of(client) != before
    assert "A Brand New Title For Item One" in client.get("/email.txt").text
    assert "A Brand New Title For Item One" in client.get("/email.html").text
    assert 'id="errors"' not in page


def test_a_long_poll_answers_at_once_for_an_old_build_and_holds_for_the_current(client: TestClient) -> None:
    current = build_of(client)
    assert client.get("/wait", params={"v": "old"}).json() == {"build": current, "closing": False}
    # Nothing changes on disk: the poll ends by its own time-out with the same build.
    assert client.get("/wait", params={"v": current, "timeout": 0.2}).json()["build"] == current


def test_a_broken_issue_shows_its_errors_and_the_page_recovers(client: TestClient, workspace: Path) -> None:
    issue = workspace / ISSUE
    line = break_top_level_title(issue)
    page = page_when(client, lambda p: 'id="errors"' in p)
    assert f"issues/2024-w02.yaml:{line}:1: " in page
    assert "titel" in page
    assert "<iframe" not in page
    assert client.get("/email.html").status_code == 503

    # The server is still there, and shows the email again once the file is fixed.
    fix_top_level_title(issue)
    page = page_when(client, lambda p: 'id="errors"' not in p)
    assert "<iframe" in page
    assert client.get("/email.html").status_code == 200


def test_a_symlink_loop_next_to_the_issue_does_not_stop_the_reloads(client: TestClient, workspace: Path) -> None:
    (workspace / "issues" / "loop.yaml").symlink_to("loop.yaml")
    time.sleep(0.3)  # the watcher sees the link first
    set_first_item_title(workspace / ISSUE, "Seen After The Looping Link", atomic=True)
    page_when(client, lambda p: "Seen After The Looping Link" in p)


def test_a_templates_folder_that_is_a_looping_link_is_shown_and_the_preview_keeps_running(workspace: Path) -> None:
    """The server starts and answers; the page names the folder, as `check` and `build`
    do, rather than quietly showing the package's look instead of the editor's."""
    shutil.rmtree(workspace / "templates")
    (workspace / "templates").symlink_to("templates")
    with TestClient(create_preview_app(load_workspace(), workspace / ISSUE)) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert 'id="errors"' in page.text
        assert "the templates folder is a file, a broken link or a link loop" in page.text


def test_a_template_added_while_previewing_takes_over_from_the_default(workspace: Path) -> None:
    template = workspace / "templates" / "issue.txt.j2"
    template.unlink(missing_ok=True)  # the package default is in use
    with TestClient(create_preview_app(load_workspace(), workspace / ISSUE)) as client:
        assert "A line only the workspace's template has" not in client.get("/").text
        # The editor starts customizing the look while the preview runs.
        template.parent.mkdir(exist_ok=True)
        default = (DEFAULT_TEMPLATES / "issue.txt.j2").read_text(encoding="utf-8")
        template.write_text(default + "A line only the workspace's template has\n", encoding="utf-8")
        page_when(client, lambda p: "A line only the workspace&#39;s template has" in p)

        template.unlink()  # and back to the default
        page_when(client, lambda p: "A line only the workspace&#39;s template has" not in p)


def test_a_broken_template_shows_its_file_and_line(client: TestClient, workspace: Path) -> None:
    template = workspace / "templates" / "issue.txt.j2"
    assert template.is_file(), "the example workspace has its own templates/issue.txt.j2"
    good = template.read_text(encoding="utf-8")
    # A syntax error on a new last line (the file may open with a long comment).
    broken_line = good.count("\n") + 1
    template.write_text(good + "{% if %}\n", encoding="utf-8")
    page = page_when(client, lambda p: 'id="errors"' in p)
    assert f"templates/issue.txt.j2:{broken_line}:" in page, page

    template.write_text(good, encoding="utf-8")
    page_when(client, lambda p: 'id="errors"' not in p)


def test_changed_settings_are_picked_up(client: TestClient, workspace: Path) -> None:
    settings = workspace / "highlights.yaml"
    text = settings.read_text(encoding="utf-8")
    new = re.sub(
        r"^postal_address:.*$", 'postal_address: "42 Preview Lane, 99999 Watchtown"', text, count=1, flags=re.M
    )
    assert new != text
    settings.write_text(new, encoding="utf-8")
    page_when(client, lambda p: "42 Preview Lane" in p)
    assert "42 Preview Lane" in client.get("/email.html").text

    # Broken settings are shown like a broken issue.
    settings.write_text(new.replace("list_id:", "list_idd:"), encoding="utf-8")
    page = page_when(client, lambda p: 'id="errors"' in p)
    assert re.search(r"highlights\.yaml:\d+:1: ", page), page
    # Saving the issue meanwhile does not hide the broken settings behind the old ones.
    preview = client.app.state.preview
    renders = preview.renders
    set_first_item_title(workspace / ISSUE, "Edited While The Settings Were Broken")
    deadline = time.monotonic() + 15
    while preview.renders == renders:
        assert time.monotonic() < deadline, "saving the issue did not re-render"
        time.sleep(0.02)
    page = client.get("/").text
    assert 'id="errors"' in page and "list_idd" in page and "Edited While" not in page


def test_a_lint_that_fails_leaves_the_email_shown_and_the_page_says_so(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> list[object]:
        raise RuntimeError("a check fell over")

    monkeypatch.setattr(preview_module, "lint_issue", broken)
    lines: list[str] = []
    with TestClient(create_preview_app(load_workspace(), workspace / ISSUE, log=lines.append)) as client:
        page = client.get("/").text
    assert "lint failed: RuntimeError: a check fell over" in page
    assert "<iframe" in page
    assert any("Traceback" in line for line in lines)  # the terminal gets the details


def test_stopping_answers_waiting_pages_and_ends_the_watchers(workspace: Path) -> None:
    answers: list[dict] = []
    with running_preview(load_workspace(), workspace / ISSUE) as url:
        build = httpx.get(f"{url}wait", params={"v": ""}).json()["build"]

        def poll() -> None:
            answers.append(httpx.get(f"{url}wait", params={"v": build, "timeout": 60}, timeout=90).json())

        waiter = threading.Thread(target=poll)
        waiter.start()
        time.sleep(0.3)  # let the poll reach the server
        assert any(t.name == "highlights-preview" for t in threading.enumerate())
    waiter.join(30)
    assert answers == [{"build": build, "closing": True}]  # woken, not timed out
    # The server thread ends only once its lifespan has stopped the watchers.
    assert not any(t.name == "highlights-preview" for t in threading.enumerate())


def test_only_loopback_host_names_are_served(workspace: Path) -> None:
    with running_preview(load_workspace(), workspace / ISSUE) as url:
        assert httpx.get(url).status_code == 200
        port = url.rsplit(":", 1)[1].strip("/")
        assert httpx.get(url, headers={"Host": f"localhost:{port}"}).status_code == 200
        # A name that resolves to 127.0.0.1 on an attacker's DNS (rebinding) is refused.
        assert httpx.get(url, headers={"Host": f"preview.attacker.example:{port}"}).status_code == 400


def test_cli_prints_the_url_serves_and_stops_cleanly_on_ctrl_c(workspace: Path) -> None:
    proc = subprocess.Popen(
        [str(HIGHLIGHTS), "preview", "2024-w02", "--no-open", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/) ", first)
        assert match, first + proc.stderr.read() if proc.poll() is not None else first
        url = match.group(1)
        assert "AI Research Highlights" in urllib.request.urlopen(url, timeout=10).read().decode()
        build = json.load(urllib.request.urlopen(f"{url}wait?v=", timeout=10))["build"]

        answers: list[dict] = []
        waiter = threading.Thread(
            target=lambda: answers.append(
                json.load(urllib.request.urlopen(f"{url}wait?v={build}&timeout=60", timeout=90))
            )
        )
        waiter.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        waiter.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Aborted" not in err
    assert "Preview stopped." in err
    assert answers and answers[0]["closing"] is True


def test_cli_names_a_port_in_use(workspace: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(HIGHLIGHTS), "preview", "2024-w02", "--no-open", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "--port" in done.stderr
    assert "Traceback" not in done.stderr
