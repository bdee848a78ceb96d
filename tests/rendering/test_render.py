"""Rendering an issue into HTML and plain text (highlightsmail.render).

The example issue is compared with golden files, tests/rendering/golden/2024-w02.html and .txt.
After an intended change to the templates or the renderer, regenerate them with

    HIGHLIGHTS_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/rendering/test_render.py

and review the diff before committing it.
"""

from __future__ import annotations

import html as html_lib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from lxml import html as lxml_html

from highlightsmail.authoring.issue import Issue, load_issue
from highlightsmail.authoring.workspace import Workspace, load_workspace
from highlightsmail.errors import HighlightsError
from highlightsmail.rendering.inlining import compact
from highlightsmail.rendering.render import (
    TEXT_WIDTH,
    issue_context,
    markdown_to_text,
    mjml_source,
    render_issue,
    render_markdown,
)
from highlightsmail.rendering.rendered import PREFERENCES_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER, RenderedIssue
from support.workspace import EXAMPLE_SETTINGS

GOLDEN = Path(__file__).resolve().parent / "golden"
GMAIL_CLIP_BYTES = 102_000

EXAMPLE_LINKS = [
    "https://arxiv.org/abs/2401.01325",
    "https://arxiv.org/abs/2401.03462",
    "https://arxiv.org/abs/2401.01335",
    "https://arxiv.org/abs/2401.02412",
    "https://arxiv.org/abs/2401.02009",
    "https://arxiv.org/abs/2401.02385",
    "https://github.com/jzhang38/TinyLlama",
    "https://arxiv.org/abs/2401.04088",
    "https://github.com/mistralai/mistral-src",
    "https://arxiv.org/abs/2401.03568",
    "https://arxiv.org/abs/2401.04081",
    "https://arxiv.org/abs/2401.01614",
    "https://osu-nlp-group.github.io/SeeAct/",
]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def ws(workspace: Path) -> Workspace:
    return load_workspace()


@pytest.fixture
def example(ws: Workspace) -> Issue:
    return load_issue(ws.issue_path("2024-w02"))


@pytest.fixture
def rendered(example: Issue, ws: Workspace) -> RenderedIssue:
    return render_issue(example, ws)


def write_issue(ws: Workspace, slug: str = "2024-w03", **overrides: object) -> Issue:
    """A small valid issue written as YAML (so it goes through load_issue), with
    `overrides` replacing top-level keys."""
    data: dict[str, object] = {
        "title": "Test issue",
        "date": "2024-01-19",
        "preheader": "A short preheader",
        "items": [
            {
                "title": "First item",
                "summary": "Some *text*.",
                "links": [{"label": "Paper", "url": "https://example.org/paper"}],
            }
        ],
    }
    data.update(overrides)
    path = ws.issues_dir / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return load_issue(path)


def visible_text(html: str) -> str:
    """The text a reader sees, whitespace collapsed (comments and <style> dropped)."""
    doc = lxml_html.fromstring(html)
    for el in doc.xpath("//style|//title"):
        el.drop_tree()
    return " ".join(doc.text_content().split())


def flat(text: str) -> str:
    return " ".join(text.split())


def long_lines(text: str) -> list[str]:
    """Lines over 72 columns that aren't explained by a URL too long to break."""
    bad = []
    for line in text.splitlines():
        if len(line) <= TEXT_WIDTH:
            continue
        rest = re.sub(r"\S*://\S*", "", line)
        if "://" not in line or len(rest.rstrip()) > TEXT_WIDTH:
            bad.append(line)
    return bad


def attributes(html: str) -> list[tuple[str, str, str]]:
    doc = lxml_html.fromstring(html)
    return [(el.tag, name, value) for el in doc.iter() if isinstance(el.tag, str) for name, value in el.attrib.items()]


