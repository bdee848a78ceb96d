"""An issue rendered once, then reused by the commands that follow while nothing that
shapes it has changed.

An editor builds, test-sends and then sends the same issue: each run rendered it anew,
and loaded the renderer to do so (Jinja, Markdown, MJML, the CSS inliner), about a
fifth of a short `send`'s start. The rendering is kept in the cache folder under a
digest of everything it is made from:

- the issue and the settings as validated (after the environment's overrides);
- every file of the workspace's `templates/`, by content;
- this package's own files (code and default templates) and those of the libraries
  rendering uses, by size and modification time, so an upgrade or an edited install
  renders anew;
- the Python version.

What changes any of them renders anew; a missing, damaged or foreign entry means
rendering, as without the cache (`files.own_cache_folder` says when there is none).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from highlightsmail import __version__
from highlightsmail.files import installed_stamp, keep_newest, own_cache_folder, write_cache_json
from highlightsmail.rendering.rendered import RenderedIssue

if TYPE_CHECKING:
    from highlightsmail.authoring.issue import Issue
    from highlightsmail.authoring.workspace import Workspace

__all__ = ["rendered_issue"]

# The packages whose code shapes an issue's HTML and text.
_RENDERING_PACKAGES = (
    "jinja2",
    "markupsafe",
    "mjml",
    "premailer",
    "cssutils",
    "cssselect",
    "lxml",
    "markdown_it",
    "mdurl",
)
_KEPT = 16
_FIELDS = ("slug", "subject", "preheader", "html", "text")


def rendered_issue(issue: Issue, ws: Workspace) -> RenderedIssue:
    """The issue rendered (rendering.render.render_issue), from the cache when it was
    rendered before from the same issue, settings, templates and code."""
    folder = _folder()
    key = _key(issue, ws) if folder is not None else None
    entry = folder / f"{key}.json" if folder is not None and key is not None else None
    if entry is not None:
        kept = _read(entry, issue.slug)
        if kept is not None:
            return kept
    # Here, not at the top: a kept rendering needs none of the renderer.
    from highlightsmail.rendering.render import render_issue

    rendered = render_issue(issue, ws)
    if entry is not None:
        write_cache_json(entry, {name: getattr(rendered, name) for name in _FIELDS})
        keep_newest(entry.parent, _KEPT)
    return rendered


def _read(path: Path, slug: str) -> RenderedIssue | None:
    try:
        kept = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # not kept yet, or damaged (a half-written file is never renamed into place)
    if not isinstance(kept, dict) or not all(isinstance(kept.get(name), str) for name in _FIELDS):
        return None
    if kept["slug"] != slug:
        return None
    return RenderedIssue(**{name: kept[name] for name in _FIELDS})


def _key(issue: Issue, ws: Workspace) -> str | None:
    """The digest of what the rendering is made of, or None when a file cannot be read
    (rendering says what is wrong with a template)."""
    code = _code_stamp()
    if code is None:
        return None
    digest = hashlib.sha256(code.encode())
    digest.update(b"\0issue\0" + issue.slug.encode() + b"\0" + issue.model_dump_json().encode())
    digest.update(b"\0settings\0" + ws.settings.model_dump_json().encode())
    templates = ws.templates_dir
    try:
        for path in sorted(_files(templates)):
            digest.update(b"\0template\0" + str(path.relative_to(templates)).encode("utf-8", "surrogateescape"))
            digest.update(b"\0" + path.read_bytes())
    except OSError:
        return None
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    """Every file under `folder` but compiled Python (none when there is no such folder)."""
    found: list[Path] = []
    for top, dirs, names in os.walk(folder):
        dirs[:] = [name for name in dirs if name != "__pycache__"]
        found.extend(Path(top, name) for name in names)
    return found


@lru_cache(maxsize=1)
def _code_stamp() -> str | None:
    """This package's files and the rendering libraries', by size and time (None when
    they cannot be read: then nothing is kept)."""
    libraries = installed_stamp((name, ("__init__.py",)) for name in _RENDERING_PACKAGES)
    if libraries is None:
        return None
    stamps: list[tuple[str, int, int]] = []
    package = Path(__file__).resolve().parent.parent
    try:
        for path in sorted(_files(package)):
            found = path.stat()
            stamps.append((str(path.relative_to(package)), found.st_size, found.st_mtime_ns))
    except OSError:
        return None
    return repr((__version__, sys.version, stamps, libraries))


@lru_cache(maxsize=1)
def _folder() -> Path | None:
    folder = own_cache_folder()
    return folder / "rendered" if folder is not None else None
