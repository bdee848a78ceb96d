"""One root exception for everything a user should see, and the problem records
that validation and lint produce."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TextIO

import click


class HighlightsError(click.ClickException):
    """Root of every error a user should see: click prints the message and exits 1."""

    exit_code = 1


def reason(exc: BaseException) -> str:
    """Why something failed, in one line: our own errors' message, or any other's type
    and text (a bug in a backend, a driver's error), as the ledger and the log keep it."""
    return exc.format_message() if isinstance(exc, HighlightsError) else f"{type(exc).__name__}: {exc}"


class _Closable(Protocol):
    def close(self) -> None: ...


def close_quietly(*things: _Closable | None) -> None:
    """Close each of `things` (None is skipped); one that fails to close, such as a dead
    connection, is not worth an error and does not stop the others closing."""
    for thing in things:
        if thing is None:
            continue
        try:
            thing.close()
        except Exception:
            pass


@dataclass(frozen=True)
class Problem:
    """One finding in a file, with where it is (1-based line and column)."""

    file: str
    line: int
    col: int
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        tag = "" if self.severity == "error" else "warning: "
        return f"{self.file}:{self.line}:{self.col}: {tag}{self.message}"


class ValidationFailed(HighlightsError):
    """A file is invalid; carries every problem found, all reported at once."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def format_message(self) -> str:  # click prefixes "Error: " otherwise
        return self.message

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.format_message(), file=file, err=file is None)


class InvalidToken(HighlightsError):
    """An unsubscribe token that is malformed, forged, altered or for another purpose."""


class HighlightsWarning(UserWarning):
    """Something a user should know that does not stop the work (shown as `warning: ...`)."""


def show_warnings_plainly() -> None:
    """Print our warnings as one `warning: ...` line on stderr, not Python's
    file:line form with a source line; other warnings keep the default display."""
    default = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, HighlightsWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def display_path(path: Path | str) -> str:
    """A path as the user would type it: relative to the CWD when inside it, on one
    line (a line break or control character in a file name shows as its escape, so
    a message naming the file stays one line)."""
    p = Path(path)
    try:
        # The path itself, not where a link at its end points (a broken link, a loop).
        shown = str(Path(os.path.abspath(p)).relative_to(os.getcwd()))
    except (ValueError, OSError):
        try:
            shown = str(p.resolve().relative_to(Path.cwd().resolve()))
        except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
            shown = str(p)
    if shown.isprintable():
        return shown
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in shown)
