"""Reading issue and settings files: every rule reports FILE:LINE:COL, all at once, and
no input, however hostile, produces a traceback, a hang or a huge allocation."""

from __future__ import annotations

import datetime as dt
import random
import re
import signal
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

from highlightsmail.authoring import yamlfile
from highlightsmail.authoring.issue import Issue, load_issue
from highlightsmail.authoring.workspace import Settings
from highlightsmail.authoring.yamlfile import MAX_BYTES, load_model, read_document
from highlightsmail.errors import HighlightsError, ValidationFailed, display_path

LINE = re.compile(r"^[^:\n]+:\d+:\d+: ")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # display_path() shows paths relative to the CWD: messages read "issue.yaml:3:7: ...".
    monkeypatch.chdir(tmp_path)


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (an alias bomb that got expanded would never return)."""

    def timeout(signum, frame):  # pragma: no cover - only when the guard is broken
        raise AssertionError(f"took more than {seconds}s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def write(tmp_path: Path, text: str, name: str = "issue.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path: Path, model=Issue) -> list[str]:
    """The problem lines a file produces, after checking they all have the FILE:LINE:COL form."""
    with deadline(10), pytest.raises(ValidationFailed) as info:
        load_model(path, model)
    lines = str(info.value).splitlines()
    assert lines, "ValidationFailed without problems"
    for line in lines:
        assert LINE.match(line), line
    assert lines == [str(p) for p in info.value.problems]
    return lines


def items(n: int) -> str:
    return "".join(f"  - title: Paper {i}\n    summary: Summary {i}.\n" for i in range(n))


GOOD = """\
    title: "AI Research Highlights | Week 2, 2024"
    date: 2024-01-12
    preheader: "Self-Extend, Activation Beacon, SPIN, Mixtral and more"
    intro: |
      This week: long contexts.
    items:
      - title: "LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning"
        summary: |
          LLMs can handle long contexts **without** fine-tuning.
        links:
          - label: Paper
            url: https://arxiv.org/abs/2401.01325
        image:
          url: https://example.org/figure.png
          alt: "A chart of perplexity against context length"
        tags: [long-context]
    outro: See you next week.
