"""The preference page in a real Chromium: at phone width (375 px) and on a desktop, in
light and dark mode; no serious axe-core finding, valid HTML (html5lib, strict), no
script needed to change a topic, and the screenshots in docs/ made from it
(HIGHLIGHTS_REGEN_SCREENSHOTS=1 writes them there; otherwise they go to a temporary
folder and only have to be made)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe

from support.archive import strict_parse
from support.paths import TESTS
from support.webapp import Site, serve_workspace
from support.workspace import configure

pytestmark = pytest.mark.browser

PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1280, "height": 900}
AXE_FAILING = {"serious", "critical"}
TOPICS = [
    {"id": "llm", "name": "Language models", "description": "Training, scaling and evaluating LLMs", "default": True},
    {"id": "vision", "name": "Vision", "description": "Images, video and multimodal models"},
    {"id": "rl", "name": "Reinforcement learning"},
]


@pytest.fixture
def site(workspace: Path) -> Iterator[Site]:
    configure(workspace, topics=TOPICS)
    with serve_workspace(workspace) as s:
        yield s


def preference_link(site: Site, *, paused: bool = False) -> tuple[int, str]:
    sid = site.add("adalovelace@example.org", "Ada Lovelace")
    with site.store() as store:
        store.set_topics(sid, ["llm", "rl"])
        if paused:
            store.pause(sid, 4)
    return sid, f"{site.url}/p/{site.signer.make_preferences(sid, int(time.time()))}"


def _serious(page) -> list[tuple]:
    results = Axe().run(page, options={"resultTypes": ["violations"]}).response
    checked = {rule["id"] for key in ("passes", "violations", "incomplete") for rule in results[key]}
    assert {"color-contrast", "html-has-lang"} <= checked, "axe looked at the page"
    return [
        (rule["id"], rule["impact"], [node["target"] for node in rule["nodes"]])
        for rule in results["violations"]
        if rule["impact"] in AXE_FAILING
    ]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_the_page_reads_well_everywhere(site: Site, browser, scheme: str, width: str, tmp_path: Path) -> None:
    _sid, link = preference_link(site, paused=True)
    viewport = PHONE if width == "phone" else DESKTOP
    # Scripts on for axe-core, which the test injects; the page itself has none (the CSP forbids them).
    context = browser.new_context(viewport=viewport, color_scheme=scheme, bypass_csp=True)
    try:
        page = context.new_page()
        requests: list = []
        page.on("request", lambda r: requests.append(r))
        page.goto(link)
        assert page.get_by_role("heading", level=1).inner_text() == "Your preferences"
        assert page.get_by_role("checkbox", name="Vision").count() == 1
        assert _serious(page) == []
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        assert page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)") >= 16
        for button in page.get_by_role("button").all():
            assert button.bounding_box()["height"] >= 44  # an easy target for a thumb
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(18, 21, 27)") == (scheme == "dark"), background
        assert {urlsplit(r.url).netloc for r in requests} == {urlsplit(site.url).netloc}
        assert [r.resource_type for r in requests] == ["document"]  # no CSS, fonts, images or scripts
        folder = TESTS.parent / "docs" if os.environ.get("HIGHLIGHTS_REGEN_SCREENSHOTS") == "1" else tmp_path
        shot = folder / f"preferences-{width}-{scheme}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    finally:
        context.close()


def test_change_a_topic_and_pause_without_javascript(site: Site, browser) -> None:
    sid, link = preference_link(site)
    context = browser.new_context(viewport=PHONE, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(link)
        page.get_by_role("checkbox", name="Vision").check()
        page.get_by_role("checkbox", name="Reinforcement learning").uncheck()
        page.get_by_role("radio", name="Pause for 12 weeks").check()
        with page.expect_navigation():
            page.get_by_role("button", name="Save my preferences").click()
        assert "Your preferences are saved." in page.inner_text("body")
        assert page.url == link  # answered in place
        assert page.get_by_role("checkbox", name="Vision").is_checked()
    finally:
        context.close()
    with site.store() as store:
        assert store.topics(sid) == ["llm", "vision"]
        assert store.paused_until(sid) is not None


def test_every_page_is_valid_html(site: Site, browser) -> None:
    import httpx

    sid, link = preference_link(site, paused=True)
    with httpx.Client(timeout=30) as http:
        pages = {
            "page": http.get(link),
            "saved": http.post(link, data={"action": "save", "topic": "llm", "name": "Ada", "pause": "keep"}),
            "refused": http.post(link, data={"action": "save", "name": "=?utf-8?q?x?="}),
            "erase": http.post(link, data={"action": "erase"}),
            "expired": http.get(f"{site.url}/p/{site.signer.make_preferences(sid, 1)}"),
            "unsubscribed": http.post(link, data={"action": "unsubscribe"}),
            "erased": http.post(link, data={"action": "erase-confirmed"}),
            "invalid": http.get(link),
        }
    for name, answer in pages.items():
        assert answer.headers["content-type"].startswith("text/html"), name
        strict_parse(answer.text, name)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_erase_step_and_the_signup_form_with_topics_pass_axe(workspace: Path, browser, scheme: str) -> None:
    configure(workspace, topics=TOPICS, signup={"enabled": True})
    with serve_workspace(workspace) as site:
        _sid, link = preference_link(site)
        context = browser.new_context(viewport=PHONE, color_scheme=scheme, bypass_csp=True)
        try:
            page = context.new_page()
            page.goto(f"{site.url}/subscribe")
            assert page.get_by_role("checkbox", name="Language models").is_checked()
            assert _serious(page) == []
            page.goto(link)
            with page.expect_navigation():
                page.get_by_role("button", name="Erase me").click()
            assert page.get_by_role("heading", level=1).inner_text() == "Erase everything about you?"
            assert _serious(page) == []
        finally:
            context.close()