# --------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("part", ["html", "txt"])
def test_example_issue_matches_golden_file(rendered: RenderedIssue, part: str) -> None:
    actual = rendered.html if part == "html" else rendered.text
    golden = GOLDEN / f"2024-w02.{part}"
    if os.environ.get("HIGHLIGHTS_REGEN_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(actual, encoding="utf-8", newline="")
    assert golden.is_file(), f"{golden} is missing; create it with HIGHLIGHTS_REGEN_GOLDEN=1"
    expected = golden.read_text(encoding="utf-8")
    assert actual == expected, (
        f"the rendering differs from {golden.name}; if the change is intended, regenerate with "
        "HIGHLIGHTS_REGEN_GOLDEN=1 pytest tests/rendering/test_render.py"
    )


def test_rendering_is_deterministic(example: Issue, ws: Workspace, rendered: RenderedIssue) -> None:
    again = render_issue(example, ws)
    assert again == rendered


# --------------------------------------------------------------------------- the HTML part


def test_html_is_inlined_and_keeps_its_media_queries(rendered: RenderedIssue) -> None:
    html = rendered.html
    assert html.startswith("<!DOCTYPE html>")
    # The inline stylesheet went onto the elements: titles carry its size, pills their padding...
    assert re.search(r'<h2 class="hl-title" [^>]*style="font-size:21px;', html)
    assert re.search(r'<td class="hl-tag" bgcolor="#e8eefc" style="padding:2px 10px"', html)
    # ...and left <head>, where only the head-only blocks remain, written without spaces.
    styles = "".join(re.findall(r"<style[^>]*>(.*?)</style>", html, re.S)).replace("\n", "")
    assert "21px" not in styles and "padding:2px 10px" not in styles
    assert "@media only screen and (max-width:479px){" in styles
    assert "@media (prefers-color-scheme:dark){" in styles
    assert "!important" in styles  # media rules must still win over inline styles
    assert "data-premailer" not in html


def test_html_head_declares_language_dark_mode_and_title(rendered: RenderedIssue) -> None:
    doc = lxml_html.fromstring(rendered.html)
    assert doc.get("lang") == "en"
    metas = {m.get("name"): m.get("content") for m in doc.xpath("//head/meta[@name]")}
    assert metas["color-scheme"] == "light dark"
    # Not a real CSS property or meta name: only color-scheme is.
    assert "supported-color-schemes" not in rendered.html
    assert metas["viewport"].startswith("width=device-width")
    assert doc.xpath("string(//head/title)") == "AI Research Highlights | Week 2, 2024"


def test_layout_tables_are_presentational(rendered: RenderedIssue) -> None:
    doc = lxml_html.fromstring(rendered.html)
    tables = doc.xpath("//table")
    assert len(tables) > 20
    assert all(t.get("role") == "presentation" for t in tables)


def test_html_holds_every_title_and_link_in_order(rendered: RenderedIssue, example: Issue) -> None:
    assert len(example.items) == 10
    text = visible_text(rendered.html)
    body = text[text.index(f"1. {example.items[0].title}") :]  # past the table of contents
    positions = [body.index(f"{n}. {item.title}") for n, item in enumerate(example.items, start=1)]
    assert positions == sorted(positions)
    hrefs = [v for tag, name, v in attributes(rendered.html) if tag == "a" and name == "href"]
    for url in EXAMPLE_LINKS:
        assert url in hrefs, url
    # Title links and buttons follow the issue's order.
    firsts = [hrefs.index(url) for url in EXAMPLE_LINKS]
    assert firsts == sorted(firsts)


def test_html_has_a_numbered_table_of_contents_with_working_anchors(rendered: RenderedIssue, example: Issue) -> None:
    doc = lxml_html.fromstring(rendered.html)
    toc = doc.xpath('//table[@class="hl-toc"]//ol/li/a')
    assert [a.text_content() for a in toc] == [item.title for item in example.items]
    for n, a in enumerate(toc, start=1):
        assert a.get("href") == f"#item-{n}"
        (target,) = doc.xpath(f'//*[@id="item-{n}"]')
        assert target.tag == "h2"
        assert flat(target.text_content()) == f"{n}. {example.items[n - 1].title}"


def test_every_contents_link_reaches_a_named_anchor_too(ws: Workspace, rendered: RenderedIssue) -> None:
    # Gmail and Outlook drop id attributes; they keep <a name>.
    for html in (rendered.html, render_issue(write_issue(ws, items=[{"title": "No link", "summary": "S"}]), ws).html):
        doc = lxml_html.fromstring(html)
        links = doc.xpath('//table[@class="hl-toc"]//a[starts-with(@href, "#")]')
        assert links
        for link in links:
            fragment = link.get("href")[1:]
            (named,) = doc.xpath(f'//a[@name="{fragment}"]')
            (heading,) = doc.xpath(f'//*[@id="{fragment}"]')
            assert named.getparent() is heading, "the anchor is in the item's heading"


def test_padding_that_matters_sits_on_table_cells(rendered: RenderedIssue) -> None:
    # Outlook's Word engine keeps padding only on table cells (and has no inline-block).
    doc = lxml_html.fromstring(rendered.html)
    toc = doc.xpath('//*[contains(@class, "hl-toc-cell")]')
    pills = doc.xpath('//*[contains(concat(" ", @class, " "), " hl-tag ")]')
    assert len(toc) == 2 and len(pills) > 10
    for el in [*toc, *pills]:
        assert el.tag == "td", el.get("class")
        assert re.search(r"padding:\s*\d+(px)? \d+px", el.get("style")), el.get("style")
    for el in doc.xpath('//*[contains(@class, "hl-toc") or contains(@class, "hl-tag")]'):
        style = el.get("style") or ""
        assert "inline-block" not in style
        assert el.tag == "td" or "padding" not in style, (el.tag, el.get("class"), style)
    # Each pill is its own table, aligned left, so the pills wrap like words.
    assert {p.getparent().getparent().get("align") for p in pills} == {"left"}


def test_no_line_of_the_html_outgrows_a_mail_line(rendered: RenderedIssue) -> None:
    # RFC 5322 2.1.1: 998 octets at most; within it the HTML goes out as it is (8bit)
    # rather than quoted-printable.
    assert max(len(line.encode("utf-8")) for line in rendered.html.split("\n")) <= 998


def test_no_attribute_outside_html(ws: Workspace) -> None:
    # mjml-python writes vertical-align as a td attribute of an mj-button; HTML has none such.
    from highlightsmail.subscribers.signup import render_confirmation

    html = render_confirmation(ws).html
    assert "<mj-button" in (ws.templates_dir / "confirm.mjml.j2").read_text(encoding="utf-8")
    assert not re.search(r"<td\b[^>]*\svertical-align=", html)
    assert re.search(r'<td\b[^>]*\svalign="middle"', html), "the HTML attribute for it stays"


def test_html_has_hidden_preheader_and_footer(rendered: RenderedIssue, example: Issue, ws: Workspace) -> None:
    doc = lxml_html.fromstring(rendered.html)
    (body,) = doc.xpath("//body")
    assert body.text_content().lstrip().startswith(example.preheader), "the preheader is the body's first text"
    preheader = doc.xpath("//body/div/div")[0]  # the body's first block
    style = preheader.get("style").replace(" ", "")
    assert "display:none" in style and "max-height:0" in style and "overflow:hidden" in style
    # Hidden by layout alone: spam filters score tiny or background-coloured text.
    assert "font-size" not in style and "color" not in style
    assert preheader.text_content().startswith(example.preheader)
    assert "\u034f" in preheader.text_content()  # spacer after the preheader
    footer = visible_text(rendered.html)[-400:]
    assert (
        "You are receiving this because you subscribed to AI Research Highlights at https://highlights.example.org"
        in footer
    )
    assert ws.settings.postal_address in footer
    unsubscribe = doc.xpath('//a[text()="Unsubscribe"]')
    assert [a.get("href") for a in unsubscribe] == [UNSUBSCRIBE_PLACEHOLDER]


def test_html_size_is_below_gmail_clipping(rendered: RenderedIssue) -> None:
    html, _ = rendered.personalize("https://highlights.example.org/u/" + "x" * 80)
    assert len(html.encode("utf-8")) < GMAIL_CLIP_BYTES


def sent_size(ws: Workspace, items: list[dict]) -> int:
    """Bytes of an issue's HTML as sent (a real-length unsubscribe link), with the
    example's intro, outro and settings and these items."""
    example = yaml.safe_load((ws.issues_dir / "2024-w02.yaml").read_text(encoding="utf-8"))
    issue = write_issue(ws, **{**example, "date": "2024-01-19", "items": items})
    html, _ = render_issue(issue, ws).personalize("https://highlights.example.org/u/u" + "z" * 13 + "." + "A" * 22)
    return len(html.encode("utf-8"))


def test_thirty_items_of_the_examples_size_fit_under_gmails_clip(ws: Workspace) -> None:
    # Each item costs what it repeats: 3.2 KB at most for an item of the example's size
    # (its text, one or two links, two or three tags), so that an issue of 30 fits.
    items = yaml.safe_load((ws.issues_dir / "2024-w02.yaml").read_text(encoding="utf-8"))["items"]
    ten, thirty = (sent_size(ws, [items[n % len(items)] for n in range(count)]) for count in (10, 30))
    per_item = (thirty - ten) / 20
    assert per_item <= 3200, f"{per_item:.0f} bytes an item"
    assert thirty <= GMAIL_CLIP_BYTES, f"30 items: {thirty} bytes"


def test_every_item_keeps_the_tables_outlook_reads(ws: Workspace, rendered: RenderedIssue) -> None:
    # Shorter HTML leaves out nothing Outlook's Word engine lays out with: a 600 px
    # table for each section with a cell for its column, and for each item a table
    # for its rule and a row of cells for its link buttons.
    for html, rules_expected, links in (
        (rendered.html, 10 + 1, len(EXAMPLE_LINKS)),  # one above each item, one above the outro
        (render_issue(write_issue(ws, items=[{"title": "T", "summary": "S"}] * 3), ws).html, 3, 0),
    ):
        tables = re.findall(r"<!--\[if mso \| IE\]>(.*?)<!\[endif\]-->", html, re.S)
        outlook = "".join(tables)
        sections = re.findall(r'<table [^>]*align="center" width="600" style="width:600px"><tr><td', outlook)
        assert len(sections) == html.count("margin:0px auto;max-width:600px") >= 5
        columns = outlook.count('<td style="vertical-align:top;width:600px">')
        assert columns == html.count('class="mj-outlook-group-fix mj-column-per-100"') >= 3
        rules = re.findall(r'<table [^>]*width="536px" style="border-top:solid 1px #e2e8f0;', outlook)
        assert len(rules) == rules_expected
        assert outlook.count('<td style="padding:0 10px 10px 0" valign="top">') == links
    assert "<!--[if mso | IE]><![endif]-->" not in rendered.html


@pytest.mark.parametrize(
    ("style", "short"),
    [
        (
            "font-family: -apple-system, 'Segoe UI', Roboto ; padding : 0 10px ;",
            "font-family:-apple-system,'Segoe UI',Roboto;padding:0 10px",
        ),
        ("font-family: &quot;A, B&quot;, serif; color: red", "font-family:&quot;A, B&quot;,serif;color:red"),
        (
            "background: url(data:image/png;base64,AA, BB); content: 'a; b'",
            "background:url(data:image/png;base64,AA, BB);content:'a; b'",
        ),
        ("; ;color: red;;", "color:red"),
    ],
)
def test_style_attributes_lose_only_spaces_that_mean_nothing(style: str, short: str) -> None:
    assert compact(f'<p style="{style}">a style="x: y" b</p>') == f'<p style="{short}">a style="x: y" b</p>'


def test_only_classes_a_stylesheet_names_are_kept() -> None:
    html = (
        "<head><style>.keep a{color:red}</style><!--[if mso]><style>.fix{width:1px}</style><![endif]--></head>"
        '<p class="keep gone">x</p><p class="gone">y</p><!--[if mso | IE]><table class="fix gone"><![endif]-->'
    )
    assert compact(html).endswith('<p class="keep">x</p><p>y</p><!--[if mso | IE]><table class="fix"><![endif]-->')
    # A selector on the class attribute may name any class: then every class stays.
    by_attribute = html.replace(".keep a", "[class^=go] a")
    assert '<p class="keep gone">' in compact(by_attribute)


def test_stylesheets_outlook_comments_and_tbody_said_shorter() -> None:
    html = (
        "<style>\n  /* phones */ @media only screen and (max-width: 479px) {\n    .a , .b { color : red !important ; }\n  }\n"
        '  .c { font-family: "A , B /* x */", serif; }\n  a :hover { color: blue; }\n</style>'
        '<table class="a"><tbody><tr><td><!--[if mso | IE]><table><tr><![endif]-->\n'
        "<!--[if mso | IE]><td><![endif]-->x<!--[if mso | IE]></td><![endif]--></td></tr></tbody></table>"
    )
    assert compact(html) == (
        '<style>@media only screen and (max-width:479px){.a,.b{color:red !important;}}.c{font-family:"A , B /* x */",serif;}'
        'a :hover{color:blue;}</style><table class="a"><tr><td><!--[if mso | IE]><table><tr><td><![endif]-->x'
        "<!--[if mso | IE]></td><![endif]--></td></tr></table>"
    )


def outlook_view(html: str) -> str:
    """The HTML as Outlook's Word engine reads it: what `<!--[if mso ...]>` comments hold
    shown, what `<!--[if !mso]><!-->` blocks hold left out."""
    html = re.sub(r"<!--\[if !mso\]><!-->.*?<!--<!\[endif\]-->", "", html, flags=re.S)
    return re.sub(r"<!--\[if [^\]]*\bmso\b[^\]]*\]>|<!\[endif\]-->", "", html)


def test_link_buttons_sit_in_one_row_of_cells_for_outlook(
    ws: Workspace, example: Issue, rendered: RenderedIssue
) -> None:
    # Word has no inline-block: a table only Outlook reads holds an item's buttons in one
    # row, each in its own cell, the gap as the cell's padding (which Word keeps).
    links = [{"label": label, "url": f"https://example.org/{label}"} for label in ("Paper", "Code", "Demo")]
    three = render_issue(write_issue(ws, items=[{"title": "T", "summary": "S", "links": links}]), ws)
    counts_of_example = [len(item.links) for item in example.items if item.links]
    for html, counts in ((rendered.html, counts_of_example), (three.html, [3])):
        doc = lxml_html.fromstring(outlook_view(html))
        rows = [r for r in doc.xpath("//tr") if r.xpath('./td/div[contains(@class, "hl-btn")]')]
        assert [len(r.xpath("./td")) for r in rows] == counts
        for cell in (td for r in rows for td in r.xpath("./td")):
            assert len(cell.xpath('./div[contains(@class, "hl-btn")]')) == 1
            assert "padding:0 10px 10px 0" in cell.get("style")
        # Elsewhere they are inline blocks that wrap, and stack on phones.
        for button in lxml_html.fromstring(html).xpath('//div[contains(@class, "hl-btn ")] | //div[@class="hl-btn"]'):
            assert "display:inline-block" in button.get("style")
    phones = re.search(r"@media only screen and \(max-width:479px\)\{(.*?)\}\s*\}", three.html, re.S)
    assert phones and ".hl-btn{display:block !important;}" in phones[1].replace("\n", "")


def test_link_buttons_and_tags(rendered: RenderedIssue) -> None:
    doc = lxml_html.fromstring(rendered.html)
    buttons = doc.xpath('//div[contains(@class, "hl-btn")]//a')
    assert [flat(a.text_content()) for a in buttons][:2] == ["Paper →", "Paper →"]
    assert len(buttons) == len(EXAMPLE_LINKS)
    tags = [t.text_content() for t in doc.xpath('//td[@class="hl-tag"]')]
    assert tags[:2] == ["long-context", "positional-encoding"]


def test_subject_and_preheader(ws: Workspace) -> None:
    issue = write_issue(ws, subject="A subject of its own")
    rendered = render_issue(issue, ws)
    assert rendered.subject == "A subject of its own"
    assert rendered.slug == "2024-w03"
    assert rendered.preheader == "A short preheader"


def test_preheader_falls_back_to_the_first_titles(ws: Workspace) -> None:
    items = [{"title": f"Item number {n} with a reasonably long title", "summary": "x"} for n in range(1, 8)]
    data = {"title": "T", "date": "2024-01-19", "items": items}
    path = ws.issues_dir / "2024-w04.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    rendered = render_issue(load_issue(path), ws)
    assert rendered.preheader.startswith("Item number 1 with a reasonably long title · Item number 2")
    assert len(rendered.preheader) <= 150
    assert rendered.preheader in html_lib.unescape(rendered.html)


def test_image_has_alt_and_fits_the_column(ws: Workspace) -> None:
    issue = write_issue(
        ws,
        items=[
            {
                "title": "With a figure",
                "summary": "See the figure.",
                "image": {"url": "https://example.org/figure.png", "alt": "Accuracy rises with context length"},
            }
        ],
    )
    doc = lxml_html.fromstring(render_issue(issue, ws).html)
    (img,) = doc.xpath('//img[@src="https://example.org/figure.png"]')
    assert img.get("alt") == "Accuracy rises with context length"
    assert img.get("width") == "536"
    style = img.get("style").replace(" ", "")
    assert "width:100%" in style and "max-width:536px" in style and "height:auto" in style


# --------------------------------------------------------------------------- the text part


def test_text_part_has_contents_items_and_references(rendered: RenderedIssue, example: Issue) -> None:
    text = rendered.text
    contents = text.split("IN THIS ISSUE", 1)[1].split("-" * 72, 1)[0]
    for n, item in enumerate(example.items, start=1):
        assert f"{n}. {item.title}" in flat(contents)
        assert f"{n}. {item.title}" in flat(text.split("-" * 72, 1)[1])
    for number, url in enumerate(EXAMPLE_LINKS, start=1):
        assert re.search(rf"^\[{number}\] (Paper|Code|Project page): {re.escape(url)}$", text, re.M), url
    assert "Tags: long-context, positional-encoding" in text


def test_text_lines_fit_72_columns(rendered: RenderedIssue) -> None:
    assert long_lines(rendered.text) == []
    assert max(len(line) for line in rendered.text.splitlines()) <= TEXT_WIDTH


def test_text_footer(rendered: RenderedIssue, ws: Workspace) -> None:
    footer = rendered.text.rsplit("=" * 72, 1)[1]
    assert (
        "You are receiving this because you subscribed to AI Research Highlights at https://highlights.example.org"
        in flat(footer)
    )
    assert f"\n{UNSUBSCRIBE_PLACEHOLDER}\n" in footer
    assert ws.settings.postal_address in flat(footer)
    assert rendered.text.endswith("\n") and not rendered.text.endswith("\n\n")


def test_text_part_has_intro_and_outro(rendered: RenderedIssue) -> None:
    flat_text = flat(rendered.text)
    assert "Ten papers from the second week of 2024." in flat_text
    assert "one of them without any training" in flat_text  # emphasis markers dropped
    assert "The researchers behind the publications deserve full credit for their work." in flat_text


# --------------------------------------------------------------------------- Markdown


def test_markdown_to_html() -> None:
    out = render_markdown(
        "Some *em* and **strong**, `code` and [a link](https://example.org/?a=1&b=2).\n\n- one\n- two"
    )
    assert "<em>em</em>" in out and "<strong>strong</strong>" in out and "<code>code</code>" in out
    assert '<a href="https://example.org/?a=1&amp;b=2">a link</a>' in out
    assert "<ul>" in out and '<li dir="auto">two</li>' in out


def test_markdown_to_text() -> None:
    out = markdown_to_text(
        textwrap.dedent("""\
        Read *this* **now**: [the paper](https://example.org/p) and <https://example.org/auto>.

        - first point
        - second point

        1. step
        2. step
        """)
    )
    assert out.splitlines() == [
        "Read this *now*: the paper [1] and https://example.org/auto.",
        "",
        "- first point",
        "- second point",
        "",
        "1. step",
        "2. step",
        "",
        "[1] https://example.org/p",
    ]


def test_markdown_text_wraps_list_items_under_their_marker() -> None:
    out = markdown_to_text("- " + "word " * 30, width=40)
    lines = out.splitlines()
    assert lines[0].startswith("- word")
    assert all(line.startswith("  word") for line in lines[1:])
    assert all(len(line) <= 40 for line in lines)


# --------------------------------------------------------------------------- hostile input


def test_script_and_ampersand_in_a_title_show_as_text(ws: Workspace) -> None:
    title = "<script>alert('x')</script> Q&A"
    issue = write_issue(ws, title=title, items=[{"title": title, "summary": "s"}])
    rendered = render_issue(issue, ws)
    assert "<script" not in rendered.html.lower()
    assert "&lt;script&gt;alert('x')&lt;/script&gt; Q&amp;A" in rendered.html
    assert title in visible_text(rendered.html)
    assert title in rendered.text  # plain text needs no escaping
    assert rendered.subject == title


def test_no_javascript_urls_reach_the_html(ws: Workspace) -> None:
    summary = (
        "[click](javascript:alert(1)) [data](data:text/html;base64,PHNjcmlwdD4=) "
        "[rel](/relative) ![img](javascript:alert(2)) <javascript:alert(3)> "
        '<a href="javascript:alert(4)">raw</a>'
    )
    issue = write_issue(ws, intro=summary, items=[{"title": "t", "summary": summary}], outro=summary)
    rendered = render_issue(issue, ws)
    for tag, name, value in attributes(rendered.html):
        assert not value.strip().lower().startswith(("javascript:", "data:")), (tag, name, value)
        assert not name.lower().startswith("on"), (tag, name)
    # Refused links stay readable as what the editor wrote.
    assert "[click](javascript:alert(1))" in visible_text(rendered.html)
    assert "[rel](/relative)" in rendered.text


def test_raw_html_in_markdown_shows_as_text(ws: Workspace) -> None:
    summary = 'Bold <b>claim</b> and <img src="https://example.org/x.png" onerror="alert(1)"> here.'
    issue = write_issue(ws, items=[{"title": "t", "summary": summary}])
    rendered = render_issue(issue, ws)
    doc = lxml_html.fromstring(rendered.html)
    assert doc.xpath("//b") == []
    assert doc.xpath('//img[@src="https://example.org/x.png"]') == []
    assert summary in visible_text(rendered.html)
    assert summary in flat(rendered.text)


def test_emoji_cjk_and_rtl_survive_in_both_parts(ws: Workspace) -> None:
    title = "🚀 大型语言模型 and نماذج اللغة"
    summary = "Résumé: 長い文脈 🧠, עברית מימין לשמאל, and العربية."
    issue = write_issue(ws, items=[{"title": title, "summary": summary, "tags": ["多言語", "עברית"]}])
    rendered = render_issue(issue, ws)
    seen = visible_text(rendered.html)
    assert title in seen and summary in seen and "多言語" in seen
    assert title in rendered.text and summary in flat(rendered.text) and "多言語" in rendered.text
    # Right-to-left paragraphs pick their own direction.
    assert '<p dir="auto"' in rendered.html


def test_very_long_summary_renders_and_wraps(ws: Workspace) -> None:
    words = " ".join(f"word{n}" for n in range(1500))
    unbroken = "x" * 300
    url = "https://example.org/" + "a" * 120
    summary = f"{words} {unbroken} see <{url}> too"
    assert len(summary) > 10_000
    issue = write_issue(ws, items=[{"title": "Long", "summary": summary}])
    rendered = render_issue(issue, ws)
    assert "word1499" in rendered.html and unbroken in rendered.html
    assert long_lines(rendered.text) == []
    assert "word0 word1" in rendered.text and "word1499" in rendered.text
    # The URL stays whole on its own line; the other long word was cut to fit.
    assert any(line.strip() == url for line in rendered.text.splitlines())
    assert unbroken not in rendered.text and unbroken in rendered.text.replace("\n", "")


def test_user_text_cannot_forge_the_unsubscribe_placeholder(ws: Workspace) -> None:
    clean = render_issue(write_issue(ws, slug="2024-w05"), ws)
    p = UNSUBSCRIBE_PLACEHOLDER
    spelled = p.replace("_", "&#95;", 1)
    split = p.replace("unsubscribe", "*unsubscribe*")
    hostile = write_issue(
        ws,
        title=f"Title {p}",
        preheader=f"pre {p}",
        intro=f"Intro {p} and {spelled} and {split} and `{p}`",
        items=[
            {
                "title": f"Item {p}",
                "summary": f"Summary {p} [leak](https://evil.example/?u={p}) <https://evil.example/{p}>",
                "links": [{"label": f"Label {p}", "url": f"https://evil.example/c?u={p}"}],
                "image": {"url": f"https://evil.example/{p}.png", "alt": f"alt {p}"},
                "tags": [p],
            }
        ],
        outro=f"Outro {p}",
    )
    rendered = render_issue(hostile, ws)
    assert rendered.html.count(p) == clean.html.count(p) == 1
    assert rendered.text.count(p) == clean.text.count(p) == 1
    html, text = rendered.personalize("https://highlights.example.org/u/SECRET-TOKEN")
    assert html.count("SECRET-TOKEN") == 1 and text.count("SECRET-TOKEN") == 1
    hrefs = [v for tag, name, v in attributes(html) if name in ("href", "src")]
    assert not any("evil.example" in h and "SECRET" in h for h in hrefs)
    # What the editor wrote still reads the same (the breaks are invisible).
    assert f"Item {p}" in visible_text(rendered.html).replace("\u200b", "")


# --------------------------------------------------------------------------- personalize, fingerprint


def test_personalize_replaces_only_the_placeholder(rendered: RenderedIssue) -> None:
    url = "https://highlights.example.org/u/abc.DEF-123_x?a=1&b=2"
    page = "https://highlights.example.org/p/pa.b.C-d?x=1&y=2"
    html, text = rendered.personalize(url, page)
    escaped = "https://highlights.example.org/u/abc.DEF-123_x?a=1&amp;b=2"
    escaped_page = "https://highlights.example.org/p/pa.b.C-d?x=1&amp;y=2"
    assert UNSUBSCRIBE_PLACEHOLDER not in html and UNSUBSCRIBE_PLACEHOLDER not in text
    assert PREFERENCES_PLACEHOLDER not in html and PREFERENCES_PLACEHOLDER not in text
    assert html.count(escaped) == 1 and text.count(url) == 1
    assert html.count(escaped_page) == 1 and text.count(page) == 1
    back = html.replace(escaped, UNSUBSCRIBE_PLACEHOLDER).replace(escaped_page, PREFERENCES_PLACEHOLDER)
    assert back == rendered.html
    assert text.replace(url, UNSUBSCRIBE_PLACEHOLDER).replace(page, PREFERENCES_PLACEHOLDER) == rendered.text
    doc = lxml_html.fromstring(html)
    assert doc.xpath('//a[text()="Unsubscribe"]/@href') == [url]
    assert doc.xpath('//a[text()="Manage preferences"]/@href') == [page]


def test_the_test_send_fingerprint_covers_subject_html_and_text(rendered: RenderedIssue, ws: Workspace) -> None:
    from dataclasses import replace

    from highlightsmail.mail.message import fingerprint

    fp = fingerprint(rendered, ws.settings)
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert fingerprint(replace(rendered), ws.settings) == fp  # an equal rendering, the same message
    assert fingerprint(replace(rendered, subject=rendered.subject + "!"), ws.settings) != fp
    assert fingerprint(replace(rendered, html=rendered.html + " "), ws.settings) != fp
    assert fingerprint(replace(rendered, text=rendered.text + " "), ws.settings) != fp
    # Moving characters between parts changes it too.
    moved = replace(rendered, subject=rendered.subject + "<", html=rendered.html[1:])
    assert fingerprint(moved, ws.settings) != fp


# --------------------------------------------------------------------------- templates


def test_workspace_template_overrides_the_package_one(ws: Workspace, example: Issue) -> None:
    (ws.templates_dir / "issue.txt.j2").write_text(
        "CUSTOM {{ issue.title }}\n{{ unsubscribe_url }}\n", encoding="utf-8"
    )
    rendered = render_issue(example, ws)
    assert rendered.text == f"CUSTOM AI Research Highlights | Week 2, 2024\n{UNSUBSCRIBE_PLACEHOLDER}\n"
    assert "hl-toc" in rendered.html  # the HTML template still comes from the workspace copy


def test_package_templates_serve_a_workspace_without_templates(tmp_path: Path, example: Issue) -> None:
    root = tmp_path / "bare"
    (root / "issues").mkdir(parents=True)
    shutil.copy(EXAMPLE_SETTINGS, root / "highlights.yaml")
    bare = load_workspace(root)
    assert not bare.templates_dir.exists()
    rendered = render_issue(example, bare)
    golden = GOLDEN / "2024-w02.txt"
    assert rendered.text == golden.read_text(encoding="utf-8")


def test_edited_template_is_picked_up_without_restart(ws: Workspace, example: Issue) -> None:
    path = ws.templates_dir / "issue.txt.j2"
    path.write_text("first {{ unsubscribe_url }}\n", encoding="utf-8")
    assert render_issue(example, ws).text.startswith("first")
    path.write_text("second {{ unsubscribe_url }}\n", encoding="utf-8")
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 5))  # coarse file-system clocks
    assert render_issue(example, ws).text.startswith("second")