"""


# --------------------------------------------------------------------------- valid files


def test_a_valid_issue_loads(tmp_path):
    issue = load_model(write(tmp_path, GOOD), Issue)
    assert issue.title == "AI Research Highlights | Week 2, 2024"
    assert issue.date == dt.date(2024, 1, 12)
    assert issue.items[0].links[0].url == "https://arxiv.org/abs/2401.01325"
    assert issue.items[0].image.alt.startswith("A chart")


def test_load_issue_sets_slug_and_source(tmp_path):
    path = write(tmp_path, GOOD, "2024-w02.yaml")
    issue = load_issue(path)
    assert issue.slug == "2024-w02"
    assert issue.source == path


@pytest.mark.parametrize("name", ["line\nbreak", "tab\there", "=?utf-8?q?a?=", "_confirm", "a\u2028b"])
def test_a_file_name_that_cannot_name_an_issue_is_refused_with_the_file(tmp_path, name):
    """The slug goes into a mail header, URLs, an outbox folder and the commands an
    editor is told to type: a line break there was a traceback at send time, an
    encoded word a forged header."""
    path = write(tmp_path, GOOD.replace("date: 2024-01-12", "date: 2024-13-01"), f"{name}.yaml")
    with pytest.raises(ValidationFailed) as info:
        load_issue(path)
    named, *rest = info.value.problems
    assert (named.file, named.line, named.col) == (display_path(path), 1, 1)
    assert named.message.startswith(f"the file name {path.name!r} cannot name an issue")
    assert "\n" not in str(named)
    assert [p.message.split(":")[0] for p in rest] == ["date"], "the file's own problems come too"


@pytest.mark.parametrize("name", ["2024-w02", "special-edition_2.1", "my draft", "é"])
def test_plain_file_names_name_issues(tmp_path, name):
    assert load_issue(write(tmp_path, GOOD, f"{name}.yaml")).slug == name


def test_a_quoted_date_is_still_a_date(tmp_path):
    path = write(tmp_path, GOOD.replace("date: 2024-01-12", 'date: "2024-01-12"'))
    assert load_model(path, Issue).date == dt.date(2024, 1, 12)


def test_numbers_as_titles_are_text(tmp_path):
    path = write(tmp_path, GOOD.replace('title: "AI Research Highlights | Week 2, 2024"', "title: 2024"))
    assert load_model(path, Issue).title == "2024"


@pytest.mark.parametrize("typed", ["3.10", "0x1F", "1_000", "1e3", "007", "+1", ".5", "1.0"])
def test_a_number_in_a_text_field_keeps_the_text_as_written(tmp_path, typed):
    """`- title: 3.10` (a release) must not become "3.1", nor `0x1F` become "31"."""
    text = GOOD.replace('title: "AI Research Highlights | Week 2, 2024"', f"title: {typed}").replace(
        "tags: [long-context]", f"tags: [{typed}]"
    )
    issue = load_model(write(tmp_path, text), Issue)
    assert issue.title == typed
    assert issue.items[0].tags == [typed]


def test_a_number_setting_is_still_a_plain_number(tmp_path):
    text = SETTINGS.replace("batch_size: 1000", "batch_size: 0x10")
    sendgrid = load_model(write(tmp_path, text, "highlights.yaml"), Settings).delivery.sendgrid
    assert sendgrid.batch_size == 16 and type(sendgrid.batch_size) is int


def test_merge_keys_and_aliases_work(tmp_path, either_loader):
    path = write(
        tmp_path,
        """\
        title: T
        date: 2024-01-12
        items:
          - &first
            title: One
            summary: Same summary.
            links: &links
              - {label: Paper, url: "https://arxiv.org/abs/1"}
          - <<: *first
            title: Two
            links: *links
        """,
    )
    issue = load_model(path, Issue)
    assert [i.title for i in issue.items] == ["One", "Two"]
    assert issue.items[1].summary == "Same summary."
    assert issue.items[1].links[0].url == "https://arxiv.org/abs/1"


# --------------------------------------------------------------------------- issue rules


def test_missing_title_points_at_the_mapping(tmp_path):
    path = write(
        tmp_path,
        """\
        # week 2
        date: 2024-01-12
        items:
          - title: A
            summary: B
        """,
    )
    assert problems(path) == ["issue.yaml:2:1: title: missing required key 'title'"]


def test_bad_date(tmp_path):
    path = write(tmp_path, "title: T\ndate: 2024-13-45\nitems:\n" + items(1))
    assert problems(path) == [
        "issue.yaml:2:7: date: expected a date like 2024-01-12 (month value is outside expected range of 1-12)"
    ]


def test_date_that_is_not_a_date(tmp_path):
    path = write(tmp_path, "title: T\ndate: next friday\nitems:\n" + items(1))
    assert problems(path)[0].startswith("issue.yaml:2:7: date: expected a date like 2024-01-12")


def test_date_with_a_time(tmp_path):
    path = write(tmp_path, "title: T\ndate: 2024-01-12 10:30:00\nitems:\n" + items(1))
    assert problems(path) == ["issue.yaml:2:7: date: expected a date like 2024-01-12"]


def test_empty_items(tmp_path):
    path = write(tmp_path, "title: T\ndate: 2024-01-12\nitems: []\n")
    assert problems(path) == ["issue.yaml:3:8: items: needs 1 to 50 entries (has 0)"]


def test_fifty_one_items(tmp_path):
    path = write(tmp_path, "title: T\ndate: 2024-01-12\nitems:\n" + items(51))
    assert problems(path) == ["issue.yaml:4:3: items: needs 1 to 50 entries (has 51)"]
    assert len(load_model(write(tmp_path, "title: T\ndate: 2024-01-12\nitems:\n" + items(50)), Issue).items) == 50


def test_items_must_be_a_list(tmp_path):
    path = write(tmp_path, "title: T\ndate: 2024-01-12\nitems: nothing yet\n")
    assert problems(path) == [
        "issue.yaml:3:8: items: expected a list (like [a, b], or one entry per line starting with '- ')"
    ]


def test_unknown_key_with_a_suggestion(tmp_path):
    path = write(
        tmp_path,
        """\
        title: T
        date: 2024-01-12
        items:
          - title: A
            summry: B
        """,
    )
    assert problems(path) == [
        "issue.yaml:4:5: items[0].summary: missing required key 'summary'",
        "issue.yaml:5:5: items[0].summry: unknown key 'summry' (did you mean 'summary'?)",
    ]


def test_unknown_key_without_a_close_match_lists_the_keys(tmp_path):
    path = write(tmp_path, "title: T\ndate: 2024-01-12\nsponsor: ACME\nitems:\n" + items(1))
    assert problems(path) == [
        "issue.yaml:3:1: sponsor: unknown key 'sponsor' "
        "(allowed here: title, date, subject, preheader, intro, items, outro, audience)"
    ]


def test_fields_the_program_sets_are_not_file_keys(tmp_path):
    path = write(tmp_path, "title: T\ndate: 2024-01-12\nslug: other\nitems:\n" + items(1))
    [line] = problems(path)
    assert line.startswith("issue.yaml:3:1: slug: unknown key 'slug'")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ('"javascript:alert(1)"', "links must be absolute http(s) URLs, not 'javascript:'"),
        ('"data:text/html;base64,PHNjcmlwdD4="', "links must be absolute http(s) URLs, not 'data:'"),
        ("/2024/paper.html", "links must be absolute http(s) URLs, not a relative URL"),
        ("ftp://example.org/x", "links must be absolute http(s) URLs, not 'ftp:'"),
        ('"https://exa mple.org/"', "a URL must not contain spaces or control characters"),
        ("https://", "a URL needs a host, like https://example.org/"),
        ("https://example.org:99999/x", "a URL's port must be a number from 0 to 65535"),
        ('"https://good.example\\\\@evil.example/"', "a URL must not contain a backslash (write / or %5C)"),
    ],
)
def test_bad_links(tmp_path, url, message):
    path = write(
        tmp_path,
        f"""\
        title: T
        date: 2024-01-12
        items:
          - title: A
            summary: B
          - title: C
            summary: D
            links:
              - label: Paper
                url: {url}
        """,
    )
    assert problems(path) == [f"issue.yaml:10:14: items[1].links[0].url: {message}"]


def test_image_without_alt(tmp_path):
    path = write(
        tmp_path,
        "title: T\ndate: 2024-01-12\nitems:\n"
        + items(2)
        + "  - title: C\n"
        + "    summary: D\n"
        + "    image:\n"
        + "      url: https://example.org/figure.png\n",
    )
    assert problems(path) == [
        "issue.yaml:11:7: items[2].image.alt: missing required key 'alt' "
        "(describe the image for readers who can't see it)"
    ]


def test_image_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "title: T\ndate: 2024-01-12\nitems:\n" + items(1) + "    image: figure.png\n")
    assert problems(path) == ["issue.yaml:6:12: items[0].image: expected a mapping of keys (url:, alt:)"]


def test_preheader_over_150_characters(tmp_path):
    path = write(tmp_path, f"title: T\ndate: 2024-01-12\npreheader: {'x' * 160}\nitems:\n" + items(1))
    assert problems(path) == ["issue.yaml:3:12: preheader: is 160 characters, at most 150"]


def test_a_tag_too_long_is_refused_like_a_link_label(tmp_path):
    """Every single-line field had a length limit but tags: a 10,000-character tag went
    into the email's line of tags as it was."""
    path = write(tmp_path, GOOD.replace("tags: [long-context]", "tags: [long-context, " + "t" * 81 + "]"))
    assert problems(path) == ["issue.yaml:16:26: items[0].tags[1]: is 81 characters, at most 80"]


