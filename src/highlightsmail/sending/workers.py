"""Worker processes for the send loop: each builds and posts the batches the loop hands
it, so the per-recipient work (links, signing, the request body) runs on
every core instead of taking turns under one process's interpreter lock.

Only the loop's process touches the database: a worker gets a claimed batch's
recipients over a pipe and answers what became of it, and the loop records that as it
records a worker thread's answer. A worker is forked from a process with no other
thread (`can_fork`), so it holds no lock another thread had taken; it dies
with the send (`PR_SET_PDEATHSIG`: a `kill -9` leaves no worker behind sending on its
own), ignores Ctrl-C (the loop decides what finishes), and leaves by `os._exit`, never
touching the database connections, files or buffers it shares with the loop.

There are no worker threads then: the loop hands batches out and waits for their
answers itself. A worker that dies with a batch leaves that batch in doubt (its request
may have gone out), and the next batch goes to a new one.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from multiprocessing.connection import Connection, Pipe, wait
from typing import NamedTuple

from highlightsmail.errors import reason
from highlightsmail.mail.backends.base import Backend, BatchResult, DeliveryError, InDoubtError
from highlightsmail.mail.batches import Addressee, Batches

__all__ = ["Workers", "can_fork", "held_ctrl_c"]

# What a worker answers: (0, BatchResult), (1, why it is in doubt) or (2, why it failed).
_SENT, _IN_DOUBT, _FAILED = 0, 1, 2

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class _Row(NamedTuple):
    """A recipient as a worker gets it: what a batch is built from, and no more."""

    subscriber_id: int
    email: str
    name: str


def can_fork(backend: Backend, workers: int) -> bool:
    """Whether this send may use worker processes: the backend spends its time in
    Python building requests (`processes`), there is more than one worker, and this
    process is Linux with no thread but the main one (a fork copies only the calling
    thread; a lock another thread held would stay taken in the copy for ever)."""
    return (
        backend.processes
        and workers > 1
        and sys.platform.startswith("linux")
        and threading.active_count() == 1
        and threading.current_thread() is threading.main_thread()
    )


@contextlib.contextmanager
def held_ctrl_c() -> Iterator[None]:
    """Ctrl-C (SIGINT) held back until the block ends, then raised as ever. Only for a
    process with no other thread: the kernel would hand the signal to one of those."""
    masked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, masked)


class _Worker(NamedTuple):
    pid: int
    conn: Connection


class Workers:
    """Worker processes in place of the loop's worker threads: `submit` hands a claimed
    batch to an idle one and gives a future of what became of it, as a thread pool
    would; `wait` gives those that came back. Everything runs in the loop's one thread,
    so a worker that died can be replaced by a new fork. `close` ends them all."""

    def __init__(self, count: int, make_backend: Callable[[], Backend], batches: Batches) -> None:
        self._make_backend = make_backend
        self._batches = batches
        self._parent = os.getpid()
        self._prctl = _prctl()
        self._idle: list[_Worker] = []
        self._busy: dict[Connection, tuple[_Worker, Future[BatchResult]]] = {}
        try:
            for _ in range(count):
                self._idle.append(self._fork())
        except BaseException:
            self.close(wait=0)
            raise

    def _fork(self) -> _Worker:
        ours, theirs = Pipe()
        # Out of the collector's sight until `close`, in the loop and in the workers:
        # its passes write to every object they look at, and each would copy the
        # pages the two share (a third of the send's memory, and a tenth of its time).
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            ours.close()
            for other in self._pipes():
                other.close()  # or that worker would not see its pipe close
            _work(theirs, self._parent, self._prctl, self._make_backend, self._batches)
        theirs.close()
        return _Worker(pid, ours)

    def _pipes(self) -> list[Connection]:
        return [w.conn for w in self._idle] + list(self._busy)

    def submit(self, number: int, rows: Sequence[Addressee]) -> Future[BatchResult]:
        """Hand claimed batch `number` to an idle worker (a new one if none is left)."""
        future: Future[BatchResult] = Future()
        try:
            worker = self._idle.pop() if self._idle else self._fork()
        except OSError as err:
            future.set_exception(DeliveryError(f"cannot start a worker process to send it: {reason(err)}"))
            return future
        try:
            worker.conn.send((number, [(row.subscriber_id, row.email, row.name) for row in rows]))
        except OSError:
            # It had died (it took nothing whole): nothing went out for this batch.
            self._bury(worker)
            future.set_exception(DeliveryError("the worker process for it had stopped; nothing was sent"))
            return future
        self._busy[worker.conn] = (worker, future)
        return future

    def wait(self, futures: Iterable[Future[BatchResult]]) -> set[Future[BatchResult]]:
        """Wait for at least one of `futures` to be done, and give those that are."""
        done = {future for future in futures if future.done()}
        if done or not self._busy:
            return done
        for conn in wait(list(self._busy)):
            assert isinstance(conn, Connection)
            # Ctrl-C waits until the answer is read and noted: lost in between, the
            # batch would never come back.
            with held_ctrl_c():
                worker, future = self._busy.pop(conn)
                self._answer(worker, future)
                done.add(future)
        return done

    def _answer(self, worker: _Worker, future: Future[BatchResult]) -> None:
        try:
            kind, answer = worker.conn.recv()
        except (EOFError, OSError):
            # Gone mid-batch: its request may have been posted, so only the editor may
            # say to send it again. The next batch gets a new worker.
            self._bury(worker)
            future.set_exception(InDoubtError("the worker process sending it stopped before it answered"))
            return
        self._idle.append(worker)
        if kind == _SENT:
            future.set_result(answer)
        elif kind == _IN_DOUBT:
            future.set_exception(InDoubtError(answer))
        else:
            future.set_exception(DeliveryError(answer))

    def _bury(self, worker: _Worker) -> None:
        worker.conn.close()
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)
            os.waitpid(worker.pid, 0)

    def close(self, *, wait: float = 10.0) -> None:
        """Close the pipes (each worker leaves when its batch is done) and reap every
        worker; one still there after `wait` seconds is killed (its batch stays in
        flight: in doubt at the next run)."""
        workers = self._idle + [worker for worker, _future in self._busy.values()]
        self._idle, self._busy = [], {}
        gc.unfreeze()
        for worker in workers:
            worker.conn.close()
        deadline = time.monotonic() + wait
        for worker in workers:
            with contextlib.suppress(ChildProcessError):
                while not os.waitpid(worker.pid, os.WNOHANG)[0]:
                    if time.monotonic() >= deadline:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(worker.pid, signal.SIGKILL)
                        os.waitpid(worker.pid, 0)
                        break
                    time.sleep(0.002)


def _prctl() -> Callable[..., int]:
    """The C library's prctl, looked up before the forks (each worker would import
    ctypes again)."""
    import ctypes

    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def _die_with(parent: int, prctl: Callable[..., int]) -> None:
    """Have the kernel kill this process when the one that forked it ends, however it
    ends (a `kill -9` runs no clean-up of its own)."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def _work(
    conn: Connection, parent: int, prctl: Callable[..., int], make_backend: Callable[[], Backend], batches: Batches
) -> None:
    """A worker's life: batches in, answers out, until the loop closes the pipe."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with(parent, prctl)
        backend: Backend | None = None
        while True:
            try:
                number, rows = conn.recv()
            except EOFError:
                if backend is not None:
                    backend.close()
                break
            try:
                if backend is None:
                    backend = make_backend()
                    backend.open()
                batch = batches.to_subscribers(
                    [_Row._make(row) for row in rows], number=number, tokens=backend.message_tokens
                )
                answer: tuple[int, object] = (_SENT, backend.send_batch(batch))
            except InDoubtError as err:
                answer = (_IN_DOUBT, err.message)
            except DeliveryError as err:
                answer = (_FAILED, err.message)
            except Exception as err:  # a bug must not lose the batch's ledger rows
                answer = (_FAILED, reason(err))
            conn.send(answer)
    except BaseException:
        code = 1
    finally:
        os._exit(code)
