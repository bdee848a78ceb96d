"""The published archive in a real browser (Debian's Chromium) with JavaScript switched
off, served by a plain static file server as any host would: no sideways scrolling from
320 px up, body text of at least 16 px, headings in order, contents links that jump to
their items, and text contrast of at least 4.5:1 in light and dark mode.

The README's screenshots come from here; to make them again after a change to the look:

    HIGHLIGHTS_SCREENSHOTS=1 .venv/bin/python -m pytest tests/rendering/test_archive_browser.py -k screenshot
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from highlightsmail.cli import main
from support.archive import ARCHIVE, enable_archive, headings_in_order, mark_sent, small_issue, write_issue
from support.chromium import TEXT_ELEMENTS_JS
from support.paths import REPO
from support.signup import enable_signup

pytestmark = pytest.mark.browser

WIDTHS = [320, 375, 1280]
SCREENSHOTS = os.environ.get("HIGHLIGHTS_SCREENSHOTS") == "1"

HEADINGS_JS = "[...document.querySelectorAll('h1,h2,h3,h4,h5,h6')].map(h => Number(h.tagName[1]))"
# Paragraphs and list items that show text: what a reader reads.
BODY_TEXT_JS = """
[...document.querySelectorAll('p, li')]
  .filter(e => e.getClientRects().length && e.textContent.trim() && !e.closest('[aria-hidden=true]'))
  .map(e => ({text: e.textContent.trim().slice(0, 30), size: parseFloat(getComputedStyle(e).fontSize)}))
