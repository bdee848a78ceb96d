"""The email looks exactly as its reference in Chromium: the same pixels at 375 and 800 px,
in light and dark mode, whatever bytes the HTML is made of.

tests/rendering/looks/*.html are the emails as the renderer wrote them before a change meant to leave
their looks alone (a smaller HTML, another inliner option): the example issue, an issue of
30 items, an issue with every part and Markdown construct (tests/rendering/looks/everything.yaml),
and the confirmation email. Each is compared with today's rendering of the same email,
screenshot by screenshot. After a change that is meant to look different, write new
references with

    HIGHLIGHTS_REGEN_LOOKS=1 .venv/bin/python -m pytest tests/rendering/test_email_looks.py

and look at the new screenshots before committing them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from highlightsmail.authoring.issue import load_issue
from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.rendering.render import render_issue
from highlightsmail.subscribers.signup import render_confirmation
from support.pixels import differing_pixels, screenshots
from support.workspace import EXAMPLE_ISSUE, configure

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOOKS = Path(__file__).resolve().parent / "looks"


def thirty_items(root: Path) -> Path:
    """The example's ten items three times over: an issue near Gmail's clipping size."""
    data = yaml.safe_load(EXAMPLE_ISSUE.read_text(encoding="utf-8"))
    data["items"] = [data["items"][n % len(data["items"])] for n in range(30)]
    path = root / "issues" / "2024-w05.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def everything(root: Path) -> Path:
    configure(root, archive={"enabled": True, "path": "/archive"})  # "View in browser" shows too
    return Path(shutil.copy(LOOKS / "everything.yaml", root / "issues" / "2024-w03.yaml"))


def issue_html(make: Callable[[Path], Path]) -> Callable[[Path], str]:
    def html(root: Path) -> str:
        path = make(root)
        return render_issue(load_issue(path), load_workspace(root)).html

    return html


EMAILS: dict[str, Callable[[Path], str]] = {
    "example": issue_html(lambda root: root / "issues" / "2024-w02.yaml"),
    "thirty-items": issue_html(thirty_items),
    "everything": issue_html(everything),
    "confirmation": lambda root: render_confirmation(load_workspace(root)).html,
}


@pytest.mark.parametrize("name", EMAILS)
def test_email_looks_as_its_reference_at_both_widths_in_both_schemes(browser, workspace: Path, name: str) -> None:
    html = EMAILS[name](workspace)
    reference = LOOKS / f"{name}.html"
    if os.environ.get("HIGHLIGHTS_REGEN_LOOKS"):
        reference.write_text(html, encoding="utf-8", newline="")
    expected = dict(screenshots(browser, reference.read_text(encoding="utf-8")))
    differences = {
        view: differing_pixels(expected[view], png) for view, png in screenshots(browser, html) if png != expected[view]
    }
    assert differences == {}, f"{name} looks different from {reference.name}: {differences}"


def test_a_changed_pixel_is_seen(browser, workspace: Path) -> None:
    # The comparison can fail: the first tag one shade darker is a difference, in light
    # mode (dark mode paints tags a colour of its own).
    html = EMAILS["example"](workspace)
    changed = html.replace("#e8eefc", "#e8eefb", 1)
    assert changed != html
    before, after = dict(screenshots(browser, html)), dict(screenshots(browser, changed))
    assert before[(375, "dark")] == after[(375, "dark")]
    assert re.fullmatch(
        r"[1-9]\d* px differ, the first at x=\d+, y=\d+",
        differing_pixels(before[(800, "light")], after[(800, "light")]),
    )
