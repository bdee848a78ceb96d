"""The signup's emails: the confirmation email, rendered once for everyone, and the
`Mailer` that sends it (and the welcome issue) away from the requests.

Confirmation emails go out from one thread of their own, what has queued as one batch per
turn (see `Mailer`); each was reserved in the database by the request that asked for it
(store/signups.py), so a reservation that a stopped or killed server never handed over is
sent at the next start, and none is handed over twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from highlightsmail.authoring.issue import load_issue
from highlightsmail.authoring.markdown import defuse_text, defuse_url
from highlightsmail.errors import HighlightsError, reason
from highlightsmail.mail.backends import get_backend
from highlightsmail.mail.backends.base import Backend, BatchResult, InDoubtError
from highlightsmail.mail.batches import Batches
from highlightsmail.mail.message import Recipient
from highlightsmail.mail.pool import BackendPool
from highlightsmail.rendering.render import TEXT_WIDTH, render_email, render_issue
from highlightsmail.rendering.rendered import UNSUBSCRIBE_PLACEHOLDER, RenderedIssue
from highlightsmail.sending.loop import issue_batches, record, send_claimed
from highlightsmail.store import Delivery, Store

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Settings, Workspace
    from highlightsmail.tokens import Signer

log = logging.getLogger("highlightsmail.signup")

#: Where confirmation emails go in the outbox (`outbox/_confirm/`); no issue's slug
#: starts with `_`.
CONFIRM_SLUG = "_confirm"
CONFIRM_HTML_TEMPLATE = "confirm.mjml.j2"
CONFIRM_TEXT_TEMPLATE = "confirm.txt.j2"
#: Confirmation emails in one turn of the mailer, unless its backend says how many a batch holds.
_TURN = 100
#: How long the mailer lets a turn gather before taking it (a confirmation email may
#: wait this long; under load, many go in one batch and one transaction).
_GATHER_S = 0.02
#: When the database could not be asked for the reserved emails, how long until the
#: mailer asks again (a new email asks at once).
_LOOK_AGAIN_S = 30.0


@dataclass(frozen=True)
class _Asked:
    """A confirmation email reserved in the database, waiting for its turn."""

    recipient: Recipient
    reservation: int
    made: int
    done: Future[bool]


class Mailer:
    """Sends the signup's emails through the configured backend, away from the requests.

    Confirmation emails go out from one thread of their own: each turn takes what has
    queued (up to a backend's batch, each subscriber once), takes those reservations in
    the database in one transaction (so no email goes out twice, from this server or
    another on the same database), and hands them to the backend as one batch; the few
    that fail are deleted in one more transaction and no longer count against the
    limits. At `start` the thread first sends what a previous server reserved and never
    handed over (it stopped, or was killed, first). The welcome issue goes from worker
    threads. One backend per thread and kind of email, opened at first use and kept;
    the confirmation is rendered once, not per reader. A failure is logged with the
    subscriber's id (never the address); `close` waits for what is under way and queued."""

    def __init__(
        self,
        ws: Workspace,
        signer: Signer,
        store: Callable[[], Store],
        *,
        workers: int = 2,
        writing: Callable[[], AbstractContextManager[object]] = nullcontext,
        clock: Callable[[], float] = time.time,
        opener: Callable[[], Store] | None = None,
    ) -> None:
        self.ws = ws
        self.signer = signer
        self._store = store
        # The look at start goes through a Store of its own, closed right after: the
        # thread's Store is opened at its first email, as the app opens every other one
        # when first needed (one kept from the start on keeps the SQLite file open for
        # writing, through a file made read-only since, and a write then is not refused).
        self._opener = opener
        self._writing = writing  # a turn among the other writes of the process, if it orders them
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="signup-mail")
        # Opened at first use in each thread; a missing key or a refused login raises
        # there, and is tried again for the next email.
        self._backends = BackendPool(self._new_backend)
        self._lock = threading.Lock()
        self._rendered: dict[str, tuple[tuple[object, ...], RenderedIssue]] = {}
        self._queue: deque[_Asked] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._to_recover = False
        self._idle = False  # the thread waits for something to do
        self._turn_size = _TURN  # unless the backend says its own batch size

    def start(self) -> None:
        """Start the confirmation thread, which first sends the confirmation emails that
        were reserved (within `confirm_within_days`) and never handed to a backend."""
        with self._wake:
            self._to_recover = True
            self._running()
            self._wake.notify()

    def confirmation(self, recipient: Recipient, reservation: int, made: int) -> Future[bool]:
        """Send the confirmation email (its link made at `made`) for the reservation, in
        the next turn; the Future says whether it went out (or may have)."""
        done: Future[bool] = Future()
        with self._wake:
            self._queue.append(_Asked(recipient, reservation, made, done))
            self._running()
            if self._idle:  # else it is busy, and takes this in its next turn
                self._wake.notify()
        return done

    def welcome(self, slug: str, delivery: Delivery) -> Future[str | None]:
        """Send an issue to a subscriber who has just joined, claimed in its ledger."""
        return self._pool.submit(self._welcome, slug, delivery)

    def close(self) -> None:
        with self._wake:
            self._closing = True
            thread = self._thread
            self._wake.notify()
        if thread is not None:
            thread.join()
        self._pool.shutdown(wait=True)
        self._backends.close()

    def _running(self) -> None:
        """Start the confirmation thread unless it runs (called holding `_wake`). After
        `close` none starts: what is queued then stays reserved, for the next start."""
        if self._thread is None and not self._closing:
            self._thread = threading.Thread(target=self._confirmations, name="signup-confirm", daemon=True)
            self._thread.start()

    # -- in the confirmation thread

    def _confirmations(self) -> None:
        try:
            # As many as the backend takes in one batch (made, not opened, to ask).
            self._turn_size = max(1, self._new_backend().batch_size)
        except Exception:  # settings it cannot use: each turn's emails fail with the reason
            pass
        recover_later = False  # the database could not be asked: again before the next turn, or after a while
        while True:
            with self._wake:
                while not self._queue and not self._to_recover and not self._closing:
                    self._idle = True
                    woken = self._wake.wait(_LOOK_AGAIN_S if recover_later else None)
                    self._idle = False
                    if not woken:
                        break  # time to look again
                recover, self._to_recover = self._to_recover or recover_later, False
                if not recover and not self._queue:
                    self._thread = None  # closing, and nothing left
                    return
                gather = not recover and len(self._queue) < self._turn_size and not self._closing
            if recover:
                recover_later = not self._recover()
                continue
            if gather:
                # What is asked for meanwhile joins this turn: under load, fewer and fuller
                # batches (a transaction and a batch per turn, not per email).
                time.sleep(_GATHER_S)
            with self._wake:
                turn = self._next_turn()
            try:
                self._send_turn(turn)
            except HighlightsError as exc:
                # The database cannot be used now (the health check says so in the log):
                # what was not taken stays reserved, and is looked for again before the
                # next turn, or after a while.
                recover_later = True
                log.info("%d confirmation emails not sent yet: %s", len(turn), reason(exc))
            except Exception:  # a bug: logged, and the thread goes on with the next turn
                sids = ", ".join(f"#{asked.recipient.subscriber_id}" for asked in turn)
                log.exception("confirmation emails to subscribers %s", sids)
            for asked in turn:
                if not asked.done.done():
                    asked.done.set_result(False)

    def _next_turn(self) -> list[_Asked]:
        """Up to a batch of what has queued, each subscriber once (called holding `_wake`):
        a second email to one subscriber waits for the next turn, as a batch's results
        are by subscriber."""
        turn: list[_Asked] = []
        later: list[_Asked] = []
        seen: set[int | None] = set()
        while self._queue and len(turn) < self._turn_size:
            asked = self._queue.popleft()
            if asked.recipient.subscriber_id in seen:
                later.append(asked)
            else:
                seen.add(asked.recipient.subscriber_id)
                turn.append(asked)
        self._queue.extendleft(reversed(later))
        return turn

    def _recover(self) -> bool:
        """Queue the confirmation emails reserved within `confirm_within_days` and never
        handed to a backend (by a server that stopped first, or a turn the database
        refused); False when the database cannot be asked now."""
        since = int(self._clock()) - self.ws.settings.signup.confirm_within_days * 86400
        try:
            if self._opener is None:
                found = self._store().queued_confirmations(since)
            else:
                with self._opener() as store:
                    found = store.queued_confirmations(since)
        except Exception as exc:  # the database's one line, or a bug's: looked for again later
            log.info("confirmation emails reserved and not sent not looked for yet: %s", reason(exc))
            return False
        if found:
            log.info("%d confirmation emails reserved and not sent: sending them now", len(found))
        with self._wake:
            for q in found:
                self._queue.append(_Asked(Recipient(q.email, q.name, q.subscriber_id), q.reservation, q.made, Future()))
        return True

    def _send_turn(self, turn: list[_Asked]) -> None:
        store = self._store()
        with self._writing():
            taken = store.take_confirmations(asked.reservation for asked in turn)
        mine = [asked for asked in turn if asked.reservation in taken]
        for asked in turn:
            if asked.reservation not in taken:
                asked.done.set_result(False)  # sent by another mailer (or no longer reserved)
        if not mine:
            return
        result = self._hand_over(mine)
        failed = []
        for asked in mine:
            sid = asked.recipient.subscriber_id
            assert sid is not None
            if sid in result.in_doubt:
                # It may have arrived: it keeps counting against the limits.
                log.warning("confirmation email to subscriber #%d may not have arrived: %s", sid, result.in_doubt[sid])
            elif sid not in result.sent:
                log.error(
                    "confirmation email to subscriber #%d not sent: %s", sid, result.failed.get(sid, "no reason given")
                )
                failed.append(asked)
        if failed:
            with self._writing():
                store.confirmations_not_sent(asked.reservation for asked in failed)
        for asked in mine:
            asked.done.set_result(asked not in failed)

    def _hand_over(self, mine: list[_Asked]) -> BatchResult:
        """The emails of a turn, as one batch to the backend; what became of each."""
        keys = [asked.recipient.subscriber_id or 0 for asked in mine]
        try:
            batch = Batches(self.confirmation_email(), self.ws.settings, self.signer).confirmations(
                (asked.recipient, asked.made) for asked in mine
            )
            return self._backends.get("confirm").send_batch(batch)
        except InDoubtError as exc:
            self._backends.drop("confirm")
            return BatchResult(in_doubt=dict.fromkeys(keys, reason(exc)))
        except Exception as exc:
            self._backends.drop("confirm")
            return BatchResult(failed=dict.fromkeys(keys, reason(exc)))

    # -- in the worker threads

    def _new_backend(self) -> Backend:
        return get_backend(self.ws)

    def _welcome(self, slug: str, delivery: Delivery) -> str | None:
        store = self._store()
        sid = delivery.subscriber_id
        try:
            rendered = self._issue(slug)
            backend = self._backends.get("welcome")
        except Exception as exc:
            # Failed in the ledger, as a send would record it: the next `send` tries again.
            why = reason(exc)
            record(store, slug, BatchResult(failed={sid: why}))
            log.error("welcome issue %s not sent to subscriber #%d: %s", slug, sid, why)
            return "failed"
        state = send_claimed(store, backend, issue_batches(store, rendered, self.ws.settings, self.signer), delivery)
        if state != "sent":
            self._backends.drop("welcome")
            log.error("welcome issue %s to subscriber #%d: %s (see `highlights status %s`)", slug, sid, state, slug)
        return state

    # -- rendering, once

    def _cached(self, key: str, stamp: tuple[object, ...], render: Callable[[], RenderedIssue]) -> RenderedIssue:
        """A rendering kept while the files it comes from are unchanged (`stamp`)."""
        with self._lock:
            found = self._rendered.get(key)
        if found is not None and found[0] == stamp:
            return found[1]
        rendered = render()
        with self._lock:
            self._rendered[key] = (stamp, rendered)
        return rendered

    def confirmation_email(self) -> RenderedIssue:
        """The confirmation email for everyone, the link still a placeholder."""
        files = (self.ws.templates_dir / CONFIRM_HTML_TEMPLATE, self.ws.templates_dir / CONFIRM_TEXT_TEMPLATE)
        return self._cached(CONFIRM_SLUG, tuple(_stamp(p) for p in files), lambda: render_confirmation(self.ws))

    def _issue(self, slug: str) -> RenderedIssue:
        path = self.ws.issue_path(slug)
        return self._cached(f"issue:{slug}", (_stamp(path),), lambda: render_issue(load_issue(path), self.ws))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def confirmation_subject(settings: Settings) -> str:
    return f"Confirm your subscription to {settings.name}"


