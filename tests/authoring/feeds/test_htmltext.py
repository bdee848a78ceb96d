"""A feed's HTML as an issue's Markdown: what a reader sees survives, nothing that runs,
hides, tracks or leads nowhere does, and the Markdown renders back to the same text."""

from __future__ import annotations

import pytest

from highlightsmail.authoring.htmltext import html_to_markdown, html_to_text, shorten, text_to_markdown
from highlightsmail.authoring.markdown import to_html

BASE = "https://blog.example.org/2024/01/post/"


def md(html: str, **kwargs: int) -> str:
    return html_to_markdown(html, BASE, **kwargs)


def test_paragraphs_emphasis_code_and_links() -> None:
    html = '<p>A <em>new</em> <strong>result</strong> with <code>x*y</code>, see <a href="../other/">this</a>.</p><p>Two</p>'
    assert md(html) == "A *new* **result** with `x*y`, see [this](https://blog.example.org/2024/01/other/).\n\nTwo"


@pytest.mark.parametrize(
    "html",
    [
        "<script>alert(1)</script><p>ok</p>",
        "<style>p{color:red}</style><p>ok</p>",
        "<p>ok</p><noscript>enable js</noscript><iframe src='https://x.example'>frame</iframe>",
        "<p>ok</p><div hidden>secret</div><span style='display: none'>secret</span>",
        "<svg><text>drawn</text></svg><p>ok</p><form><button>Buy</button></form>",
    ],
)
def test_nothing_that_runs_or_hides_survives(html: str) -> None:
    assert md(html) == "ok"


@pytest.mark.parametrize(
    "href",
    [
        "javascript:alert(1)",
        "JaVaScRiPt&#58;alert(1)",
        " java\tscript:alert(1)",
        "data:text/html;base64,PHNjcmlwdD4=",
        "vbscript:msgbox",
        "file:///etc/passwd",
        "",
        "https://" + "a" * 1000 + ".example.org/",
    ],
)
def test_a_link_that_leads_nowhere_safe_keeps_only_its_text(href: str) -> None:
    assert md(f'<p>Read <a href="{href}">this</a> now</p>') == "Read this now"


def test_relative_links_and_images_resolve_against_the_entry() -> None:
    html = '<p><a href="/about">About</a> <a href="#fn1">note</a> <img src="fig.png" alt="Figure 1"></p>'
    assert md(html) == (
        "[About](https://blog.example.org/about) [note](https://blog.example.org/2024/01/post/#fn1) "
        "![Figure 1](https://blog.example.org/2024/01/post/fig.png)"
    )


@pytest.mark.parametrize(
    "img",
    [
        '<img src="https://t.example.org/p.gif" width="1" height="1" alt="x">',
        '<img src="https://t.example.org/p.gif" height="0" alt="x">',
        '<img src="https://t.example.org/p.gif" style="width:1px;height:1px" alt="x">',
        '<img src="https://feeds.feedburner.com/~r/blog/~4/abc" alt="x">',
        '<img src="https://pixel.wp.com/g.gif?blog=1" alt="x">',
        '<img src="https://www.google-analytics.com/collect?v=1" alt="x">',
        '<img src="https://ssl.google-analytics.com/__utm.gif" alt="x">',
        '<img src="https://t.example.org/chart.png">',  # no alt text: check would refuse it
        '<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline">',
    ],
)
def test_tracking_pixels_and_images_without_alt_are_dropped(img: str) -> None:
    assert md(f"<p>Text{img}</p>") == "Text"


def test_text_is_escaped_so_it_stays_text() -> None:
    html = "<p>*not em* [1] &lt;b&gt;x&lt;/b&gt; a_b _c_ &amp;copy; 2 * 3</p><p>1. not a list</p><p># not a heading</p>"
    out = md(html)
    assert out == (
        "\\*not em\\* \\[1\\] \\<b\\>x\\</b\\> a_b \\_c\\_ \\&copy; 2 \\* 3\n\n1\\. not a list\n\n\\# not a heading"
    )
    rendered = to_html(out)
    for shown in ("*not em* [1] &lt;b&gt;x&lt;/b&gt; a_b _c_ &amp;copy; 2 * 3", "1. not a list", "# not a heading"):
        assert shown in rendered
    assert "<em>" not in rendered and "<ol" not in rendered and "<h1" not in rendered


def test_lists_headings_quotes_code_and_breaks() -> None:
    html = (
        "<h2>Results</h2><ul><li>one<li>two<ul><li>deep</li></ul></ul><ol><li>first</li><li>second</li></ol>"
        "<blockquote><p>quoted</p></blockquote><pre>a  = 1\n``b``</pre><p>line<br>break</p>"
    )
    assert md(html) == (
        "**Results**\n\n- one\n- two\n\n  - deep\n\n1. first\n2. second\n\n> quoted\n\n"
        "```\na  = 1\n``b``\n```\n\nline\\\nbreak"
    )


def test_a_long_summary_is_cut_at_a_block_or_a_word() -> None:
    html = "".join(f"<p>Paragraph {i} " + "word " * 30 + "</p>" for i in range(20))
    out = md(html, limit=500)
    assert len(out) <= 500 and out.endswith("\n\n…")
    assert out.startswith("Paragraph 0 word")
    one = md("<p>" + "word " * 1000 + "</p>", limit=100)
    assert len(one) <= 100 and one.endswith("word…")


def test_broken_html_is_read_as_a_browser_would() -> None:
    assert md("<p>open <b>bold <i>both</p><p>next</div></span>") == "open **bold *both***\n\nnext"
    assert md("<ul><li>a<p>b</ul>after") == "- a\n\n  b\n\nafter"


def test_control_characters_and_odd_breaks_are_gone() -> None:
    out = md("<p>a\x00b\x1bc\u2028d\x85e\ufffef\ud800g</p>")
    assert out == "abc d efg"


def test_titles_and_plain_text() -> None:
    assert html_to_text("Sparse &amp; <em>long</em><script>x</script> contexts") == "Sparse & long contexts"
    assert text_to_markdown("First *para*\nwraps.\n\n- second") == "First \\*para\\* wraps.\n\n\\- second"
    assert shorten("one two three four", 12) == "one two…"
