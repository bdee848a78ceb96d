"""The one way the web app reaches the database: every route group (unsubscribe, signup,
webhooks) and the health check ask `AppDatabase.store()` for the Store of the thread they
run in.

- PostgreSQL: one Store for the app, shared by every thread, borrowing a connection from
  its pool for each call (the pool replaces connections lost with a server restart).
  Several processes on several machines may serve one list: every write is one
  transaction in the database.
- SQLite: a Store per thread, so requests served in different threads never share a
  connection, and pages read while another request writes. Each is kept for the
  thread's life: when the last connection to a WAL database closes, SQLite checkpoints
  and removes the WAL, which costs a sync per request. The app's writes (`writing()`)
  take turns on a lock before they ask SQLite: SQLite makes a writer that finds the
  file locked sleep in growing steps, so with many at once some waited seconds (a
  signup's slowest answer went from 0.3 s to 2 s). The store's busy timeout and BEGIN
  IMMEDIATE still let a write wait out another process (an import) instead of failing.

A short read (`read()`, such as the page of GET /u/TOKEN) runs on SQLite in the event
loop's thread itself, over a Store kept for it: a read in WAL mode does not wait for
writers, and the hop to a worker thread cost more than the read (under load each hop
waited for the interpreter lock behind the loop: GET /u/TOKEN answered at 0.3 of a bare
app's rate, p99 45 ms). Opening that Store may wait (a schema to check while an import
writes), so it is opened in a worker thread. A write the routes make (`write()`) runs in
the app's one writer thread: the writes take turns anyway, and twenty worker threads
queueing on the lock each had to win the interpreter lock back from the loop at every
step (a one-click POST's p99 was 250 ms).

A write that is one short transaction (`write(..., quick=True)`: an unsubscribe, a
request to join) is made on SQLite in the event loop's thread itself, over a Store kept
for it that never waits for a lock. The quick writes asked in one turn of the loop are
made in its next turn as one transaction, each in a savepoint of its own: a commit
writes the log's pages of every table and index it touched, so one commit for many
requests writes each page once (a commit was a third of a signup's SQLite time). While
the writer thread is at one of the app's writes (or a checkpoint), they wait for it a
moment in the loop: queued behind it, each request would find the writer busy with the
one before, and all would go there from then on. When that wait runs out, another
process holds the file (an import, a send), or anything else keeps them from being made
at once, each is made in the writer thread as any other. A handover to the writer thread
and back cost more than the write: each step of the write waited for the interpreter
lock while the event loop held it (a one-click POST answered at 0.32-0.40 of a bare
app's rate). Such a work must change nothing outside its one transaction (a signup's
email is queued once the write has returned, so once it is committed), so that it can be
made again in the writer thread when its transaction could not be. That Store's commits
never copy the log into the file (SQLite's checkpoint syncs the disk): the writer thread
does, after every _CHECKPOINT_EVERY quick writes.

Nothing is opened before it is needed, and an opening that fails is tried again by the
next request: a database that cannot be used yet (an empty PostgreSQL one before
`highlights db upgrade`, a read-only file) is used as soon as it can be, without a
restart.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from starlette.concurrency import run_in_threadpool

from highlightsmail.dburl import describe_url
from highlightsmail.errors import HighlightsError, close_quietly, display_path
from highlightsmail.store import Place, Store, UnusableDatabase
from highlightsmail.web.health import DatabaseHealth

#: The connect timeout of the health check on PostgreSQL: the shortest libpq takes.
_CHECK_TIMEOUT_S = 2
#: Quick writes between two checkpoints in the writer thread (about SQLite's own 1,000
#: pages of log for an unsubscribe's five).
_CHECKPOINT_EVERY = 200
#: How often, and how long apart, the quick writes waiting look again for the writer
#: thread to be done before they go there themselves (at most 20 ms).
_QUICK_TRIES = 20
_QUICK_WAIT_S = 0.001

_T = TypeVar("_T")
_V = TypeVar("_V")


@dataclass(frozen=True)
class _Kept:
    """A thread's SQLite Store, with what it was opened on."""

    store: Store
    renewal: int  # AppDatabase's count of renewals when it was opened
    file: tuple[int, int] | None  # the file's device and inode then


