"""`highlights publish`: the archive as a static site (index, one page per issue, 404
page) and an Atom feed; and the "View in browser" link the emails get when it is on.

The site is read as a reader's tools would: html5lib in strict mode, every internal link
followed to its file, feedparser for the feed."""

from __future__ import annotations

import email
import email.policy
import errno
import html as html_lib
import json
import os
import re
import shutil
import textwrap
from pathlib import Path
from urllib.parse import urljoin

import feedparser
import pytest
from click.testing import CliRunner
from lxml import html as lxml_html

from highlightsmail.authoring.issue import load_issue
from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.errors import HighlightsError
from highlightsmail.rendering.render import render_issue
from highlightsmail.rendering.rendered import UNSUBSCRIBE_PLACEHOLDER
from support.archive import (
    ARCHIVE,
    BASE_URL,
    EMAIL_ADDRESS,
    broken_links,
    enable_archive,
    heading_levels,
    headings_in_order,
    mark_sent,
    site_pages,
    small_issue,
    strict_parse,
    write_issue,
)
from support.signup import enable_signup
from support.workspace import EXAMPLE_ISSUE, configure

NAME = "AI Research Highlights"
EXAMPLE_TITLES = [item.title for item in load_issue(EXAMPLE_ISSUE).items]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def published(workspace: Path, *args: str) -> Path:
    result = run("publish", *args)
    assert result.exit_code == 0, result.output
    return workspace / "out" / "site"


@pytest.fixture
def sent(workspace: Path) -> Path:
    """The example workspace with the example issue sent and a second, newer one sent too."""
    write_issue(workspace, "2024-w03", small_issue("AI Research Highlights | Week 3, 2024", "2024-01-19"))
    mark_sent(workspace, "2024-w02")
    mark_sent(workspace, "2024-w03")
    return workspace


def page(out: Path, rel: str) -> str:
    return (out / rel).read_text(encoding="utf-8")


def visible_text(text: str) -> str:
    doc = lxml_html.fromstring(text)
    for el in doc.xpath("//style|//title|//head"):
        el.drop_tree()
    return " ".join(doc.text_content().split())


# --------------------------------------------------------------------------- what is listed


def test_publish_lists_sent_issues_and_all_adds_every_file(workspace: Path) -> None:
    write_issue(workspace, "2024-w03", small_issue("Draft", "2024-01-19"))
    mark_sent(workspace, "2024-w02")

    result = run("publish")
    assert result.exit_code == 0, result.output
    out = workspace / "out" / "site"
    assert result.stdout == f"out/site: index.html, feed.xml and 1 issue page, for {ARCHIVE}\n"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        MANIFEST,
        "2024-w02/index.html",
        "404.html",
        "feed.xml",
        "index.html",
    ]
    assert "Draft" not in page(out, "index.html") and "Draft" not in page(out, "feed.xml")

    result = run("publish", "--all", "--out", "elsewhere")
    assert result.exit_code == 0, result.output
    assert (workspace / "elsewhere" / "2024-w03" / "index.html").is_file()
    assert "Draft" in page(workspace / "elsewhere", "index.html")


def test_nothing_sent_says_how_to_publish_drafts(workspace: Path) -> None:
    result = run("publish")
    assert result.exit_code == 0
    assert "No issue has been sent yet" in result.stderr and "--all" in result.stderr
    assert "archive.enabled is false" in result.stderr
    assert not (workspace / "subscribers" / "highlights.db").exists()  # publishing creates no database
    assert "No issues yet" in page(workspace / "out" / "site", "index.html")


def test_index_lists_newest_first_with_date_title_and_preheader(sent: Path) -> None:
    out = published(sent)
    doc = lxml_html.fromstring(page(out, "index.html"))
    entries = doc.xpath('//ol[@class="issues"]/li')
    assert [e.xpath("string(.//h2)").strip() for e in entries] == ["Week 3, 2024", "Week 2, 2024"]
    assert [e.xpath("string(.//time/@datetime)") for e in entries] == ["2024-01-19", "2024-01-12"]
    assert entries[0].xpath("string(.//h2/a/@href)") == "2024-w03/"
    assert "A short preheader" in entries[0].text_content()
    assert doc.xpath("string(//h1)") == "AI Research Highlights"


# --------------------------------------------------------------------------- the pages


def test_every_page_is_valid_html_and_every_internal_link_resolves(sent: Path) -> None:
    out = published(sent)
    pages = site_pages(out)
    assert set(pages) == {ARCHIVE, f"{ARCHIVE}404.html", f"{ARCHIVE}2024-w02/", f"{ARCHIVE}2024-w03/"}
    for url, path in pages.items():
        strict_parse(path.read_text(encoding="utf-8"), url)
    assert broken_links(out) == []
    # The 404 page's links are absolute (it is shown at any depth) and lead to the index.
    hrefs = lxml_html.fromstring(page(out, "404.html")).xpath("//a/@href")
    assert set(hrefs) == {"#content", ARCHIVE, f"{ARCHIVE}feed.xml"}


