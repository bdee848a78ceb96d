"""The rendered email in a real browser (Debian's Chromium): the 600 px column on a
desktop, reflowing without sideways scrolling on a 375 px phone, readable text sizes,
text contrast of at least 4.5:1 in light and dark mode (WCAG 2 AA), and no serious or
critical finding of axe-core (bundled by the axe-playwright-python package, so no network)
in either mode, for every kind of email the product sends."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml
from axe_playwright_python.sync_playwright import Axe

from highlightsmail.authoring.issue import load_issue
from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.rendering.render import render_issue
from support.chromium import TEXT_ELEMENTS_JS
from support.emails import EMAIL_KINDS, html_of
from support.workspace import configure

pytestmark = pytest.mark.browser

PHONE = {"width": 375, "height": 812}
DESKTOP = {"width": 800, "height": 900}


@pytest.fixture
def example_html(workspace: Path) -> str:
    ws = load_workspace()
    return render_issue(load_issue(ws.issue_path("2024-w02")), ws).html


def test_phone_width_reflows_without_horizontal_scrolling(page, example_html: str) -> None:
    page.set_viewport_size(PHONE)
    page.set_content(example_html)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    # The column takes the whole phone width rather than a shrunk desktop layout.
    column = page.evaluate("document.querySelector('div[style*=\"max-width:600px\"]').getBoundingClientRect().width")
    assert column == 375


def test_phone_body_text_is_at_least_14px(page, example_html: str) -> None:
    page.set_viewport_size(PHONE)
    page.set_content(example_html)
    sizes = page.evaluate(
        "[...document.querySelectorAll('p, li')].filter(e => e.getClientRects().length && e.textContent.trim()).map(e => parseFloat(getComputedStyle(e).fontSize))"
    )
    assert len(sizes) > 20
    assert min(sizes) >= 14
    summary = page.evaluate("parseFloat(getComputedStyle(document.querySelector('p[dir=auto]')).fontSize)")
    assert summary == 16
    small = [e for e in page.evaluate(TEXT_ELEMENTS_JS) if e["size"] < 14]
    assert small == []


def test_desktop_column_is_600px(page, example_html: str) -> None:
    page.set_viewport_size(DESKTOP)
    page.set_content(example_html)
    widths = page.evaluate(
        "[...document.querySelectorAll('div[style*=\"max-width:600px\"]')].map(d => d.getBoundingClientRect().width)"
    )
    assert widths and all(w == 600 for w in widths)
    assert page.evaluate("document.documentElement.scrollWidth") <= 800


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_correction_text_contrast_is_at_least_4_5(page, workspace: Path, scheme: str) -> None:
    """The correction notice is readable in either mode (every element's contrast)."""
    from highlightsmail.authoring.issue import load_issue
    from highlightsmail.rendering.correction import render_correction

    ws = load_workspace()
    text = "The second item said **eight**; it is [two](https://example.org/p).\n\n- one\n- two"
    html = render_correction(ws, load_issue(ws.issue_path("2024-w02")), text, "2024-w02~correction-1").html
    page.emulate_media(color_scheme=scheme)
    page.set_viewport_size(DESKTOP)
    page.set_content(html)
    elements = page.evaluate(TEXT_ELEMENTS_JS)
    assert len(elements) > 8
    assert [e for e in elements if e["contrast"] < 4.5] == []
    card = page.evaluate("getComputedStyle(document.querySelector('.hl-card')).backgroundColor")
    assert card == ("rgb(17, 26, 46)" if scheme == "dark" else "rgb(255, 255, 255)")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_contrast_is_at_least_4_5(page, example_html: str, scheme: str) -> None:
    page.emulate_media(color_scheme=scheme)
    page.set_viewport_size(DESKTOP)
    page.set_content(example_html)
    elements = page.evaluate(TEXT_ELEMENTS_JS)
    assert len(elements) > 50
    poor = [e for e in elements if e["contrast"] < 4.5]
    assert poor == []


def test_dark_mode_media_query_applies(page, example_html: str) -> None:
    card = "getComputedStyle(document.querySelector('.hl-card')).backgroundColor"
    text = "getComputedStyle(document.querySelector('p[dir=auto]')).color"
    page.emulate_media(color_scheme="light")
    page.set_content(example_html)
    assert page.evaluate(card) == "rgb(255, 255, 255)"
    assert page.evaluate(text) == "rgb(31, 41, 55)"
    page.emulate_media(color_scheme="dark")
    assert page.evaluate(card) == "rgb(17, 26, 46)"
    assert page.evaluate(text) == "rgb(229, 231, 235)"


def test_long_words_and_urls_do_not_widen_the_phone_layout(page, workspace: Path) -> None:
    ws = load_workspace()
    url = "https://example.org/" + "very-long-path-segment/" * 8
    data = {
        "title": "T",
        "date": "2024-01-19",
        "preheader": "p",
        "items": [
            {
                "title": "A" * 120,
                "summary": f"{'x' * 400} and <{url}>\n\n    {'code ' * 40}",
                "links": [{"label": "A rather long button label that goes on", "url": url}],
            }
        ],
    }
    path = ws.issues_dir / "2024-w05.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    html = render_issue(load_issue(path), ws).html
    page.set_viewport_size(PHONE)
    page.set_content(html)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


# The background a reader sees at a point: the first opaque one from the element there up.
BACKGROUND_AT_JS = """([x, y]) => {
  for (let e = document.elementFromPoint(x, y); e; e = e.parentElement) {
    const c = getComputedStyle(e).backgroundColor;
    if (c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c;
  }
  return getComputedStyle(document.documentElement).backgroundColor;
}"""


def _class_on_body_instead(html: str) -> str:
    """The page as MJML 5 compiles it: mj-body's css-class on <body>, not on the wrapper div."""
    moved = re.sub(r'(<div\b[^>]*?) class="hl-page"', r"\1", html, count=1)
    assert moved != html
    return moved.replace("<body ", '<body class="hl-page" ', 1)


@pytest.mark.parametrize("placement", ["wrapper", "body"])
@pytest.mark.parametrize("kind", ["issue", "confirmation", "correction"])
def test_dark_page_background_wherever_the_class_lands(page, example_html: str, kind: str, placement: str) -> None:
    from highlightsmail.authoring.issue import load_issue
    from highlightsmail.rendering.correction import render_correction
    from highlightsmail.subscribers.signup import render_confirmation

    ws = load_workspace()
    emails = {
        "issue": lambda: example_html,
        "confirmation": lambda: render_confirmation(ws).html,
        "correction": lambda: render_correction(ws, load_issue(ws.issue_path("2024-w02")), "It is *two*.", "c").html,
    }
    email = emails[kind]()
    html = email if placement == "wrapper" else _class_on_body_instead(email)
    page.set_viewport_size(DESKTOP)
    page.set_content(html)
    margins = [[5, 5], [5, 300], [795, 300]]  # outside the 600 px column, beside the content
    page.emulate_media(color_scheme="light")
    assert {page.evaluate(BACKGROUND_AT_JS, xy) for xy in margins} == {"rgb(238, 242, 247)"}
    page.emulate_media(color_scheme="dark")
    assert {page.evaluate(BACKGROUND_AT_JS, xy) for xy in margins} == {"rgb(11, 18, 32)"}


def test_dark_mode_secondary_buttons_are_dark_and_readable(page, example_html: str) -> None:
    page.set_viewport_size(DESKTOP)
    page.set_content(example_html)
    page.emulate_media(color_scheme="dark")
    buttons = page.evaluate(
        """() => [...document.querySelectorAll('.hl-btn a')].map(a => ({
             label: a.textContent.trim(),
             link: getComputedStyle(a).backgroundColor,
             cell: getComputedStyle(a.closest('td')).backgroundColor,
             color: getComputedStyle(a).color}))"""
    )
    secondary = [b for b in buttons if b["label"].startswith(("Code", "Project page"))]
    assert len(secondary) >= 2
    for button in secondary:
        assert button["link"] == button["cell"] == "rgb(17, 26, 46)", button
        assert button["color"] == "rgb(147, 180, 255)", button
    readable = {e["text"]: e["contrast"] for e in page.evaluate(TEXT_ELEMENTS_JS) if e["tag"] == "a"}
    assert all(readable[b["label"][:40]] >= 4.5 for b in secondary)


# The boxes of each item's link buttons (the coloured face a reader sees), item by item:
# the buttons that follow an item's title, up to the next title.
BUTTON_BOXES_JS = """() => [...document.querySelectorAll('h2.hl-title')].map((h, n, titles) => {
  const next = titles[n + 1];
  const follows = (e) => h.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_FOLLOWING;
  const before = (e) => !next || next.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_PRECEDING;
  return [...document.querySelectorAll('.hl-btn td')].filter(f => follows(f) && before(f)).map(face => {
    const r = face.getBoundingClientRect();
    return {label: face.textContent.trim().replace(/[ \\t\\r\\n]+/g, ' '), left: r.left, right: r.right, top: r.top, bottom: r.bottom};
  });
})"""


def button_rows(page, html: str, viewport: dict[str, int]) -> list[list[dict]]:
    page.set_viewport_size(viewport)
    page.set_content(html)
    return page.evaluate(BUTTON_BOXES_JS)


def test_link_buttons_side_by_side_on_desktop_one_under_another_on_phones(page, workspace: Path) -> None:
    ws = load_workspace()
    labels = ["Paper", "Code", "Project page"]
    links = [{"label": label, "url": f"https://example.org/{n}"} for n, label in enumerate(labels)]
    many = [{"label": f"Supplementary material {n}", "url": f"https://example.org/s{n}"} for n in range(10)]
    data = {
        "title": "T",
        "date": "2024-01-19",
        "preheader": "p",
        "items": [{"title": "Three", "summary": "S", "links": links}, {"title": "Ten", "summary": "S", "links": many}],
    }
    path = ws.issues_dir / "2024-w05.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    html = render_issue(load_issue(path), ws).html

    three, ten = button_rows(page, html, DESKTOP)
    assert [b["label"] for b in three] == [f"{label}\u00a0\u2192" for label in labels]
    assert len({b["top"] for b in three}) == 1, "one row"
    for left, right in itertools.pairwise(three):
        assert 8 <= right["left"] - left["right"] <= 14, "apart by the gap"
    # Ten that do not fit on one line wrap onto more, inside the 600 px column.
    column = page.evaluate("document.querySelector('h2.hl-title').getBoundingClientRect()")
    assert 1 < len({b["top"] for b in ten}) < 10
    assert all(column["left"] <= b["left"] and b["right"] <= column["right"] + 0.5 for b in ten)

    for row in button_rows(page, html, PHONE):
        assert len({b["left"] for b in row}) == 1, "one under another, at the left edge"
        for above, below in itertools.pairwise(row):
            assert 8 <= below["top"] - above["bottom"] <= 14
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


def test_example_buttons_side_by_side_at_800_stacked_at_375(page, example_html: str) -> None:
    rows = button_rows(page, example_html, DESKTOP)
    last = rows[-1]
    assert [b["label"][:5] for b in last] == ["Paper", "Proje"]
    assert last[0]["top"] == last[1]["top"] and last[1]["left"] > last[0]["right"]
    last = button_rows(page, example_html, PHONE)[-1]
    assert last[0]["left"] == last[1]["left"] and last[1]["top"] > last[0]["bottom"]


@pytest.mark.parametrize("ids", ["kept", "dropped"])
def test_contents_links_jump_to_their_item(page, example_html: str, ids: str) -> None:
    # Gmail and Outlook drop id attributes: the named anchors must do the work then.
    html = example_html if ids == "kept" else re.sub(r' id="item-\d+"', "", example_html)
    page.set_viewport_size(DESKTOP)
    page.set_content(html)
    for n in (7, 3):
        page.click(f'a[href="#item-{n}"]')
        page.wait_for_function("n => location.hash === '#item-' + n", arg=n)
        top = page.evaluate("n => document.querySelectorAll('h2.hl-title')[n - 1].getBoundingClientRect().top", n)
        assert -5 <= top <= 40, f"item {n} is at {top}px from the top after its link was followed"


def test_pill_and_contents_padding_show(page, example_html: str) -> None:
    page.set_viewport_size(DESKTOP)
    page.set_content(example_html)
    boxes = page.evaluate(
        """() => [...document.querySelectorAll('td.hl-tag, td.hl-toc-cell')].map(td => {
             const range = document.createRange();
             range.selectNodeContents(td);
             const text = range.getBoundingClientRect(), box = td.getBoundingClientRect();
             return {cls: td.className, left: text.left - box.left, right: box.right - text.right,
                     top: text.top - box.top, bottom: box.bottom - text.bottom, y: box.top};
           })"""
    )
    pills = [b for b in boxes if b["cls"] == "hl-tag"]
    head, body = [b for b in boxes if "hl-toc-cell" in b["cls"]]
    assert len(pills) > 10
    for pill in pills:
        assert pill["left"] >= 9.5 and pill["right"] >= 9.5, pill
        assert pill["top"] >= 1.5 and pill["bottom"] >= 1.5, pill
    assert head["left"] >= 19.5 and head["top"] >= 15.5, head
    assert body["left"] >= 19.5 and body["bottom"] >= 5.5, body
    # The first item's two pills sit side by side, like words.
    assert pills[0]["y"] == pills[1]["y"]


# axe-core's impacts, from "minor" up; these two are failures (WCAG failures that block
# or hinder a reader). The moderate ones a standalone email always has (no <main>
# landmark, content outside landmarks) are about pages, not messages.
AXE_FAILING = {"serious", "critical"}


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("kind", EMAIL_KINDS)
def test_every_kind_of_email_has_no_serious_axe_finding(page, workspace: Path, kind: str, scheme: str) -> None:
    configure(workspace, archive={"enabled": True, "path": "/archive"}, signup={"enabled": True})
    html = html_of(EMAIL_KINDS[kind](workspace))
    page.emulate_media(color_scheme=scheme)
    page.set_viewport_size(DESKTOP)
    page.set_content(html)
    results = Axe().run(page, options={"resultTypes": ["violations"]}).response
    checked = {rule["id"] for key in ("passes", "violations", "incomplete") for rule in results[key]}
    assert {"color-contrast", "link-name", "html-has-lang"} <= checked, "axe looked at the email"
    failing = [
        (rule["id"], rule["impact"], [node["target"] for node in rule["nodes"]])
        for rule in results["violations"]
        if rule["impact"] in AXE_FAILING
    ]
    assert failing == []


BOXES_JS = """() => [...document.querySelectorAll('body *')].map(e => {
  const r = e.getBoundingClientRect();
  return [e.tagName, Math.round(r.x * 10), Math.round(r.y * 10), Math.round(r.width * 10), Math.round(r.height * 10)];
})"""


def folded_and_not(ws, monkeypatch: pytest.MonkeyPatch, item: dict) -> tuple[str, str]:
    """An issue of two such items rendered as sent, and with its lines left as MJML and
    premailer write them."""
    from highlightsmail.rendering import folding

    data = {"title": "Folded", "date": "2024-01-19", "preheader": "p", "items": [item, {**item, "title": "Two"}]}
    path = ws.issues_dir / "2024-w05.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    issue = load_issue(path)
    folded = render_issue(issue, ws).html
    with monkeypatch.context() as patch:
        patch.setattr(folding, "fold_html", lambda html, **_: html)
        unfolded = render_issue(issue, ws).html
    assert folded != unfolded
    return folded, unfolded


def looks(browser, html: str, viewport: dict[str, int], scheme: str) -> tuple[bytes, list]:
    context = browser.new_context(viewport=viewport, color_scheme=scheme)
    page = context.new_page()
    page.set_content(html)
    seen = page.screenshot(full_page=True), page.evaluate(BOXES_JS)
    context.close()
    return seen


def test_folding_long_lines_changes_no_pixel(browser, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The HTML broken into lines of mail (highlightsmail.folding) between attributes,
    # after declarations and at spaces looks the same as the one-line sections MJML and
    # premailer write, at both widths and in both schemes.
    item = {
        "title": "A title " * 37,
        "summary": f"{'&amp; ' * 150} {'word ' * 300}",
        "links": [{"label": f"Link {n} " + "L" * 60, "url": f"https://example.org/{n}?a=1&b=2"} for n in range(10)],
        "image": {"url": "https://example.org/missing.png", "alt": "A figure that will not load " * 10},
        "tags": [f"tag-{n}-" + "t" * 60 for n in range(20)],
    }
    folded, unfolded = folded_and_not(load_workspace(), monkeypatch, item)
    for viewport in (PHONE, DESKTOP):
        for scheme in ("light", "dark"):
            assert looks(browser, folded, viewport, scheme) == looks(browser, unfolded, viewport, scheme)


def test_folding_text_without_spaces_changes_no_layout(
    browser, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Text with no space to break at for a whole line (a long word, code, emoji, a
    # script written without spaces) is split by empty comments, and alt text of emoji
    # alone by a line break: every box stays where it was, to a tenth of a pixel (the
    # glyphs either side of a split may be smoothed a fraction of a pixel differently).
    astronaut = "\U0001f469\U0001f3fd\u200d\U0001f680"
    item = {
        "title": "猫" * 300,
        "summary": f"{'w' * 1500}\n\n```\n{'c' * 1200}\n```\n\n{astronaut * 150}",
        "image": {"url": "https://example.org/x.png", "alt": "\U0001f600" * 250},
    }
    folded, unfolded = folded_and_not(load_workspace(), monkeypatch, item)
    for viewport in (PHONE, DESKTOP):
        assert looks(browser, folded, viewport, "light")[1] == looks(browser, unfolded, viewport, "light")[1]
