"""`highlights check`: validation errors and lint findings, each at its place in the file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import textwrap
from importlib import resources
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from highlightsmail.authoring.issue import load_issue
from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.rendering.render import render_issue
from highlightsmail.review import lint
from highlightsmail.review.lint import GMAIL_CLIP_BYTES, SIZE_WARNING_BYTES, lint_issue

FILE = "issues/2024-w03.yaml"
# A clean issue; tests change one thing in it. Line numbers matter below.
CLEAN = """\
title: "Lint test | Week 3, 2024"
date: 2024-01-17
preheader: "One line for the inbox"
items:
  - title: "First"
    summary: |
      Plain text.
    links:
      - label: Paper
        url: https://example.org/a
  - title: "Second"
    summary: "Also plain."
"""
# The day these tests run on, as far as lint can tell: the week of CLEAN and of the
# example issue, so that only the tests about the date see a date far from today.
TODAY = dt.date(2024, 1, 17)
LOCATED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<warning>warning: )?(?P<message>.+)$")


@pytest.fixture(autouse=True)
def _today(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lint compares the issue's date with the clock; these tests run on TODAY."""
    monkeypatch.setattr(lint, "_today", lambda: TODAY)


def check(workspace: Path, text: str | None = None, name: str = FILE):
    if text is not None:
        (workspace / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return CliRunner().invoke(main, ["check", name], catch_exceptions=False)


def findings(result) -> list[str]:
    """The FILE:LINE:COL lines of stderr (the last line is the summary on errors)."""
    return [line for line in result.stderr.splitlines() if LOCATED.match(line)]


def one(result, severity: str = "warning") -> str:
    lines = findings(result)
    assert len(lines) == 1, result.stderr
    return lines[0]


def package_template(name: str) -> str:
    return (resources.files("highlightsmail") / "templates" / name).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- clean issues


def test_the_example_issue_is_clean(workspace: Path) -> None:
    result = check(workspace, name="issues/2024-w02.yaml")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert re.fullmatch(
        r"issues/2024-w02\.yaml: OK \(10 items, HTML \d+ KB of 102 KB; about \d+ more items of this size fit\)\n",
        result.stdout,
    )


def test_a_clean_issue_by_slug(workspace: Path) -> None:
    result = check(workspace, CLEAN)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.startswith(f"{FILE}: OK (2 items, HTML ")


# --------------------------------------------------------------------------- links


def test_http_link_button_is_a_warning_at_its_url(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace("url: https://example.org/a", "url: http://example.org/a"))
    assert result.exit_code == 0
    assert one(result).startswith(
        f"{FILE}:10:14: warning: items[0].links[0].url: link http://example.org/a is not https"
    )
    assert "OK with 1 warning" in result.stdout


def test_http_link_in_markdown_is_a_warning_at_the_url_in_the_text(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace("Plain text.", "See [the code](http://example.org/code)."))
    assert result.exit_code == 0
    assert one(result).startswith(f"{FILE}:7:22: warning: items[0].summary: link http://example.org/code is not https")


def test_http_image_is_a_warning(workspace: Path) -> None:
    text = CLEAN.replace(
        '  - title: "Second"',
        '    image:\n      url: http://example.org/f.png\n      alt: "A figure"\n  - title: "Second"',
    )
    result = check(workspace, text)
    assert result.exit_code == 0
    assert one(result).startswith(
        f"{FILE}:12:12: warning: items[0].image.url: image http://example.org/f.png is not https"
    )


@pytest.mark.parametrize(
    ("link", "shown"),
    [("/relative", "a relative URL"), ("javascript:alert(1)", "'javascript:'"), ("data:text/html,hi", "'data:'")],
)
def test_markdown_link_that_is_not_http_is_an_error(workspace: Path, link: str, shown: str) -> None:
    result = check(workspace, CLEAN.replace("Plain text.", f"[x]({link})"))
    assert result.exit_code == 1
    assert one(result) == (
        f"{FILE}:7:11: items[0].summary: link {link!r}: links must be absolute "
        f"http(s) URLs, not {shown}; the email shows it as plain text"
    )
    assert result.stderr.splitlines()[-1] == f"Error: {FILE}: 1 error"
    assert result.stdout == ""


def test_mailto_in_markdown_is_fine(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace("Plain text.", "Write to [us](mailto:editors@example.org)."))
    assert result.exit_code == 0
    assert result.stderr == ""


def test_the_same_link_in_two_items_is_a_warning_at_the_second(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace('"Also plain."', '"Also [again](https://example.org/a/)."'))
    assert result.exit_code == 0
    assert one(result) == (
        f"{FILE}:12:28: warning: items[1].summary: https://example.org/a/ is also linked "
        "from item 1 (items[0].links[0].url)"
    )


def test_the_same_link_twice_in_one_item_is_fine(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace("Plain text.", "The [paper](https://example.org/a)."))
    assert result.exit_code == 0
    assert result.stderr == ""


# --------------------------------------------------------------------------- images


def test_markdown_image_without_alt_is_an_error_at_the_image(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace("Plain text.", "![](https://example.org/fig.png)"))
    assert result.exit_code == 1
    assert one(result).startswith(f"{FILE}:7:11: items[0].summary: image https://example.org/fig.png has no alt text")


def test_markdown_image_with_alt_is_fine(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace("Plain text.", "![A chart of the results](https://example.org/fig.png)"))
    assert result.exit_code == 0
    assert result.stderr == ""


def test_image_without_alt_is_a_validation_error(workspace: Path) -> None:
    text = CLEAN.replace('  - title: "Second"', '    image:\n      url: https://example.org/f.png\n  - title: "Second"')
    result = check(workspace, text)
    assert result.exit_code == 1
    line = one(result)
    assert line.startswith(f"{FILE}:12:7: items[0].image.alt: missing required key 'alt'")


# --------------------------------------------------------------------------- subject and preheader


def test_long_subject_is_a_warning_at_the_subject(workspace: Path) -> None:
    subject = "S" * 79
    result = check(workspace, CLEAN.replace("preheader:", f'subject: "{subject}"\npreheader:'))
    assert result.exit_code == 0
    assert one(result).startswith(f"{FILE}:3:1: warning: subject: the subject is 79 characters")


def test_subject_of_78_characters_is_fine(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace("preheader:", f'subject: "{"S" * 78}"\npreheader:'))
    assert result.stderr == ""


def test_long_title_without_subject_is_a_warning_at_the_title(workspace: Path) -> None:
    title = "T" * 80
    result = check(workspace, CLEAN.replace('"Lint test | Week 3, 2024"', f'"{title}"'))
    assert result.exit_code == 0
    line = one(result)
    assert line.startswith(f"{FILE}:1:1: warning: title: the subject is 80 characters")
    assert "add a shorter `subject:`" in line


def test_missing_preheader_is_a_warning(workspace: Path) -> None:
    text = "# A comment first\n" + CLEAN.replace('preheader: "One line for the inbox"\n', "")
    result = check(workspace, text)
    assert result.exit_code == 0
    assert one(result).startswith(f"{FILE}:2:1: warning: no preheader")


# --------------------------------------------------------------------------- date and skeleton


def test_date_in_another_week_than_the_file_name(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace("date: 2024-01-17", "date: 2024-01-30"))
    assert result.exit_code == 0
    assert one(result) == f"{FILE}:2:7: warning: date: 2024-01-30 is in week 2024-w05, but the file is named 2024-w03"


def test_a_new_skeleton_checks_with_todo_warnings(workspace: Path) -> None:
    assert CliRunner().invoke(main, ["new", "--date", "2024-01-17"]).exit_code == 0
    result = check(workspace)
    assert result.exit_code == 0, result.output
    lines = findings(result)
    assert lines and all("warning: " in line and "TODO" in line for line in lines)
    fields = {LOCATED.match(line)["message"].split(":")[0] for line in lines}
    assert fields >= {"preheader", "intro", "items[0].title", "items[0].summary", "items[0].links[0].url"}
    text = (workspace / FILE).read_text().splitlines()
    for line in lines:
        m = LOCATED.match(line)
        if "links[0].url" in line:
            continue
        assert text[int(m["line"]) - 1][int(m["col"]) - 1 :].startswith("TODO"), line


# --------------------------------------------------------------------------- the footer


def test_text_template_without_unsubscribe_link_is_an_error(workspace: Path) -> None:
    (workspace / "templates").mkdir(exist_ok=True)
    own = package_template("issue.txt.j2").replace("{{ unsubscribe_url }}", "(write to us to leave)")
    (workspace / "templates" / "issue.txt.j2").write_text(own)
    result = check(workspace, CLEAN)
    assert result.exit_code == 1
    assert one(result) == (
        "templates/issue.txt.j2:1:1: the plain text has no unsubscribe link: "
        "the template must keep the unsubscribe URL in its footer"
    )
    assert result.stderr.splitlines()[-1] == f"Error: {FILE}: 1 error"


def test_html_template_without_unsubscribe_link_is_an_error(workspace: Path) -> None:
    (workspace / "templates").mkdir(exist_ok=True)
    own = package_template("issue.mjml.j2").replace('href="{{ unsubscribe_url }}"', 'href="https://example.org/"')
    (workspace / "templates" / "issue.mjml.j2").write_text(own)
    result = check(workspace, CLEAN.replace("url: https://example.org/a", "url: http://example.org/a"))
    assert result.exit_code == 1
    lines = findings(result)
    # Issue findings first, then the template's.
    assert lines[0].startswith(f"{FILE}:10:14: warning: ")
    assert lines[1] == (
        "templates/issue.mjml.j2:1:1: the HTML has no unsubscribe link: "
        "the template must keep the unsubscribe URL in its footer"
    )
    assert result.stderr.splitlines()[-1] == f"Error: {FILE}: 1 error, 1 warning"


def test_template_without_postal_address_is_a_warning(workspace: Path) -> None:
    (workspace / "templates").mkdir(exist_ok=True)
    own = package_template("issue.txt.j2").replace("{{ newsletter.postal_address | wrap }}", "")
    (workspace / "templates" / "issue.txt.j2").write_text(own)
    result = check(workspace, CLEAN)
    assert result.exit_code == 0
    assert one(result).startswith(
        "templates/issue.txt.j2:1:1: warning: the plain text does not show the postal address"
    )


# --------------------------------------------------------------------------- size


def test_html_over_gmail_clipping_is_an_error_at_items(workspace: Path) -> None:
    paragraph = "A long summary that goes on and on about results. " * 45
    items = "".join(f'  - title: "Item {n}"\n    summary: "{paragraph}"\n' for n in range(50))
    text = 'title: "Too long"\ndate: 2024-01-17\npreheader: "x"\n\nitems:\n' + items
    result = check(workspace, text)
    assert result.exit_code == 1
    line = one(result)
    assert line.startswith(f"{FILE}:5:1: items: the HTML is ")
    assert "Gmail clips emails over 102 KB" in line


def items_of_the_examples_first(workspace: Path, count: int) -> Path:
    """An issue of `count` copies of the example's first item (with its link and tags)."""
    example = yaml.safe_load((workspace / "issues" / "2024-w02.yaml").read_text(encoding="utf-8"))
    example["items"] = example["items"][:1] * count
    path = workspace / "issues" / f"2024-w{count:02d}.yaml"
    path.write_text(yaml.safe_dump(example, allow_unicode=True), encoding="utf-8")
    return path


def test_check_says_how_many_more_items_of_this_size_fit(workspace: Path) -> None:
    from highlightsmail.review.lint import check_command

    ws = load_workspace()

    def report(count: int):
        return check_command(ws, items_of_the_examples_first(workspace, count))

    summary = report(10).summary
    found = re.search(r"\(10 items, HTML (\d+) KB of 102 KB; about (\d+) more items of this size fit\)$", summary)
    assert found, summary
    more = int(found[2])
    assert more > 5
    # Said once, in the summary line, and true: that many more fit, one more does not.
    assert report(10 + more).html_bytes <= GMAIL_CLIP_BYTES < report(10 + more + 1).html_bytes


def test_check_says_how_many_items_too_many_when_gmail_would_clip(workspace: Path) -> None:
    from highlightsmail.review.lint import check_command

    ws = load_workspace()
    count = 45
    over = check_command(ws, items_of_the_examples_first(workspace, count))
    assert not over.ok
    found = re.search(r": 1 error, \d+ warnings \(HTML \d+ KB of 102 KB; about (\d+) items too many\)$", over.summary)
    assert found, over.summary
    fewer = count - int(found[1])
    assert check_command(ws, items_of_the_examples_first(workspace, fewer)).html_bytes <= GMAIL_CLIP_BYTES
    assert check_command(ws, items_of_the_examples_first(workspace, fewer + 1)).html_bytes > GMAIL_CLIP_BYTES


def test_an_issue_of_one_item_is_measured_too(workspace: Path) -> None:
    from highlightsmail.review.lint import check_command

    report = check_command(load_workspace(), items_of_the_examples_first(workspace, 1))
    assert re.search(r"\(1 item, HTML \d+ KB of 102 KB; about \d+ more items of this size fit\)$", report.summary)


@pytest.fixture
def example(workspace: Path):
    ws = load_workspace()
    issue = load_issue(workspace / "issues" / "2024-w02.yaml")
    return ws, issue, render_issue(issue, ws)


def _padded(rendered, total: int):
    """The example's rendering with an HTML comment making it `total` bytes, as sent
    with a full-length unsubscribe URL and preference page."""
    html, _ = rendered.personalize(
        "https://highlights.example.org/u/u" + "z" * 13 + "." + "A" * 22,
        "https://highlights.example.org/p/p" + "z" * 13 + "." + "z" * 7 + "." + "A" * 22,
    )
    pad = total - len(html.encode()) - len("<!---->")
    assert pad > 0
    return dataclasses.replace(rendered, html=rendered.html.replace("</body>", f"<!--{'x' * pad}--></body>"))


def size_findings(ws, issue, rendered) -> list[str]:
    return [str(p) for p in lint_issue(ws, issue, rendered) if "the HTML is" in p.message]


def test_size_thresholds(example, workspace: Path) -> None:
    ws, issue, rendered = example
    items_line = (workspace / "issues" / "2024-w02.yaml").read_text().splitlines().index("items:") + 1
    at = f"issues/2024-w02.yaml:{items_line}:1: "
    assert size_findings(ws, issue, rendered) == []
    assert size_findings(ws, issue, _padded(rendered, SIZE_WARNING_BYTES)) == []
    near = size_findings(ws, issue, _padded(rendered, SIZE_WARNING_BYTES + 1))
    assert len(near) == 1 and near[0].startswith(at + "warning: items: the HTML is 90.0 KB")
    assert size_findings(ws, issue, _padded(rendered, GMAIL_CLIP_BYTES))[0].count("warning") == 1
    over = size_findings(ws, issue, _padded(rendered, GMAIL_CLIP_BYTES + 1))
    assert len(over) == 1 and over[0].startswith(at + "items: the HTML is 102.0 KB")


def test_lint_issue_without_a_file_reports_at_the_start(example) -> None:
    ws, issue, rendered = example
    bare = issue.model_copy(update={"source": None, "preheader": None})
    problems = lint_issue(ws, bare, rendered)
    assert [(p.line, p.col, p.severity) for p in problems] == [(1, 1, "warning")]
    assert problems[0].message.startswith("no preheader")


# --------------------------------------------------------------------------- malformed files


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"title: [unclosed\nitems:\n", ":2:6: did not find expected"),
        (
            CLEAN.replace("summary: |", "summry: |").encode(),
            ":6:5: items[0].summry: unknown key 'summry' (did you mean 'summary'?)",
        ),
        (CLEAN.replace("https://example.org/a", "javascript:alert(1)").encode(), ":10:14: items[0].links[0].url: "),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\xff\xfe binary", ":1:"),
        (b"", ":1:1: the file is empty"),
        (b"- title: a list\n- title: not a mapping\n", ":1:1: the top level must be a mapping"),
    ],
    ids=["broken-yaml", "unknown-key", "javascript-link", "binary", "empty", "top-level-list"],
)
def test_malformed_files_are_located_errors_without_traceback(workspace: Path, content: bytes, expected: str) -> None:
    (workspace / FILE).write_bytes(content)
    result = CliRunner().invoke(main, ["check", FILE])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and all(LOCATED.match(line) for line in lines), result.stderr
    assert all(line.startswith(FILE + ":") for line in lines)
    assert any(expected in line for line in lines), result.stderr