@pytest.mark.parametrize("signup", [False, True])
def test_no_page_has_two_links_to_the_same_place(sent: Path, signup: bool) -> None:
    """Beside the bar at the top (the newsletter's name, the feed), each page of the
    archive links to each of its pages once: the 404 page had two links to the index
    that said the same thing in two ways."""
    if signup:
        enable_signup(sent)
    out = published(sent)
    for url, path in site_pages(out).items():
        doc = lxml_html.fromstring(path.read_text(encoding="utf-8"))
        targets = [
            urljoin(url, href)
            for href in doc.xpath("//a[not(ancestor::header[@class='bar'])][not(@class='skip')]/@href")
            if urljoin(url, href).startswith(ARCHIVE)
        ]
        assert len(targets) == len(set(targets)), (url, sorted(targets))
    links = lxml_html.fromstring(page(out, "404.html")).xpath("//main//a | //footer//a")
    assert [(a.text_content(), a.get("href")) for a in links] == [(f"See every issue of {NAME}", ARCHIVE)]


def test_a_broken_link_would_be_found(sent: Path) -> None:
    """The link check above can fail: a page linking to an issue that is not there."""
    out = published(sent)
    index = out / "index.html"
    index.write_text(page(out, "index.html").replace('href="2024-w03/"', 'href="2024-w09/"'), encoding="utf-8")
    (out / "2024-w02" / "index.html").write_text(
        page(out, "2024-w02/index.html").replace('href="#item-3"', 'href="#item-99"'), encoding="utf-8"
    )
    assert sorted(broken_links(out)) == sorted(
        [f"{ARCHIVE}: 2024-w09/", f"{ARCHIVE}2024-w02/: #item-99 (no id item-99)"]
    )
    with pytest.raises(AssertionError, match="not valid HTML"):
        strict_parse("<!DOCTYPE html><title>x</title><p>a</div>", "sample")


def test_nothing_personal_on_any_page_or_in_the_feed(sent: Path) -> None:
    out = published(sent)
    ws = load_workspace()
    addresses = [ws.settings.from_, ws.settings.reply_to or "", *ws.settings.editors]
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        assert "/u/" not in text, path
        assert UNSUBSCRIBE_PLACEHOLDER not in text, path
        assert EMAIL_ADDRESS.search(text) is None, (path, EMAIL_ADDRESS.search(text))
        assert not any(a and a in text for a in addresses), path
        assert "[TEST]" not in text and "nsubscribe" not in text, path
        assert "<script" not in text.lower(), path
        assert os.environ["HIGHLIGHTS_SECRET"] not in text


def test_issue_page_is_a_web_page_not_the_email(sent: Path) -> None:
    out = published(sent)
    text = page(out, "2024-w02/index.html")
    doc = lxml_html.fromstring(text)
    assert doc.get("lang") == "en"
    assert doc.xpath("string(//title)") == "AI Research Highlights | Week 2, 2024"
    meta = {m.get("name") or m.get("property"): m.get("content") for m in doc.xpath("//meta[@content]")}
    assert meta["viewport"] == "width=device-width, initial-scale=1"
    assert meta["color-scheme"] == "light dark"
    assert meta["description"].startswith("Self-Extend, Activation Beacon")
    assert meta["og:title"] == "AI Research Highlights | Week 2, 2024"
    assert meta["og:url"] == f"{ARCHIVE}2024-w02/" == doc.xpath("string(//link[@rel='canonical']/@href)")
    assert meta["og:type"] == "article" and meta["og:site_name"] == "AI Research Highlights"
    assert meta["og:description"] == meta["description"]
    assert meta["article:published_time"] == "2024-01-12T08:30:00Z"
    assert doc.xpath("string(//link[@rel='alternate'][@type='application/atom+xml']/@href)") == "../feed.xml"
    # No table layout and no inlined email styles: a page of its own.
    assert doc.xpath("//table") == [] and "mj-" not in text and 'style="' not in text
    assert "@media (prefers-color-scheme: dark)" in text

    article = doc.xpath("//main//article")
    assert len(article) == 1
    nav = article[0].xpath(".//nav[.//h2='In this issue']")
    assert len(nav) == 1
    assert nav[0].xpath(".//a/@href") == [f"#item-{n}" for n in range(1, 11)]
    assert [a.text_content() for a in nav[0].xpath(".//a")] == EXAMPLE_TITLES
    for n, title in enumerate(EXAMPLE_TITLES, start=1):
        (heading,) = doc.xpath(f'//*[@id="item-{n}"]')
        assert heading.tag == "h2" and heading.text_content() == f"{n}. {title}"
    assert headings_in_order(heading_levels(text))
    # Links to the neighbouring issue: the newer one here.
    assert doc.xpath("//nav[@aria-label='More issues']//a/@href") == ["../2024-w03/"]


