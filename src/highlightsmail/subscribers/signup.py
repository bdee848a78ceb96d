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
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from highlightsmail.addresses import BadAddress
from highlightsmail.errors import HighlightsError, InvalidToken
from highlightsmail.mail.message import Recipient
from highlightsmail.rendering.render import render_template
from highlightsmail.store import Joining, Store, Subscriber
from highlightsmail.subscribers.mailer import CONFIRM_SLUG, Mailer, render_confirmation
from highlightsmail.subscribers.reading import fast_normalize_address
from highlightsmail.text import header_problem, is_utf8
from highlightsmail.urls import urls

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace
    from highlightsmail.tokens import Signer

log = logging.getLogger("highlightsmail.signup")

#: POST /subscribe per client (an IP address; IPv6 by its /64) and window.
POSTS_PER_CLIENT = 30
POST_WINDOW = timedelta(hours=1)
#: Confirmation emails per address, counted by mailbox (addresses.mailbox_key): (window, at most).
MAILS_PER_ADDRESS: tuple[tuple[timedelta, int], ...] = ((timedelta(minutes=10), 1), (timedelta(days=1), 5))
FORM_TEMPLATE = "site/_signup.html.j2"
#: The form's fields: the address, an optional name, and the trap for bots.
EMAIL_FIELD, NAME_FIELD, TRAP_FIELD = "email", "name", "website"
MAX_NAME = 200
MAX_EMAIL = 320  # longer than any address email-validator accepts: refused here unread
#: How far in the future a link's time may be (servers' clocks differ a little).
_CLOCK_SKEW_S = 300


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
        # The import's way: the same verdict and words as normalize_address, with
        # email-validator's costly part done once per domain (a tenth of a signup).
        email = fast_normalize_address(raw_email)
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
        self.mailer = Mailer(
            ws, signer, self._store, writing=writing, clock=self._now, opener=lambda: Store.open(ws, clock=clock)
        )

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

    def ask(self, form: SignupForm, ip: str | None, store: Store | None = None) -> Asked:
        """Someone asked to join with this address, from client `ip`: counted against
        the per-client limit (over it, the seconds to wait, and nothing else is done);
        then a new address becomes `pending`, any other keeps its status; a
        confirmation email is reserved unless the address is active or had one within
        the limits. All in one transaction (`join`), then the email queued (`mail`): it
        goes out in the mailer's next turn (the answer to the request does not wait for
        it), or at the next start if this server stops first. A request caught in the
        trap is counted, and nothing else."""
        return self.mail(self.join(form, ip, store))

    def join(self, form: SignupForm, ip: str | None, store: Store | None = None) -> Joining:
        """What `ask` writes, in its one transaction, and nothing more: the web app makes
        it as a quick write, whose transaction may be shared with others and commit only
        after it returns, so the email is queued (`mail`) once the write has returned.
        `store`: the one to make it in (the web app's), else this one's."""
        return (store or self._store()).ask_to_join(
            client_key(ip),
            None if form.trapped else form.email,
            form.name,
            posts=(POSTS_PER_CLIENT, POST_WINDOW),
            limits=MAILS_PER_ADDRESS,
        )

    def mail(self, joining: Joining) -> Asked:
        """The confirmation email `join` reserved (if it did), queued for the mailer."""
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
            slug = store.latest_dispatch(sub.id)
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
