"""Text and links that can show a reader something other than what they are.

Each check takes a value of the issue and returns sentences for lint's warnings (it
does not know where the value is): invisible characters that hide or reorder text, a
link label that names another site than the link's, a host whose letters imitate
another script's, and a URL whose first part is only a user name.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from urllib.parse import urlsplit

# Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): they
# reorder the characters that follow, so text reads differently from what it is
# ("Trojan Source", CVE-2021-42574). The marks U+200E/U+200F are left alone: they only
# settle the direction of neutral characters in right-to-left text.
_BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# Characters with no width: they split a word (so a filter misses it) or hide text.
_ZERO_WIDTH = "\u200b\u2060\u2061\u2062\u2063\u2064\ufeff\u180e"
# The joiners have a job between letters of joining scripts (Arabic, Indic) and in
# emoji sequences; next to an ASCII character, or at either end, they only hide.
_JOINERS = "\u200c\u200d"
_ANY_HIDDEN = re.compile(f"[{_BIDI_CONTROLS}{_ZERO_WIDTH}{_JOINERS}]")


def _described(ch: str) -> str:
    return f"U+{ord(ch):04X} {unicodedata.name(ch, 'UNNAMED')}"


def hidden_characters(value: str) -> Iterator[tuple[str, str]]:
    """(character, sentence) for each kind of invisible character in `value` that can
    deceive a reader, once per character, in order of first appearance."""
    said: set[str] = set()
    for found in _ANY_HIDDEN.finditer(value):
        i, ch = found.start(), found.group()
        if ch in said:
            continue
        if ch in _BIDI_CONTROLS:
            why = "a bidirectional control: it reorders the text after it, so it reads differently from what it is"
        elif ch in _ZERO_WIDTH or (ch in _JOINERS and _joiner_hides(value, i)):
            why = "an invisible character: it can split a word or hide text from the reader"
        else:
            continue
        said.add(ch)
        count = value.count(ch)
        times = f" ({count} times)" if count > 1 else ""
        yield ch, f"holds {_described(ch)}{times}, {why}; remove it"


def _joiner_hides(value: str, i: int) -> bool:
    before = value[i - 1] if i > 0 else ""
    after = value[i + 1] if i + 1 < len(value) else ""
    return not before or not after or before.isascii() or after.isascii()


def yaml_escapes(ch: str) -> tuple[str, ...]:
    """How a YAML double-quoted string may spell `ch` (to find it in the file)."""
    code = ord(ch)
    return (f"\\u{code:04x}", f"\\u{code:04X}", f"\\U{code:08x}", f"\\U{code:08X}")


# --------------------------------------------------------------------------- hosts

# File names that look like host names in a label ("README.md", "train.py"): the
# last part is a top-level domain too, but here it names a file.
_FILE_EXTENSIONS = frozenset(
    [
        "md",
        "rst",
        "txt",
        "py",
        "ipynb",
        "js",
        "ts",
        "rs",
        "go",
        "rb",
        "sh",
        "pl",
        "java",
        "kt",
        "cs",
        "cpp",
        "json",
        "yaml",
        "yml",
        "toml",
        "csv",
        "tsv",
        "pdf",
        "html",
        "htm",
        "xml",
        "zip",
        "gz",
        "tar",
        "png",
        "jpg",
        "jpeg",
        "gif",
        "svg",
        "webp",
        "mp4",
        "mov",
        "bin",
        "pt",
        "ckpt",
        "onnx",
        "safetensors",
    ]
)
_BARE_HOST = re.compile(
    r"(?P<host>(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+(?P<tld>[^\W\d_]{2,63}))\.?(?::\d{1,5})?(?P<rest>[/?#]\S*)?",
    re.IGNORECASE,
)


def _idna(host: str) -> str:
    """`host` lower-cased, in its ASCII (IDNA) form where it has one."""
    host = host.strip().rstrip(".").lower()
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def _ascii_host(host: str) -> str:
    """`host` as compared: its IDNA form, without `www.`."""
    return _idna(host).removeprefix("www.")


def _same_site(a: str, b: str) -> bool:
    """The same host, or one under the other (example.org and blog.example.org)."""
    a, b = _ascii_host(a), _ascii_host(b)
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def label_host(label: str) -> str | None:
    """The host a link label names when the label reads as an address: a URL
    (`https://paypal.com/login`) or a bare host name (`paypal.com`, `www.example.org/x`)."""
    label = label.strip().strip("<>").strip()
    if not label or any(ch.isspace() for ch in label):
        return None
    if "://" in label:
        try:
            return urlsplit(label).hostname or None
        except ValueError:
            return None
    match = _BARE_HOST.fullmatch(label)
    if match is None:
        return None
    host = match["host"]
    looks_like_file = match["tld"].lower() in _FILE_EXTENSIONS and not match["rest"]
    if looks_like_file and not host.lower().startswith("www."):
        return None
    return host


def label_mismatch(label: str, url: str) -> str | None:
    """The sentence for a label that names another host than the link goes to."""
    named = label_host(label)
    try:
        target = urlsplit(url).hostname
    except ValueError:
        return None
    if named is None or not target or _same_site(named, target):
        return None
    return f"the label {label.strip()!r} reads as an address on {named}, but the link goes to {target}"


def userinfo(url: str) -> str | None:
    """The sentence for a URL with a user name before its host
    (`https://paypal.com@evil.example/` goes to evil.example)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if "@" not in parts.netloc or not host:
        return None
    before = parts.netloc.rpartition("@")[0]
    return (
        f"{url} goes to {host}: the part before '@' ({before}) is a user name, not where the link "
        "leads; readers may take it for the site"
    )


