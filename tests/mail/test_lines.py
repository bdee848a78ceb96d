"""Every line of every part within RFC 5322's 998 octets (2.1.1), in every configuration.

The parts as `build` writes them (.html, .txt, and the .eml), every kind of email as a
reader gets it (support.emails.EMAIL_KINDS), and the per-recipient message both as an
8bit body and as quoted-printable, with the longest link a recipient can get in place
of the placeholder: with the archive and the signup form on and off, and with long
titles, long URLs, many items, tags and links, emoji, scripts without spaces and code.
Folding the HTML (highlightsmail.folding) changes nothing a reader gets: the same
document, text and attributes; test_email_browser.py compares the pixels.
"""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from lxml import html as lxml_html

from highlightsmail.authoring.issue import load_issue
from highlightsmail.authoring.workspace import MAX_ARCHIVE_PATH, MAX_BASE_URL, load_workspace
from highlightsmail.cli import main
from highlightsmail.errors import ValidationFailed
from highlightsmail.mail.message import Recipient, RecipientLinks, links_for, unsubscribe_url
from highlightsmail.mail.mime import MessageTemplate
from highlightsmail.rendering import folding
from highlightsmail.rendering.render import render_issue
from highlightsmail.rendering.rendered import UNSUBSCRIBE_PLACEHOLDER
from highlightsmail.subscribers.signup import render_confirmation
from highlightsmail.text import MAX_URL_OCTETS, url_octets
from highlightsmail.urls import urls
from support.emails import EMAIL_KINDS
from support.workspace import configure

pytestmark = pytest.mark.slow

LIMIT = 998
# The longest tokens tokens.Signer makes: an unsubscribe link's and a confirmation's.
LONGEST_TOKEN = "u" + "z" * 13 + "." + "A" * 22
LONGEST_CONFIRM_TOKEN = "c" + "z" * 13 + "." + "z" * 13 + "." + "A" * 22
# At the limit: a URL that takes MAX_URL_OCTETS as the HTML writes it (é and & escaped).
LONG_URL = "https://example.org/" + "é&" * 40 + "x" * (MAX_URL_OCTETS - 20 - 40 * 11)
LONG_BASE = "https://news.example.org/" + "b" * (MAX_BASE_URL - 25)


def long_issue() -> dict:
    """An issue at the edges of what a valid issue may hold."""
    astronaut = "\U0001f469\U0001f3fd\u200d\U0001f680"  # a woman astronaut, medium skin: 4 code points
    items = []
    for n in range(12):
        items.append(
            {
                "title": ("猫" * 300) if n % 3 == 1 else ("Tom & Jerry, " * 30)[:300] if n % 3 else "e\u0301" * 150,
                "summary": (
                    f"{'w' * 3000} <{LONG_URL}> and [a link]({LONG_URL}) {'&amp; ' * 200}\n\n"
                    f"    {'indented code ' * 150}\n\n```\n{'c' * 2500}\n```\n\n{astronaut * 300}\n\n"
                    f"> {'quoted ' * 300}\n\n- {'ünïcödé ' * 200}\n- `{'inline_code' * 100}`"
                ),
                "links": [{"label": "L" * 79 + "&", "url": LONG_URL} for _ in range(10)],
                "image": {"url": LONG_URL, "alt": "\U0001f600" * 300},
                "tags": ["t" * 79 + "&"] * 20,
            }
        )
    return {
        "title": ("T&" * 100),
        "subject": "S" * 998,
        "date": "2024-01-19",
        "preheader": astronaut * 37,
        "intro": "intro " * 2000,
        "items": items,
        "outro": "o" * 5000,
    }


CONFIGS = {
    "plain": {},
    "archive": {"archive": {"enabled": True, "path": "/archive"}},
    "signup": {"signup": {"enabled": True}},
    "archive-and-signup": {"archive": {"enabled": True, "path": "/archive"}, "signup": {"enabled": True}},
    "long-everything": {
        "archive": {"enabled": True, "path": "/a" + "r" * (MAX_ARCHIVE_PATH - 2)},
        "signup": {"enabled": True},
        "base_url": LONG_BASE,
        "name": "N" * 90 + " & " + "é" * 100,
        "postal_address": ("Street & Square, " * 40)[:500],
    },
}