def _file_of(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


@dataclass(frozen=True)
class _Asked(Generic[_T]):
    """A quick write waiting for its turn of the event loop: the work, and the future
    that gets `(what it gave,)`, its exception, or None (made in the writer thread)."""

    work: Callable[[Store], _T]
    done: asyncio.Future[tuple[_T] | None]


def _tell(done: asyncio.Future[_V], outcome: _V | BaseException) -> None:
    """Give a waiting write its outcome: what its work gave, or what it raised."""
    if done.done():  # the request may have gone (its client closed the connection)
        return
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)


def _made_together(store: Store, asked: list[_Asked[Any]]) -> list[tuple[Any] | BaseException | None]:
    """Each work made over `store`: alone, a work is its own transaction; several make
    one transaction, each in a savepoint of its own, so a work that raises is undone
    alone and the others commit. None for every work when the transaction could not be
    made or committed (busy, or worse): the writer thread makes each again, and says
    what is wrong if anything is, which is why a quick work changes nothing outside
    its transaction."""
    if len(asked) == 1:
        try:
            return [(asked[0].work(store),)]
        except UnusableDatabase:
            return [None]
        except Exception as exc:
            return [exc]
    outcomes: list[tuple[Any] | BaseException | None] = []
    try:
        with store.transaction():
            for each in asked:
                try:
                    with store.transaction():  # a savepoint of its own
                        outcomes.append((each.work(store),))
                except UnusableDatabase:
                    raise
                except Exception as exc:
                    outcomes.append(exc)
    except UnusableDatabase:
        return [None] * len(asked)
    return outcomes


