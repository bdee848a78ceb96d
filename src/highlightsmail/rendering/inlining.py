"""The CSS of a compiled email: the inline stylesheet copied onto each element's style
attribute by premailer (the <head> blocks that must stay, stay), then the HTML in fewer
bytes in ways no mail client can tell apart.

Gmail clips an email's HTML after 102 KB, and every item of an issue repeats the same
markup: what is said twice or said for nothing is left out here, once the CSS is
inlined (the pixels are the same; tests/rendering/test_email_looks.py compares them).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import sys
import types
import urllib
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from highlightsmail import __version__
from highlightsmail.files import installed_stamp, keep_newest, own_cache_folder, write_cache_json

__all__ = ["compact", "inline_css", "inline_css_kept", "keep_head_styles"]

_MJ_INLINE_STYLE = re.compile(r"<mj-style\b[^>]*\binline\s*=\s*[\"']inline[\"'][^>]*>(.*?)</mj-style>", re.S | re.I)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_STYLE_TAG = re.compile(r"<style\b([^>]*)>(.*?)</style>", re.S | re.I)


def keep_head_styles(html: str, mjml_source: str) -> str:
    """Mark every <style> block except those of `<mj-style inline="inline">` for
    premailer to leave alone.

    MJML inlines only `mj-style inline="inline"` and keeps the rest in <head> (its
    resets, column widths, media queries for phones and dark mode); mjml-python leaves
    inlining out, so premailer does it, told which blocks are which. Blocks inside
    Outlook's conditional comments are left as they are.
    """
    inline_css = {m.group(1).strip() for m in _MJ_INLINE_STYLE.finditer(mjml_source)}

    def mark(match: re.Match[str]) -> str:
        attrs, body = match.groups()
        if body.strip() in inline_css or "data-premailer" in attrs:
            return match.group(0)
        return f'<style{attrs} data-premailer="ignore">{body}</style>'

    out, pos = [], 0
    for comment in _COMMENT.finditer(html):
        out.append(_STYLE_TAG.sub(mark, html[pos : comment.start()]))
        out.append(comment.group(0))
        pos = comment.end()
    out.append(_STYLE_TAG.sub(mark, html[pos:]))
    return "".join(out)


#: What premailer and cssutils import at their top only to fetch stylesheets over the
#: network, which allow_network=False forbids: requests (with urllib3 and its charset
#: detectors, about a tenth of a build's time) and urllib.request (with http.client and
#: ssl, a thirtieth of `check`'s).
_FETCHING = ("requests", "urllib.request")


def _import_premailer() -> None:
    """Import premailer without importing what it and cssutils fetch with.

    A stand-in module answers their imports of each and loads the real module on first
    use; it is gone from sys.modules right after, so any other import of it in the
    process gets the real module."""
    if "premailer.premailer" in sys.modules:
        return
    stand_ins = {name: _stand_in(name) for name in _FETCHING if name not in sys.modules}
    sys.modules.update(stand_ins)
    if "urllib.request" in stand_ins:
        # `import urllib.request` takes the module from sys.modules, but the code then
        # reads it as urllib's attribute, which importing the real one sets in its place.
        urllib.__dict__["request"] = stand_ins["urllib.request"]
    try:
        # Here, not at the top: only with the stand-ins in place.
        import premailer.premailer  # noqa: F401
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


def _stand_in(name: str) -> types.ModuleType:
    """A module that imports the real `name` when any of its attributes is read."""
    stand_in = types.ModuleType(name)

    def load_on_use(attribute: str) -> Any:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        return getattr(importlib.import_module(name), attribute)

    stand_in.__dict__["__getattr__"] = load_on_use  # a module's own __getattr__ (PEP 562)
    return stand_in


@lru_cache(maxsize=1)
def _inliner_class() -> type:
    _import_premailer()
    from premailer import Premailer  # after _import_premailer, so without requests

    _declarations()

    class _Inliner(Premailer):  # type: ignore[misc,unused-ignore]  # premailer has no types
        """premailer, remembering the rules it read from a stylesheet.

        premailer caches parsing but turns every rule back into text on each run,
        which is most of a warm render's time; the stylesheet is the same each time.
        """

        _rules: ClassVar[dict[tuple[str, int], tuple[list[Any], list[Any]]]] = {}

        def _parse_style_rules(self, css_body: str, ruleset_index: int) -> tuple[list[Any], list[Any]]:
            key = (css_body, ruleset_index)
            if key in self._rules:
                return self._rules[key]
            options = (self.strip_important, self.exclude_pseudoclasses, self.include_star_selectors)
            rules = _stored_rules(css_body, ruleset_index, options)
            if rules is None:
                rules, leftover = super()._parse_style_rules(css_body, ruleset_index)
                # Leftover rules are mutable cssutils objects that premailer edits; only
                # stylesheets without any are kept.
                if leftover:
                    return rules, leftover
                _store_rules(css_body, ruleset_index, options, rules)
            if len(self._rules) < 64:
                self._rules[key] = (rules, [])
            return rules, []

    return _Inliner


# --------------------------------------------------------------------------- parsed CSS on disk

# The stylesheet is the template's, the same in every build until the template changes,
# and parsing it (cssutils) was half of inlining's time in a new process. What premailer
# makes of it, (specificity, selector, declarations) for each rule, is kept as JSON in
# the user's cache folder, under a name made of the stylesheet and of every version and
# option that shapes it; the folder is safe to delete.


@lru_cache(maxsize=1)
def _rules_folder() -> Path | None:
    folder = own_cache_folder()
    if folder is None:
        return None  # parse every time
    # Which premailer and cssutils parsed it: their installed files, by size and time
    # (cssutils has no version attribute, and asking the package metadata takes longer
    # than reading the rules). Both are loaded by now: this runs inside premailer.
    installed = [
        (name, os.stat(module.__file__).st_size, os.stat(module.__file__).st_mtime_ns)
        for name in ("premailer.premailer", "cssutils", "cssutils.css.cssstyledeclaration")
        if (module := sys.modules.get(name)) is not None and module.__file__
    ]
    stamp = repr((__version__, installed))
    return folder / f"css-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}"


def _rules_file(css_body: str, ruleset_index: int, options: tuple[bool, ...]) -> Path | None:
    folder = _rules_folder()
    if folder is None:
        return None
    key = json.dumps([css_body, ruleset_index, options])
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def _stored_rules(css_body: str, ruleset_index: int, options: tuple[bool, ...]) -> list[Any] | None:
    """The rules kept from an earlier run, as premailer made them; None if there are none
    (or the file is damaged)."""
    path = _rules_file(css_body, ruleset_index, options)
    if path is None:
        return None
    try:
        stored = json.loads(path.read_bytes())
        # Tuples, as premailer makes them: it sorts rules by their specificity.
        return [(tuple(specificity), selector, bulk) for specificity, selector, bulk in stored]
    except (OSError, ValueError, TypeError):
        return None


def _store_rules(css_body: str, ruleset_index: int, options: tuple[bool, ...], rules: list[Any]) -> None:
    """Keep `rules` for later runs. A cache that cannot be written is left out."""
    path = _rules_file(css_body, ruleset_index, options)
    if path is not None:
        write_cache_json(path, rules)


#: Declarations kept at most; past this, only those of the last run are kept.
_DECLARATIONS_KEPT = 4096


class _StoredDeclarations:
    """premailer's csstext_to_pairs (a style attribute's or a rule's declarations as
    (name, value) pairs, parsed by cssutils), remembering them across runs too: the
    email's style attributes come from the template, the same in every build, and
    parsing them again was a third of inlining's time in a new process.

    It stands in for premailer's function under the names premailer calls it by; what
    it is not given yet, premailer's own function parses, as before."""

    def __init__(self, parse: Any, path: Path | None) -> None:
        self._parse = parse
        # premailer's function takes its lock by its module-level name, which is this.
        self._lock = parse._lock
        self._path = path
        self._known: dict[str, list[tuple[str, str]]] = {}
        self._used: set[str] = set()
        self._added = False
        if path is not None:
            try:
                stored = json.loads(path.read_bytes())
                self._known = {key: [(name, value) for name, value in pairs] for key, pairs in stored.items()}
            except (OSError, ValueError, TypeError, AttributeError):
                self._known = {}  # none yet, or a damaged file: parsed again

    def __call__(self, csstext: str, validate: bool = True) -> list[tuple[str, str]]:
        key = f"{int(validate)}:{csstext}"
        self._used.add(key)
        pairs = self._known.get(key)
        if pairs is None:
            pairs = self._parse(csstext, validate=validate)
            self._known[key] = pairs
            self._added = True
        return pairs

    def save(self) -> None:
        """Keep what this run added for the next ones."""
        if not self._added or self._path is None:
            return
        self._added = False
        if len(self._known) > _DECLARATIONS_KEPT:
            self._known = {key: self._known[key] for key in self._used}
        write_cache_json(self._path, self._known)


