"""`GET /healthz`, and what it reads: whether the database answers.

/healthz answers 200 `ok`, or 503 with the one line saying why the database cannot be
used, within HEALTH_WAIT_S whatever the database does, so a load balancer takes the
process out of rotation. The log says once when the database goes and once when it is
back, however many requests fail between.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from highlightsmail.urls import HEALTH

log = logging.getLogger("highlightsmail.web")  # one of redaction.LOGGERS

#: /healthz answers within this, whatever the database does: a load balancer gives up on
#: a check after a second or a few, and a check that waited out a connect timeout
#: (libpq's shortest is 2 s; the pool's wait, 5 s) looked like a dead process.
HEALTH_WAIT_S = 0.5
#: While the database cannot be used, it is asked again this often, so that its return
#: is noticed (and logged) with or without requests.
HEALTH_RETRY_S = 2.0


class DatabaseHealth:
    """Whether the database answers, and one line in the log at each change: when it
    goes (with the reason) and when it is back, however many requests fail between.

    A check runs in a thread of its own, one at a time; /healthz waits at most
    HEALTH_WAIT_S for it, then answers with the state last known (or that the database
    did not answer in time), and the check's outcome counts when it comes. A request
    that failed on the database starts a check too. While the database is gone, it is
    checked every HEALTH_RETRY_S until it is back."""

    def __init__(self, check: Callable[[], str | None], where: str) -> None:
        self._check = check
        self._where = where
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._running: Future[str | None] | None = None
        self._watching = False
        self._closed = threading.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")

    def start(self) -> Future[str | None]:
        """The check under way, or a new one (once closed: the state last known)."""
        with self._lock:
            if self._closed.is_set():
                known: Future[str | None] = Future()
                known.set_result(self._problem)
                return known
            if self._running is None or self._running.done():
                self._running = self._thread.submit(self._run)
            return self._running

    async def problem(self) -> str | None:
        """Why the database cannot be used now (None: it answers), within HEALTH_WAIT_S."""
        running = asyncio.wrap_future(self.start())
        try:
            return await asyncio.wait_for(asyncio.shield(running), HEALTH_WAIT_S)
        except TimeoutError:
            return self._problem or f"{self._where}: the database did not answer within {HEALTH_WAIT_S:g} s"

    def _run(self) -> str | None:
        problem = self._check()
        with self._lock:
            before, self._problem = self._problem, problem
            watch = problem is not None and not self._watching and not self._closed.is_set()
            self._watching |= watch
        if problem is not None and before is None:
            log.error("database unavailable: %s", problem)
        elif problem is None and before is not None:
            # A warning, as the going was an error: both reach a log that shows only those.
            log.warning("database available again: %s", self._where)
        if watch:
            threading.Thread(target=self._watch, name="health-watch", daemon=True).start()
        return problem

    def _watch(self) -> None:
        try:
            while not self._closed.wait(HEALTH_RETRY_S):
                if self.start().result() is None:
                    return
        except CancelledError:  # the app stopped meanwhile
            pass
        finally:
            with self._lock:
                self._watching = False

    def close(self) -> None:
        with self._lock:
            self._closed.set()
        self._thread.shutdown(wait=False, cancel_futures=True)


def health_route(health: DatabaseHealth) -> Route:
    """The /healthz route, answering from `health`."""

    async def healthz(request: Request) -> Response:
        """200 `ok`, or 503 with the one line saying why the database cannot be used."""
        problem = await health.problem()
        if problem is not None:
            return PlainTextResponse(f"database unavailable: {problem}", status_code=503)
        return PlainTextResponse("ok")

    return Route(HEALTH, healthz, methods=["GET"])


__all__ = ["HEALTH_RETRY_S", "HEALTH_WAIT_S", "DatabaseHealth", "health_route"]
