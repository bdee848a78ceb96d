"""Shared by the preview's tests and its benchmark: editing the example issue on disk the
way an editor does, and telling when the page shows the change."""

from __future__ import annotations

import os
import re
from pathlib import Path

ISSUE = Path("issues/2024-w02.yaml")

# For page.wait_for_function(SHOWS_IN_TEXT_AND_FRAMES, arg=title): true once the plain
# text and both email frames show the title.
SHOWS_IN_TEXT_AND_FRAMES = """title => {
  const text = document.getElementById('text');
  if (!text || !text.textContent.includes(title)) return false;
  return ['desktop', 'phone'].every(id => {
    const doc = document.getElementById(id).contentDocument;
    return doc && doc.body && doc.body.textContent.includes(title);
  });
}"""


def first_item_title(path: Path) -> str:
    """The first item's title as the file states it (the text between its quotes)."""
    text = path.read_text(encoding="utf-8")
    items = text.index("\nitems:")
    match = re.compile(r"^\s*-\s*title:\s*(['\"]?)(.+?)\1\s*$", re.M).search(text, items)
    assert match, f"no item title in {path}"
    return match.group(2)


def set_first_item_title(path: Path, new: str, *, atomic: bool = False) -> None:
    """Replace the first item's title. `atomic` saves as many editors do: a new file
    renamed over the old one (which a watcher on the file itself would lose)."""
    text = path.read_text(encoding="utf-8")
    items = text.index("\nitems:")
    old = first_item_title(path)
    at = text.index(old, items)
    changed = text[:at] + new + text[at + len(old) :]
    if atomic:
        tmp = path.with_name(f".{path.name}.swp-new")
        tmp.write_text(changed, encoding="utf-8")
        os.replace(tmp, path)
    else:
        path.write_text(changed, encoding="utf-8")


def break_top_level_title(path: Path) -> int:
    """Misspell the top-level `title:` key; returns its (1-based) line."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        if line.startswith("title:"):
            lines[number - 1] = "titel:" + line[len("title:") :]
            path.write_text("".join(lines), encoding="utf-8")
            return number
    raise AssertionError(f"no top-level title in {path}")


def fix_top_level_title(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    path.write_text(re.sub(r"^titel:", "title:", text, count=1, flags=re.M), encoding="utf-8")