@lru_cache(maxsize=1)
def _declarations() -> _StoredDeclarations:
    """The stand-in for premailer's csstext_to_pairs, put in place once per process."""
    # Here, not at the top: premailer only through _import_premailer.
    import premailer.merge_style
    import premailer.premailer

    parse = premailer.merge_style.csstext_to_pairs
    if isinstance(parse, _StoredDeclarations):  # put in place before (tests start over)
        parse = parse._parse
    folder = _rules_folder()
    stored = _StoredDeclarations(parse, folder / "declarations.json" if folder else None)
    premailer.merge_style.csstext_to_pairs = stored
    premailer.premailer.csstext_to_pairs = stored
    return stored


def inline_css(html: str) -> str:
    """Copy the inline stylesheet onto each element's style attribute (Gmail and
    others ignore <style> in places); the <head> blocks marked by keep_head_styles,
    @media rules among them, stay as they are."""
    inlined: str = _inliner_class()(
        html,
        keep_style_tags=False,
        strip_important=False,
        # Pixel widths from MJML are what Outlook lays out with: don't rewrite them;
        # and no bgcolor= on spans and divs, where it means nothing.
        disable_basic_attributes=["width", "height", "bgcolor"],
        disable_link_rewrites=True,
        allow_network=False,
        allow_loading_external_files=False,
        # Email CSS is full of vendor properties (mso-*) cssutils would complain
        # about, on stderr: a clean issue must render silently.
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
    ).transform()
    _declarations().save()
    # premailer drops its marker only from the blocks it looked at.
    return inlined.replace(' data-premailer="ignore"', "")