# --------------------------------------------------------------------------- scripts

# Combinations of scripts a single label may hold without being suspect (the "highly
# restrictive" level of Unicode Technical Standard #39): Japanese, Chinese and Korean
# writing, each with Latin.
_SCRIPT_SETS = (
    frozenset({"Latin", "Han", "Hiragana", "Katakana"}),
    frozenset({"Latin", "Han", "Bopomofo"}),
    frozenset({"Latin", "Han", "Hangul"}),
)
# Cyrillic and Greek letters that look like Latin ones, for a label made only of them
# in a host that is otherwise Latin ("аррӏе.com").
_LATIN_LOOKALIKES = dict(
    zip("асеорхуіјѕԁӏһԛԝοαινκρτυχ", "aceopxyijsdlhqwoaivkptux", strict=True),
)


def _script(ch: str) -> str | None:
    """The script of a letter, from its Unicode name (None for digits, hyphens)."""
    if not ch.isalpha():
        return None
    words = unicodedata.name(ch, "").split()
    if words and words[0] in ("FULLWIDTH", "HALFWIDTH"):
        words = words[1:]
    if not words:
        return None
    if words[0] == "CJK":
        return "Han"
    return words[0].capitalize()


def _unicode_label(label: str) -> str:
    if label.startswith("xn--"):
        try:
            return label.encode("ascii").decode("idna")
        except UnicodeError:
            return label
    return label


def mixed_scripts(url: str) -> str | None:
    """The sentence for a host with a label that mixes scripts (`pаypal.com` with a
    Cyrillic `а`), or a label of Cyrillic or Greek look-alikes of Latin letters in an
    otherwise Latin host."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    labels = [_unicode_label(label) for label in host.rstrip(".").split(".")]
    scripts = [{s for s in map(_script, label) if s} for label in labels]
    what = _mixed_label(labels, scripts) or _lookalike_label(labels, scripts)
    if what is None:
        return None
    # Both spellings: the look-alike alone would read as the name it imitates.
    unicode_form, ascii_form = ".".join(labels), _idna(host)
    shown = f"{unicode_form} ({ascii_form})" if unicode_form != ascii_form else host
    return f"the host {shown} {what}: it may imitate another site's name"


def _mixed_label(labels: list[str], scripts: list[set[str]]) -> str | None:
    for label, found in zip(labels, scripts, strict=True):
        if len(found) > 1 and not any(found <= allowed for allowed in _SCRIPT_SETS):
            return f"mixes {' and '.join(sorted(found))} letters in '{label}'"
    return None


def _lookalike_label(labels: list[str], scripts: list[set[str]]) -> str | None:
    if not any(found == {"Latin"} for found in scripts):
        return None
    for label, found in zip(labels, scripts, strict=True):
        if found and found <= {"Cyrillic", "Greek"} and all(ch in _LATIN_LOOKALIKES for ch in label):
            latin = "".join(_LATIN_LOOKALIKES[ch] for ch in label)
            return f"spells '{label}' in {' and '.join(sorted(found))} letters that look like the Latin '{latin}'"
    return None


__all__ = [
    "hidden_characters",
    "label_host",
    "label_mismatch",
    "mixed_scripts",
    "userinfo",
    "yaml_escapes",
]
