"""The preview page in a real Chromium: the email at desktop and phone width, and the page
updating by itself when the issue file is saved or broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.review.preview import running_preview
from support.preview import (
    ISSUE,
    SHOWS_IN_TEXT_AND_FRAMES,
    break_top_level_title,
    first_item_title,
    fix_top_level_title,
    set_first_item_title,
)

pytestmark = pytest.mark.browser

# Updates arrive within a second; the margin is for a loaded CI machine.
WAIT_MS = 8_000


@pytest.fixture
def preview_url(workspace: Path):
    with running_preview(load_workspace(), workspace / ISSUE) as url:
        yield url


def test_the_email_is_shown_at_desktop_and_phone_width(page, preview_url: str, workspace: Path) -> None:
    title = first_item_title(workspace / ISSUE)
    page.goto(preview_url)
    page.wait_for_function(SHOWS_IN_TEXT_AND_FRAMES, arg=title, timeout=WAIT_MS)

    sizes = page.evaluate("""() => Object.fromEntries(['desktop', 'phone'].map(id => {
        const frame = document.getElementById(id);
        return [id, {box: frame.getBoundingClientRect().width, viewport: frame.contentWindow.innerWidth,
                     sandbox: frame.getAttribute('sandbox')}];
    }))""")
    assert sizes["phone"]["box"] == 375
    assert sizes["phone"]["viewport"] == 375  # the email lays itself out for a 375 px screen
    assert sizes["desktop"]["box"] == 800
    assert sizes["desktop"]["viewport"] == 800
    for frame in sizes.values():
        assert frame["sandbox"] is not None and "allow-scripts" not in frame["sandbox"]

    # The email is laid out for the phone: nothing sticks out sideways.
    overflow = page.evaluate("() => document.getElementById('phone').contentDocument.documentElement.scrollWidth")
    assert overflow <= 375

    assert page.locator("#subject").inner_text().strip()
    # Lint ran: it lists findings, or says there are none.
    assert page.locator("#lint li, #lint .clean").count() >= 1


def test_the_page_reloads_by_itself_when_the_issue_is_saved(page, preview_url: str, workspace: Path) -> None:
    page.goto(preview_url)
    page.wait_for_function(SHOWS_IN_TEXT_AND_FRAMES, arg=first_item_title(workspace / ISSUE), timeout=WAIT_MS)
    page.evaluate("() => { window.__notReloaded = true; }")

    set_first_item_title(workspace / ISSUE, "Saved While The Page Was Open")
    page.wait_for_function(SHOWS_IN_TEXT_AND_FRAMES, arg="Saved While The Page Was Open", timeout=WAIT_MS)
    # The page itself reloaded (nobody here called page.reload()).
    assert page.evaluate("() => window.__notReloaded") is None


def test_the_phone_frame_keeps_its_scroll_position_across_a_reload(page, preview_url: str, workspace: Path) -> None:
    page.goto(preview_url)
    page.wait_for_function(SHOWS_IN_TEXT_AND_FRAMES, arg=first_item_title(workspace / ISSUE), timeout=WAIT_MS)
    page.evaluate("() => document.getElementById('phone').contentWindow.scrollTo(0, 600)")
    scrolled = page.evaluate("() => document.getElementById('phone').contentWindow.scrollY")
    assert scrolled > 0

    set_first_item_title(workspace / ISSUE, "Scrolled Reader Keeps Place")
    page.wait_for_function(SHOWS_IN_TEXT_AND_FRAMES, arg="Scrolled Reader Keeps Place", timeout=WAIT_MS)
    page.wait_for_function(
        f"() => document.getElementById('phone').contentWindow.scrollY === {scrolled}", timeout=WAIT_MS
    )


def test_a_broken_issue_shows_its_error_then_the_email_again(page, preview_url: str, workspace: Path) -> None:
    issue = workspace / ISSUE
    page.goto(preview_url)
    page.wait_for_function(SHOWS_IN_TEXT_AND_FRAMES, arg=first_item_title(issue), timeout=WAIT_MS)

    line = break_top_level_title(issue)
    where = f"issues/2024-w02.yaml:{line}:1:"
    page.wait_for_function(
        "where => { const e = document.getElementById('errors'); return e && e.textContent.includes(where); }",
        arg=where,
        timeout=WAIT_MS,
    )
    assert page.locator("iframe").count() == 0

    fix_top_level_title(issue)
    page.wait_for_function(SHOWS_IN_TEXT_AND_FRAMES, arg=first_item_title(issue), timeout=WAIT_MS)
    assert page.locator("#errors").count() == 0
