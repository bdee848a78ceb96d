"""What a new process would otherwise redo each time, kept in the user's cache folder:
compiled templates, and the email's stylesheet and style attributes as premailer
parsed them. Used again only for
the same source, and a cache that is damaged or cannot be written changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cssutils
import jinja2
import premailer.cache
import pytest

from highlightsmail import templating
from highlightsmail.authoring import fields
from highlightsmail.rendering import inlining


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    _forget_caches()
    yield home
    _forget_caches()


def _forget_caches() -> None:
    """As a new process starts: nothing in memory, the cache folder looked up again."""
    templating._bytecode_cache.cache_clear()
    inlining._rules_folder.cache_clear()
    inlining._inlined_folder.cache_clear()
    fields._known_addresses.cache_clear()
    inlining._inliner_class()._rules.clear()
    inlining._declarations.cache_clear()
    premailer.cache.cache.clear()
    inlining._declarations()


def _render(folder: Path, template: str = "page.txt.j2", **context: object) -> str:
    return templating.environment(jinja2.FileSystemLoader(str(folder))).get_template(template).render(context)


def _forbid_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    def compile_nothing(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled although the cache holds the template")

    monkeypatch.setattr(jinja2.Environment, "compile", compile_nothing)


def test_a_template_compiled_once_is_read_from_the_cache_next_time(
    cache_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "page.txt.j2").write_text("Hello {{ name }}\n", encoding="utf-8")
    assert _render(tmp_path, name="Ada") == "Hello Ada\n"
    kept = list(cache_home.glob("highlightsmail/jinja-*/*.cache"))
    assert len(kept) == 1

    _forbid_compiling(monkeypatch)
    assert _render(tmp_path, name="Bob") == "Hello Bob\n"


def test_an_edited_template_is_compiled_again(cache_home: Path, tmp_path: Path) -> None:
    (tmp_path / "page.txt.j2").write_text("Hello {{ name }}\n", encoding="utf-8")
    assert _render(tmp_path, name="Ada") == "Hello Ada\n"
    (tmp_path / "page.txt.j2").write_text("Goodbye {{ name }}\n", encoding="utf-8")
    assert _render(tmp_path, name="Ada") == "Goodbye Ada\n"


def test_html_templates_escape_when_read_from_the_cache(
    cache_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "page.html.j2").write_text("<p>{{ name }}</p>", encoding="utf-8")
    assert _render(tmp_path, "page.html.j2", name="<b>") == "<p>&lt;b&gt;</p>"
    _forbid_compiling(monkeypatch)
    assert _render(tmp_path, "page.html.j2", name="<b>") == "<p>&lt;b&gt;</p>"


def test_a_damaged_cache_file_is_compiled_anew(cache_home: Path, tmp_path: Path) -> None:
    (tmp_path / "page.txt.j2").write_text("Hello {{ name }}\n", encoding="utf-8")
    _render(tmp_path, name="Ada")
    for kept in cache_home.glob("highlightsmail/jinja-*/*.cache"):
        kept.write_bytes(kept.read_bytes()[:40] + b"\x00garbage")
    assert _render(tmp_path, name="Ada") == "Hello Ada\n"


def test_a_cache_that_cannot_be_written_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    templating._bytecode_cache.cache_clear()
    try:
        (tmp_path / "page.txt.j2").write_text("Hello {{ name }}\n", encoding="utf-8")
        assert _render(tmp_path, name="Ada") == "Hello Ada\n"
        assert _render(tmp_path, name="Bob") == "Hello Bob\n"
    finally:
        templating._bytecode_cache.cache_clear()


def test_the_cache_lives_in_the_users_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert templating.cache_folder() == tmp_path / "highlightsmail"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert templating.cache_folder() == tmp_path / "home" / ".cache" / "highlightsmail"


_EMAIL = """<html><head>
<style type="text/css">.title { color: #123456; font-weight: bold } p.note { margin: 0 0 8px }</style>
</head><body><div class="title">Hi</div><p class="note" style="padding: 2px">Text</p></body></html>"""


def _rule_files(cache_home: Path) -> list[Path]:
    return [p for p in cache_home.glob("highlightsmail/css-*/*.json") if p.name != "declarations.json"]


def _forbid_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse_nothing(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed although the cache holds the stylesheet")

    premailer_class = inlining._inliner_class().__mro__[1]  # premailer's own, under the project's
    monkeypatch.setattr(premailer_class, "_parse_style_rules", parse_nothing)


def test_the_stylesheet_parsed_once_is_read_from_the_cache_next_time(
    cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = inlining.inline_css(_EMAIL)
    assert 'style="color:#123456; font-weight:bold"' in first.replace(": ", ":")
    assert len(_rule_files(cache_home)) == 1

    _forget_caches()
    _forbid_parsing(monkeypatch)
    assert inlining.inline_css(_EMAIL) == first


def test_another_stylesheet_is_parsed_again(cache_home: Path) -> None:
    first = inlining.inline_css(_EMAIL)
    _forget_caches()
    other = inlining.inline_css(_EMAIL.replace("#123456", "#abcdef"))
    assert other == first.replace("#123456", "#abcdef")
    assert len(_rule_files(cache_home)) == 2


def test_a_damaged_stylesheet_file_is_parsed_anew(cache_home: Path) -> None:
    first = inlining.inline_css(_EMAIL)
    for kept in _rule_files(cache_home):
        kept.write_text('[[[0, 1], ".title"', encoding="utf-8")
    _forget_caches()
    assert inlining.inline_css(_EMAIL) == first


def test_a_stylesheet_with_rules_left_in_place_is_not_kept(cache_home: Path) -> None:
    """Rules premailer leaves for <style> (a :hover, an @media) are cssutils objects it
    edits later; such a stylesheet is parsed each time, as before."""
    email = _EMAIL.replace("p.note {", "a:hover { color: red } p.note {")
    first = inlining.inline_css(email)
    assert not _rule_files(cache_home)
    _forget_caches()
    assert inlining.inline_css(email) == first


def test_a_stylesheet_cache_that_cannot_be_written_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    _forget_caches()
    try:
        first = inlining.inline_css(_EMAIL)
        _forget_caches()
        assert inlining.inline_css(_EMAIL) == first
    finally:
        _forget_caches()


def test_style_attributes_parsed_once_are_read_from_the_cache_next_time(
    cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = inlining.inline_css(_EMAIL)
    assert "padding:2px" in first.replace(": ", ":")
    assert (next(cache_home.glob("highlightsmail/css-*")) / "declarations.json").is_file()

    _forget_caches()

    def parse_nothing(*args: object, **kwargs: object) -> None:
        raise AssertionError("cssutils parsed although the cache holds it all")

    monkeypatch.setattr(cssutils, "parseStyle", parse_nothing)
    monkeypatch.setattr(cssutils, "parseString", parse_nothing)
    assert inlining.inline_css(_EMAIL) == first


def test_new_style_attributes_are_parsed_and_kept_beside_the_old(cache_home: Path) -> None:
    inlining.inline_css(_EMAIL)
    _forget_caches()
    other = _EMAIL.replace("padding: 2px", "padding: 4px")
    second = inlining.inline_css(other)
    assert "padding:4px" in second.replace(": ", ":")
    kept = (next(cache_home.glob("highlightsmail/css-*")) / "declarations.json").read_text(encoding="utf-8")
    assert "padding: 2px" in kept and "padding: 4px" in kept


def test_a_damaged_declarations_file_is_parsed_anew(cache_home: Path) -> None:
    first = inlining.inline_css(_EMAIL)
    (next(cache_home.glob("highlightsmail/css-*")) / "declarations.json").write_text('{"1:padding', encoding="utf-8")
    _forget_caches()
    assert inlining.inline_css(_EMAIL) == first


def test_a_cache_folder_others_may_write_to_is_not_used(cache_home: Path, tmp_path: Path) -> None:
    """Compiled templates are code that runs: a folder another user could fill is left alone."""
    (cache_home / "highlightsmail").mkdir(parents=True)
    (cache_home / "highlightsmail").chmod(0o777)
    _forget_caches()
    (tmp_path / "page.txt.j2").write_text("Hello {{ name }}\n", encoding="utf-8")
    assert _render(tmp_path, name="Ada") == "Hello Ada\n"
    first = inlining.inline_css(_EMAIL)
    assert not list((cache_home / "highlightsmail").iterdir())
    _forget_caches()
    assert inlining.inline_css(_EMAIL) == first


# ---------------------------------------------------------------------------- inlined HTML


def _forbid_inlining(monkeypatch: pytest.MonkeyPatch) -> None:
    def inline_nothing(html: str) -> str:
        raise AssertionError("inlined although the cache holds the HTML")

    monkeypatch.setattr(inlining, "inline_css", inline_nothing)


def _inlined_files(cache_home: Path) -> list[Path]:
    return list(cache_home.glob("highlightsmail/inlined-*/*.json"))


def test_html_inlined_once_is_read_from_the_cache_next_time(cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = inlining.inline_css_kept(_EMAIL)
    assert first == inlining.inline_css(_EMAIL)
    assert len(_inlined_files(cache_home)) == 1

    _forget_caches()
    _forbid_inlining(monkeypatch)
    assert inlining.inline_css_kept(_EMAIL) == first


def test_other_html_is_inlined_again(cache_home: Path) -> None:
    inlining.inline_css_kept(_EMAIL)
    other = inlining.inline_css_kept(_EMAIL.replace("Text", "Other text"))
    assert "Other text" in other
    assert len(_inlined_files(cache_home)) == 2


def test_a_damaged_inlined_file_is_inlined_anew(cache_home: Path) -> None:
    first = inlining.inline_css_kept(_EMAIL)
    for kept in _inlined_files(cache_home):
        kept.write_text('{"inlined": "<html><bo', encoding="utf-8")
    _forget_caches()
    assert inlining.inline_css_kept(_EMAIL) == first


def test_only_the_newest_inlined_files_are_kept(cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inlining, "_INLINED_KEPT", 2)
    for n in range(4):
        inlining.inline_css_kept(_EMAIL.replace("Text", f"Text {n}"))
    assert len(_inlined_files(cache_home)) == 2


def test_no_cache_folder_means_inlining_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    _forget_caches()
    try:
        assert inlining.inline_css_kept(_EMAIL) == inlining.inline_css(_EMAIL)
    finally:
        _forget_caches()


# ---------------------------------------------------------------------------- settings' addresses


def _forbid_judging(monkeypatch: pytest.MonkeyPatch) -> None:
    def judge_nothing(raw: str) -> str:
        raise AssertionError("judged although the cache holds the verdict")

    monkeypatch.setattr(fields, "normalize_address", judge_nothing)


def test_a_good_settings_address_is_not_judged_again(cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert fields._address("Ada <ada@example.org>") == "Ada <ada@example.org>"
    assert list(cache_home.glob("highlightsmail/addresses-*.json"))
    _forget_caches()
    _forbid_judging(monkeypatch)
    assert fields._address('"Ada L." <ada@example.org>') == '"Ada L." <ada@example.org>'


def test_a_bad_settings_address_is_refused_every_time(cache_home: Path) -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="is not an email address"):
            fields._address("Ada <ada@@example.org>")
        _forget_caches()
    kept = list(cache_home.glob("highlightsmail/addresses-*.json"))
    assert all("ada@@" not in p.read_text(encoding="utf-8") for p in kept)


def test_a_damaged_addresses_file_means_judging_again(cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fields._address("ada@example.org")
    for kept in cache_home.glob("highlightsmail/addresses-*.json"):
        kept.write_text('["ada@exa', encoding="utf-8")
    _forget_caches()
    judged: list[str] = []
    real = fields.normalize_address
    monkeypatch.setattr(fields, "normalize_address", lambda raw: judged.append(raw) or real(raw))
    assert fields._address("ada@example.org") == "ada@example.org"
    assert judged == ["ada@example.org"]