def test_every_validation_error_at_once(workspace: Path) -> None:
    text = CLEAN.replace("date: 2024-01-17", "date: 2024-13-45").replace("summary: |", "summry: |")
    result = check(workspace, text)
    assert result.exit_code == 1
    assert len(findings(result)) >= 3, result.stderr


def test_markdown_link_without_a_host_is_an_error(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace("Plain text.", "[x](https:///nowhere)"))
    assert result.exit_code == 1
    assert (
        one(result)
        == f"{FILE}:7:11: items[0].summary: link 'https:///nowhere' has no host; write it like https://example.org/page"
    )


def test_lint_names_places_from_the_loaded_issue_without_reading_the_file_again(workspace: Path) -> None:
    """The issue keeps where each value was when it was read: a file changed (or broken)
    on disk since does not move or lose the places lint reports."""
    (workspace / FILE).write_text(
        CLEAN.replace("url: https://example.org/a", "url: http://example.org/a").replace(
            "Plain text.", "See [code](http://example.org/code)."
        ),
        encoding="utf-8",
    )
    ws = load_workspace(workspace)
    issue = load_issue(workspace / FILE)
    rendered = render_issue(issue, ws)
    (workspace / FILE).write_text("title: [broken\n", encoding="utf-8")
    found = [str(p) for p in lint_issue(ws, issue, rendered) if "is not https" in p.message]
    assert [line.split(" is not https")[0] for line in found] == [
        f"{FILE}:7:18: warning: items[0].summary: link http://example.org/code",
        f"{FILE}:10:14: warning: items[0].links[0].url: link http://example.org/a",
    ]