def test_item_images_give_the_page_its_preview_picture(workspace: Path) -> None:
    data = small_issue()
    data["items"][0]["image"] = {"url": "https://example.org/figure.png", "alt": "A chart of results"}
    write_issue(workspace, "2024-w03", data)
    out = published(workspace, "--all")
    doc = lxml_html.fromstring(page(out, "2024-w03/index.html"))
    assert doc.xpath("string(//meta[@property='og:image']/@content)") == "https://example.org/figure.png"
    assert doc.xpath("string(//meta[@property='og:image:alt']/@content)") == "A chart of results"
    (img,) = doc.xpath("//article//img")
    assert img.get("alt") == "A chart of results" and img.get("src") == "https://example.org/figure.png"


def test_markdown_headings_nest_under_the_page_headings(workspace: Path) -> None:
    summary = "# Big\n\ntext\n\n#### Deep\n\nmore\n\n## Middle\n\nend"
    write_issue(
        workspace,
        "2024-w03",
        small_issue(
            intro="### Intro heading\n\nHello",
            items=[{"title": "One", "summary": summary}, {"title": "Two", "summary": "###### Tiny\n\nx"}],
            outro="# Bye\n\nThanks",
        ),
    )
    out = published(workspace, "--all")
    text = page(out, "2024-w03/index.html")
    strict_parse(text, "the page")
    # h1 title; intro h2; contents h2; item h2, its summary's # -> h3, #### -> h4,
    # ## -> h4 (under the h3); item h2, ###### -> h3; outro's # -> h2.
    assert heading_levels(text) == [1, 2, 2, 2, 3, 4, 4, 2, 3, 2]
    assert headings_in_order(heading_levels(text))
    doc = lxml_html.fromstring(text)
    assert [h.text_content() for h in doc.xpath("//h3|//h4")] == ["Big", "Deep", "Middle", "Tiny"]


def test_a_workspace_template_overrides_the_shipped_one(sent: Path) -> None:
    own = sent / "templates" / "site" / "index.html.j2"
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text(
        '{% extends "site/_base.html.j2" %}{% block main %}<h1>Our back issues</h1>'
        "{% for e in issues %}<p>{{ e.title }}</p>{% endfor %}{% endblock %}",
        encoding="utf-8",
    )
    out = published(sent)
    text = page(out, "index.html")
    assert "Our back issues" in text and "AI Research Highlights | Week 3, 2024" in text
    assert "The archive" not in text
    # The other pages still come from the shipped templates.
    assert "In this issue" in page(out, "2024-w02/index.html")