def test_title_too_long(tmp_path):
    path = write(tmp_path, f"title: {'t' * 201}\ndate: 2024-01-12\nitems:\n" + items(1))
    assert problems(path) == ["issue.yaml:1:8: title: is 201 characters, at most 200"]


def test_header_injection_in_the_subject(tmp_path):
    path = write(tmp_path, 'title: T\ndate: 2024-01-12\nsubject: "a\\r\\nBcc: x@y"\nitems:\n' + items(1))
    assert problems(path) == ["issue.yaml:3:10: subject: must be a single line (it holds a line break, U+000D)"]


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ('subject: "=?utf-8?q?Hi=0D=0ABcc:_victim@example.net?="', "3:10: subject"),
        ('subject: "Week 2 =?UTF-8?B?SGk=?= news"', "3:10: subject"),
        ('preheader: "=?iso-8859-1?q?caf=E9?="', "3:12: preheader"),
    ],
)
def test_an_encoded_word_in_the_subject_or_preheader_is_refused(tmp_path, line, where):
    """A header decoder turns `=?charset?Q?...?=` back into any characters, CR LF
    included: typed into a subject, it becomes a header of its own (Bcc) on the
    Python versions whose email package decodes before folding."""
    path = write(tmp_path, f"title: T\ndate: 2024-01-12\n{line}\nitems:\n" + items(1))
    assert problems(path) == [
        f"issue.yaml:{where}: must not contain an RFC 2047 encoded word (=?charset?Q?...?=): write the text itself"
    ]


