"""Joining the list: the signup form's rules, its limits, and the emails it sends.

Double opt-in. A request to join (POST /subscribe) stores a new address as `pending`;
an address already on the list keeps its status. Either way a confirmation email goes
out, and only the link in it makes anyone `active`, with their consent recorded (time,
source `form`, client address). Whatever the address's state (new, pending, active,
unsubscribed, bounced, complained), the request gets the same answer, so the form tells
nobody who is subscribed; an `active` address simply gets no email.

Limits, kept in the database so that every server on it shares them: at most one
confirmation email per address per 10 minutes and 5 per day, counted by mailbox (the
address without a `+tag`: bomb+1@ and bomb+2@ share bomb@'s limits, though each is a
subscriber of its own), and at most 30 requests per client per hour. A request that fills the hidden `website` field (a trap for bots) gets
the same answer as anyone, and nothing is stored or sent.

A request that is taken is one write to the database: counted against the client's
limit, the address added, the confirmation email reserved. The emails go out from a
thread of their own (`Mailer`), what has queued as one batch per turn: the answer never
waits for a mail provider. A reserved email that a stopped server never handed over is
sent at the next start; one that cannot be sent is logged and no longer counts against
the limits, so the next request tries again.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from highlightsmail.addresses import BadAddress, normalize_address
from highlightsmail.authoring.issue import load_issue
from highlightsmail.authoring.markdown import defuse_text, defuse_url
from highlightsmail.errors import HighlightsError, InvalidToken, reason
from highlightsmail.mail.backends import get_backend
from highlightsmail.mail.backends.base import Backend, BatchResult, InDoubtError
from highlightsmail.mail.batches import Batches
from highlightsmail.mail.message import Recipient
from highlightsmail.mail.pool import BackendPool
from highlightsmail.rendering.render import TEXT_WIDTH, render_email, render_issue, render_template
from highlightsmail.rendering.rendered import UNSUBSCRIBE_PLACEHOLDER, RenderedIssue
from highlightsmail.sending.loop import issue_batches, record, send_claimed
from highlightsmail.store import Delivery, Store, Subscriber
from highlightsmail.text import header_problem, is_utf8
from highlightsmail.urls import urls

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Settings, Workspace
    from highlightsmail.tokens import Signer

log = logging.getLogger("highlightsmail.signup")

#: POST /subscribe per client (an IP address; IPv6 by its /64) and window.
POSTS_PER_CLIENT = 30
POST_WINDOW = timedelta(hours=1)
#: Confirmation emails per address, counted by mailbox (addresses.mailbox_key): (window, at most).
MAILS_PER_ADDRESS: tuple[tuple[timedelta, int], ...] = ((timedelta(minutes=10), 1), (timedelta(days=1), 5))
#: Where confirmation emails go in the outbox (`outbox/_confirm/`); no issue's slug
#: starts with `_`.
CONFIRM_SLUG = "_confirm"
CONFIRM_HTML_TEMPLATE = "confirm.mjml.j2"
CONFIRM_TEXT_TEMPLATE = "confirm.txt.j2"
FORM_TEMPLATE = "site/_signup.html.j2"
#: The form's fields: the address, an optional name, and the trap for bots.
EMAIL_FIELD, NAME_FIELD, TRAP_FIELD = "email", "name", "website"
MAX_NAME = 200
MAX_EMAIL = 320  # longer than any address email-validator accepts: refused here unread
#: How far in the future a link's time may be (servers' clocks differ a little).
_CLOCK_SKEW_S = 300
#: Confirmation emails in one turn of the mailer, unless its backend says how many a batch holds.
_TURN = 100
#: How long the mailer lets a turn gather before taking it (a confirmation email may
#: wait this long; under load, many go in one batch and one transaction).
_GATHER_S = 0.02


# ---------------------------------------------------------------- the form


class FieldProblem(HighlightsError):
    """A field of the form that cannot be taken; `field` names it, `reason` says why
    (a sentence, or what follows the field's name: "must be text")."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(self.naming(field))

    def naming(self, label: str) -> str:
        """The problem as one line that starts with the field's `label`."""
        return f"{label} {self.reason}" if self.reason[:1].islower() else f"{label}: {self.reason}"


@dataclass(frozen=True)
class SignupForm:
    """What a request to join asked for, checked. `trapped`: the hidden field was
    filled in, so a bot sent it, and the rest was not even looked at."""

    email: str = ""
    name: str = ""
    trapped: bool = False


def read_form(fields: Mapping[str, Any]) -> SignupForm:
    """Check the fields of a POST /subscribe (from a form or JSON). Raises FieldProblem
    naming the first field that cannot be taken."""
    trap = fields.get(TRAP_FIELD)
    if trap is not None and (not isinstance(trap, str) or trap.strip()):
        return SignupForm(trapped=True)
    for field in (EMAIL_FIELD, NAME_FIELD):
        value = fields.get(field)
        if isinstance(value, str) and not is_utf8(value):
            # Bytes that were not UTF-8: stored, they would be U+FFFD or a wrong letter.
            raise FieldProblem(field, "is not UTF-8 text")
    raw_email = fields.get(EMAIL_FIELD)
    if raw_email is None or (isinstance(raw_email, str) and not raw_email.strip()):
        raise FieldProblem(EMAIL_FIELD, "is missing: enter your email address")
    if not isinstance(raw_email, str):
        raise FieldProblem(EMAIL_FIELD, "must be text")
    if len(raw_email) > MAX_EMAIL:
        raise FieldProblem(EMAIL_FIELD, "is too long to be an email address")
    try:
        email = normalize_address(raw_email)
    except BadAddress as exc:
        raise FieldProblem(EMAIL_FIELD, str(exc)) from None
    # `=` and `?` may stand before the @, so an address can hold an RFC 2047 encoded
    # word, which a header parser would decode (into a line break, say) in the To header.
    problem = header_problem(email)
    if problem:
        raise FieldProblem(EMAIL_FIELD, problem)
    raw_name = fields.get(NAME_FIELD)
    if raw_name is None:
        raw_name = ""
    if not isinstance(raw_name, str):
        raise FieldProblem(NAME_FIELD, "must be text")
    name = raw_name.strip()
    # The name goes into the To header of every email too: refused here, before it is
    # stored, if it holds a line break, a control character or an RFC 2047 encoded word.
    problem = header_problem(name)
    if problem:
        raise FieldProblem(NAME_FIELD, problem)
    if len(name) > MAX_NAME:
        raise FieldProblem(NAME_FIELD, f"must be at most {MAX_NAME} characters")
    return SignupForm(email=email, name=name)


def client_key(ip: str | None) -> str:
    """What the per-client limit counts by: the IP address, and an IPv6 address by its
    /64, since one machine usually has a whole /64 to take addresses from."""
    if not ip:
        return "unknown"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:100]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address.ipv4_mapped or address) if isinstance(address, ipaddress.IPv6Address) else str(address)


