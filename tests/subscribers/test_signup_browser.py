"""Joining in a real browser (Debian's Chromium): the form on a phone with JavaScript off,
the confirmation email from the outbox, its link, the Confirm button, and the welcome
issue; and a page on another site posting JSON through CORS.

The README's screenshots come from here; to make them again after a change to the look:

    HIGHLIGHTS_SCREENSHOTS=1 .venv/bin/python -m pytest tests/subscribers/test_signup_browser.py -k screenshot
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from support.archive import mark_sent
from support.paths import REPO
from support.signup import confirm_link, enable_signup, mails, read_mail, wait_for_mails
from support.webapp import Site, serve_workspace

pytestmark = pytest.mark.browser

PHONE = {"width": 375, "height": 740}
SCREENSHOTS = os.environ.get("HIGHLIGHTS_SCREENSHOTS") == "1"


@pytest.fixture
def site(workspace: Path) -> Iterator[Site]:
    enable_signup(workspace)
    mark_sent(workspace, "2024-w02")  # the latest issue, which a new subscriber gets
    with serve_workspace(workspace) as s:
        yield s


@pytest.fixture
def phone(browser):
    context = browser.new_context(java_script_enabled=False, viewport=PHONE, is_mobile=True)
    yield context.new_page()
    context.close()


def test_join_confirm_and_get_the_welcome_issue(site: Site, phone) -> None:
    requests: list = []
    phone.on("request", lambda r: requests.append(r))
    phone.goto(f"{site.url}/subscribe")
    assert phone.get_by_role("heading", level=1).inner_text() == f"Subscribe to {site.ws.settings.name}"
    # Readable, and nothing wider than the phone; the trap stays out of sight.
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert phone.evaluate("parseFloat(getComputedStyle(document.body).fontSize)") >= 16
    trap = phone.locator("#website").bounding_box()
    assert trap is not None and trap["x"] + trap["width"] <= 0  # left of the page, where nobody sees it
    phone.get_by_label("Email address").fill("ada.lovelace@example.org")
    phone.get_by_label("Name (optional)").fill("Ada Lovelace")
    button = phone.get_by_role("button", name="Subscribe")
    box = button.bounding_box()
    assert box is not None and box["width"] >= 0.7 * PHONE["width"] and box["height"] >= 44
    with phone.expect_navigation():
        button.click()
    assert phone.get_by_role("heading", level=1).inner_text() == "Check your inbox"
    with site.store() as store:
        ada = store.find("ada.lovelace@example.org")
    assert ada is not None and (ada.name, ada.status) == ("Ada Lovelace", "pending")

    (sent,) = wait_for_mails(site.ws.root / "outbox" / "_confirm", 1)
    msg = read_mail(sent)
    assert str(msg["To"]) == "Ada Lovelace <ada.lovelace@example.org>"
    assert msg["Subject"] == f"Confirm your subscription to {site.ws.settings.name}"
    link = site.url + confirm_link(msg)

    before = site.dump()
    phone.goto(link)  # opening the link, as a scanner would: nothing changes
    assert phone.get_by_role("heading", level=1).inner_text() == "Confirm your subscription"
    assert site.dump() == before
    with phone.expect_navigation():
        phone.get_by_role("button", name="Confirm my subscription").click()
    assert phone.get_by_role("heading", level=1).inner_text() == "You are subscribed"
    assert phone.url == link  # answered in place

    assert site.status(ada.id) == "active"
    with site.store() as store:
        (consent,) = store.consents(ada.id)
    assert (consent.source, consent.ip) == ("form", "127.0.0.1")
    (welcome,) = wait_for_mails(site.ws.root / "outbox" / "2024-w02", 1)
    assert str(read_mail(welcome)["To"]) == "Ada Lovelace <ada.lovelace@example.org>"
    # Everything came from the endpoint: no script, no stylesheet, no font, no image.
    assert {urlsplit(r.url).netloc for r in requests} == {urlsplit(site.url).netloc}
    assert {r.resource_type for r in requests} == {"document"}
    phone.reload()  # posting again (the browser repeats the POST): still one welcome issue
    assert len(mails(site.ws.root / "outbox" / "2024-w02")) == 1


def test_a_refused_field_is_shown_next_to_the_form(site: Site, phone) -> None:
    phone.goto(f"{site.url}/subscribe")
    phone.get_by_label("Email address").fill("ada@example.org")
    phone.get_by_label("Name (optional)").fill("=?utf-8?q?Ada=0D=0ABcc:_x@example.net?=")
    with phone.expect_navigation():
        phone.get_by_role("button", name="Subscribe").click()
    assert phone.get_by_role("alert").inner_text().startswith("Name must not contain an RFC 2047 encoded word")
    assert phone.get_by_label("Email address").input_value() == "ada@example.org"  # kept, to correct the rest
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    with site.store() as store:
        assert store.find("ada@example.org") is None


class _OtherSite(BaseHTTPRequestHandler):
    """A page on another origin whose script posts JSON to the signup endpoint."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<!doctype html><title>Blog</title><script>
        window.result = fetch({self.target!r}, {{method: "POST", headers: {{"Content-Type": "application/json"}},
            body: JSON.stringify({{email: "reader@example.org"}})}})
          .then(r => r.json()).then(j => JSON.stringify(j), e => "blocked: " + e);
        </script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("allowed", [True, False])
def test_json_from_another_site_through_cors(workspace: Path, browser, allowed: bool) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtherSite)
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    enable_signup(workspace, allowed_origins=[origin] if allowed else ["https://www.example.org"])
    try:
        with serve_workspace(workspace) as s:
            _OtherSite.target = f"{s.url}/subscribe"
            context = browser.new_context()
            page = context.new_page()
            page.goto(origin + "/")
            result = page.evaluate("window.result")
            context.close()
            with s.store() as store:
                joined = store.find("reader@example.org")
    finally:
        server.shutdown()
        server.server_close()
    if allowed:
        assert result == '{"status":"pending"}'
        assert joined is not None and joined.status == "pending"
    else:
        assert result.startswith("blocked")  # the browser's preflight was refused: nothing was posted
        assert joined is None


@pytest.mark.parametrize("shot", ["phone", "email"])
def test_screenshot(site: Site, phone, tmp_path: Path, shot: str) -> None:
    """The README's pictures: the form on a phone, and the confirmation email. Written
    to docs/ only when HIGHLIGHTS_SCREENSHOTS=1, so an ordinary run leaves the tree alone."""
    if shot == "phone":
        phone.goto(f"{site.url}/subscribe")
        phone.get_by_label("Email address").fill("ada@example.org")
    else:
        with site.store() as store:
            store.add("ada@example.org", "Ada", status="pending", source="form")
        from highlightsmail.mail.message import Recipient
        from highlightsmail.subscribers.signup import Signup

        signup = Signup(site.ws, site.signer)
        try:
            sid = site.add("grace@example.org", status="pending")
            reserved = signup._store().reserve_confirmation(sid, ())
            assert reserved is not None
            assert signup.mailer.confirmation(Recipient("grace@example.org", "", sid), *reserved).result(30)
        finally:
            signup.close()
        (sent,) = mails(site.ws.root / "outbox" / "_confirm")
        phone.set_content(read_mail(sent).get_body(("html",)).get_content())
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    target = (REPO / "docs" if SCREENSHOTS else tmp_path) / f"signup-{shot}.png"
    target.parent.mkdir(exist_ok=True)
    png = phone.screenshot(path=str(target), full_page=True)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