def test_an_encoded_word_in_the_title_is_refused_as_the_title_is_the_default_subject(tmp_path):
    path = write(tmp_path, 'title: "=?utf-8?q?Hi=0D=0A=0D=0Abody?="\ndate: 2024-01-12\nitems:\n' + items(1))
    [line] = problems(path)
    assert line.startswith("issue.yaml:1:8: title: must not contain an RFC 2047 encoded word")


def test_an_encoded_word_in_body_text_is_just_text(tmp_path):
    """Item titles, labels and summaries never reach a header: there it is text."""
    word = "=?utf-8?q?Hi?="
    path = write(
        tmp_path,
        f"title: T\ndate: 2024-01-12\nitems:\n  - title: '{word}'\n    summary: '{word}'\n"
        f"    links: [{{label: '{word}', url: 'https://example.org/'}}]\n",
    )
    item = load_model(path, Issue).items[0]
    assert (item.title, item.summary, item.links[0].label) == (word, word, word)


@pytest.mark.parametrize(
    ("escape", "code"), [("\\u2028", "2028"), ("\\u2029", "2029"), ("\\x85", "0085"), ("\\N", "0085")]
)
def test_unicode_line_separators_are_line_breaks_in_every_single_line_field(tmp_path, escape, code):
    """The email package and str.splitlines() break lines at U+2028, U+2029 and U+0085."""
    path = write(
        tmp_path,
        f'title: "A{escape}B"\ndate: 2024-01-12\nsubject: "S{escape}"\npreheader: "P{escape}"\nitems:\n'
        f'  - title: "I{escape}"\n    summary: ok\n    tags: ["t{escape}"]\n'
        f'    links: [{{label: "L{escape}", url: "https://example.org/"}}]\n'
        f'    image: {{url: "https://example.org/i.png", alt: "A{escape}"}}\n',
    )
    said = f"must be a single line (it holds a line break, U+{code})"
    assert problems(path) == [
        f"issue.yaml:1:8: title: {said}",
        f"issue.yaml:3:10: subject: {said}",
        f"issue.yaml:4:12: preheader: {said}",
        f"issue.yaml:6:12: items[0].title: {said}",
        f"issue.yaml:8:12: items[0].tags[0]: {said}",
        f"issue.yaml:9:21: items[0].links[0].label: {said}",
        f"issue.yaml:10:52: items[0].image.alt: {said}",
    ]


def test_title_that_yaml_reads_as_true(tmp_path):
    path = write(tmp_path, "title: yes\ndate: 2024-01-12\nitems:\n" + items(1))
    assert problems(path) == ['issue.yaml:1:8: title: expected text; write "yes" in quotes to mean it as text']


def test_title_with_no_value(tmp_path):
    path = write(tmp_path, "title:\ndate: 2024-01-12\nitems:\n" + items(1))
    assert problems(path) == ["issue.yaml:1:7: title: expected text, but there is nothing after the colon"]


