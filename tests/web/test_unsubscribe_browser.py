"""A subscriber in a real Chromium: the unsubscribe link from a real message, the button,
the confirmation. The pages need no JavaScript and load nothing from anywhere else."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from highlightsmail.authoring.issue import load_issue
from highlightsmail.mail.message import Recipient, build_message, recipient_links
from highlightsmail.rendering.render import render_issue
from support.webapp import Site, serve_workspace

pytestmark = pytest.mark.browser

PHONE = {"width": 375, "height": 667}


@pytest.fixture
def site(workspace: Path):
    with serve_workspace(workspace) as s:
        yield s


def footer_link(site: Site, subscriber_id: int, email_address: str, *, test: bool = False) -> str:
    """The unsubscribe link in the HTML part of the message the sender would build for this
    subscriber, moved onto the test server (the path, with the token, is kept as is)."""
    rendered = render_issue(load_issue(site.ws.issue_path("latest")), site.ws)
    links = recipient_links(site.ws.settings, site.signer, subscriber_id, test=test)
    msg = build_message(rendered, site.ws.settings, Recipient(email_address, "", subscriber_id), links, test=test)
    html = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default).get_body(("html",)).get_content()
    base = re.escape(site.ws.settings.base_url.rstrip("/"))
    hrefs = set(re.findall(rf'href="({base}/u/[^"]+)"', html))
    assert hrefs == {links.unsubscribe_url}, hrefs  # one link, the same as in List-Unsubscribe
    return site.url + urlsplit(links.unsubscribe_url).path


def test_press_the_button_without_javascript(site: Site, browser) -> None:
    ada = site.add("adalovelace@example.org", "Ada")
    grace = site.add("grace@example.org", "Grace")
    link = footer_link(site, ada, "adalovelace@example.org")

    context = browser.new_context(java_script_enabled=False, viewport=PHONE, is_mobile=True)
    try:
        page = context.new_page()
        requests: list = []
        page.on("request", lambda r: requests.append(r))
        page.goto(link)
        assert page.get_by_role("heading").inner_text() == f"Unsubscribe from {site.ws.settings.name}?"
        assert "ad***@example.org" in page.inner_text("body")
        assert site.status(ada) == "active"  # opening the link changed nothing

        button = page.get_by_role("button", name="Unsubscribe")
        box = button.bounding_box()
        assert box["width"] >= 0.7 * PHONE["width"] and box["height"] >= 44  # an easy target for a thumb
        with page.expect_navigation():
            button.click()
        assert page.get_by_role("heading").inner_text() == "You are unsubscribed"
        assert page.url == link  # answered in place, no redirect
        assert page.get_by_role("button", name="Subscribe again").is_visible()
    finally:
        context.close()

    assert site.status(ada) == "unsubscribed"
    assert site.events(ada)[-1] == ("active", "unsubscribed", "web")
    assert site.status(grace) == "active"
    assert len(site.events(grace)) == 1
    # Everything came from the endpoint; the form post carried no Referer with the token.
    assert {urlsplit(r.url).netloc for r in requests} == {urlsplit(site.url).netloc}
    assert [r.method for r in requests] == ["GET", "POST"]
    assert "referer" not in requests[1].headers


def test_pages_load_nothing_from_elsewhere_and_read_well_on_a_phone(site: Site, page) -> None:
    ada = site.add("adalovelace@example.org")
    link = footer_link(site, ada, "adalovelace@example.org")
    requests: list = []
    console: list[str] = []
    page.on("request", lambda r: requests.append(r))
    page.on("console", lambda m: console.append(m.text))
    page.set_viewport_size(PHONE)

    page.goto(link)
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_role("heading", name="You are unsubscribed").wait_for()
    page.get_by_role("button", name="Subscribe again").click()
    page.get_by_role("heading", name="You are subscribed again").wait_for()

    assert {urlsplit(r.url).netloc for r in requests} == {urlsplit(site.url).netloc}
    assert [r.resource_type for r in requests] == ["document"] * 3  # no CSS, fonts, images or scripts
    assert not [c for c in console if "Content Security Policy" in c]
    # The inline styles apply under the CSP: a readable size, no sideways scrolling.
    size = page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")
    assert size >= 16
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert page.evaluate("getComputedStyle(document.querySelector('button')).borderRadius") != "0px"
    assert site.events(ada)[-2:] == [("active", "unsubscribed", "web"), ("unsubscribed", "active", "web")]


def test_a_test_send_link_says_so_and_changes_nothing(site: Site, browser) -> None:
    ada = site.add("adalovelace@example.org")
    before = site.dump()
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(footer_link(site, ada, "adalovelace@example.org", test=True))
        assert page.get_by_role("heading").inner_text() == "This was a test message"
        assert page.get_by_role("button").count() == 0
    finally:
        context.close()
    assert site.dump() == before
