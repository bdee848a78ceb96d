"""An issue rendered once and reused by the commands that follow (rendering/once.py):
used again only while the issue, the settings, the templates and the code are the same,
and a cache that is damaged or missing means rendering, with the same result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from highlightsmail.authoring.issue import load_issue
from highlightsmail.authoring.workspace import Workspace, load_workspace
from highlightsmail.rendering import once, render
from highlightsmail.rendering.rendered import RenderedIssue
from support.workspace import configure, copy_example

ISSUE = "issues/2024-w02.yaml"


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    once._folder.cache_clear()
    yield home
    once._folder.cache_clear()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_example(tmp_path / "ws")


def _ws(root: Path) -> Workspace:
    return load_workspace(str(root))


def _rendered(root: Path) -> RenderedIssue:
    ws = _ws(root)
    return once.rendered_issue(load_issue(root / ISSUE), ws)


def _fresh(root: Path) -> RenderedIssue:
    ws = _ws(root)
    return render.render_issue(load_issue(root / ISSUE), ws)


def _kept(cache_home: Path) -> list[Path]:
    return sorted(cache_home.glob("highlightsmail/rendered/*.json"))


def _forbid_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    def render_nothing(*args: object, **kwargs: object) -> None:
        raise AssertionError("rendered although the cache holds the rendering")

    monkeypatch.setattr(render, "render_issue", render_nothing)


def test_a_rendering_kept_once_is_the_same_rendering_next_time(
    cache_home: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _rendered(root)
    assert first == _fresh(root)
    assert len(_kept(cache_home)) == 1
    _forbid_rendering(monkeypatch)
    assert _rendered(root) == first


def test_another_workspace_with_the_same_files_reuses_it(cache_home: Path, root: Path, tmp_path: Path) -> None:
    _rendered(root)
    other = copy_example(tmp_path / "other")
    assert _rendered(other) == _fresh(other)
    assert len(_kept(cache_home)) == 1


@pytest.mark.parametrize("change", ["issue", "template", "new template", "settings", "base_url"])
def test_whatever_shapes_the_rendering_renders_it_anew(change: str, cache_home: Path, root: Path) -> None:
    before = _rendered(root)
    if change == "issue":
        path = root / ISSUE
        path.write_text(
            path.read_text(encoding="utf-8").replace('Week 2, 2024"', 'Week 2, 2024 (edited)"', 1), encoding="utf-8"
        )
    elif change == "template":
        path = root / "templates" / render.TEXT_TEMPLATE
        path.write_text(path.read_text(encoding="utf-8") + "\nA line the editor added.\n", encoding="utf-8")
    elif change == "new template":
        # One the others may include: every file of templates/ counts, not only the two read.
        (root / "templates" / "extra.j2").write_text("unused\n", encoding="utf-8")
    elif change == "settings":
        configure(root, name="Another Newsletter")
    else:
        configure(root, base_url="https://elsewhere.example.org")
    after = _rendered(root)
    assert after == _fresh(root)
    assert len(_kept(cache_home)) == 2
    if change != "new template":
        assert after != before


def test_a_damaged_or_foreign_entry_is_rendered_anew(cache_home: Path, root: Path) -> None:
    good = _rendered(root)
    (entry,) = _kept(cache_home)
    for damage in (b'{"slug": "2024-w02", "html"', b"[]", json.dumps({"slug": "other", "html": "x"}).encode()):
        entry.write_bytes(damage)
        assert _rendered(root) == good
        assert json.loads(entry.read_bytes())["html"] == good.html  # and kept whole again


def test_without_a_cache_folder_it_renders_each_time(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    once._folder.cache_clear()
    try:
        assert _rendered(root) == _fresh(root)
        assert _rendered(root) == _fresh(root)
    finally:
        once._folder.cache_clear()


def test_a_send_that_finds_its_rendering_loads_no_renderer(cache_home: Path, root: Path) -> None:
    """The point of keeping it: a new process that finds the rendering skips Jinja,
    Markdown, MJML and the inliner altogether."""
    _rendered(root)
    program = (
        "import sys\n"
        "from highlightsmail.authoring.issue import load_issue\n"
        "from highlightsmail.authoring.workspace import load_workspace\n"
        "from highlightsmail.rendering.once import rendered_issue\n"
        f"ws = load_workspace({str(root)!r})\n"
        f"r = rendered_issue(load_issue(ws.root / {ISSUE!r}), ws)\n"
        "print(len(r.html), sorted(m for m in ('jinja2', 'markdown_it', 'mjml', 'premailer') if m in sys.modules))\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(len(_fresh(root).html)), "[]"]