def test_duplicate_key(tmp_path):
    path = write(
        tmp_path,
        """\
        title: First
        date: 2024-01-12
        title: Second
        items:
          - title: A
            summary: B
        """,
    )
    assert problems(path) == ["issue.yaml:3:1: title: duplicate key 'title' (first at line 1)"]


def test_every_problem_is_reported_at_once_in_file_order(tmp_path, either_loader):
    path = write(
        tmp_path,
        """\
        date: 2024-02-30
        preheader: "a
          b"
        items:
          - title: A
            summary: B
            links:
              - {label: Paper, url: "javascript:void(0)"}
            image: {url: "https://example.org/a.png"}
          - title: C
            sumary: D
            title: E
        """,
    )
    assert problems(path) == [
        "issue.yaml:1:1: title: missing required key 'title'",
        "issue.yaml:1:7: date: expected a date like 2024-01-12 (day value is outside expected range)",
        "issue.yaml:8:29: items[0].links[0].url: links must be absolute http(s) URLs, not 'javascript:'",
        "issue.yaml:9:12: items[0].image.alt: missing required key 'alt' "
        "(describe the image for readers who can't see it)",
        "issue.yaml:10:5: items[1].summary: missing required key 'summary'",
        "issue.yaml:11:5: items[1].sumary: unknown key 'sumary' (did you mean 'summary'?)",
        "issue.yaml:12:5: items[1].title: duplicate key 'title' (first at line 10)",
    ]


# --------------------------------------------------------------------------- settings


SETTINGS = """\
    name: AI Research Highlights
    from: "AI Research Highlights <highlights@example.org>"
    reply_to: editors@example.org
    base_url: https://highlights.example.org
    postal_address: "1 Example Street, Exampletown"
    list_id: highlights.example.org
    editors: [ada@example.org, grace@example.org]
    delivery:
      backend: sendgrid
      sendgrid:
        categories: [highlights]
        batch_size: 1000
"""


def test_valid_settings_load(tmp_path):
    settings = load_model(write(tmp_path, SETTINGS, "highlights.yaml"), Settings)
    assert settings.from_ == "AI Research Highlights <highlights@example.org>"
    assert settings.delivery.backend == "sendgrid"
    assert settings.delivery.sendgrid.batch_size == 1000


def test_settings_problems(tmp_path):
    text = (
        SETTINGS.replace("from:", "from_:")
        .replace("backend: sendgrid", "backend: sendgird")
        .replace("batch_size: 1000", "batch_size: 5000\n        batchsize: 10")
        .replace("editors: [ada@example.org, grace@example.org]", "editors: []")
        .replace("base_url: https://highlights.example.org", "base_url: highlights.example.org")
    )
    assert problems(write(tmp_path, text, "highlights.yaml"), Settings) == [
        "highlights.yaml:1:1: from: missing required key 'from'",
        "highlights.yaml:2:1: from_: unknown key 'from_' (did you mean 'from'?)",
        "highlights.yaml:4:11: base_url: links must be absolute http(s) URLs, not a relative URL",
        "highlights.yaml:7:10: editors: needs at least 1 entry (has 0)",
        "highlights.yaml:9:12: delivery.backend: must be one of 'outbox', 'smtp' or 'sendgrid' (did you mean 'sendgrid'?)",
        "highlights.yaml:12:17: delivery.sendgrid.batch_size: must be at most 1000",
        "highlights.yaml:13:5: delivery.sendgrid.batchsize: unknown key 'batchsize' (did you mean 'batch_size'?)",
    ]


def test_settings_types(tmp_path):
    text = SETTINGS + "      smtp:\n        port: twenty-five\n        max_per_second: 0\n        timeout: soon\n"
    text = text.replace("reply_to: editors@example.org", "reply_to: not an address")
    assert problems(write(tmp_path, text, "highlights.yaml"), Settings) == [
        "highlights.yaml:3:11: reply_to: 'not an address' is not an email address",
        "highlights.yaml:14:11: delivery.smtp.port: expected a whole number",
        "highlights.yaml:15:21: delivery.smtp.max_per_second: must be more than 0",
        "highlights.yaml:16:14: delivery.smtp.timeout: expected a number",
    ]


