"""Who may send an issue at once. On SQLite one `send` of an issue runs at a time (a
lock file); on PostgreSQL any number, on any machines, share the dispatch: each joins
it as a sender (a lock the database holds for as long as the sender's connection
lives), and rows in flight count as in doubt only once the sender that claimed them
is gone."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from highlightsmail.errors import HighlightsError, display_path

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace
    from highlightsmail.store import Store

__all__ = ["as_sender", "send_lock", "send_running"]


@contextmanager
def send_lock(ws: Workspace, slug: str) -> Iterator[None]:
    """One `send` of an issue at a time: a second one would take the first one's
    in-flight batches for abandoned. flock is released by the OS even on kill -9."""
    # Named after the database, so the workspace's .gitignore (`subscribers/*.db*`) covers it.
    path = ws.db_path.with_name(f"{ws.db_path.name}.send-{slug}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "w")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise HighlightsError(
            f"{display_path(path)}: cannot create the send lock: {exc.strerror or exc}; "
            f"let the user running highlights write to the folder {display_path(path.parent)}"
        ) from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HighlightsError(f"{slug}: another `highlights send {slug}` is running") from None
        yield


def send_running(ws: Workspace, store: Store, slug: str) -> bool:
    """Whether a `send` of this issue is running right now (on PostgreSQL: anywhere)."""
    if store.shares_dispatch:
        return store.sending_now(slug)
    try:
        with send_lock(ws, slug):
            return False
    except HighlightsError:
        return True


@contextmanager
def as_sender(ws: Workspace, store: Store, slug: str, *, dry_run: bool) -> Iterator[None]:
    """Run as a sender of the issue: alone on SQLite (the lock file), or beside any other
    senders on PostgreSQL (a dry run sends nothing, so it does not join)."""
    if not store.shares_dispatch:
        with send_lock(ws, slug):
            yield
        return
    if not dry_run:
        store.join_dispatch(slug)
    yield