# A start tag, also inside Outlook's conditional comments. lxml writes '<' and '>' in
# attribute values and text as entities, so this matches tags and nothing else.
_START_TAG = re.compile(r"<[A-Za-z][^<>]*>")
_STYLE_ATTR = re.compile(r'(\sstyle=")([^"]*)"')
_CLASS_ATTR = re.compile(r'\sclass="([^"]*)"')


# A class named in a stylesheet (a digit after the dot is a number: 0.08em).
_CSS_CLASS = re.compile(r"\.(-?[A-Za-z_][\w-]*)")


# A declaration's separators, the quoted strings and brackets to step over whole.
_DECLARATION_PARTS = re.compile(r"\"[^\"]*\"|'[^']*'|&quot;.*?&quot;|\([^)]*\)|;|,\s+")


# Outlook's conditional comments back to back, said as one: MJML's own compiler does
# the same (mergeOutlookConditionnals); mjml-python does not.
_ADJACENT_MSO = re.compile(r"<!\[endif\]-->\s*<!--\[if mso \| IE\]>")


def _short_style(style: str) -> str:
    """Declarations with no white space around their `:` and `;` or after a comma (in a
    font list), outside quoted names and brackets; no empty declaration, no final `;`."""
    declarations: list[str] = []
    current: list[str] = []
    pos = 0
    for part in _DECLARATION_PARTS.finditer(style):
        if part.group() == ";":
            declarations.append("".join(current) + style[pos : part.start()])
            current = []
        elif part.group().startswith(","):
            current.append(style[pos : part.start()] + ",")
        else:
            continue  # a quoted name or brackets: kept as they are
        pos = part.end()
    declarations.append("".join(current) + style[pos:])
    short = []
    for declaration in declarations:
        name, colon, value = declaration.partition(":")
        if colon and name.strip() and value.strip():
            short.append(f"{name.strip()}:{value.strip()}")
    return ";".join(short)


_CSS_SPACE = re.compile(r"\s+")


# White space next to these is not needed: braces, `;`, `,` and, in a declaration, `:`.
# A space before `(` or after `)` is kept (`and (max-width...)` needs it), and so is
# the space before `:` in a selector (`a :hover` is not `a:hover`).
_CSS_AROUND = re.compile(r" ?([{};,]) ?|: ")
_DECLARATION_COLON = re.compile(r"(?<=[{;])([\w-]+) :")
_CSS_STRING_OR_COMMENT = re.compile(r"\"[^\"]*\"|'[^']*'|/\*.*?\*/", re.S)


