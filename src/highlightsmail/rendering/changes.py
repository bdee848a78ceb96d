"""What changed in a sent issue since it was sent: the issue file as its dispatch kept it
(store/messages.py) against the file now, part by part (the intro, each item, the
outro), each changed part with a line-by-line diff of its text, for the archive's
"Corrected on DATE" notice."""

from __future__ import annotations

import difflib
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import ValidationError

from highlightsmail.authoring.issue import Issue, Item

__all__ = ["Change", "Changes", "changes", "issue_from_text", "last_changed"]


@dataclass(frozen=True)
class Change:
    """One changed part: its label, where it is on the page (an anchor, or ""), and the
    diff as (kind, line) pairs, kind one of " " (kept), "-" (as sent), "+" (now)."""

    label: str
    anchor: str
    lines: list[tuple[str, str]]


@dataclass(frozen=True)
class Changes:
    """Every changed part, and the numbers of the items that changed (or are new)."""

    parts: list[Change]
    items: frozenset[int]

    def __bool__(self) -> bool:
        return bool(self.parts)


def issue_from_text(text: str) -> Issue | None:
    """The issue a kept file's text held; None when it no longer reads as one (the
    schema moved on): its earlier text is then not shown part by part."""
    try:
        data = yaml.safe_load(text)
        return Issue.model_validate(data) if isinstance(data, dict) else None
    except (yaml.YAMLError, ValidationError, ValueError):
        return None


def _item_text(item: Item) -> str:
    lines = [item.title, "", item.summary.strip()]
    lines += [f"{link.label}: {link.url}" for link in item.links]
    if item.image:
        lines.append(f"Image: {item.image.url} ({item.image.alt})")
    if item.tags:
        lines.append("Tags: " + ", ".join(item.tags))
    return "\n".join(lines)


def _diff(before: str, after: str) -> list[tuple[str, str]]:
    """The lines of both, each marked kept, removed or added, in reading order."""
    out: list[tuple[str, str]] = []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        kind = line[:1]
        if kind in (" ", "-", "+"):
            out.append((kind, line[2:]))
    return out


def changes(sent: Issue, now: Issue) -> Changes:
    """The parts of `now` that differ from `sent` (items compared by their place)."""
    parts: list[Change] = []
    items: set[int] = set()
    head_then = "\n".join([sent.title, sent.intro or ""]).strip()
    head_now = "\n".join([now.title, now.intro or ""]).strip()
    if head_then != head_now:
        parts.append(Change("Title and introduction", "", _diff(head_then, head_now)))
    for number in range(1, max(len(sent.items), len(now.items)) + 1):
        before = _item_text(sent.items[number - 1]) if number <= len(sent.items) else ""
        after = _item_text(now.items[number - 1]) if number <= len(now.items) else ""
        if before != after:
            if number <= len(now.items):
                items.add(number)
            anchor = f"item-{number}" if number <= len(now.items) else ""
            parts.append(Change(f"Item {number}", anchor, _diff(before, after)))
    if (sent.outro or "").strip() != (now.outro or "").strip():
        parts.append(Change("Closing note", "", _diff((sent.outro or "").strip(), (now.outro or "").strip())))
    return Changes(parts, frozenset(items))


def last_changed(path: Path, mtime_ns: int) -> datetime:
    """When the issue file was last changed: its last commit's time when git tracks it
    unchanged, else its modification time. A clone or checkout sets every file's mtime to
    that moment, which would move each corrected issue's date and feed entry on every
    build from a fresh checkout (a site built in CI)."""
    modified = datetime.fromtimestamp(mtime_ns // 1_000_000_000, UTC)
    git = shutil.which("git")
    if git is None:
        return modified
    try:
        # Outside a repository, untracked or edited since its last commit: the mtime is right.
        dirty = _git(git, path, "status", "--porcelain", "--")
        if dirty is None or dirty:
            return modified
        stamp = _git(git, path, "log", "-1", "--format=%ct", "--")
    except (OSError, subprocess.SubprocessError):
        return modified
    return datetime.fromtimestamp(int(stamp), UTC) if stamp and stamp.isdigit() else modified


def _git(git: str, path: Path, *args: str) -> str | None:
    """git's output about `path` (run in its folder), or None when git says no."""
    done = subprocess.run(
        [git, *args, path.name], cwd=path.parent, capture_output=True, text=True, timeout=10, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None