def test_unknown_variable_names_template_and_line(ws: Workspace, example: Issue) -> None:
    (ws.templates_dir / "issue.txt.j2").write_text(
        "line one\n{{ issue.title }}\n{{ issue.no_such_thing }}\n", encoding="utf-8"
    )
    with pytest.raises(HighlightsError) as err:
        render_issue(example, ws)
    message = err.value.format_message()
    assert "issue.txt.j2:3:" in message
    assert "no_such_thing" in message
    assert "Traceback" not in message and "\n" not in message


def test_template_syntax_error_names_template_and_line(ws: Workspace, example: Issue) -> None:
    (ws.templates_dir / "issue.mjml.j2").write_text("<mjml>\n{% if %}\n</mjml>\n", encoding="utf-8")
    with pytest.raises(HighlightsError) as err:
        render_issue(example, ws)
    assert "issue.mjml.j2:2:" in err.value.format_message()


def test_invalid_mjml_names_the_template(ws: Workspace, example: Issue) -> None:
    (ws.templates_dir / "issue.mjml.j2").write_text("<mjml><mj-body><mj-section>\n", encoding="utf-8")
    with pytest.raises(HighlightsError) as err:
        render_issue(example, ws)
    assert "issue.mjml.j2" in err.value.format_message()
    assert "MJML" in err.value.format_message()