def set_up(root: Path, config: str) -> None:
    configure(root, **CONFIGS[config])
    if config == "long-everything":
        path = root / "issues" / "2024-w02.yaml"
        path.write_text(yaml.safe_dump(long_issue(), allow_unicode=True), encoding="utf-8")


def long_lines(data: bytes) -> list[tuple[int, int]]:
    """(line number, octets) of every line over the limit, CRLF or LF."""
    return [(n, len(line)) for n, line in enumerate(data.split(b"\n"), 1) if len(line.rstrip(b"\r")) > LIMIT]


def check_message(data: bytes, name: str) -> dict[str, str]:
    """Every line of the message and of each decoded part within the limit; returns each
    part's Content-Transfer-Encoding by type."""
    assert long_lines(data) == [], name
    msg = email.message_from_bytes(data, policy=email.policy.default)
    encodings = {}
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            assert long_lines(part.get_content().encode("utf-8")) == [], f"{name}: {part.get_content_type()}"
            encodings[part.get_content_type()] = str(part["Content-Transfer-Encoding"])
    return encodings


@pytest.mark.parametrize("config", CONFIGS)
def test_built_files_keep_every_line_within_998_octets(workspace: Path, config: str) -> None:
    set_up(workspace, config)
    result = CliRunner().invoke(main, ["build", "2024-w02"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for part in ("html", "txt"):
        assert long_lines((workspace / "out" / f"2024-w02.{part}").read_bytes()) == [], part
    check_message((workspace / "out" / "2024-w02.eml").read_bytes(), "build")


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("kind", EMAIL_KINDS)
def test_every_kind_of_email_keeps_every_line_within_998_octets(workspace: Path, kind: str, config: str) -> None:
    set_up(workspace, config)
    message = EMAIL_KINDS[kind](workspace)
    encodings = check_message(message.read_bytes(), kind)
    # Within the limit, the parts go as they are (8bit): nothing needed quoted-printable.
    assert set(encodings.values()) <= {"7bit", "8bit"}, encodings


@pytest.mark.parametrize("config", CONFIGS)
def test_the_longest_recipient_link_keeps_lines_within_998_octets_8bit_and_quoted_printable(
    workspace: Path, config: str
) -> None:
    set_up(workspace, config)
    ws = load_workspace()
    reader = Recipient("reader@example.org", "Reader", 1)
    issue = links_for(ws.settings, unsubscribe_url(ws.settings, LONGEST_TOKEN))
    confirmation = RecipientLinks(urls(ws.settings).confirm(LONGEST_CONFIRM_TOKEN), {})
    rendered = [
        (render_issue(load_issue(ws.issue_path("2024-w02")), ws), issue),
        (render_confirmation(ws), confirmation),
    ]
    for mail, links in rendered:
        for test in (False, True):
            template = MessageTemplate(mail, ws.settings, links, test=test)
            assert template.fast, "the message takes the quick path, checked against the email package"
            for eight_bit in (True, False):
                data = template.render(reader, links, eight_bit=eight_bit).data
                encodings = check_message(data, f"{mail.slug} 8bit={eight_bit}")
                if eight_bit:
                    assert set(encodings.values()) <= {"7bit", "8bit"}, encodings
                # The SendGrid backend sends the parts as personalize() gives them.
                for part in mail.personalize(links.unsubscribe_url):
                    assert long_lines(part.encode("utf-8")) == []


def normalized(html: str) -> list[tuple]:
    """The document as a reader's client builds it, comments left out: every element with
    its attributes and the text in it and after it, white space collapsed where it
    collapses, exactly in <pre>. Alt text and the <title> may also have taken a line
    break between two characters where they hold no space to break at (a space to a
    reader): they are compared without white space. In a stylesheet, white space after
    a ';', '{' or '}' means nothing, and a line break may have gone there."""
    doc = lxml_html.fromstring(html)
    for comment in doc.xpath("//comment()"):
        comment.drop_tree()  # its tail joins the text before it
    out: list[tuple] = []
    for el in doc.iter():
        pre = el.tag == "pre" or any(a.tag == "pre" for a in el.iterancestors())
        words = "".join if el.tag == "title" else " ".join
        attrs = {}
        for key, value in el.attrib.items():
            if key == "style":
                value = re.sub(r"\s*;\s*", ";", value.strip())
            elif key in ("alt", "title", "aria-label"):
                value = "".join(value.split())
            elif key == "class":
                value = " ".join(value.split())
            attrs[key] = value
        text, tail = el.text or "", el.tail or ""
        if el.tag == "style":
            text = re.sub(r"(?<=[;{}])\s+", "", text)
        out.append((el.tag, attrs, text if pre else words(text.split()), tail if pre else " ".join(tail.split())))
    return out


def test_folding_changes_no_element_attribute_or_text(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_up(workspace, "long-everything")
    ws = load_workspace()
    issue = load_issue(ws.issue_path("2024-w02"))
    folded = render_issue(issue, ws).html
    monkeypatch.setattr(folding, "fold_html", lambda html, **_: html)
    unfolded = render_issue(issue, ws).html
    assert max(len(line.encode("utf-8")) for line in unfolded.split("\n")) > 10_000, "there was work to do"
    assert folded != unfolded
    assert normalized(folded) == normalized(unfolded)
    # The only markup added: empty comments that hold a line break.
    assert re.sub(r"<!--\n-->|\s+", "", folded) == re.sub(r"\s+", "", unfolded)


# --------------------------------------------------------------------------- the folding itself


def lines_of(text: str) -> list[int]:
    return [len(line.encode("utf-8")) for line in text.split("\n")]


def test_html_breaks_between_attributes_after_declarations_and_at_spaces() -> None:
    style = ";".join(f"prop-{n}:value-{n}" for n in range(100))
    html = f'<p class="a b" style="{style}">{"word " * 300}</p>'
    folded = folding.fold_html(html)
    assert max(lines_of(folded)) <= folding.FOLD_AT
    assert "<!--" not in folded, "good breaks were enough"
    assert normalized(folded) == normalized(html)


def test_a_stylesheet_without_spaces_breaks_after_declarations_and_rules_only() -> None:
    # The rendered email's <style> blocks carry no white space to break at (render.py
    # leaves it out); a line break goes after a ';', '{' or '}', never into a quoted
    # font name or a url(...).
    rules = "".join(f".c{n}{{color:#{n:06x};font-family:'A;B {n}',sans-serif}}" for n in range(200))
    css = f"@media (max-width:479px){{{rules}}}.u{{background:url(data:image/png;base64,{'A' * 300})}}"
    html = f"<html><head><style>{css}</style></head><body><p>x</p></body></html>"
    folded = folding.fold_html(html)
    assert max(lines_of(folded)) <= folding.FOLD_AT
    assert folded.replace("\n", "") == html, "line breaks added, nothing else"
    assert all(f"'A;B {n}'" in folded for n in range(200))
    assert f"url(data:image/png;base64,{'A' * 300})" in folded
    assert all(line.endswith((";", "{", "}")) for line in folded.split("\n")[:-1])


def test_pre_keeps_its_spaces_and_a_run_without_spaces_breaks_in_an_empty_comment() -> None:
    html = f"<div><pre><code>{'a b ' * 400}</code></pre><p>{'x' * 3000}</p></div>"
    folded = folding.fold_html(html)
    assert max(lines_of(folded)) <= folding.FOLD_AT
    doc = lxml_html.fromstring(folded)
    assert doc.xpath("string(//pre)") == "a b " * 400
    assert doc.xpath("string(//p)") == "x" * 3000


def test_nothing_is_split_that_must_stay_whole() -> None:
    placeholder = UNSUBSCRIBE_PLACEHOLDER
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji of five code points
    text = ("&amp;" + family + "e\u0301" + "\U0001f1eb\U0001f1f7" + placeholder) * 60
    css = "background:url(data:image/png;base64," + "A" * 2000 + ");color:red"
    html = f'<p style="{css}">{text}</p>'
    folded = folding.fold_html(html, placeholder=placeholder, room=300)
    pieces = folded.split("\n")
    assert all(not re.search(r"&[a-z]*$", p) for p in pieces), "no entity cut"
    assert all(not p.startswith(("\u200d", "\u0301", "\U0001f469", "\U0001f1f7")) for p in pieces[1:])
    assert folded.count(placeholder) == 60
    assert "base64," + "A" * 2000 + ")" in folded, "no break inside url(...)"
    assert normalized(folded) == normalized(html)
    # Each placeholder counts as the 300 octets its URL may take; only the url(...),
    # which nothing may break, is longer.
    sizes = [len(p.encode()) + p.count(placeholder) * (300 - len(placeholder)) for p in pieces if "base64" not in p]
    assert max(sizes) <= folding.FOLD_AT


def test_comments_that_outlook_reads_break_only_inside_their_tags() -> None:
    cells = "".join(f'<td style="width:{n}px;padding:0">' for n in range(60))
    html = f"<!--[if mso | IE]><table role=presentation><tr>{cells}<![endif]--><p>{'y ' * 500}</p>"
    folded = folding.fold_html(html)
    assert max(lines_of(folded)) <= folding.FOLD_AT
    comment, original = (h[: h.index("<![endif]-->")] for h in (folded, html))
    assert comment.count("<!--") == 1 and "-->" not in comment, "no comment inside the comment"
    assert "\n" not in re.sub(r"<[^<>]*>", "", comment), "breaks only inside tags"
    assert re.sub(r"\s+", "", comment) == re.sub(r"\s+", "", original)


def test_folding_twice_changes_nothing_more() -> None:
    html = f'<p style="{";".join(["a:b"] * 300)}">{"word " * 300}{"z" * 2000}</p>'
    once = folding.fold_html(html)
    assert folding.fold_html(once) == once
    text = "word " * 400 + "\n" + "k" * 5000
    assert folding.fold_text(folding.fold_text(text)) == folding.fold_text(text)


def test_text_breaks_at_spaces_keeps_a_url_whole_and_cuts_only_what_cannot_fit() -> None:
    url = "https://example.org/" + "p" * 940
    text = f"[12] A label: {url}\n{'word ' * 400}\n{'k' * 2500}\n"
    folded = folding.fold_text(text)
    assert url in folded.split("\n"), "the URL on a line of its own, whole"
    assert max(lines_of(folded)) <= LIMIT
    assert folded.replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")


# --------------------------------------------------------------------------- URLs that cannot fit


def test_a_link_too_long_for_a_line_of_mail_is_refused_where_it_is_written(workspace: Path) -> None:
    too_long = LONG_URL + "x"
    assert url_octets(too_long) == MAX_URL_OCTETS + 1
    path = workspace / "issues" / "2024-w02.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["items"][2]["links"][0]["url"] = too_long
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    with pytest.raises(ValidationFailed) as failed:
        load_issue(path)
    (problem,) = failed.value.problems
    assert re.match(r"issues/2024-w02\.yaml:\d+:\d+: items\[2\]\.links\[0\]\.url: the URL is too long", str(problem))
    assert f"{MAX_URL_OCTETS + 1} octets" in str(problem)


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("base_url", LONG_BASE + "b", f"base_url: must be at most {MAX_BASE_URL} characters"),
        ("base_url", LONG_BASE + "b" * MAX_URL_OCTETS, "base_url: the URL is too long for a line of mail"),
        (
            "archive",
            {"enabled": True, "path": "/" + "a" * MAX_ARCHIVE_PATH},
            f"archive.path: must be at most {MAX_ARCHIVE_PATH}",
        ),
    ],
)
def test_settings_that_make_links_too_long_for_a_line_of_mail_are_refused(
    workspace: Path, setting: str, value: object, words: str
) -> None:
    configure(workspace, **{setting: value})
    result = CliRunner().invoke(main, ["build", "2024-w02"])
    assert result.exit_code == 1
    assert re.search(rf"highlights\.yaml:\d+:\d+: {re.escape(words)}", result.output), result.output


def test_a_markdown_link_too_long_is_text_and_check_says_where(workspace: Path) -> None:
    too_long = "https://example.org/" + "q" * MAX_URL_OCTETS
    path = workspace / "issues" / "2024-w02.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["items"][0]["summary"] += f"\n\nSee [the long one]({too_long}).\n"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    ws = load_workspace()
    html = render_issue(load_issue(path), ws).html
    assert f'href="{too_long}"' not in html
    assert max(lines_of(html)) <= LIMIT
    result = CliRunner().invoke(main, ["check", "2024-w02"])
    assert result.exit_code == 1
    assert re.search(
        r"issues/2024-w02\.yaml:\d+:\d+: items\[0\]\.summary: link https://example\.org/q+… is too long", result.output
    )
    assert "the email shows it as plain text" in result.output


def test_a_part_within_the_limit_is_left_as_it_is(workspace: Path) -> None:
    # The example's text part has no line over FOLD_AT: folding gives it back unchanged.
    ws = load_workspace()
    text = render_issue(load_issue(ws.issue_path("2024-w02")), ws).text
    assert folding.fold_text(text) == text