class AppDatabase:
    """The web app's database, for every route group. `store()` is the Store to use in
    the calling thread, `writing()` the same for a write; `unusable()` is what a request
    that found the database unusable says; `close()` closes every Store, when the app
    stops."""

    def __init__(self, place: Place, *, clock: Callable[[], datetime] | None = None) -> None:
        self._place = place
        # Read once: the workspace works them out anew (the environment, a path) at each ask.
        self._url = place.database_url
        self._path = place.db_path
        self._clock = clock
        self._lock = threading.Lock()
        self._writers = threading.RLock()  # SQLite: the app's writes take turns here
        self._shared: Store | None = None  # PostgreSQL
        self._local = threading.local()  # SQLite: the thread's _Kept
        self._opened: dict[threading.Thread, Store] = {}  # SQLite: every thread's, to close
        self._inline: _Kept | None = None  # SQLite: the event loop's, for `read`
        self._quick: _Kept | None = None  # SQLite: the event loop's, for quick writes; never waits
        self._quick_writes = 0  # since the last checkpoint asked for
        self._asked: list[_Asked[Any]] = []  # quick writes waiting for the loop's next turn
        self._asked_loop: asyncio.AbstractEventLoop | None = None  # the loop they wait in
        self._checkpoint_due = False  # asked for and not made yet: quick writes wait for it
        self._opening = threading.Lock()  # SQLite: one request opens it
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="highlights-writer")  # SQLite
        self._renewals = 0
        where = describe_url(self._url) if self._url else display_path(self._path)
        self.health = DatabaseHealth(self.check, where)

    def store(self) -> Store:
        """The Store for this thread: on PostgreSQL the app's, on SQLite the thread's own.
        UnusableDatabase (and its one line) when the database cannot be opened."""
        if self._url:
            return self._pooled()
        return self._thread_store()

    @contextmanager
    def writing(self) -> Iterator[Store]:
        """`store()`, for work that writes: on SQLite after the app's other writes under
        way (PostgreSQL orders them itself, for several processes at once)."""
        if self._url:
            yield self._pooled()
            return
        with self._writers:
            yield self._thread_store()

    async def read(self, work: Callable[[Store], _T]) -> _T:
        """`work(store)`, a read of a row or two: on SQLite in the calling (event loop)
        thread, over the Store kept for it; on PostgreSQL in a worker thread (a round trip
        over the network). UnusableDatabase as `store()` raises it."""
        if self._url:
            return await run_in_threadpool(lambda: work(self._pooled()))
        kept = self._inline
        if kept is not None and self._fresh(kept):
            return work(kept.store)
        opened, old = await run_in_threadpool(self._open_inline)
        if old is not None:
            close_quietly(old.store)  # here, in the thread that reads from it: no read is under way
        return work(opened.store)

    async def write(self, work: Callable[[Store], _T], *, quick: bool = False) -> _T:
        """`work(store)` as one of the app's writes (`writing()`): on SQLite in the app's
        writer thread, on PostgreSQL in a worker thread (the database orders them).
        `quick`: a work that changes nothing until its one short transaction, made on
        SQLite in the calling (event loop) thread when it can be at once, in one
        transaction with the other quick writes asked in the same turn of the loop."""
        if self._url:
            return await run_in_threadpool(self._written, work)
        loop = asyncio.get_running_loop()
        # The quick Store belongs to one event loop's thread (uvicorn runs one); a write
        # from another loop meanwhile goes to the writer thread.
        if quick and self._quick is not None and (not self._asked or self._asked_loop is loop):
            asked: _Asked[_T] = _Asked(work, loop.create_future())
            self._asked.append(asked)
            if len(self._asked) == 1:
                self._asked_loop = loop
                loop.call_soon(self._make_asked, loop, 0)
            done = await asked.done
            if done is not None:
                return done[0]
        return await loop.run_in_executor(self._writer, self._written_quick_next, work)

    def _make_asked(self, loop: asyncio.AbstractEventLoop, tries: int) -> None:
        """In the event loop: the quick writes asked so far, made as one transaction over
        the Store that never waits (one commit, one write of the log's pages, for all).
        While the writer thread is at one of the app's writes they wait for it a moment
        here: queued behind it, each request would find the writer busy with the one
        before, and all would go there from then on. Each asker is told what its work gave
        (or raised); None: made in the writer thread instead (the writes could not be
        made at once, or the Store is not the one to use)."""
        kept = self._quick
        if kept is not None and not self._fresh(kept):
            self._quick = None
            close_quietly(kept.store)  # here, in the only thread that uses it
            kept = None
        if kept is not None and (self._checkpoint_due or not self._writers.acquire(blocking=False)):
            # A checkpoint asked for goes first: the loop would take the lock back before
            # the writer thread woke, and the log would grow meanwhile.
            if tries + 1 < _QUICK_TRIES:
                loop.call_later(_QUICK_WAIT_S, self._make_asked, loop, tries + 1)
                return
            kept = None
        asked, self._asked = self._asked, []
        if kept is None:
            for each in asked:
                _tell(each.done, None)
            return
        try:
            outcomes = _made_together(kept.store, asked)
        finally:
            self._writers.release()
        for each, outcome in zip(asked, outcomes, strict=True):
            _tell(each.done, outcome)
        self._quick_writes += len(asked)
        if self._quick_writes >= _CHECKPOINT_EVERY and not self._checkpoint_due:
            try:
                self._writer.submit(self._checkpoint)
                self._checkpoint_due = True
            except RuntimeError:
                pass  # the app is stopping: the Store's closing checkpoints

    def _checkpoint(self) -> None:
        """In the writer thread: the log of the quick writes copied into the file (the
        event loop does not wait for the disk's sync). As one of the app's writes: with
        none of them in between, the copy is whole, and the next write starts the log
        from its beginning again (while writes went on beside it, the log only grew:
        227 MB after 9,000 requests)."""
        self._quick_writes = 0
        try:
            with self.writing() as store:
                store.checkpoint()
        except HighlightsError:
            pass  # the database cannot be used now: the requests say so, the next checkpoint tries again
        finally:
            self._checkpoint_due = False

    def _written_quick_next(self, work: Callable[[Store], _T]) -> _T:
        """`_written`, then, once a write worked, the Store for quick writes if there is
        none (here in the writer thread: opening it may wait)."""
        done = self._written(work)
        if self._quick is None:
            self._open_quick()
        return done

    def _open_quick(self) -> None:
        renewal = self._renewals
        try:
            # Busy timeout 0: a write that would wait is made in the writer thread.
            store = Store.open(self._place, clock=self._clock, timeout=0)
        except HighlightsError:
            return  # the database cannot be used now: tried again at the next write
        try:
            store.checkpoint_later()  # in the writer thread (`_checkpoint`), not the event loop
        except HighlightsError:
            close_quietly(store)
            return
        self._quick = _Kept(store, renewal, _file_of(self._path))

    def _written(self, work: Callable[[Store], _T]) -> _T:
        with self.writing() as store:
            return work(store)

    def _fresh(self, kept: _Kept) -> bool:
        """Whether a kept Store is still the one to use (see `_thread_store`)."""
        return kept.renewal == self._renewals and kept.file == _file_of(self._path)

    def _open_inline(self) -> tuple[_Kept, _Kept | None]:
        """The Store for `read`, opened unless another request opened it meanwhile; and
        the one it replaces, for the caller to close."""
        with self._opening:
            kept = self._inline
            if kept is not None and self._fresh(kept):
                return kept, None
            renewal = self._renewals
            new = _Kept(Store.open(self._place, clock=self._clock), renewal, _file_of(self._path))
            with self._lock:
                self._inline = new
            return new, kept

    def _pooled(self) -> Store:
        shared = self._shared
        if shared is None:
            with self._lock:
                if self._shared is None:
                    self._shared = Store.open(self._place, clock=self._clock, pooled=True)
                shared = self._shared
        return shared

    def _thread_store(self) -> Store:
        """This thread's Store, opened anew when the file at the path is not the one it
        opened (a backup moved into place, a file deleted: the old one would take writes
        nobody reads) or after a request found the database unusable (a file read-only
        at the opening stays read-only to it)."""
        kept: _Kept | None = getattr(self._local, "kept", None)
        if kept is not None and self._fresh(kept):
            return kept.store
        renewal = self._renewals
        store = Store.open(self._place, clock=self._clock)  # a new SQLite file's schema too
        self._local.kept = _Kept(store, renewal, _file_of(self._path))
        this = threading.current_thread()
        with self._lock:
            # A thread's previous Store, and those of threads that have ended (a
            # server's worker threads come and go), are closed: nothing uses them.
            done = [
                self._opened.pop(thread) for thread in list(self._opened) if thread is this or not thread.is_alive()
            ]
            self._opened[this] = store
        close_quietly(*done)
        return store

    def unusable(self) -> None:
        """A request found the database unusable: every thread opens its Store anew
        before using it again, and a health check says whether it is gone (one line
        in the log if so)."""
        self._renew()
        self.health.start()

    def _renew(self) -> None:
        with self._lock:
            self._renewals += 1

    def check(self) -> str | None:
        """Why the database cannot be used now, or None when it answers (the health
        check's question, asked in its own thread). On PostgreSQL over a connection of
        its own, with the shortest connect timeout libpq takes, not one from the pool:
        the pool's connections may all be busy serving (load is not ill health), and it
        waits between attempts to reconnect."""
        try:
            if self._url:
                with Store.open(self._place, timeout=_CHECK_TIMEOUT_S) as store:
                    store.ping()
            else:
                self._thread_store().ping()
        except HighlightsError as exc:
            self._renew()
            return exc.format_message()
        return None

    def close(self) -> None:
        """Stop the health checks and close every Store (the app has stopped)."""
        self.health.close()
        self._writer.shutdown(wait=True)  # the writes under way finish first
        with self._lock:
            self._renewals += 1  # a Store a thread still holds is not used again
            kept = (self._inline, self._quick)
            stores = [self._shared, *self._opened.values(), *(k.store for k in kept if k is not None)]
            self._shared = None
            self._inline = self._quick = None
            self._opened.clear()
        close_quietly(*stores)


__all__ = ["AppDatabase"]
