"""The one way this project makes a Jinja environment.

Two kinds of templates exist. The newsletter's look (`templates/`: the issue's MJML and
plain text, the unsubscribe pages) is looked up in the workspace's `templates/` first and
then among the package's defaults, so a workspace overrides any of them file by file. The
tool's own pages (`ui/`: the live preview) belong to the package alone: `init` never
copies them and a workspace cannot replace them.

Every environment escapes HTML in `.html.j2` and `.mjml.j2` templates and nowhere else
(the plain-text part must stay as typed), fails on an undefined variable instead of
printing nothing, and notices an edited template file.

Compiled templates are kept in the user's cache folder (XDG_CACHE_HOME, else ~/.cache,
under highlightsmail/): compiling the issue's two templates was a tenth of `build`.
"""

from __future__ import annotations

import errno
import hashlib
import os
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.bccache import Bucket
from jinja2.loaders import split_template_path

from highlightsmail import __version__
from highlightsmail.files import cache_folder, own_cache_folder

__all__ = [
    "cache_folder",
    "environment",
    "own_cache_folder",
    "package_loader",
    "package_template",
    "ui_environment",
    "workspace_loader",
]

PACKAGE = "highlightsmail"
TEMPLATES = "templates"
UI = "ui"


def package_template(name: str) -> Path:
    """Where the package's default template `name` is (in a checkout, the top-level
    templates/ through the package's link to it)."""
    return Path(__file__).parent / TEMPLATES / name


def package_loader() -> jinja2.BaseLoader:
    """The package's default templates (the newsletter's look, as `init` copies it)."""
    return jinja2.PackageLoader(PACKAGE, TEMPLATES)


class _WorkspaceFiles(jinja2.FileSystemLoader):
    """The workspace's templates. A name that is there but is no file to read (a folder,
    a broken link, a link loop) is an error: falling back to the package's default
    would show a look the editor did not write, with no word why."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Any]:
        for folder in self.searchpath:
            if os.path.lexists(folder) and not os.path.isdir(folder):
                raise OSError(errno.ENOTDIR, "the templates folder is a file, a broken link or a link loop")
            path = os.path.join(folder, *split_template_path(template))
            if os.path.lexists(path) and not os.path.isfile(path):
                raise OSError(
                    errno.ENOENT,
                    "it is a folder, a broken link or a link loop, not a file; fix it, or remove it to use the default",
                )
        return super().get_source(environment, template)


def workspace_loader(templates_dir: Path | str) -> jinja2.BaseLoader:
    """A workspace's `templates/` first, then the package's default of the same name."""
    return jinja2.ChoiceLoader([_WorkspaceFiles(str(templates_dir)), package_loader()])


_ESCAPED = ("mjml.j2", "html.j2")
#: The settings that shape a template's compiled code (the cache is kept apart by them).
_SYNTAX: dict[str, Any] = {"trim_blocks": True, "lstrip_blocks": True, "keep_trailing_newline": True}


class _CompiledTemplates(jinja2.FileSystemBytecodeCache):
    """Compiled templates on disk between runs, safe to delete at any time.

    Jinja files each template's code under its name and path, and uses it only while
    the source's checksum and the Python version match; the folder's name adds Jinja's
    version, this package's version and the syntax settings, so nothing compiled by
    another version or with other settings is ever used. A cache that cannot be read or
    written (read-only home, a damaged file) only means compiling, as without one."""

    def __init__(self, directory: Path) -> None:
        super().__init__(str(directory))
        self._folder = directory

    def load_bytecode(self, bucket: Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except Exception:  # a damaged file fails in pickle's or marshal's own ways: compile anew
            bucket.reset()

    def dump_bytecode(self, bucket: Bucket) -> None:
        try:
            self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            super().dump_bytecode(bucket)
        except OSError:
            pass  # nothing kept: the next run compiles again


@cache
def _bytecode_cache() -> jinja2.BytecodeCache | None:
    folder = own_cache_folder()
    if folder is None:
        return None  # compile every time
    stamp = repr((jinja2.__version__, __version__, _ESCAPED, sorted(_SYNTAX.items())))
    return _CompiledTemplates(folder / f"jinja-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}")


def environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    """A Jinja environment with this project's settings, reading from `loader`."""
    return jinja2.Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(enabled_extensions=_ESCAPED, default_for_string=False, default=False),
        undefined=jinja2.StrictUndefined,
        auto_reload=True,
        bytecode_cache=_bytecode_cache(),
        **_SYNTAX,
    )


@cache
def ui_environment() -> jinja2.Environment:
    """The tool's own pages, from the package only."""
    return environment(jinja2.PackageLoader(PACKAGE, UI))
