"""Backends for worker threads: one per thread and kind of email, opened when a thread
first asks and kept, since opening costs a connection (SMTP) or a session (SendGrid);
all closed quietly at the end. Every sender of mail goes through it: the send loop, the
test send, and the signup's mailer (confirmations and the welcome issue)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from highlightsmail.errors import close_quietly
from highlightsmail.mail.backends.base import Backend

__all__ = ["BackendPool"]


class BackendPool:
    """`get(kind)` gives the calling thread its open backend of that kind. `factory`
    makes a new, unopened one; `first`, an open backend the pool takes over (one opened
    to check the settings before anything is claimed), is closed with the others and,
    with `share_first`, goes to the first thread that asks (the send loop with one
    worker; with more, each worker has a backend of its own)."""

    def __init__(
        self, factory: Callable[[], Backend], *, first: Backend | None = None, share_first: bool = True
    ) -> None:
        self._factory = factory
        self._first = first if share_first else None
        self._local = threading.local()
        self._lock = threading.Lock()
        #: Every backend the pool holds, to close at the end.
        self.opened: list[Backend] = [first] if first is not None else []

    def get(self, kind: str = "send") -> Backend:
        """This thread's backend of `kind`. Opening it may raise (a missing key, a
        refused login): nothing is kept then, and the next call tries again."""
        mine: dict[str, Backend] = self._local.__dict__.setdefault("backends", {})
        backend = mine.get(kind)
        if backend is None:
            with self._lock:
                backend, self._first = self._first, None
            if backend is None:
                backend = self._factory()
                backend.open()
                with self._lock:
                    self.opened.append(backend)
            mine[kind] = backend
        return backend

    def drop(self, kind: str = "send") -> None:
        """Close and forget this thread's backend of `kind`, after a failure: the next
        `get` opens a new one."""
        backend = self._local.__dict__.get("backends", {}).pop(kind, None)
        if backend is None:
            return
        with self._lock:
            if backend in self.opened:
                self.opened.remove(backend)
        close_quietly(backend)

    def close(self) -> None:
        """Close every backend the pool holds (the threads are done with them)."""
        with self._lock:
            opened, self.opened, self._first = self.opened, [], None
        close_quietly(*opened)
