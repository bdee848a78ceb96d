"""What every command shares: the workspace, found only when a command needs it, the
port option's range, and running a one-shot command without the cyclic collector."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # for the annotations only: --help loads none of it
    from pathlib import Path

    from highlightsmail.authoring.workspace import Workspace


class Ctx:
    """Per-invocation state: the workspace is found only when a command needs it."""

    def __init__(self, workspace: str | None) -> None:
        self._override = workspace
        self._ws: Workspace | None = None

    @property
    def ws(self) -> Workspace:
        if self._ws is None:
            # Imported when the command runs, not at the top: --help loads none of it.
            from highlightsmail.authoring.workspace import load_workspace

            self._ws = load_workspace(self._override)
        return self._ws


pass_ctx = click.make_pass_decorator(Ctx)


@contextlib.contextmanager
def one_shot() -> Iterator[None]:
    """Run a command that loads, renders once and exits without cyclic garbage collection.

    Nearly all it makes (modules, models, templates) lives until the process ends, and
    the collector would walk it again and again while the command runs, then once more
    at exit, for next to nothing to free: together a sixth of `check`'s time. The
    files and streams the command opens are closed by then, so no finalizer is lost."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # What the command made counts as old from here (frozen, then back in the oldest
        # generation): turning the collector on again does not start by walking it all.
        # The last pass, at exit, skips it too (cli/main.py freezes everything then).
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


PORT = click.IntRange(0, 65535)


class PathArg(click.Path):
    """click.Path giving a pathlib.Path, as path_type=Path does, with pathlib imported
    only when a command is given one: --help loads none of it (pathlib with
    urllib.parse is a twentieth of --help)."""

    def convert(self, value: str | os.PathLike[str], param: click.Parameter | None, ctx: click.Context | None) -> Path:
        # Imported when a command runs, not at the top: --help loads none of it.
        from pathlib import Path

        return Path(os.fsdecode(super().convert(value, param, ctx)))


def slug_of(ws: Workspace, issue: str) -> str:
    """The slug of ISSUE (a path, a slug or `latest`), for commands about a dispatch: an
    issue that was sent keeps its record when its file is removed or renamed since."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.errors import HighlightsError

    try:
        return ws.issue_path(issue).stem
    except HighlightsError:
        if ws.database_exists():
            # Imported when the command runs, not at the top: --help loads none of it.
            from highlightsmail.store import Store

            with Store.open(ws) as store:
                if store.dispatch_info(issue) is not None:
                    return issue
        raise