def render_confirmation(ws: Workspace) -> RenderedIssue:
    """The confirmation email from `confirm.mjml.j2` and `confirm.txt.j2` (the
    workspace's, else the package's), rendered once; the link is the placeholder that
    each reader's own link replaces, as an issue's unsubscribe link is."""
    settings = ws.settings
    reserved = (UNSUBSCRIBE_PLACEHOLDER,)
    subject = defuse_text(confirmation_subject(settings), reserved)
    context = {
        "newsletter": {
            "name": defuse_text(settings.name, reserved),
            "base_url": defuse_url(settings.base_url, reserved),
            "postal_address": defuse_text(settings.postal_address, reserved),
        },
        "subject": subject,
        "confirm_url": UNSUBSCRIBE_PLACEHOLDER,
        "confirm_within_days": settings.signup.confirm_within_days,
        "text_width": TEXT_WIDTH,
    }
    html, text = render_email(ws, CONFIRM_HTML_TEMPLATE, CONFIRM_TEXT_TEMPLATE, context)
    if UNSUBSCRIBE_PLACEHOLDER not in html or UNSUBSCRIBE_PLACEHOLDER not in text:
        raise HighlightsError(
            f"templates/{CONFIRM_HTML_TEMPLATE} and {CONFIRM_TEXT_TEMPLATE} must both show {{{{ confirm_url }}}}: "
            "without it the email cannot be confirmed"
        )
    return RenderedIssue(slug=CONFIRM_SLUG, subject=subject, preheader="", html=html, text=text)


__all__ = [
    "CONFIRM_HTML_TEMPLATE",
    "CONFIRM_SLUG",
    "CONFIRM_TEXT_TEMPLATE",
    "Mailer",
    "confirmation_subject",
    "render_confirmation",
]
