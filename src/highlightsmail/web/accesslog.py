"""The server's log lines, written once per turn of the event loop rather than once per
request, and the access line made straight from its record. uvicorn's access log took
about a sixth of a one-click POST's server time (370-390 us of CPU with it, 320 without):
its formatter copies each record twice, and each line was a write and a flush of its own.

`TurnHandler` is a StreamHandler. A record logged in a running event loop's thread (the
access log, and uvicorn's own lines) is formatted at once and kept; the lines kept in one
turn of the loop are written together, at the start of the next. A record logged in any
other thread, or with no loop running, writes what is kept and itself at once, so the
lines stay in order. Whatever is kept when the server stops is written then (`flush`,
and logging's own at exit): a `kill -9` loses at most the lines of one turn.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
from typing import Any, TextIO

from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import AccessFormatter

#: uvicorn's access line, which `AccessLine` writes as it does.
_ACCESS_FORMAT = LOGGING_CONFIG["formatters"]["access"]["fmt"]


class TurnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler writing, in an event loop's thread, once per turn of the loop."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._kept: list[str] = []
        self._due = False  # a write is scheduled in the loop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not the loop's thread: now, after whatever is kept
            loop = None
        self._kept.append(line)
        if loop is None:
            self._write(record)
        elif not self._due:
            self._due = True
            loop.call_soon(self._write, record)

    def _write(self, record: logging.LogRecord) -> None:
        try:
            self.flush()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Writes the lines kept, then flushes the stream."""
        with self.lock:  # type: ignore[union-attr]
            self._due = False
            if self._kept:
                text = "".join(self._kept)
                self._kept.clear()
                self.stream.write(text)
            super().flush()


@functools.cache
def _status(code: int) -> str:
    try:
        return f"{code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} "


class AccessLine(AccessFormatter):
    """uvicorn's access line without colours, made straight from the record's arguments:
    uvicorn's copies the record twice on its way (a third of a line's cost)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        args: Any = record.args
        if not isinstance(args, tuple) or len(args) != 5:  # not uvicorn's access record
            return super().formatMessage(record)
        client, method, path, version, status = args
        level = record.levelname
        return f'{level}:{" " * (8 - len(level))} {client} - "{method} {path} HTTP/{version}" {_status(int(status))}'


def batch(*names: str) -> list[TurnHandler]:
    """Each stream handler of these loggers becomes a TurnHandler on the same stream,
    with the same level and filters, and the same formatter (uvicorn's access line
    without colours: `AccessLine`). The new handlers."""
    made = []
    for name in names:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if type(old) is not logging.StreamHandler:
                continue
            new = TurnHandler(old.stream)
            lean = (
                type(old.formatter) is AccessFormatter
                and not old.formatter.use_colors
                and old.formatter._fmt == _ACCESS_FORMAT
            )
            new.setFormatter(AccessLine(_ACCESS_FORMAT, use_colors=False) if lean else old.formatter)
            new.setLevel(old.level)
            for f in old.filters:
                new.addFilter(f)
            logger.removeHandler(old)
            logger.addHandler(new)
            made.append(new)
    return made


__all__ = ["TurnHandler", "batch"]