def test_a_broken_site_template_names_its_file_and_line(sent: Path) -> None:
    own = sent / "templates" / "site" / "issue.html.j2"
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text("<p>\n{{ issue.nope.deeper }}</p>\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["publish"])
    assert result.exit_code == 1
    assert re.search(r"templates/site/issue\.html\.j2:2: .*nope", result.stderr), result.stderr
    assert "Traceback" not in result.output


def test_signup_form_shows_only_when_signup_is_enabled(sent: Path) -> None:
    out = published(sent)
    assert "<form" not in page(out, "index.html")
    enable_signup(sent)
    out = published(sent)
    for rel in ("index.html", "2024-w02/index.html"):
        text = page(out, rel)
        strict_parse(text, rel)
        assert headings_in_order(heading_levels(text))
        (form,) = lxml_html.fromstring(text).xpath("//form")
        assert form.get("method") == "post" and form.get("action") == f"{BASE_URL}/subscribe"
        assert form.xpath(".//input/@name") == ["email", "name", "website"]
        # What the visitor came for first, then the form: after every issue or item.
        assert form.xpath("preceding::ol[@class='issues'] | preceding::section[@class='item']")
        assert not form.xpath("following::ol[@class='issues'] | following::section[@class='item']")


def test_a_second_publish_removes_pages_no_longer_listed(workspace: Path) -> None:
    write_issue(workspace, "2024-w03", small_issue("Draft", "2024-01-19"))
    mark_sent(workspace, "2024-w02")
    out = published(workspace, "--all")
    assert (out / "2024-w03" / "index.html").is_file()
    assert record(out) == {
        "files": {*SITE, "2024-w02/index.html", "2024-w03/index.html"},
        "folders": {"2024-w02", "2024-w03"},
    }
    out = published(workspace)
    assert not (out / "2024-w03").exists()
    assert (out / "2024-w02" / "index.html").is_file()
    assert "Draft" not in page(out, "index.html") and "Draft" not in page(out, "feed.xml")
    assert record(out) == {"files": {*SITE, "2024-w02/index.html"}, "folders": {"2024-w02"}}
    assert tree(out) == {MANIFEST, *SITE, "2024-w02/", "2024-w02/index.html"}  # no temporary file left
    assert [p.name for p in out.parent.iterdir()] == ["site"]  # nor anything beside the folder
    assert oct((out / "2024-w02").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def test_a_draft_folder_holding_a_file_of_the_editor_keeps_it(workspace: Path) -> None:
    write_issue(workspace, "2024-w03", small_issue("Draft", "2024-01-19"))
    mark_sent(workspace, "2024-w02")
    out = published(workspace, "--all")
    (out / "2024-w03" / "figure.png").write_bytes(b"PNG")
    out = published(workspace)
    assert tree(out / "2024-w03") == {"figure.png"}  # the page went, the folder stays for the file
    assert record(out)["folders"] == {"2024-w02", "2024-w03"}
    out = published(workspace, "--all")  # the draft again, beside the file
    assert tree(out / "2024-w03") == {"figure.png", "index.html"}
    (out / "2024-w03" / "figure.png").unlink()
    out = published(workspace)
    assert not (out / "2024-w03").exists()  # empty now: the folder publish made goes too


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


MANIFEST = ".highlights-publish.json"
SITE = ["404.html", "feed.xml", "index.html"]


def record(out: Path) -> dict[str, set[str]]:
    """The record `publish` keeps of what it wrote into `out`, as sets."""
    data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert data["files"] == sorted(data["files"]) and data["folders"] == sorted(data["folders"])
    return {"files": set(data["files"]), "folders": set(data["folders"])}


def tree(folder: Path) -> set[str]:
    """Every path under `folder`, folders with a trailing slash; links are not followed."""
    return {
        p.relative_to(folder).as_posix() + ("/" if p.is_dir() and not p.is_symlink() else "") for p in folder.rglob("*")
    }


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every path under `folder` with its bytes (a link: where it points; a folder: "")."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else ("" if p.is_dir() else p.read_bytes())
    return out


def web_root(folder: Path) -> None:
    """A web root as a site owner has it: their own index, feed, about page and blog."""
    folder.mkdir()
    (folder / "index.html").write_text("<h1>My home page</h1>", encoding="utf-8")
    (folder / "feed.xml").write_text("<feed>mine</feed>", encoding="utf-8")
    (folder / "about.html").write_text("<h1>About me</h1>", encoding="utf-8")
    (folder / "blog").mkdir()
    (folder / "blog" / "index.html").write_text("<h1>My blog</h1>", encoding="utf-8")


def test_a_web_root_that_publish_did_not_make_is_refused_and_left_as_it_was(workspace: Path) -> None:
    mark_sent(workspace, "2024-w02")
    web_root(workspace / "www")
    before = snapshot(workspace / "www")
    result = CliRunner().invoke(main, ["publish", "--out", "www"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: www: holds files that `publish` did not write (there is no {MANIFEST}, its list of what it "
        "wrote); choose another --out or empty it"
    ]
    assert snapshot(workspace / "www") == before


def test_the_files_beside_the_site_are_kept_across_publishes(workspace: Path) -> None:
    """The site in a folder of its own inside a web root, or a web root that the site
    owner adds pages to after the first publish: nothing of theirs is touched."""
    mark_sent(workspace, "2024-w02")
    out = published(workspace, "--out", "www")
    assert out.name == "site"
    www = workspace / "www"
    (www / "about.html").write_text("<h1>About me</h1>", encoding="utf-8")
    (www / "blog").mkdir()
    (www / "blog" / "index.html").write_text("<h1>My blog</h1>", encoding="utf-8")
    (www / "2024-w02" / "notes.txt").write_text("mine", encoding="utf-8")
    (www / ".htaccess").write_text("ErrorDocument 404 /404.html", encoding="utf-8")
    theirs = {
        rel: data
        for rel, data in snapshot(www).items()
        if rel in ("about.html", "blog", "blog/index.html", "2024-w02/notes.txt", ".htaccess")
    }
    write_issue(workspace, "2024-w03", small_issue("Week three", "2024-01-19"))
    for args in (["--all"], [], ["--all"]):
        result = run("publish", "--out", "www", *args)
        assert result.exit_code == 0, result.output
        now = snapshot(www)
        assert {rel: now[rel] for rel in theirs} == theirs
        assert ("Week three" in page(www, "index.html")) == bool(args)
        assert (www / "2024-w03").exists() == bool(args)


def test_a_page_never_replaces_a_file_publish_did_not_write(workspace: Path) -> None:
    mark_sent(workspace, "2024-w02")
    out = published(workspace)
    write_issue(workspace, "2024-w03", small_issue("Week three", "2024-01-19"))
    mark_sent(workspace, "2024-w03")
    (out / "2024-w03").mkdir()
    (out / "2024-w03" / "index.html").write_text("mine", encoding="utf-8")
    before = snapshot(out)
    result = CliRunner().invoke(main, ["publish"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: out/site/2024-w03/index.html: exists and `publish` did not write it; move it away or choose another --out"
    ]
    assert snapshot(out) == before
    (out / "2024-w03" / "index.html").unlink()
    assert "Week three" in page(published(workspace), "2024-w03/index.html")  # its own folder is fine


def test_a_folder_of_other_files_is_never_replaced(workspace: Path) -> None:
    (workspace / "notes").mkdir()
    (workspace / "notes" / "todo.txt").write_text("keep me", encoding="utf-8")
    result = CliRunner().invoke(main, ["publish", "--out", "notes"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: notes: holds files that `publish` did not write (there is no {MANIFEST}, its list of what it "
        "wrote); choose another --out or empty it"
    ]
    assert snapshot(workspace / "notes") == {"todo.txt": b"keep me"}
    # An empty folder is fine; a link to nowhere where the folder would be is said in one line.
    (workspace / "empty").mkdir()
    assert run("publish", "--out", "empty").exit_code == 0
    (workspace / "dangling").symlink_to(workspace / "nowhere")
    result = CliRunner().invoke(main, ["publish", "--out", "dangling"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["Error: dangling: exists and is not a folder"]
    assert not (workspace / "nowhere").exists()


@pytest.mark.parametrize(
    "entry",
    [
        "../outside.html",
        "../outside",
        "/ABS/outside.html",
        "sub/../../outside.html",
        "./index.html",
        "",
        "sub//x",
        "sub\\..\\x",
        ".",
        "..",
        "a\nb",
        ".hidden",
    ],
)
@pytest.mark.parametrize("key", ["files", "folders"])
def test_a_record_that_names_a_place_outside_the_folder_is_refused(workspace: Path, entry: str, key: str) -> None:
    outside = workspace / "outside.html"
    outside.write_text("not the site's", encoding="utf-8")
    (workspace / "outside").mkdir()
    mark_sent(workspace, "2024-w02")
    out = published(workspace)
    data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    data[key].append(entry.replace("/ABS", str(workspace)))
    (out / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    before, around = snapshot(out), snapshot(workspace)
    result = CliRunner().invoke(main, ["publish"])
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: out/site/{MANIFEST}: `{key}` names ") and "not a path inside the folder" in line
    assert snapshot(out) == before and snapshot(workspace) == around


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"format": 2, "files": [], "folders": []}',
        '{"format": 1, "files": "index.html", "folders": []}',
        '{"format": 1, "files": [1], "folders": []}',
        '{"format": 1, "files": []}',
    ],
)
def test_a_damaged_record_is_refused_in_one_line(workspace: Path, content: str) -> None:
    out = published(workspace)
    (out / MANIFEST).write_text(content, encoding="utf-8")
    before = snapshot(out)
    result = CliRunner().invoke(main, ["publish"])
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: out/site/{MANIFEST}: ") and "publish into an empty folder" in line
    assert "Traceback" not in result.output
    assert snapshot(out) == before


def test_links_in_the_folder_never_lead_publish_outside_it(workspace: Path) -> None:
    """A record may name a path whose folder or file is now a symbolic link to
    somewhere else: publish writes, replaces and removes nothing through it."""
    elsewhere = workspace / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "index.html").write_text("precious", encoding="utf-8")
    (elsewhere / "secret.txt").write_text("precious", encoding="utf-8")
    write_issue(workspace, "2024-w03", small_issue("Draft", "2024-01-19"))
    mark_sent(workspace, "2024-w02")
    out = published(workspace, "--all")
    # The draft's folder becomes a link to elsewhere; its page is removed on the next
    # publish (not listed any more): the link is not followed.
    shutil.rmtree(out / "2024-w03")
    (out / "2024-w03").symlink_to(elsewhere, target_is_directory=True)
    # A page publish wrote becomes a link to a file elsewhere.
    (out / "404.html").unlink()
    (out / "404.html").symlink_to(elsewhere / "secret.txt")
    data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    data["files"] += ["gone/index.html"]
    (out / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    (out / "gone").symlink_to(elsewhere, target_is_directory=True)
    outside = snapshot(elsewhere)

    result = CliRunner().invoke(main, ["publish"])  # 404.html is in the way: refused
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: out/site/404.html: exists and `publish` did not write it; move it away or choose another --out"
    ]
    assert snapshot(elsewhere) == outside
    (out / "404.html").unlink()
    result = run("publish")
    assert result.exit_code == 0, result.output
    assert snapshot(elsewhere) == outside
    assert (out / "2024-w03").is_symlink() and (out / "gone").is_symlink()  # not ours any more: left alone
    assert record(out)["files"] == {*SITE, "2024-w02/index.html"}
    # An issue whose folder is a link elsewhere is refused, not written through the link.
    mark_sent(workspace, "2024-w03")
    result = CliRunner().invoke(main, ["publish"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: out/site/2024-w03: is in the way of a page and is not a folder; move it away or choose another --out"
    ]
    assert snapshot(elsewhere) == outside


def test_a_record_that_is_a_link_is_not_followed(workspace: Path) -> None:
    out = published(workspace)
    elsewhere = workspace / "elsewhere.json"
    elsewhere.write_text((out / MANIFEST).read_text(encoding="utf-8"), encoding="utf-8")
    (out / MANIFEST).unlink()
    (out / MANIFEST).symlink_to(elsewhere)
    before = elsewhere.read_bytes()
    result = CliRunner().invoke(main, ["publish"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0].startswith(f"Error: out/site/{MANIFEST}: not a plain file")
    assert elsewhere.read_bytes() == before


@pytest.mark.parametrize("first", [True, False])
def test_a_publish_that_fails_while_writing_leaves_the_previous_site(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    """A full disk on the third page: the previous site, and its record, as they were
    (or, on a first publish, no folder at all)."""
    import tempfile

    import highlightsmail.files

    write_issue(workspace, "2024-w03", small_issue("Draft", "2024-01-19"))
    mark_sent(workspace, "2024-w02")
    out = workspace / "out" / "site"
    if not first:
        published(workspace)
    before = snapshot(out) if not first else None
    calls = []
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        calls.append(kwargs.get("prefix"))
        if len(calls) == 4:  # the record, two pages, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(highlightsmail.files.tempfile, "mkstemp", mkstemp)
    result = CliRunner().invoke(main, ["publish", "--all"])
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: cannot write out/site/") and line.endswith(": No space left on device")
    if first:
        assert not out.exists()
    else:
        assert snapshot(out) == before


def test_a_rename_that_fails_midway_leaves_a_record_of_every_page_in_place(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pages are renamed one by one once all are written: a failure between two
    renames leaves some new pages in place. The record names them, so the next publish
    neither refuses them as someone else's nor leaves a draft behind."""
    import highlightsmail.files

    mark_sent(workspace, "2024-w02")
    out = published(workspace)
    write_issue(workspace, "2024-w03", small_issue("Draft", "2024-01-19"))
    write_issue(workspace, "2024-w04", small_issue("Another draft", "2024-01-26"))
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # the record, then 2024-w02 and 2024-w03 are in place
            raise OSError(errno.EIO, os.strerror(errno.EIO), dst)
        return real(src, dst)

    with monkeypatch.context() as patched:
        patched.setattr(highlightsmail.files.os, "replace", replace)
        result = CliRunner().invoke(main, ["publish", "--all"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["Error: cannot write out/site/2024-w04/index.html: Input/output error"]
    assert (out / "2024-w03" / "index.html").is_file() and not (out / "2024-w04").exists()
    assert record(out) == {
        "files": {*SITE, "2024-w02/index.html", "2024-w03/index.html"},
        "folders": {"2024-w02", "2024-w03"},
    }
    out = published(workspace)
    assert tree(out) == {MANIFEST, *SITE, "2024-w02/", "2024-w02/index.html"}


def test_a_publish_stopped_midway_is_made_whole_by_the_next(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped between two renames (as by kill -9, which also leaves its temporary
    files): the record already names every page it may have put in place, so the
    next publish removes those no longer listed and the leftovers."""
    import highlightsmail.files

    write_issue(workspace, "2024-w03", small_issue("Draft", "2024-01-19"))
    mark_sent(workspace, "2024-w02")
    out = published(workspace)
    write_issue(workspace, "2024-w04", small_issue("Another draft", "2024-01-26"))
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # the record, two pages (2024-w02, 2024-w03), then the stop
            raise KeyboardInterrupt
        return real(src, dst)

    with monkeypatch.context() as patched:
        patched.setattr(highlightsmail.files.os, "replace", replace)
        assert CliRunner().invoke(main, ["publish", "--all"]).exit_code != 0
    assert (out / "2024-w03" / "index.html").is_file()  # put in place before the stop
    assert record(out)["files"] >= {"2024-w03/index.html", "2024-w04/index.html"}
    (out / "2024-w04" / ".index.html.999999999-abcdefgh.tmp").write_bytes(b"half a page")  # its process is gone
    out = published(workspace)
    assert tree(out) == {MANIFEST, *SITE, "2024-w02/", "2024-w02/index.html"}
    assert record(out) == {"files": {*SITE, "2024-w02/index.html"}, "folders": {"2024-w02"}}


def test_an_invalid_listed_issue_fails_with_its_place_and_writes_nothing(workspace: Path) -> None:
    out = published(workspace, "--all")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (workspace / "issues" / "2024-w03.yaml").write_text(
        textwrap.dedent("""\
            title: Broken
            date: 2024-01-19
            items:
              - title: One
                summry: typo
            """),
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["publish", "--all"])
    assert result.exit_code == 1
    assert "issues/2024-w03.yaml:5:5: " in result.stderr and "summary" in result.stderr
    assert "Traceback" not in result.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_file_names_that_cannot_be_web_addresses_are_left_out_with_a_warning(workspace: Path) -> None:
    write_issue(workspace, "my draft", small_issue("Spaced"))
    write_issue(workspace, "feed.xml", small_issue("Clash"))
    write_issue(workspace, ".hidden", small_issue("Hidden"))
    result = run("publish", "--all")
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: issues/feed.xml.yaml: left out, its name can't be a web address "
        "(use letters, digits, '.', '_' and '-', like 2024-w02.yaml)",
        "warning: issues/my draft.yaml: left out, its name can't be a web address "
        "(use letters, digits, '.', '_' and '-', like 2024-w02.yaml)",
    ]
    index = page(workspace / "out" / "site", "index.html")
    assert "Spaced" not in index and "Clash" not in index and "Hidden" not in index
    # Nor do their emails link to a page that can't exist.
    enable_archive(workspace)
    ws = load_workspace()
    assert "View in browser" not in render_issue(load_issue(workspace / "issues" / "my draft.yaml"), ws).text


# --------------------------------------------------------------------------- hostile input


def test_hostile_issue_text_is_escaped_on_the_pages_as_in_the_email(workspace: Path) -> None:
    title = "<script>alert('x')</script> Q&A"
    summary = (
        "[click](javascript:alert(1)) [data](data:text/html;base64,PHNjcmlwdD4=) "
        '<a href="javascript:alert(4)">raw</a> <img src="https://example.org/x.png" onerror="alert(1)"> '
        "\u202eevil\u202c 長い文脈 עברית"
    )
    data = small_issue(title, preheader=f"pre {title}", intro=summary, outro=summary)
    data["items"] = [
        {
            "title": title,
            "summary": summary,
            "links": [{"label": f"<b>{title}</b>", "url": "https://example.org/a?x=1&y=2"}],
            "tags": ["<i>tag</i>"],
            "image": {"url": "https://example.org/i.png", "alt": '"><script>alert(5)</script>'},
        }
    ]
    write_issue(workspace, "2024-w03", data)
    mark_sent(workspace, "2024-w03")
    ws = load_workspace()
    email_html = render_issue(load_issue(workspace / "issues" / "2024-w03.yaml"), ws).html
    out = published(workspace)
    feed = feedparser.parse((out / "feed.xml").read_bytes())
    (entry,) = feed.entries
    for where, text in (
        ("issue page", page(out, "2024-w03/index.html")),
        ("index", page(out, "index.html")),
        ("feed content", entry.content[0].value),
    ):
        doc = lxml_html.fromstring(text)
        assert doc.xpath("//script|//b|//i") == [], where
        for el in doc.iter():
            if not isinstance(el.tag, str):
                continue
            for name, value in el.attrib.items():
                assert not name.lower().startswith("on"), (where, el.tag, name)
                assert not value.strip().lower().startswith(("javascript:", "data:")), (where, el.tag, value)
        assert title in visible_text(text), where
    issue_text = visible_text(page(out, "2024-w03/index.html"))
    email_text = " ".join(lxml_html.fromstring(email_html).text_content().split())
    # The editor's words read the same on the web as in the email, markup shown as text.
    for shown in ("[click](javascript:alert(1))", '<a href="javascript:alert(4)">raw</a>', "<i>tag</i>", "長い文脈"):
        assert shown in issue_text and shown in email_text, shown
    assert "https://example.org/a?x=1&amp;y=2" in page(out, "2024-w03/index.html")
    strict_parse(page(out, "2024-w03/index.html"), "hostile page")
    assert entry.title == title


# --------------------------------------------------------------------------- the feed


def test_feed_is_atom_with_one_entry_per_listed_issue_and_full_content(sent: Path) -> None:
    out = published(sent)
    raw = (out / "feed.xml").read_bytes()
    feed = feedparser.parse(raw)
    assert not feed.bozo, feed.get("bozo_exception")
    assert feed.version == "atom10"
    assert feed.feed.title == "AI Research Highlights"
    assert feed.feed.id == ARCHIVE
    assert {link.rel: link.href for link in feed.feed.links} == {"alternate": ARCHIVE, "self": f"{ARCHIVE}feed.xml"}
    assert [e.id for e in feed.entries] == [f"{ARCHIVE}2024-w03/", f"{ARCHIVE}2024-w02/"]
    assert [e.link for e in feed.entries] == [e.id for e in feed.entries]
    assert feed.entries[1].title == "AI Research Highlights | Week 2, 2024"
    assert feed.entries[1].updated == feed.entries[1].published == "2024-01-12T08:30:00+00:00"
    assert feed.feed.updated == "2024-01-12T08:30:00+00:00"
    assert feed.entries[1].summary.startswith("Self-Extend, Activation Beacon")
    content = feed.entries[1].content[0]
    assert content.type == "text/html"
    shown = html_lib.unescape(content.value)
    for title in EXAMPLE_TITLES:
        assert title in shown, title
    assert "Mixtral" in shown and "https://arxiv.org/abs/2401.04088" in shown
    assert "In this issue" not in shown  # its links point within the page, not the feed


def test_feed_ids_and_bytes_are_stable_across_builds(sent: Path) -> None:
    first = (published(sent) / "feed.xml").read_bytes()
    for path in (sent / "issues").iterdir():
        os.utime(path)  # a checkout or a touch changes nothing a reader sees
    second = (published(sent, "--out", "again") / "feed.xml").read_bytes()
    assert [e.id for e in feedparser.parse(first).entries] == [e.id for e in feedparser.parse(second).entries]
    assert first == second


def test_feed_of_an_empty_archive_is_valid(workspace: Path) -> None:
    out = published(workspace)
    feed = feedparser.parse((out / "feed.xml").read_bytes())
    assert not feed.bozo and feed.entries == [] and feed.feed.title == "AI Research Highlights"


# --------------------------------------------------------------------------- View in browser


def _message_parts(path: Path) -> tuple[str, str]:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    return text, html


def test_emails_link_view_in_browser_when_the_archive_is_on(workspace: Path) -> None:
    ws = load_workspace()
    off = render_issue(load_issue(ws.issue_path("2024-w02")), ws)
    assert "View in browser" not in off.html and "View in browser" not in off.text

    enable_archive(workspace)
    ws = load_workspace()
    on = render_issue(load_issue(ws.issue_path("2024-w02")), ws)
    url = f"{ARCHIVE}2024-w02/"
    first_link = lxml_html.fromstring(on.html).xpath("//body//a")[0]
    assert first_link.get("href") == url and first_link.text_content() == "View in browser"
    assert on.text.splitlines()[0] == f"View in browser: {url}"
    from highlightsmail.mail.message import fingerprint

    assert fingerprint(on, ws.settings) != fingerprint(off, ws.settings)  # the test send must be made again


def test_test_sends_carry_the_link_too(workspace: Path) -> None:
    enable_archive(workspace, path="/back-issues/")
    result = run("send", "2024-w02", "--test")
    assert result.exit_code == 0, result.output
    files = sorted((workspace / "outbox" / "2024-w02" / "test").glob("*.eml"))
    assert len(files) == 2
    url = f"{BASE_URL}/back-issues/2024-w02/"
    for path in files:
        text, html = _message_parts(path)
        assert f"View in browser: {url}" in text
        assert f'href="{url}"' in html


def test_check_warns_when_the_archive_is_on_but_base_url_is_not_https(workspace: Path) -> None:
    enable_archive(workspace, base_url="http://highlights.example.org")
    result = run("check", "2024-w02")
    assert result.exit_code == 0
    lines = (workspace / "highlights.yaml").read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, start=1) if text.startswith("base_url:"))
    assert f"highlights.yaml:{line}:11: warning: base_url: the archive is enabled but base_url is not https" in (
        result.stderr
    )
    enable_archive(workspace, base_url=BASE_URL)
    assert "not https" not in run("check", "2024-w02").stderr


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("archive", "must be a path like /archive"),
        ("/u", "taken by the web endpoint's own pages"),
        ("/subscribe/", "taken by the web endpoint's own pages"),
        ("/a/../b", "must be a path like /archive"),
        ("/news archive", "must be a path like /archive"),
        ("/", "must be a path like /archive"),
    ],
)
def test_archive_path_must_be_a_plain_path_of_its_own(workspace: Path, path: str, error: str) -> None:
    enable_archive(workspace, path=path)
    with pytest.raises(HighlightsError, match=re.escape(error)) as caught:
        load_workspace()
    assert "highlights.yaml:" in caught.value.format_message()


def test_archive_path_keeps_no_trailing_slash(workspace: Path) -> None:
    enable_archive(workspace, path="/news/archive/")
    assert load_workspace().settings.archive.path == "/news/archive"
    configure(workspace, archive={"enabled": True})
    assert load_workspace().settings.archive.path == "/archive"
