"""Writing a command's output: streamed to a reader that may stop early, and a warning
when a file of personal data would be offered to git."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

import click

if TYPE_CHECKING:  # for the annotations only: --help loads none of it
    from pathlib import Path


def warn_if_committable(path: Path | None) -> None:
    """One warning line when the file just written (`path`, or for None the file that
    standard output was redirected to) would be offered by `git status` for a commit:
    exports and reports hold personal data, and a `git add .` would publish them."""
    # Imported when the command runs, not at the top: --help loads none of it.
    from highlightsmail.authoring.workspace import PRIVATE_DIR, git_would_offer
    from highlightsmail.errors import display_path

    target = path if path is not None else _stdout_file()
    if target is not None and git_would_offer(target):
        click.echo(
            f"warning: {display_path(target)} is in a git repository and not ignored, so git would offer it "
            f"for a commit; write it in {PRIVATE_DIR}/ (git-ignored) or add it to .gitignore",
            err=True,
        )


def _stdout_file() -> Path | None:
    """The file standard output goes to (`> FILE`), where the system tells (Linux's
    /proc); None for a terminal, a pipe, or when it cannot be told."""

    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd)
        if not stat.S_ISREG(mode.st_mode):
            return None
        name = os.readlink(f"/proc/self/fd/{fd}")
        found = os.stat(name)
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return None
    # Imported when the command runs, not at the top: --help loads none of it.
    from pathlib import Path

    return Path(name) if (found.st_dev, found.st_ino) == (mode.st_dev, mode.st_ino) else None


@contextmanager
def streamed_stdout() -> Iterator[TextIO]:
    """Standard output for streaming; a reader that stops early (`| head`) ends the
    command quietly instead of with a BrokenPipeError traceback."""
    out = sys.stdout
    try:
        yield out
        out.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
