"""Pages rendered once for every reader (Pages.render_for_reader) read exactly as pages
rendered for each reader, and follow the workspace's templates as they change."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.web.pages import Pages
from support.workspace import copy_example

READERS = [
    {"masked_email": "ad***@example.org", "unsubscribe_action": "u1.abc", "resubscribe_action": "u1.abc/resubscribe"},
    {"masked_email": "<b>&\"'***@exämple.org", "unsubscribe_action": "../x&y", "resubscribe_action": "q<'\">"},
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_example(tmp_path / "ws")


def _touch(path: Path, text: str) -> None:
    """Write `text`, with a later modification time than the file had (Jinja reloads
    a template by its time)."""
    before = path.stat().st_mtime if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    os.utime(path, (time.time(), max(time.time(), before + 2)))


@pytest.mark.parametrize("name", ["unsubscribe.html.j2", "unsubscribed.html.j2", "resubscribed.html.j2"])
@pytest.mark.parametrize("status", ["active", "unsubscribed", "bounced"])
def test_the_same_page_as_rendered_for_each_reader(root: Path, name: str, status: str) -> None:
    pages = Pages(load_workspace(root))
    for reader in READERS * 2:  # the second time from what was rendered once
        assert pages.render_for_reader(name, reader, title="T", status=status) == pages.render(
            name, title="T", status=status, **reader
        )


@pytest.mark.parametrize(
    "shown",
    [
        "{{ masked_email|upper }}",
        "{{ masked_email|safe }}",
        "{% if 'example' in masked_email %}ours{% endif %}{{ masked_email }}",
        "{% set m = masked_email %}{{ m }}",
    ],
)
def test_a_template_that_does_more_with_the_address_is_rendered_for_each_reader(root: Path, shown: str) -> None:
    page = root / "templates" / "pages" / "unsubscribe.html.j2"
    _touch(page, '{% extends "pages/_base.html.j2" %}{% block content %}<p>' + shown + "</p>{% endblock %}")
    pages = Pages(load_workspace(root))
    for reader in READERS:
        once = pages.render_for_reader("unsubscribe.html.j2", reader, title="T", status="active")
        assert once == pages.render("unsubscribe.html.j2", title="T", status="active", **reader)


def test_a_changed_template_or_base_is_used_at_once(root: Path) -> None:
    pages = Pages(load_workspace(root))
    first = pages.render_for_reader("unsubscribed.html.j2", READERS[0], title="T", status="unsubscribed")
    assert "Rewritten" not in first
    base = root / "templates" / "pages" / "_base.html.j2"
    _touch(base, base.read_text(encoding="utf-8").replace("<body", "<!-- Rewritten base --><body", 1))
    assert "Rewritten base" in pages.render_for_reader(
        "unsubscribed.html.j2", READERS[1], title="T", status="unsubscribed"
    )
    page = root / "templates" / "pages" / "unsubscribed.html.j2"
    _touch(page, '{% extends "pages/_base.html.j2" %}{% block content %}Rewritten {{ masked_email }}{% endblock %}')
    again = pages.render_for_reader("unsubscribed.html.j2", READERS[1], title="T", status="unsubscribed")
    assert "Rewritten &lt;b&gt;&amp;&#34;&#39;***@exämple.org" in again and "Rewritten base" in again


def test_a_broken_template_falls_back_to_the_built_in_page_each_time(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _touch(root / "templates" / "pages" / "unsubscribed.html.j2", "{% block content %}{{ oops( }}")
    pages = Pages(load_workspace(root))
    for reader in READERS:
        text = pages.render_for_reader("unsubscribed.html.j2", reader, title="T", status="unsubscribed")
        assert "You are unsubscribed" in text
    assert caplog.text.count("failed to render; using the built-in page") == 2