def test_check_returns_its_findings_and_prints_nothing(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command line does the printing; the check itself only reports."""
    from highlightsmail.review.lint import check_command

    ws = load_workspace(workspace)
    (workspace / FILE).write_text(CLEAN.replace("url: https://example.org/a", "url: http://example.org/a"))
    report = check_command(ws, workspace / FILE)
    (workspace / FILE).write_text(CLEAN.replace("Plain text.", "[x](/relative)"))
    failed = check_command(ws, workspace / FILE)
    assert capsys.readouterr() == ("", "")
    assert [str(p).split(": link ")[0] for p in report.problems] == [f"{FILE}:10:14: warning: items[0].links[0].url"]
    assert report.ok
    assert re.fullmatch(
        rf"{FILE}: OK with 1 warning \(2 items, HTML \d+ KB of 102 KB; about \d+ more items .*\)", report.summary
    )
    assert not failed.ok
    assert failed.summary == f"{FILE}: 1 error"


# --------------------------------------------------------------------------- deception


def warnings_of(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return findings(result)


def test_a_bidi_override_written_as_an_escape_is_named_where_it_is(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace('"First"', '"Invoice \\u202Efdp.exe"'))
    assert warnings_of(result) == [
        f"{FILE}:5:21: warning: items[0].title: holds U+202E RIGHT-TO-LEFT OVERRIDE, a bidirectional "
        "control: it reorders the text after it, so it reads differently from what it is; remove it"
    ]


def test_a_zero_width_space_typed_in_a_summary_is_named_where_it_is(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace("Plain text.", "Plain text. Pay\u200bPal.\u200b"))
    assert warnings_of(result) == [
        f"{FILE}:7:22: warning: items[0].summary: holds U+200B ZERO WIDTH SPACE (2 times), an invisible "
        "character: it can split a word or hide text from the reader; remove it"
    ]


def test_hidden_characters_in_every_kind_of_text(workspace: Path) -> None:
    text = (
        'title: "Lint test\\u2066"\ndate: 2024-01-17\npreheader: "One line\\u2067"\n'
        'intro: "Hello\\u2068"\nitems:\n  - title: "First"\n    summary: "Plain\\u2069"\n'
        '    links: [{label: "Paper\\u202A", url: "https://example.org/a"}]\n'
        '    image: {url: "https://example.org/i.png", alt: "A chart\\u202B"}\n'
        '    tags: ["nlp\\u202C", "x\\u2060y"]\noutro: "Bye\\u202D"\n'
    )
    result = check(workspace, text)
    places = [line.split(": holds ")[0] + " " + line.split(": holds ")[1].split(",")[0] for line in warnings_of(result)]
    assert places == [
        f"{FILE}:1:18: warning: title U+2066 LEFT-TO-RIGHT ISOLATE",
        f"{FILE}:3:21: warning: preheader U+2067 RIGHT-TO-LEFT ISOLATE",
        f"{FILE}:4:14: warning: intro U+2068 FIRST STRONG ISOLATE",
        f"{FILE}:7:20: warning: items[0].summary U+2069 POP DIRECTIONAL ISOLATE",
        f"{FILE}:8:27: warning: items[0].links[0].label U+202A LEFT-TO-RIGHT EMBEDDING",
        f"{FILE}:9:60: warning: items[0].image.alt U+202B RIGHT-TO-LEFT EMBEDDING",
        f"{FILE}:10:16: warning: items[0].tags[0] U+202C POP DIRECTIONAL FORMATTING",
        f"{FILE}:10:27: warning: items[0].tags[1] U+2060 WORD JOINER",
        f"{FILE}:11:12: warning: outro U+202D LEFT-TO-RIGHT OVERRIDE",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Pair programming 👩\u200d💻 with a model",  # an emoji sequence
        "می\u200cخواهم, in Persian",  # a non-joiner between Arabic-script letters
        "כתוב \u200fמימין\u200e to the left",  # direction marks in right-to-left text
    ],
)
def test_joiners_and_marks_where_they_belong_are_fine(workspace: Path, text: str) -> None:
    result = check(workspace, CLEAN.replace("Plain text.", text))
    assert warnings_of(result) == []


def test_a_joiner_inside_a_latin_word_is_named(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace("Plain text.", "Pay\u200dPal"))
    [line] = warnings_of(result)
    assert line.startswith(f"{FILE}:7:10: warning: items[0].summary: holds U+200D ZERO WIDTH JOINER")


@pytest.mark.parametrize(
    ("label", "host"),
    [
        ("https://paypal.com/login", "paypal.com"),
        ("paypal.com", "paypal.com"),
        ("www.paypal.com/signin", "www.paypal.com"),
        ("<http://bank.example.net>", "bank.example.net"),
        ("example.org.evil.example", "example.org.evil.example"),
    ],
)
def test_a_link_label_that_names_another_host_is_a_warning_at_the_label(workspace: Path, label: str, host: str) -> None:
    result = check(workspace, CLEAN.replace("label: Paper", f"label: '{label}'"))
    assert warnings_of(result) == [
        f"{FILE}:9:16: warning: items[0].links[0].label: the label {label!r} reads as an address "
        f"on {host}, but the link goes to example.org"
    ]


def test_a_markdown_link_text_that_names_another_host_is_a_warning_at_the_link(workspace: Path) -> None:
    result = check(workspace, CLEAN.replace("Plain text.", "Log in at [paypal.com](https://evil.example/login)."))
    assert warnings_of(result) == [
        f"{FILE}:7:30: warning: items[0].summary: the label 'paypal.com' reads as an address on paypal.com, "
        "but the link goes to evil.example"
    ]


@pytest.mark.parametrize(
    ("label", "url"),
    [
        ("example.org", "https://www.example.org/a"),
        ("blog.example.org", "https://example.org/a"),
        ("https://EXAMPLE.org/a", "https://example.org/a"),
        ("bücher.example", "https://xn--bcher-kva.example/"),
        ("train.py", "https://github.com/x/y/blob/main/train.py"),
        ("README.md", "https://github.com/x/y"),
        ("Node.js", "https://nodejs.org/"),
        ("GPT-4.5", "https://openai.com/"),
        ("Paper", "https://arxiv.org/abs/2401.01325"),
    ],
)
def test_link_labels_that_do_not_mislead(workspace: Path, label: str, url: str) -> None:
    result = check(workspace, CLEAN.replace("label: Paper", f"label: '{label}'").replace("https://example.org/a", url))
    assert warnings_of(result) == []


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (
            "https://p\u0430ypal.com/",
            "the host pаypal.com (xn--pypal-4ve.com) mixes Cyrillic and Latin letters in 'pаypal'",
        ),
        ("https://xn--pypal-4ve.com/", "the host pаypal.com (xn--pypal-4ve.com) mixes Cyrillic and Latin letters"),
        ("https://www.\u03bfpenai.com/", "mixes Greek and Latin letters in 'οpenai'"),
        (
            "https://\u0430\u0440\u0440\u04cf\u0435.com/",
            "spells 'аррӏе' in Cyrillic letters that look like the Latin 'apple'",
        ),
    ],
)
def test_a_host_that_mixes_scripts_is_a_warning_at_the_url(workspace: Path, url: str, words: str) -> None:
    result = check(workspace, CLEAN.replace("https://example.org/a", url))
    [line] = warnings_of(result)
    assert line.startswith(f"{FILE}:10:14: warning: items[0].links[0].url: the host ")
    assert words in line
    assert line.endswith("it may imitate another site's name")


@pytest.mark.parametrize(
    "url", ["https://bücher.example/", "https://яндекс.рф/", "https://例え.テスト/", "https://ドメイン名例.jp/"]
)
def test_international_hosts_in_one_script_are_fine(workspace: Path, url: str) -> None:
    result = check(workspace, CLEAN.replace("https://example.org/a", url))
    assert warnings_of(result) == []


def test_a_user_name_before_the_host_is_a_warning_wherever_the_link_is(workspace: Path) -> None:
    text = CLEAN.replace("https://example.org/a", "https://paypal.com@evil.example/").replace(
        "Plain text.", "Or [here](https://paypal.com:login@evil.example/x)."
    )
    result = check(workspace, text)
    assert warnings_of(result) == [
        f"{FILE}:7:17: warning: items[0].summary: https://paypal.com:login@evil.example/x goes to evil.example: "
        "the part before '@' (paypal.com:login) is a user name, not where the link leads; readers may take it "
        "for the site",
        f"{FILE}:10:14: warning: items[0].links[0].url: https://paypal.com@evil.example/ goes to evil.example: "
        "the part before '@' (paypal.com) is a user name, not where the link leads; readers may take it for the site",
    ]


# --------------------------------------------------------------------------- the date against today


@pytest.mark.parametrize(("offset", "warned"), [(-15, True), (-14, False), (0, False), (14, False), (15, True)])
def test_an_issue_dated_more_than_two_weeks_from_today(workspace: Path, offset: int, warned: bool) -> None:
    (workspace / FILE).write_text(CLEAN, encoding="utf-8")
    ws = load_workspace(workspace)
    issue = load_issue(workspace / FILE)
    today = issue.date - dt.timedelta(days=offset)
    found = [str(p) for p in lint_issue(ws, issue, render_issue(issue, ws), today=today) if "today is" in p.message]
    when = f"{-offset} days ago" if offset < 0 else f"{offset} days from now"
    expected = (
        f"{FILE}:2:7: warning: date: the issue is dated 2024-01-17, {when} (today is {today}): is the date right?"
    )
    assert found == ([expected] if warned else [])


def test_check_compares_the_date_with_the_clock(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lint, "_today", lambda: dt.date(2025, 1, 17))
    result = check(workspace, CLEAN)
    assert warnings_of(result) == [
        f"{FILE}:2:7: warning: date: the issue is dated 2024-01-17, 366 days ago (today is 2025-01-17): "
        "is the date right?"
    ]
    assert "OK with 1 warning" in result.stdout


def test_the_preview_lists_the_deception_warnings_at_their_places(workspace: Path) -> None:
    import html

    from starlette.testclient import TestClient

    from highlightsmail.review.preview import create_preview_app

    text = CLEAN.replace("https://example.org/a", "https://paypal.com@evil.example/").replace('"First"', '"A\\u202eB"')
    (workspace / FILE).write_text(text, encoding="utf-8")
    with TestClient(create_preview_app(load_workspace(workspace), workspace / FILE)) as client:
        page = html.unescape(client.get("/").text)
    assert f"{FILE}:5:14: warning: items[0].title: holds U+202E RIGHT-TO-LEFT OVERRIDE" in page
    assert (
        f"{FILE}:10:14: warning: items[0].links[0].url: https://paypal.com@evil.example/ goes to evil.example" in page
    )


def test_a_webhook_key_in_the_settings_that_serve_cannot_load_is_an_error_at_its_line(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check` said OK, and `serve` then refused to start over it."""
    settings = workspace / "highlights.yaml"
    lines = settings.read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, start=1) if text.startswith("    webhook_public_key:"))
    lines[line - 1] = "    webhook_public_key: 'not a key!!'"
    settings.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = check(workspace, CLEAN)
    assert result.exit_code == 1
    [found] = [f for f in findings(result) if f.startswith("highlights.yaml")]
    assert found.startswith(
        f"highlights.yaml:{line}:25: delivery.sendgrid.webhook_public_key: not a verification key (paste the base64"
    )
    # The environment's key wins in `serve`: then the setting is not used, and not an error.
    from support.sendgrid_events import EventSender

    monkeypatch.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", EventSender().public_key)
    assert not [f for f in findings(check(workspace, CLEAN)) if f.startswith("highlights.yaml")]