def _short_css(css: str) -> str:
    """A <style> block's CSS without comments and the white space it needs none of;
    quoted strings are kept as they are."""
    out, pos = [], 0
    for token in _CSS_STRING_OR_COMMENT.finditer(css):
        out.append(_CSS_AROUND.sub(lambda m: m.group(1) or ":", _CSS_SPACE.sub(" ", css[pos : token.start()])))
        out.append("" if token.group().startswith("/*") else token.group())
        pos = token.end()
    out.append(_CSS_AROUND.sub(lambda m: m.group(1) or ":", _CSS_SPACE.sub(" ", css[pos:])))
    # Inside a declaration block a space before `:` means nothing either.
    return _DECLARATION_COLON.sub(r"\1:", "".join(out)).strip()


def _classes_styled(html: str) -> set[str] | None:
    """Every class some <style> block of the email names (in <head>, or in Outlook's
    conditional comments); None when a block matches classes by attribute
    ([class^=...]), which can name any of them."""
    css = " ".join(m.group(2) for m in _STYLE_TAG.finditer(html))
    if re.search(r"\[\s*class\b", css):
        return None
    return set(_CSS_CLASS.findall(css))


def compact(html: str) -> str:
    """The email in fewer bytes, the same to every mail client: style attributes
    without white space between declarations; class names kept only where a <style>
    block names them (the rest served premailer, which has inlined them); MJML's
    <tbody> tags, which every HTML parser puts back by itself; Outlook's back-to-back
    conditional comments said as one."""
    styled = _classes_styled(html)

    def compact_tag(match: re.Match[str]) -> str:
        tag = _STYLE_ATTR.sub(lambda m: f'{m.group(1)}{_short_style(m.group(2))}"', match.group())
        if styled is None:
            return tag
        named = styled  # not None here, also inside keep_styled

        def keep_styled(m: re.Match[str]) -> str:
            kept = " ".join(name for name in m.group(1).split() if name in named)
            return f' class="{kept}"' if kept else ""

        return _CLASS_ATTR.sub(keep_styled, tag)

    html = _START_TAG.sub(compact_tag, html)
    html = _STYLE_TAG.sub(lambda m: f"<style{m.group(1)}>{_short_css(m.group(2))}</style>", html)
    html = _ADJACENT_MSO.sub("", html)
    return html.replace("<tbody>", "").replace("</tbody>", "")


# --------------------------------------------------------------------------- inlined HTML on disk

# `check` and `build` of an unchanged issue compile the same HTML again. What premailer
# makes of it is kept in the user's cache folder, named by the HTML and by the files that
# shape the result (premailer, cssutils, lxml and this module), so such a run does not
# import premailer and cssutils at all (most of `check`'s start-up). The newest
# _INLINED_KEPT are kept; the folder is safe to delete.

_INLINED_KEPT = 32
# Files whose size and time name the kept HTML, by package (found without importing it).
_SHAPING_FILES = (
    ("premailer", ("premailer.py", "merge_style.py")),
    ("cssutils", ("__init__.py", "css/cssstyledeclaration.py")),
    ("lxml", ("__init__.py",)),
)


@lru_cache(maxsize=1)
def _inlined_folder() -> Path | None:
    """Where inlined HTML is kept, or None (inline every time) without a cache folder or
    when the installed packages cannot be told apart."""
    folder = own_cache_folder()
    if folder is None:
        return None
    shaping = installed_stamp(_SHAPING_FILES)
    if shaping is None:
        return None
    own = Path(__file__).stat()
    stamp = repr((__version__, [(__file__, own.st_size, own.st_mtime_ns), *shaping]))
    return folder / f"inlined-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}"


def inline_css_kept(html: str) -> str:
    """`inline_css`, read from the cache folder when this HTML was inlined before by the
    same packages; a damaged or missing entry means inlining it again."""
    folder = _inlined_folder()
    if folder is None:
        return inline_css(html)
    path = folder / f"{hashlib.sha256(html.encode()).hexdigest()}.json"
    try:
        kept = json.loads(path.read_bytes())
        if isinstance(kept, dict) and isinstance(kept.get("inlined"), str):
            inlined: str = kept["inlined"]
            return inlined
    except (OSError, ValueError):
        pass  # not kept yet, or damaged (a half-written file is never renamed into place)
    inlined = inline_css(html)
    write_cache_json(path, {"inlined": inlined})
    keep_newest(folder, _INLINED_KEPT)
    return inlined