"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def publish_into(workspace: Path, www: Path) -> None:
    result = CliRunner().invoke(main, ["publish", "--out", str(www / "archive")], catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture
def static_host(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A plain static file server on loopback for the folder `www`: (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def archive(workspace: Path, static_host: tuple[Path, str]) -> str:
    """The example issue, sent and published; the archive's URL."""
    enable_archive(workspace)
    mark_sent(workspace, "2024-w02")
    www, url = static_host
    publish_into(workspace, www)
    return f"{url}/archive/"


@pytest.fixture
def reader(browser):
    """A page in a browser context with JavaScript off: the archive must not need it.
    (Playwright's own evaluate still works.)"""
    context = browser.new_context(java_script_enabled=False)
    yield context.new_page()
    context.close()


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("which", ["index", "issue"])
def test_fits_every_width_with_readable_text_and_ordered_headings(reader, archive: str, width: int, which: str) -> None:
    reader.set_viewport_size({"width": width, "height": 800})
    reader.goto(archive if which == "index" else f"{archive}2024-w02/")
    assert reader.evaluate("document.documentElement.scrollWidth") <= width
    assert reader.evaluate("document.body.scrollWidth") <= width
    body = reader.evaluate(BODY_TEXT_JS)
    assert len(body) >= (3 if which == "index" else 40)
    assert [t for t in body if t["size"] < 16] == []
    # Nothing on the page is smaller than 14 px either (tags, the date, the footer).
    assert [e for e in reader.evaluate(TEXT_ELEMENTS_JS) if e["size"] < 14] == []
    assert headings_in_order(reader.evaluate(HEADINGS_JS))


@pytest.mark.parametrize("width", [320, 1280])
def test_contents_links_jump_to_their_items(reader, archive: str, width: int) -> None:
    reader.set_viewport_size({"width": width, "height": 700})
    reader.goto(f"{archive}2024-w02/")
    links = reader.locator("nav.contents a")
    assert links.count() == 10
    for n in range(1, 11):
        reader.evaluate("window.scrollTo(0, 0)")
        links.nth(n - 1).click()
        reader.wait_for_function(f"location.hash === '#item-{n}'")
        top = reader.evaluate(f"document.getElementById('item-{n}').getBoundingClientRect().top")
        at_bottom = reader.evaluate(
            "Math.ceil(window.scrollY + window.innerHeight) >= document.documentElement.scrollHeight"
        )
        assert reader.evaluate("window.scrollY") > 0
        # The heading comes to the top of the window (or as near as the page's end allows).
        assert 0 <= top <= 40 or (at_bottom and 0 <= top < 700), (n, top)


def test_the_index_links_to_the_issue_and_back(reader, archive: str) -> None:
    reader.goto(archive)
    reader.click("text=Week 2, 2024")
    assert reader.url == f"{archive}2024-w02/"
    assert reader.title() == "AI Research Highlights | Week 2, 2024"
    reader.click("header.bar >> text=AI Research Highlights")
    assert reader.url == archive
    reader.click("text=Atom feed")  # the browser shows or downloads it; either way it is there
    assert reader.url == f"{archive}feed.xml" or reader.url == archive


def test_link_buttons_side_by_side_on_desktop_one_under_another_on_phones(reader, archive: str) -> None:
    boxes = """() => [...document.querySelectorAll('section.item')].at(-1).querySelectorAll('.links a.button')"""
    measure = f"() => [...({boxes})()].map(a => {{ const r = a.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }})"
    reader.set_viewport_size({"width": 800, "height": 800})
    reader.goto(f"{archive}2024-w02/")
    (left, top, right, _), (left2, top2, _, _) = reader.evaluate(measure)
    assert top2 == top and left2 > right, "side by side"
    reader.set_viewport_size({"width": 375, "height": 800})
    (left, _, _, bottom), (left2, top2, _, _) = reader.evaluate(measure)
    assert left2 == left and top2 > bottom, "one under another"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_contrast_is_at_least_4_5(reader, archive: str, scheme: str) -> None:
    reader.emulate_media(color_scheme=scheme)
    for url in (archive, f"{archive}2024-w02/"):
        reader.goto(url)
        elements = reader.evaluate(TEXT_ELEMENTS_JS)
        assert len(elements) > 5
        assert [e for e in elements if e["contrast"] < 4.5] == [], url
    background = reader.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == ("rgb(11, 18, 32)" if scheme == "dark" else "rgb(238, 242, 247)")


def test_long_words_code_and_right_to_left_text_fit_a_320px_phone(
    reader, workspace: Path, static_host: tuple[Path, str]
) -> None:
    url = "https://example.org/" + "very-long-path-segment/" * 8
    summary = (
        f"A link written out: <{url}> and {'x' * 120}.\n\n"
        "```\n" + "code_that_does_not_wrap = " + "y" * 100 + "\n```\n\n"
        "- a list item with `inline_code_that_is_rather_long_too_long_for_a_phone`\n\n"
        "> A quotation that goes on for a while, to see it wrap.\n\n"
        "نماذج اللغة الكبيرة تتعلم من النصوص ولا تحتاج إلى تدريب إضافي في كل مرة."
    )
    data = small_issue("A title with an unbroken " + "z" * 60)
    data["items"][0]["summary"] = summary
    data["items"][0]["tags"] = ["a-very-long-tag-" * 4]
    data["items"][0]["links"].append({"label": "Another rather long link label", "url": url})
    data["items"][0]["image"] = {"url": "https://example.org/missing.png", "alt": "A figure that will not load here"}
    write_issue(workspace, "2024-w03", data)
    mark_sent(workspace, "2024-w03")
    www, base = static_host
    publish_into(workspace, www)
    reader.set_viewport_size({"width": 320, "height": 700})
    for page_url in (f"{base}/archive/", f"{base}/archive/2024-w03/"):
        reader.goto(page_url)
        assert reader.evaluate("document.documentElement.scrollWidth") <= 320, page_url


@pytest.fixture
def archive_with_signup(workspace: Path, static_host: tuple[Path, str]) -> str:
    """Two issues sent and the signup form on; the archive's URL."""
    enable_archive(workspace)
    enable_signup(workspace)
    write_issue(workspace, "2024-w03", small_issue("AI Research Highlights | Week 3, 2024", "2024-01-19"))
    mark_sent(workspace, "2024-w02")
    mark_sent(workspace, "2024-w03")
    www, url = static_host
    publish_into(workspace, www)
    return f"{url}/archive/"


BOX_JS = "(selector) => { const r = document.querySelector(selector).getBoundingClientRect(); return {top: r.top, bottom: r.bottom}; }"


@pytest.mark.parametrize("width", [320, 375, 1280])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_index_shows_the_issues_first_then_the_form_right_under_them(
    reader, archive_with_signup: str, width: int, scheme: str
) -> None:
    reader.emulate_media(color_scheme=scheme)
    reader.set_viewport_size({"width": width, "height": 800})
    reader.goto(archive_with_signup)
    mast = reader.evaluate(BOX_JS, "main .mast")
    first = reader.evaluate(BOX_JS, "ol.issues > li:first-child h2")
    last = reader.evaluate(BOX_JS, "ol.issues > li:last-child > :last-child")
    form = reader.evaluate(BOX_JS, "form.signup")
    assert 0 < first["top"] - mast["bottom"] <= 40  # the first issue right under the heading
    assert 0 < form["top"] - last["bottom"] <= 40  # the form right under the last issue: no empty gap
    assert reader.evaluate("document.documentElement.scrollWidth") <= width
    elements = reader.evaluate(TEXT_ELEMENTS_JS)
    assert [e for e in elements if e["contrast"] < 4.5] == []
    assert [e for e in elements if e["size"] < 14] == []
    assert headings_in_order(reader.evaluate(HEADINGS_JS))


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_404_page_has_one_way_back_and_reads_in_light_and_dark(reader, archive: str, scheme: str) -> None:
    reader.emulate_media(color_scheme=scheme)
    reader.set_viewport_size({"width": 320, "height": 700})
    reader.goto(f"{archive}404.html")
    assert reader.evaluate("document.documentElement.scrollWidth") <= 320
    assert [e for e in reader.evaluate(TEXT_ELEMENTS_JS) if e["contrast"] < 4.5] == []
    links = reader.locator("main a, footer a")
    assert links.count() == 1
    assert links.first.get_attribute("href") == ARCHIVE  # absolute: the page is shown at any depth


@pytest.mark.parametrize("shot", ["issue-phone", "index"])
def test_screenshot(reader, archive: str, tmp_path: Path, shot: str) -> None:
    """The README's pictures: an issue on a phone, the index on a desktop. Written to
    docs/ only when HIGHLIGHTS_SCREENSHOTS=1, so an ordinary run leaves the tree alone."""
    if shot == "issue-phone":
        reader.set_viewport_size({"width": 375, "height": 812})
        reader.goto(f"{archive}2024-w02/")
    else:
        reader.set_viewport_size({"width": 1280, "height": 720})
        reader.goto(archive)
    target = (REPO / "docs" if SCREENSHOTS else tmp_path) / f"archive-{shot}.png"
    target.parent.mkdir(exist_ok=True)
    png = reader.screenshot(path=str(target))
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