def test_a_template_that_is_not_utf8_names_the_file(ws: Workspace, example: Issue) -> None:
    (ws.templates_dir / "issue.txt.j2").write_bytes("caf\u00e9 {{ unsubscribe_url }}\n".encode("latin-1"))
    with pytest.raises(HighlightsError) as err:
        render_issue(example, ws)
    assert err.value.format_message() == (
        "templates/issue.txt.j2: not UTF-8 text (byte 0xe9 at offset 3); save the template as UTF-8"
    )


@pytest.mark.parametrize("kind", ["folder", "broken link", "link loop"])
def test_a_template_that_is_there_but_no_file_is_an_error_not_the_default(
    ws: Workspace, example: Issue, kind: str
) -> None:
    """The package's default used to stand in silently, so the editor saw a look they
    had not written and no word about their own file."""
    path = ws.templates_dir / "issue.mjml.j2"
    path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "broken link":
        path.symlink_to(ws.templates_dir / "gone.mjml.j2")
    else:
        path.symlink_to(path.name)
    with pytest.raises(HighlightsError) as err:
        render_issue(example, ws)
    assert err.value.format_message() == (
        "templates/issue.mjml.j2: cannot read the template (it is a folder, a broken link or a link loop, "
        "not a file; fix it, or remove it to use the default)"
    )


# --------------------------------------------------------------------------- quiet


def test_rendering_prints_nothing(example: Issue, ws: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
    render_issue(example, ws)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_first_render_in_a_fresh_process_prints_nothing(workspace: Path) -> None:
    """cssutils and premailer talk on first use (parsing, logging set-up); a fresh
    interpreter is the only place to see that."""
    code = textwrap.dedent("""
        from highlightsmail.authoring.workspace import load_workspace
        from highlightsmail.authoring.issue import load_issue
        from highlightsmail.rendering.render import render_issue
        ws = load_workspace()
        render_issue(load_issue(ws.issue_path("2024-w02")), ws)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=workspace, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_mjml_source_is_what_the_issue_template_makes_before_it_is_compiled(ws: Workspace, example: Issue) -> None:
    """What benchmarks/render.py hands to Node's MJML compiler: the same MJML, with the
    preheader's spacer every email's templates see."""
    source = mjml_source(ws, issue_context(example, ws))
    assert source.lstrip().startswith("<mjml")
    assert "&#847;&zwnj;&nbsp;" in source
    assert html_lib.escape(example.items[0].title, quote=False) in source
