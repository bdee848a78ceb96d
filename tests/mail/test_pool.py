"""The backend pool the send loop and the signup's mailer share: one backend per thread
and kind, opened at first use, dropped after a failure, all closed quietly at the end."""

from __future__ import annotations

import threading

import pytest

from highlightsmail.errors import HighlightsError, close_quietly, reason
from highlightsmail.mail.backends.base import Backend, Batch, BatchResult
from highlightsmail.mail.pool import BackendPool


class _Backend(Backend):
    def __init__(self, *, fail_open: bool = False, fail_close: bool = False) -> None:
        self.opened = self.closed = 0
        self.fail_open, self.fail_close = fail_open, fail_close

    def open(self) -> None:
        if self.fail_open:
            raise HighlightsError("login refused")
        self.opened += 1

    def send_batch(self, batch: Batch) -> BatchResult:  # pragma: no cover - not sent here
        raise AssertionError

    def close(self) -> None:
        self.closed += 1
        if self.fail_close:
            raise OSError("connection already gone")


def _factory(made: list[_Backend], **kw: bool):
    def make() -> _Backend:
        made.append(_Backend(**kw))
        return made[-1]

    return make


def test_one_backend_per_thread_and_kind_opened_once_and_closed_at_the_end() -> None:
    made: list[_Backend] = []
    pool = BackendPool(_factory(made))
    mine = pool.get()
    assert pool.get() is mine and pool.get("send") is mine
    confirm = pool.get("confirm")
    assert confirm is not mine
    theirs: list[Backend] = []
    worker = threading.Thread(target=lambda: theirs.append(pool.get()))
    worker.start()
    worker.join()
    assert theirs[0] not in (mine, confirm)
    assert [b.opened for b in made] == [1, 1, 1]
    pool.close()
    assert [b.closed for b in made] == [1, 1, 1] and pool.opened == []


def test_the_first_backend_goes_to_the_first_thread_that_asks_and_is_closed_by_the_pool() -> None:
    first, made = _Backend(), []
    pool = BackendPool(_factory(made), first=first)
    assert pool.get() is first and first.opened == 0  # already open: not opened again
    other: list[Backend] = []
    worker = threading.Thread(target=lambda: other.append(pool.get()))
    worker.start()
    worker.join()
    assert other == made and made[0].opened == 1
    pool.close()
    assert first.closed == 1 and made[0].closed == 1


def test_a_dropped_backend_is_closed_and_the_next_get_opens_a_new_one() -> None:
    made: list[_Backend] = []
    pool = BackendPool(_factory(made, fail_close=True))
    old = pool.get("welcome")
    pool.drop("welcome")  # its close fails: quietly
    assert old.closed == 1 and pool.opened == []
    assert pool.get("welcome") is not old
    pool.drop("nothing-held")  # nothing to drop
    pool.close()
    assert [b.closed for b in made] == [1, 1]


def test_a_backend_that_cannot_open_is_not_kept() -> None:
    made: list[_Backend] = []
    pool = BackendPool(_factory(made, fail_open=True))
    for _ in range(2):
        with pytest.raises(HighlightsError, match="login refused"):
            pool.get()
    assert len(made) == 2 and pool.opened == []


def test_close_quietly_closes_the_rest_after_one_fails() -> None:
    failing, fine = _Backend(fail_close=True), _Backend()
    close_quietly(failing, None, fine)
    assert failing.closed == fine.closed == 1


def test_a_reason_is_one_line_from_ours_or_any_other_error() -> None:
    assert reason(HighlightsError("no key set")) == "no key set"
    assert reason(KeyError("x")) == "KeyError: 'x'"


def test_a_first_backend_not_shared_is_closed_by_the_pool_but_never_handed_out() -> None:
    """The send loop with several workers: the backend it opened to check the settings
    stays with the loop's thread; every worker opens its own, and all close together."""
    first, made = _Backend(), []
    pool = BackendPool(_factory(made), first=first, share_first=False)
    assert pool.get() is made[0] and made[0].opened == 1
    pool.close()
    assert first.closed == 1 and made[0].closed == 1 and first.opened == 0