def form_snippet(ws: Workspace) -> str:
    """The signup form to paste into any website, posting to BASE/subscribe: the same
    template that puts the form on the archive's pages (`site/_signup.html.j2`)."""
    return render_template(ws, FORM_TEMPLATE, {"signup": {"enabled": True, "action": urls(ws.settings).subscribe()}})


# ---------------------------------------------------------------- links


@dataclass(frozen=True)
class Link:
    """A confirmation link that reads: whose it is, when it was made, whether it is
    past `confirm_within_days`."""

    subscriber_id: int
    made: int
    expired: bool


@dataclass(frozen=True)
class LinkState:
    """What a confirmation link opens now. `state`: `confirm` (it can be used),
    `confirmed` (it was used just now), `active` (the subscriber was active already),
    `expired`, or `spent` (they left after it was made). `welcome`: the issue on its
    way to them, if any."""

    state: str
    subscriber: Subscriber
    link: Link
    welcome: str | None = None


class Asked(NamedTuple):
    """What became of a request to join: `wait`, the seconds until the client may ask
    again (it asked too often, and nothing was done); else the confirmation email on
    its way, if one was reserved (`sending`: whether it went out, once it has)."""

    wait: int | None
    sending: Future[bool] | None = None


# ---------------------------------------------------------------- the emails


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
    ) -> None:
        self.ws = ws
        self.signer = signer
        self._store = store
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
        recover_later = False  # the database could not be asked at `start`: before the next turn
        while True:
            with self._wake:
                while not self._queue and not self._to_recover and not self._closing:
                    self._idle = True
                    self._wake.wait()
                    self._idle = False
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
        handed to a backend; False when the database cannot be asked now."""
        since = int(self._clock()) - self.ws.settings.signup.confirm_within_days * 86400
        try:
            found = self._store().queued_confirmations(since)
        except Exception as exc:  # the database's one line, or a bug's: the next turn tries again
            log.warning("confirmation emails reserved before this start not looked for yet: %s", reason(exc))
            return False
        if found:
            log.info("%d confirmation emails reserved before this start and not sent: sending them now", len(found))
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


# ---------------------------------------------------------------- the work


class Signup:
    """The signup's work for the web endpoint, called from worker threads. `store` gives
    the Store to use in the calling thread (the web app's database, which closes it);
    without it, one Store of its own, opened at first use and closed with it. `writing`
    gives the emails' own writes their turn among the caller's (the web app's lock)."""

    def __init__(
        self,
        ws: Workspace,
        signer: Signer,
        *,
        clock: Callable[[], datetime] | None = None,
        store: Callable[[], Store] | None = None,
        writing: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self.ws = ws
        self.settings = ws.settings.signup
        self.signer = signer
        self._clock = clock
        self._given = store
        self._db: Store | None = None
        self._db_lock = threading.Lock()
        self.mailer = Mailer(ws, signer, self._store, writing=writing, clock=self._now)

    def _store(self) -> Store:
        if self._given is not None:
            return self._given()
        if self._db is None:
            with self._db_lock:
                if self._db is None:
                    self._db = Store.open(self.ws, clock=self._clock, pooled=True)
        return self._db

    def _now(self) -> float:
        return self._clock().timestamp() if self._clock else time.time()

    def close(self) -> None:
        self.mailer.close()
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def allow_post(self, ip: str | None) -> int | None:
        """Count a request to join from this client that was not taken (a malformed
        body, a field that cannot be taken): None if the client may go on, else the
        seconds until it may (HTTP 429, Retry-After)."""
        return self._store().record_signup_post(client_key(ip), limit=POSTS_PER_CLIENT, window=POST_WINDOW)

    def ask(self, form: SignupForm, ip: str | None) -> Asked:
        """Someone asked to join with this address, from client `ip`: counted against
        the per-client limit (over it, the seconds to wait, and nothing else is done);
        then a new address becomes `pending`, any other keeps its status; a
        confirmation email is reserved unless the address is active or had one within
        the limits. All in one transaction. The email goes out in the mailer's next turn
        (the answer to the request does not wait for it), or at the next start if this
        server stops first. A request caught in the trap is counted, and nothing else."""
        joining = self._store().ask_to_join(
            client_key(ip),
            None if form.trapped else form.email,
            form.name,
            posts=(POSTS_PER_CLIENT, POST_WINDOW),
            limits=MAILS_PER_ADDRESS,
        )
        sub = joining.subscriber
        if sub is None or joining.reservation is None:
            return Asked(joining.wait)
        return Asked(
            None, self.mailer.confirmation(Recipient(sub.email, sub.name, sub.id), joining.reservation, joining.made)
        )

    def _mail(self, store: Store, sub: Subscriber) -> Future[bool] | None:
        reserved = store.reserve_confirmation(sub.id, MAILS_PER_ADDRESS)
        if reserved is None:
            return None
        reservation, made = reserved
        return self.mailer.confirmation(Recipient(sub.email, sub.name, sub.id), reservation, made)

    def read_link(self, token: str) -> Link:
        """The confirmation link a token is; InvalidToken for anything else."""
        sid, made = self.signer.read_confirm(token)
        now = self._now()
        if made > now + _CLOCK_SKEW_S:
            raise InvalidToken("this link is not valid")
        expired = now - made > self.settings.confirm_within_days * 86400
        return Link(sid, made, expired)

    def look(self, token: str) -> LinkState | None:
        """What the link opens now, changing nothing (GET: scanners fetch links).
        None for an unknown subscriber; InvalidToken for a link that does not read."""
        link = self.read_link(token)
        found = self._store().confirmation_state(link.subscriber_id, link.made)
        if found is None:
            return None
        sub, left = found
        return LinkState(_state(sub.status, left, link.expired), sub, link)

    def confirm(self, token: str, ip: str | None) -> LinkState | None:
        """Use the link (POST): the subscriber becomes active with their consent, unless
        the link is expired or spent; then, with `welcome: latest`, the latest issue
        already dispatched is sent to them."""
        link = self.read_link(token)
        store = self._store()
        if link.expired:
            found = store.confirmation_state(link.subscriber_id, link.made)
            if found is None:
                return None
            sub, left = found
            return LinkState(_state(sub.status, left, expired=True), sub, link)
        outcome = store.confirm(link.subscriber_id, link.made, ip)
        if outcome is None:
            return None
        what, sub = outcome
        welcome = None
        if what == "confirmed" and self.ws.settings.signup.welcome == "latest":
            # Claimed here, sent in the background: the page can say whether it comes.
            slug = store.latest_dispatch()
            delivery = store.claim_one(slug, sub.id) if slug else None
            if slug and delivery:
                self.mailer.welcome(slug, delivery)
                welcome = slug
        state = {"confirmed": "confirmed", "already": "active", "spent": "spent"}[what]
        return LinkState(state, sub, link, welcome)

    def resend(self, token: str) -> LinkState | None:
        """A new confirmation email for the owner of an expired or spent link (within
        the limits, and never to an active subscriber)."""
        link = self.read_link(token)
        store = self._store()
        found = store.confirmation_state(link.subscriber_id, link.made)
        if found is None:
            return None
        sub, left = found
        self._mail(store, sub)
        return LinkState(_state(sub.status, left, link.expired), sub, link)


def _state(status: str, left: bool, expired: bool) -> str:
    if status == "active":
        return "active"
    if left:
        return "spent"
    return "expired" if expired else "confirm"


__all__ = [
    "CONFIRM_SLUG",
    "EMAIL_FIELD",
    "MAILS_PER_ADDRESS",
    "NAME_FIELD",
    "POSTS_PER_CLIENT",
    "POST_WINDOW",
    "TRAP_FIELD",
    "Asked",
    "FieldProblem",
    "Link",
    "LinkState",
    "Mailer",
    "Signup",
    "SignupForm",
    "client_key",
    "form_snippet",
    "read_form",
    "render_confirmation",
]
