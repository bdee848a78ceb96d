"""`highlights new --from-feed`: feeds of every format, served from loopback, into an
issue that `check` passes; what is skipped, what is remembered, and every failure in
one line with nothing written."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from highlightsmail.authoring import feedfetch
from highlightsmail.authoring.issue import Issue, load_issue
from highlightsmail.cli import main
from support.feedserver import FeedServer, Route, feed_server
from support.workspace import configure

SAMPLES = Path(__file__).parent / "samples"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with feed_server() as running:
        yield running


def issue_files(workspace: Path) -> set[str]:
    return {p.name for p in (workspace / "issues").glob("*.yaml")}


def drafted(workspace: Path, before: set[str]) -> Issue:
    [name] = issue_files(workspace) - before
    return load_issue(workspace / "issues" / name)


def check_lines(workspace: Path, issue: Issue) -> list[str]:
    result = run("check", str(issue.source))
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if ": warning: " in line]


# --------------------------------------------------------------------------- every format


@pytest.mark.parametrize(
    ("name", "content_type", "titles", "first_link"),
    [
        (
            "atom.xml",
            "application/atom+xml",
            ["Sparse attention & long contexts", "A benchmark for agents that read tables", "Distillation, again"],
            "https://blog.example.org/2024/01/10/sparse-attention/",
        ),
        (
            "rss2.xml",
            "application/rss+xml; charset=UTF-8",
            ["Why retrieval still matters", "Tokenizers – a field guide"],
            "https://notes.example.org/2024/01/09/why-retrieval-still-matters/",
        ),
        (
            "arxiv.rdf",
            "application/rdf+xml",
            [
                "Scaling Laws for Sparse Mixtures of Experts. (arXiv:2401.04001v1 [cs.LG])",
                "Calibrated Uncertainty for Tabular Transformers. (arXiv:2401.04002v1 [cs.LG])",
                "On the Limits of In-Context Learning. (arXiv:2401.04003v2 [cs.LG] UPDATED)",
            ],
            "http://arxiv.org/abs/2401.04001",
        ),
        (
            "feed.json",
            "application/feed+json",
            ["4-bit quantization without the pain", "A note with no title."],
            "https://micro.example.org/2024/01/09/quantization",
        ),
    ],
)
def test_each_format_becomes_an_issue_that_check_passes(
    workspace: Path, server: FeedServer, name: str, content_type: str, titles: list[str], first_link: str
) -> None:
    url = server.serve(f"/{name}", sample(name), content_type)
    before = issue_files(workspace)
    result = run("new", "--from-feed", url)
    assert result.exit_code == 0, result.output
    issue = drafted(workspace, before)
    assert [item.title for item in issue.items] == titles
    assert issue.items[0].links[0].url == first_link
    assert result.output.strip().endswith(f"{len(titles)} item{'s' if len(titles) > 1 else ''} from {url}") or (
        "without a link" in result.output
    )
    check_lines(workspace, issue)  # no errors


def test_an_entry_keeps_its_authors_tags_and_resolved_links(workspace: Path, server: FeedServer) -> None:
    url = server.serve("/atom.xml", sample("atom.xml"), "application/atom+xml")
    before = issue_files(workspace)
    assert run("new", "--from-feed", url).exit_code == 0
    first, second, third = drafted(workspace, before).items
    assert first.summary.startswith("*Ada Lovelace, Grace Hopper*\n\nWe look at *sparse* attention")
    # Relative to the entry's link (and the feed's xml:base), never left relative.
    assert "[the figures](https://blog.example.org/figures/fig1.html)" in first.summary
    assert "![Attention pattern](https://blog.example.org/figures/fig1.png)" in first.summary
    assert first.tags == ["Attention", "long-context"]
    assert second.summary.endswith(
        "- Lookups in tables of 10k rows\n- Joins across two tables\n\n```\nscore = correct / asked\n```\n"
    )
    assert "Plain text with \\*stars\\* and \\[brackets\\]" in third.summary


def test_the_draft_passes_check_with_one_warning_for_the_intro_until_it_is_written(
    workspace: Path, server: FeedServer
) -> None:
    url = server.serve("/atom.xml", sample("atom.xml"), "application/atom+xml")
    before = issue_files(workspace)
    assert run("new", "--from-feed", url).exit_code == 0
    issue = drafted(workspace, before)
    [warning] = check_lines(workspace, issue)
    assert "intro: is still the placeholder of a draft from feeds: write the intro" in warning
    assert issue.source is not None
    text = issue.source.read_text(encoding="utf-8")
    issue.source.write_text(text.replace("Write a few words on this issue here (Markdown).", "Three posts."))
    assert check_lines(workspace, load_issue(issue.source)) == []


# --------------------------------------------------------------------------- what is skipped


def test_a_second_new_skips_what_the_first_took(workspace: Path, server: FeedServer) -> None:
    url = server.serve("/rss2.xml", sample("rss2.xml"), "application/rss+xml")
    before = issue_files(workspace)
    assert run("new", "--from-feed", url).exit_code == 0
    after = issue_files(workspace)
    assert len(after - before) == 1
    again = run("new", "--from-feed", url)
    assert again.exit_code == 0
    assert again.output == f"nothing new in {url} (2 already in issues)\n"
    assert issue_files(workspace) == after
    # A new entry in the feed: the third draft has it alone.
    newer = sample("rss2.xml").replace(
        b"<item>",
        b"<item><title>Fresh</title><link>https://notes.example.org/2024/01/12/fresh/</link>"
        b"<description>New.</description></item><item>",
        1,
    )
    server.serve("/rss2.xml", newer, "application/rss+xml")
    third = run("new", "--from-feed", url)
    assert third.exit_code == 0, third.output
    assert [item.title for item in drafted(workspace, after).items] == ["Fresh"]


def test_links_already_in_hand_written_issues_are_skipped(workspace: Path, server: FeedServer) -> None:
    issue = workspace / "issues" / "2024-w02.yaml"
    with issue.open("a", encoding="utf-8") as fh:
        fh.write("# not read: comments\n")
    text = issue.read_text(encoding="utf-8")
    # In Markdown, with http instead of https and no trailing slash: the same entry.
    issue.write_text(
        text.replace("intro: |\n", "intro: |\n  See [this](http://blog.example.org/2024/01/08/tables).\n", 1)
    )
    url = server.serve("/atom.xml", sample("atom.xml"), "application/atom+xml")
    result = run("new", "--from-feed", url)
    assert result.exit_code == 0, result.output
    assert "(1 already in issues)" in result.output


def test_since_a_date_and_since_the_last_issue(workspace: Path, server: FeedServer) -> None:
    url = server.serve("/atom.xml", sample("atom.xml"), "application/atom+xml")
    # The example's last issue is dated 2024-01-12: every entry of the feed is older.
    result = run("new", "--from-feed", url, "--since", "last")
    assert result.output == f"nothing new in {url} (3 older than --since)\n"
    before = issue_files(workspace)
    result = run("new", "--from-feed", url, "--since", "2024-01-09")
    assert result.exit_code == 0, result.output
    assert [i.title for i in drafted(workspace, before).items] == ["Sparse attention & long contexts"]
    later = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": "Later",
        "items": [
            {"id": "a", "url": "https://later.example.org/a", "title": "After", "content_text": "x",
             "date_published": "2024-01-13T00:00:00Z"},
            {"id": "b", "url": "https://later.example.org/b", "title": "Before", "content_text": "y",
             "date_published": "2024-01-11T23:59:00Z"},
        ],
    }  # fmt: skip
    json_url = server.serve("/later.json", json.dumps(later).encode(), "application/feed+json")
    # The last issue is now the draft just written, dated today: nothing is newer.
    assert "nothing new" in run("new", "--from-feed", json_url, "--since", "last").output
    (workspace / "issues" / next(iter(issue_files(workspace) - {"2024-w02.yaml"}))).unlink()
    before = issue_files(workspace)
    result = run("new", "--from-feed", json_url, "--since", "last")
    assert result.exit_code == 0, result.output
    assert [i.title for i in drafted(workspace, before).items] == ["After"]


def test_a_bad_since_is_one_line(workspace: Path) -> None:
    result = run("new", "--from-feed", str(SAMPLES / "atom.xml"), "--since", "yesterday")
    assert result.exit_code == 1
    assert result.output == "Error: --since yesterday: write a date as YYYY-MM-DD, or `last`\n"


def test_limit_shares_the_items_between_feeds_in_turns(workspace: Path, server: FeedServer) -> None:
    atom = server.serve("/atom.xml", sample("atom.xml"), "application/atom+xml")
    rss = server.serve("/rss2.xml", sample("rss2.xml"), "application/rss+xml")
    before = issue_files(workspace)
    result = run("new", "--from-feed", atom, "--from-feed", rss, "--limit", "3")
    assert result.exit_code == 0, result.output
    assert "3 items from" in result.output
    assert "(2 over --limit, left for the next draft)" in result.output
    titles = [i.title for i in drafted(workspace, before).items]
    assert titles == [
        "Sparse attention & long contexts",
        "A benchmark for agents that read tables",
        "Why retrieval still matters",
    ]


def test_limit_and_since_need_from_feed(workspace: Path) -> None:
    result = CliRunner().invoke(main, ["new", "--limit", "3"])
    assert result.exit_code == 2
    assert "--limit and --since go with --from-feed" in result.output


# --------------------------------------------------------------------------- hostile feeds


def test_hostile_content_never_reaches_the_issue(workspace: Path, server: FeedServer) -> None:
    url = server.serve("/hostile.xml", sample("hostile.xml"), "application/rss+xml")
    before = issue_files(workspace)
    result = run("new", "--from-feed", url)
    assert result.exit_code == 0, result.output
    assert "(2 without a link)" in result.output
    issue = drafted(workspace, before)
    assert issue.source is not None
    text = issue.source.read_text(encoding="utf-8")
    summaries = "".join(item.summary for item in issue.items)
    for gone in ("<script", "alert", "document.", "data:", "color: red", "tiny.gif", "google-analytics",
                 "hidden text", "steal", "iframe", "injected"):  # fmt: skip
        assert gone not in summaries, gone
    # Every link goes to the site (`JaVaScRiPt&#58;` was read as a path on it).
    assert {url.split("/")[2] for url in re.findall(r"\]\(([^)]+)\)", text)} == {"hostile.example.org"}
    first, untitled = issue.items
    # The feed escaped it: text in a title, which the email escapes as it shows it.
    assert first.title == "Scripts <script>alert(1)</script>and styles"
    assert "![A real chart](https://hostile.example.org/chart.png)" in first.summary
    assert "Ends \\*here\\* \\[1\\] \\<b\\>not bold\\</b\\>" in first.summary
    assert untitled.title == "An entry with no title at all, only this text."
    check_lines(workspace, issue)


def test_a_huge_entry_and_a_broken_encoding(workspace: Path, server: FeedServer) -> None:
    huge = b"<p>" + b"word " * 200_000 + b"</p>"
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Big</title>'
        b"<link>https://big.example.org/</link><description>x</description>"
        b"<item><title>Caf\xe9 \xff\xfe broken</title><link>https://big.example.org/1</link>"
        b"<description><![CDATA[" + huge + b"]]></description></item>"
        b"<item><title>Second \x01 control</title><link>https://big.example.org/2</link>"
        b"<description>Line\xc2\x85next \xef\xbf\xbe nonchar</description></item>"
        b"</channel></rss>"
    )
    url = server.serve("/big.xml", body, "application/rss+xml")
    before = issue_files(workspace)
    result = run("new", "--from-feed", url)
    assert result.exit_code == 0, result.output
    issue = drafted(workspace, before)
    first, second = issue.items
    assert first.title.startswith("Caf") and first.title.endswith("broken")
    assert len(first.summary) < 1600 and first.summary.rstrip().endswith("…")
    assert "\x85" not in second.summary and "\ufffe" not in second.summary
    check_lines(workspace, issue)


# --------------------------------------------------------------------------- conditional GET


def test_conditional_get_sends_the_validators_and_a_304_means_nothing_new(workspace: Path, server: FeedServer) -> None:
    modified = "Tue, 09 Jan 2024 18:04:11 GMT"
    url = server.serve(
        "/rss2.xml", sample("rss2.xml"), "application/rss+xml", ETag='"v1"', **{"Last-Modified": modified}
    )
    assert run("new", "--from-feed", url).exit_code == 0
    kept = json.loads((workspace / "private" / "feeds.json").read_text(encoding="utf-8"))
    assert kept == {"feeds": {url: {"etag": '"v1"', "last_modified": modified}}}
    files = issue_files(workspace)
    # The issue that took the entries is deleted: only the 304 can say nothing is new.
    result = run("new", "--from-feed", url)
    assert result.output == f"nothing new in {url}\n"
    assert issue_files(workspace) == files
    _, headers = server.requests[-1]
    assert headers["If-None-Match"] == '"v1"'
    assert headers["If-Modified-Since"] == modified


def test_validators_are_not_kept_while_entries_wait_beyond_the_limit(workspace: Path, server: FeedServer) -> None:
    url = server.serve("/rss2.xml", sample("rss2.xml"), "application/rss+xml", ETag='"v1"')
    assert run("new", "--from-feed", url, "--limit", "1").exit_code == 0
    assert not (workspace / "private" / "feeds.json").exists()
    result = run("new", "--from-feed", url)
    assert "If-None-Match" not in server.requests[-1][1]
    assert "1 item from" in result.output


# --------------------------------------------------------------------------- failures


def _redirect(server: FeedServer, path: str, to: str) -> None:
    server.routes[path] = Route(status=302, headers={"Location": server.url(to)})


@pytest.mark.parametrize(
    ("arrange", "words"),
    [
        (lambda s: None, "HTTP 404 Not Found"),
        (lambda s: s.routes.update({"/feed": Route(body=sample("atom.xml"), delay=5)}), "no answer within 0.5 seconds"),
        (lambda s: (_redirect(s, "/feed", "/other"), _redirect(s, "/other", "/feed")), "redirects in a loop"),
        (
            lambda s: s.serve("/feed", b"<!doctype html><html><body>Hi</body></html>", "text/html"),
            "not a feed (an HTML page)",
        ),
        (
            lambda s: s.serve("/feed", b'{"hello": 1}', "application/json"),
            "not a feed (JSON, but no JSON Feed version)",
        ),
        (lambda s: s.serve("/feed", sample("atom.xml") + b" " * 5000), "7.5 KB, more than the 4 KB read"),
        (
            lambda s: s.routes.update({"/feed": Route(body=sample("atom.xml") + b" " * 5000, chunked=True)}),
            "more than the 4 KB read",
        ),
    ],
    ids=["404", "timeout", "redirect-loop", "html", "json", "too-big", "too-big-unannounced"],
)
def test_a_failure_is_one_line_and_nothing_is_written(
    workspace: Path, server: FeedServer, monkeypatch: pytest.MonkeyPatch, arrange, words: str
) -> None:
    monkeypatch.setattr(feedfetch, "TIMEOUT_SECONDS", 0.5)
    monkeypatch.setattr(feedfetch, "MAX_FEED_BYTES", 4000)
    arrange(server)
    good = server.serve("/good.xml", sample("rss2.xml"), "application/rss+xml", ETag='"g"')
    before = issue_files(workspace)
    # The good feed first: a failure after it still leaves nothing written.
    result = run("new", "--from-feed", good, "--from-feed", server.url("/feed"))
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith(f"Error: {server.url('/feed')}: ")
    assert words in line
    assert issue_files(workspace) == before
    assert not (workspace / "private").exists()


def test_an_unknown_source_names_the_feeds_there_are(workspace: Path) -> None:
    configure(workspace, feeds=[{"name": "arxiv", "url": "https://rss.example.org/cs.LG"}])
    result = run("new", "--from-feed", "arxv")
    assert result.exit_code == 1
    assert result.output == (
        "Error: arxv: not a feed's name from `feeds:` in highlights.yaml (arxiv), a URL or a file\n"
    )


def test_a_url_that_is_not_http_is_refused(workspace: Path) -> None:
    result = run("new", "--from-feed", "ftp://example.org/feed")
    assert result.exit_code == 1
    assert "links must be absolute http(s) URLs, not 'ftp:'" in result.output


# --------------------------------------------------------------------------- files and names


def test_a_feed_from_a_file_and_by_its_name(workspace: Path, server: FeedServer) -> None:
    before = issue_files(workspace)
    result = run("new", "--from-feed", str(SAMPLES / "arxiv.rdf"))
    assert result.exit_code == 0, result.output
    assert len(drafted(workspace, before).items) == 3
    url = server.serve("/feed.json", sample("feed.json"), "application/feed+json")
    configure(workspace, feeds=[{"name": "micro", "url": url}])
    before = issue_files(workspace)
    result = run("new", "--from-feed", "micro")
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("2 items from micro (1 without a link)")
    issue = drafted(workspace, before)
    assert issue.items[1].links[0].url == "https://micro.example.org/2024/01/07/short"
    assert issue.items[1].summary.startswith("*Claude Shannon*\n\nA note with no title.")
    raw = yaml.safe_load(issue.source.read_text(encoding="utf-8")) if issue.source else {}
    assert raw["intro"] == "Write a few words on this issue here (Markdown).\n"


@pytest.mark.parametrize(
    ("feeds", "place", "words", "line_has"),
    [
        ([{"name": "ok", "url": "https://a.example.org/"}, {"name": "x y", "url": "https://b.example.org"}],
         "feeds[1].name", "must be letters, digits and . _ -", "name: x y"),
        ([{"name": "ok", "url": "javascript:alert(1)"}], "feeds[0].url", "links must be absolute http(s) URLs",
         "url: javascript:"),
        ([{"name": "ok", "url": "https://a.example.org/", "urll": 1}], "feeds[0].urll", "unknown key 'urll'",
         "urll: 1"),
        ([{"name": "ok", "url": "https://a.example.org/"}, {"name": "ok", "url": "https://b.example.org/"}],
         "feeds", "two feeds are named 'ok'", "name: ok"),
    ],
)  # fmt: skip
def test_a_bad_feeds_entry_is_named_with_its_line(
    workspace: Path, feeds: list[object], place: str, words: str, line_has: str
) -> None:
    configure(workspace, feeds=feeds)
    result = run("new", "--from-feed", "ok")
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("highlights.yaml:")
    assert f": {place}: {words}" in line, line
    lines = (workspace / "highlights.yaml").read_text(encoding="utf-8").splitlines()
    assert line_has in lines[int(line.split(":")[1]) - 1]


def test_a_plain_title_keeps_every_character_and_an_html_one_loses_its_markup() -> None:
    from highlightsmail.authoring.feeds import read_feed

    body = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        b"<item><title>Bounds for $n&lt;m$ and $a&gt;b$</title><link>https://e.example.org/1</link></item>"
        b"<item><title>x &lt;b&gt;bold&lt;/b&gt; &amp;amp; y</title><link>https://e.example.org/2</link></item>"
        b"</channel></rss>"
    )
    plain, html = read_feed(body, url=None, content_type="", where="t").entries
    assert plain.title == "Bounds for $n<m$ and $a>b$"
    assert html.title == "x bold & y"


def test_redirects_are_followed_to_http_only(workspace: Path, server: FeedServer) -> None:
    server.serve("/real.xml", sample("rss2.xml"), "application/rss+xml")
    _redirect(server, "/moved", "/real.xml")
    result = run("new", "--from-feed", server.url("/moved"))
    assert result.exit_code == 0, result.output
    assert "2 items from" in result.output
    server.routes["/ftp"] = Route(status=301, headers={"Location": "ftp://example.org/feed.xml"})
    before = issue_files(workspace)
    result = run("new", "--from-feed", server.url("/ftp"))
    assert result.exit_code == 1
    assert (
        result.output
        == f"Error: {server.url('/ftp')}: redirected to ftp://example.org/feed.xml, which is not http(s)\n"
    )
    assert issue_files(workspace) == before


def test_a_server_that_is_not_there_is_one_line(workspace: Path) -> None:
    from support.ports import free_port

    url = f"http://127.0.0.1:{free_port()}/feed.xml"
    result = run("new", "--from-feed", url)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {url}: cannot connect (")
    assert len(result.output.splitlines()) == 1


def test_unreadable_validators_are_a_cache_miss(workspace: Path, server: FeedServer) -> None:
    (workspace / "private").mkdir()
    (workspace / "private" / "feeds.json").write_text("{not json", encoding="utf-8")
    url = server.serve("/rss2.xml", sample("rss2.xml"), "application/rss+xml", ETag='"v2"')
    result = run("new", "--from-feed", url)
    assert result.exit_code == 0, result.output
    assert "If-None-Match" not in server.requests[-1][1]
    kept = json.loads((workspace / "private" / "feeds.json").read_text(encoding="utf-8"))
    assert kept == {"feeds": {url: {"etag": '"v2"'}}}


def test_a_json_feed_with_a_byte_order_mark_served_as_text() -> None:
    from highlightsmail.authoring.feeds import read_feed

    feed = read_feed(b"\xef\xbb\xbf" + sample("feed.json"), url=None, content_type="text/plain", where="f")
    assert feed.title == "Micro Notes" and len(feed.entries) == 3


def test_a_draft_of_the_most_items_with_long_abstracts_still_fits_and_passes_check(
    workspace: Path, server: FeedServer
) -> None:
    abstract = " ".join(f"Sentence {n} of a long abstract about sparse attention and its limits." for n in range(60))
    entries = "".join(
        f"<entry><id>urn:long:{n}</id><title>Long paper {n}</title><updated>2024-01-08T00:00:00Z</updated>"
        f'<link href="https://arxiv.example.org/abs/{n}"/><summary>{abstract}</summary></entry>'
        for n in range(40)
    )
    feed = f'<feed xmlns="http://www.w3.org/2005/Atom"><id>urn:long</id><title>Long</title><updated>2024-01-08T00:00:00Z</updated>{entries}</feed>'
    url = server.serve("/long.xml", feed.encode(), "application/atom+xml")
    assert run("new", "--from-feed", url, "--limit", "31").exit_code == 2  # over the most a draft may hold
    before = issue_files(workspace)
    assert run("new", "--from-feed", url, "--limit", "30").exit_code == 0
    issue = drafted(workspace, before)
    assert len(issue.items) == 30
    [warning] = check_lines(workspace, issue)  # the intro's placeholder, and no size error
    assert "intro" in warning