def test_settings_top_level_message_names_its_keys(tmp_path):
    path = write(tmp_path, "- name\n", "highlights.yaml")
    assert problems(path, Settings) == [
        "highlights.yaml:1:1: the top level must be a mapping of keys (name:, from:, ...)"
    ]


# --------------------------------------------------------------------------- hostile but fine


def test_markup_characters_are_just_text(tmp_path):
    path = write(
        tmp_path,
        """\
        title: "<script>alert('x')</script> & friends"
        date: 2024-01-12
        items:
          - title: Tom & Jerry <b>bold</b>
            summary: "<img src=x onerror=alert(1)> &amp; more"
        """,
    )
    issue = load_model(path, Issue)
    assert issue.title == "<script>alert('x')</script> & friends"
    assert issue.items[0].title == "Tom & Jerry <b>bold</b>"
    assert issue.items[0].summary == "<img src=x onerror=alert(1)> &amp; more"


def test_a_long_summary(tmp_path):
    long = "word " * 2000
    path = write(tmp_path, f"title: T\ndate: 2024-01-12\nitems:\n  - title: A\n    summary: {long}\n")
    assert len(load_model(path, Issue).items[0].summary) >= 9995


def test_emoji_cjk_and_right_to_left_text(tmp_path):
    path = write(
        tmp_path,
        """\
        title: "🚀 大型语言模型 | نماذج اللغة الكبيرة"
        date: 2024-01-12
        items:
          - title: 長文脈 🧠
            summary: "‏מודלי שפה גדולים‎ — 日本語の要約 👩‍🔬"
            tags: [長文脈, עברית]
        """,
    )
    issue = load_model(path, Issue)
    assert issue.title == "🚀 大型语言模型 | نماذج اللغة الكبيرة"
    assert issue.items[0].tags == ["長文脈", "עברית"]


def test_columns_count_characters_not_bytes(tmp_path, either_loader):
    path = write(
        tmp_path,
        """\
        title: T
        date: 2024-01-12
        items:
          - title: 長文脈
            summary: S
            links: [{label: 日本語🚀, url: "javascript:x"}]
        """,
    )
    assert problems(path) == [
        "issue.yaml:6:32: items[0].links[0].url: links must be absolute http(s) URLs, not 'javascript:'"
    ]


def test_a_bom_is_ignored(tmp_path):
    path = tmp_path / "issue.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + textwrap.dedent(GOOD).encode("utf-8"))
    assert load_model(path, Issue).title == "AI Research Highlights | Week 2, 2024"


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "issue.yaml"
    path.write_bytes(textwrap.dedent(GOOD).replace("\n", "\r\n").encode("utf-8"))
    assert load_model(path, Issue).items[0].summary == "LLMs can handle long contexts **without** fine-tuning.\n"


# --------------------------------------------------------------------------- hostile and refused


BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.fixture(params=["libyaml", "pure"])
def either_loader(request, monkeypatch):
    """Run a test with libyaml's loader and with PyYAML's pure one (the fallback)."""
    if request.param == "pure":
        monkeypatch.setattr(yamlfile, "_loader_class", lambda: yamlfile._PySafeLoader)
    elif yamlfile._CSafeLoader is None:  # pragma: no cover
        pytest.skip("PyYAML without libyaml")


def test_libyaml_marks_are_checked_and_used():
    if yamlfile._CSafeLoader is None:  # pragma: no cover
        pytest.skip("PyYAML without libyaml")
    assert yamlfile._marks_work(yamlfile._CSafeLoader)
    assert yamlfile._marks_work(yamlfile._PySafeLoader)
    assert yamlfile._loader_class() is yamlfile._CSafeLoader


def test_alias_bomb_is_refused_quickly(tmp_path, either_loader):
    path = write(tmp_path, BOMB)
    with deadline(3):
        lines = problems(path)
    assert lines == [
        "issue.yaml:2:8: the aliases in this file expand to more than 100,000 values; "
        "refusing to load it (an alias bomb?)"
    ]


