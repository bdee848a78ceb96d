"""The server's log writer (web/accesslog.py): the same lines as uvicorn's, in the same
order, written once per turn of the event loop."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import AccessFormatter

from highlightsmail.web import accesslog
from highlightsmail.web.application import uvicorn_config

_T = TypeVar("_T")
_FMT = LOGGING_CONFIG["formatters"]["access"]["fmt"]


class _Stream(io.StringIO):
    """A stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def _apart(work: Callable[[], _T]) -> _T:
    """`work()` in a thread of its own: the test session's main thread may have an event
    loop running already (the browser tests' driver keeps one), which a line logged
    there would wait for."""
    results: list[_T] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            results.append(work())
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]
    return results[0]


def _record(
    path: str, status: int = 200, client: str = "127.0.0.1:5000", level: int = logging.INFO
) -> logging.LogRecord:
    args = (client, "POST", path, "1.1", status)
    return logging.LogRecord("uvicorn.access", level, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None)


@pytest.mark.parametrize(
    ("status", "client", "level"),
    [(200, "127.0.0.1:5000", logging.INFO), (404, "[::1]:443", logging.INFO), (599, "10.0.0.1:1", logging.WARNING)],
)
def test_the_access_line_is_uvicorns(status: int, client: str, level: int) -> None:
    record = _record("/u/u1.[redacted]?a=%20b", status, client, level)
    ours = accesslog.AccessLine(_FMT, use_colors=False).format(record)
    assert ours == AccessFormatter(_FMT, use_colors=False).format(
        _record("/u/u1.[redacted]?a=%20b", status, client, level)
    )
    assert f'{client} - "POST /u/u1.[redacted]?a=%20b HTTP/1.1" {status}' in ours


def test_lines_logged_in_one_turn_are_written_together_at_the_next() -> None:
    stream = _Stream()
    handler = accesslog.TurnHandler(stream)

    async def serve() -> list[str]:
        for n in range(3):
            handler.handle(logging.makeLogRecord({"msg": f"line {n}"}))
        before = list(stream.writes)  # nothing written within the turn
        await asyncio.sleep(0)
        return before

    assert _apart(lambda: asyncio.run(serve())) == []
    assert stream.writes == ["line 0\nline 1\nline 2\n"]


def test_a_line_from_another_thread_comes_after_those_kept() -> None:
    stream = _Stream()
    handler = accesslog.TurnHandler(stream)

    async def serve() -> None:
        handler.handle(logging.makeLogRecord({"msg": "from the loop"}))
        elsewhere = threading.Thread(target=handler.handle, args=(logging.makeLogRecord({"msg": "from a thread"}),))
        elsewhere.start()
        elsewhere.join()
        assert stream.getvalue() == "from the loop\nfrom a thread\n"  # at once, in order

    _apart(lambda: asyncio.run(serve()))


def test_flush_writes_what_a_stopped_loop_left() -> None:
    stream = _Stream()
    handler = accesslog.TurnHandler(stream)

    def serve_and_stop() -> None:
        loop = asyncio.new_event_loop()
        try:

            async def last() -> None:
                asyncio.get_running_loop().stop()  # this turn is the loop's last
                handler.handle(logging.makeLogRecord({"msg": "the last request"}))

            loop.run_until_complete(last())
        finally:
            loop.close()

    _apart(serve_and_stop)
    assert stream.getvalue() == ""
    handler.flush()
    assert stream.getvalue() == "the last request\n"


def test_batch_takes_the_place_of_uvicorns_handlers_with_the_same_output() -> None:
    uvicorn_config(lambda scope, receive, send: None)  # uvicorn's logging, as `serve` sets it up
    access = logging.getLogger("uvicorn.access")
    old = access.handlers[0]
    assert isinstance(old, logging.StreamHandler)
    stream = _Stream()
    old.setStream(stream)
    made = accesslog.batch("uvicorn", "uvicorn.access")
    try:
        assert [type(h) for h in access.handlers] == [accesslog.TurnHandler]
        assert {h.stream for h in made} >= {stream}
        _apart(lambda: access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/healthz", "1.1", 200))
        assert stream.getvalue() == 'INFO:     127.0.0.1:1 - "GET /healthz HTTP/1.1" 200 OK\n'
    finally:
        uvicorn_config(lambda scope, receive, send: None)  # uvicorn's own handlers again
