"""The archive page of a corrected issue in a real Chromium: the correction notice and
its diff (opened) read at 4.5:1 or better in light and dark, and fit a 320 px phone."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.store import Store
from support.archive import enable_archive, mark_sent
from support.chromium import TEXT_ELEMENTS_JS

pytestmark = pytest.mark.browser
ISSUE = "2024-w02"


@pytest.fixture
def corrected(workspace: Path) -> Path:
    """The example issue sent, then two of its items and its intro edited; the page."""
    enable_archive(workspace)
    mark_sent(workspace, ISSUE)
    path = workspace / "issues" / f"{ISSUE}.yaml"
    text = path.read_text(encoding="utf-8")
    with Store.open(load_workspace(workspace)) as store:
        store.keep_message(ISSUE, "{}", text)
    edited = text.replace("Mixtral of Experts", "Mixtral of Many Experts", 1)
    edited = edited.replace(
        "      The authors argue", "      A much longer sentence, " + "word " * 60 + "\n      The authors argue", 1
    )
    assert edited != text
    path.write_text(edited, encoding="utf-8")
    result = CliRunner().invoke(main, ["publish"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return workspace / "out" / "site" / ISSUE / "index.html"


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [320, 1280])
def test_the_correction_reads_in_light_and_dark_and_fits(page, corrected: Path, scheme: str, width: int) -> None:
    page.emulate_media(color_scheme=scheme)
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(corrected.as_uri())
    page.click("aside.correction summary")
    assert page.is_visible("pre.diff del")
    elements = page.evaluate(TEXT_ELEMENTS_JS)
    assert any("Mixtral of Experts" in e["text"] for e in elements), "the diff was looked at"
    assert [e for e in elements if e["contrast"] < 4.5] == []
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert page.locator("p.corrected").count() >= 1