def test_alias_bomb_through_merge_keys_is_refused(tmp_path):
    levels = ["a0: &a0 {x: 1, y: 2, z: 3, w: 4, v: 5, u: 6, t: 7, s: 8, r: 9}"]
    for n in range(1, 9):
        keys = ", ".join(f"k{j}: *a{n - 1}" for j in range(9))
        levels.append(f"a{n}: &a{n} {{{keys}}}")
    levels.append("top: {<<: [*a8, *a8]}")
    with deadline(3):
        assert "alias bomb" in problems(write(tmp_path, "\n".join(levels) + "\n"))[0]


def test_recursive_alias_is_refused(tmp_path, either_loader):
    path = write(tmp_path, "title: T\nloop: &x [1, *x]\n")
    assert problems(path) == ["issue.yaml:2:14: an alias refers to the value that contains it, which never ends"]


def test_deep_nesting_is_refused(tmp_path):
    path = write(tmp_path, "title: " + "[" * 500 + "]" * 500 + "\n")
    [line] = problems(path)
    assert line.startswith("issue.yaml:1:")
    assert "nested" in line


def test_too_many_values_are_refused_before_building_them(tmp_path):
    path = write(tmp_path, "title: T\nitems:\n" + "- 1\n" * 150_000)
    with deadline(5):
        assert problems(path) == ["issue.yaml:99998:3: the file has more than 100,000 values; is it the right file?"]


def test_huge_file_is_refused(tmp_path):
    path = tmp_path / "issue.yaml"
    path.write_bytes(b"title: " + b"x" * MAX_BYTES + b"\n")
    assert problems(path) == ["issue.yaml:1:1: the file is over 2 MB; is it the right file?"]


def test_binary_file(tmp_path):
    data = bytearray(random.Random(7).randbytes(2048))
    data[10] = 0
    path = tmp_path / "issue.yaml"
    path.write_bytes(bytes(data))
    [line] = problems(path)
    assert re.match(
        r"issue\.yaml:\d+:\d+: (not UTF-8 text \(byte 0x[0-9a-f]{2} at offset \d+\)|control character)", line
    )


def test_nul_byte_in_utf8_text(tmp_path):
    path = tmp_path / "issue.yaml"
    path.write_bytes(b"date: 2024-01-12\ntitle: a\x00b\x01\n")
    assert problems(path) == [
        "issue.yaml:2:9: control character U+0000 is not allowed (is this a binary file?); 1 more in the file"
    ]


def test_escape_character(tmp_path):
    path = tmp_path / "issue.yaml"
    path.write_bytes(b"title: \x1b[31mred\n")
    assert problems(path) == ["issue.yaml:1:8: control character U+001B is not allowed"]


def test_control_characters_written_as_yaml_escapes_are_refused_where_they_are(tmp_path):
    """The file is printable text, but "\\x1b" or "\\uffff" in double quotes are not: MJML
    would refuse the whole email, blaming the template."""
    path = write(
        tmp_path,
        r"""
        title: T
        date: 2024-01-12
        intro: "a \x1b[31mred"
        items:
          - title: "x\uFFFE"
            summary: "tab\tand\nlines are fine, \x0c is not"
            links: [{label: "L\x85", url: "https://example.org/\uffff"}]
    """.lstrip("\n"),
    )
    assert problems(path) == [
        "issue.yaml:3:8: intro: must not contain control characters (U+001B)",
        "issue.yaml:5:12: items[0].title: character U+FFFE is not allowed (a Unicode noncharacter)",
        "issue.yaml:6:14: items[0].summary: must not contain control characters (U+000C)",
        "issue.yaml:7:21: items[0].links[0].label: must be a single line (it holds a line break, U+0085)",
        "issue.yaml:7:35: items[0].links[0].url: a URL must not contain spaces or control characters",
    ]


def test_next_line_in_text_of_several_lines_asks_for_an_ordinary_line_break(tmp_path):
    path = write(tmp_path, 'title: T\ndate: 2024-01-12\nintro: "a\\x85b"\nitems:\n' + items(1))
    assert problems(path) == [
        "issue.yaml:3:8: intro: must not contain U+0085 (NEXT LINE): break the line with an ordinary line break"
    ]


def test_latin1_file(tmp_path):
    path = tmp_path / "issue.yaml"
    path.write_bytes("date: 2024-01-12\ntitle: Café\n".encode("latin-1"))
    assert problems(path) == ["issue.yaml:2:11: not UTF-8 text (byte 0xe9 at offset 27); save the file as UTF-8"]


def test_utf16_file(tmp_path):
    path = tmp_path / "issue.yaml"
    path.write_bytes(textwrap.dedent(GOOD).encode("utf-16"))
    [line] = problems(path)
    assert line.startswith("issue.yaml:1:1: not UTF-8 text (byte 0xff at offset 0)")


@pytest.mark.parametrize("content", ["", "\n\n   \n", "# just a comment\n# and another\n", "---\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "issue.yaml"
    path.write_text(content, encoding="utf-8")
    assert problems(path) == ["issue.yaml:1:1: the file is empty"]


@pytest.mark.parametrize("content", ["- title: T\n- date: 2024-01-12\n", "just some words\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, content):
    path = write(tmp_path, content)
    assert problems(path) == ["issue.yaml:1:1: the top level must be a mapping of keys (title:, date:, ...)"]


@pytest.mark.parametrize(
    ("content", "where", "words"),
    [
        ("title: T\nitems: [1, 2\ndate: 2024-01-12\n", "3:5", "(while parsing a flow sequence at line 2)"),
        ("title: a: b\n", "1:9", "mapping values are not allowed"),
        ("title: T\n\tdate: 2024-01-12\n", "2:1", "; indent with spaces, not tabs"),
        ("title: @me\n", "1:8", "; put text that starts with @, ` or % in quotes"),
        ('title: "unclosed\n', "2:1", "found unexpected end of stream"),
        ("title: T\n---\ntitle: U\n", "2:1", "expected a single document in the stream, but found another document"),
        ("title: *nowhere\n", "1:8", "found undefined alias"),
    ],
)
def test_yaml_syntax_errors(tmp_path, content, where, words):
    # The wording is the parser's (libyaml's or PyYAML's); the place is the same.
    [line] = problems(write(tmp_path, content))
    assert line.startswith(f"issue.yaml:{where}: ")
    assert words in line


def test_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = write(
        tmp_path,
        f"""\
        title: !!python/object/apply:os.system ["touch {marker}"]
        date: !!python/name:os.system
        intro: !custom text
        items:
          - title: A
            summary: B
        """,
    )
    assert problems(path) == [
        "issue.yaml:1:8: title: unsupported YAML tag !!python/object/apply:os.system; write a plain list",
        "issue.yaml:2:7: date: unsupported YAML tag !!python/name:os.system; write plain text",
        "issue.yaml:3:8: intro: unsupported YAML tag !custom; write plain text",
    ]
    assert not marker.exists()


def test_non_text_keys(tmp_path):
    path = write(tmp_path, "? [a, b]\n: 1\ntitle: T\ndate: 2024-01-12\nitems:\n" + items(1))
    assert problems(path) == ["issue.yaml:1:3: a key must be plain text, not a list or mapping"]


def test_a_missing_file_is_an_error_not_a_traceback(tmp_path):
    with pytest.raises(HighlightsError, match=r"nope\.yaml: cannot read the file"):
        load_model(tmp_path / "nope.yaml", Issue)


def test_read_document_keeps_positions(tmp_path):
    doc = read_document(write(tmp_path, GOOD), Issue)
    assert doc.positions[("items", 0, "links", 0, "url")] == (12, 14)
    assert doc.key_positions[("items", 0, "image")] == (13, 5)
    # pydantic locations may hold entries that are not keys; they are skipped.
    assert doc.where(("items", 0, "function-after[_http_url()]", "image", "url")) == (14, 12)
    assert doc.problem(("items", 0, "tags"), "hello", "warning").__str__() == (
        "issue.yaml:16:11: warning: items[0].tags: hello"
    )
