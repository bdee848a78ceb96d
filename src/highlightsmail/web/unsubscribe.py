"""The unsubscribe routes: `/u/TOKEN` and `/u/TOKEN/resubscribe`.

- `GET /u/TOKEN` changes nothing: mail scanners and link previews fetch every link.
- `POST /u/TOKEN` is the unsubscribe. The token authorises it; the body only says where it
  came from: `List-Unsubscribe=One-Click` (RFC 8058, urlencoded or multipart) is recorded as
  `one-click`, anything else (the page's form sends `action=unsubscribe`; an empty body from a
  browser or proxy that drops it) as `web`. The answer is 200 with a page, never a redirect,
  needs no cookie and sets none; a repeat answers the same and records nothing new.
- A bounced or complained subscriber keeps that status on unsubscribe (they already receive
  nothing, and the reason stays visible); resubscribing them is refused with 409, since mail
  to that address could not be delivered or was reported as unwanted.
- Test-send tokens open a page saying it was a test, on any method; nothing changes.
- Invalid, altered or unknown-subscriber tokens: 400 "This link is not valid".
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from highlightsmail.errors import InvalidToken
from highlightsmail.store import UNDELIVERABLE, Source, Status, Store, Subscriber, UnknownSubscriber
from highlightsmail.tokens import Signer
from highlightsmail.urls import RESUBSCRIBE, UNSUBSCRIBE
from highlightsmail.web.database import AppDatabase
from highlightsmail.web.forms import FormError, read_fields
from highlightsmail.web.pages import Pages, mask_email

#: How a reader who followed a link that does not work can still leave.
_HOW_TO_LEAVE = (
    "To unsubscribe, use the link at the bottom of the newsletter email itself, "
    "or reply to it and we will take you off the list."
)


@dataclass(frozen=True)
class SubscriberView:
    """What a page shows of a subscriber."""

    masked_email: str
    status: str


def look(store: Store, subscriber_id: int) -> SubscriberView | None:
    """The subscriber an id names, as a page shows it; None for an unknown one."""
    sub = store.get(subscriber_id)
    return None if sub is None else SubscriberView(mask_email(sub.email), sub.status)


def move(
    store: Store, subscriber_id: int, from_status: Status, to_status: Status, source: Source
) -> SubscriberView | None:
    """`from_status` -> `to_status`; any other status is left as it is (a bounced or
    complained address stays so). None for an unknown subscriber."""
    # The subscriber the id names: for a row merged into another (the same address),
    # that one, so an old link acts on the person it was sent to.
    sub = store.get(subscriber_id)
    if sub is None:
        return None
    if sub.status != from_status:
        return SubscriberView(mask_email(sub.email), sub.status)
    return move_found(store, sub, from_status, to_status, source)


def move_found(
    store: Store, sub: Subscriber, from_status: Status, to_status: Status, source: Source
) -> SubscriberView | None:
    """`move` for a subscriber read already, found in `from_status`."""
    if not change(store, sub, from_status, to_status, source):
        return None
    sub = store.get(sub.id) or sub
    return SubscriberView(mask_email(sub.email), sub.status)


def change(store: Store, sub: Subscriber, from_status: Status, to_status: Status, source: Source) -> bool:
    """The write of `move_found`: False when the subscriber was deleted meanwhile."""
    try:
        # Records an event only when the status changes, so a repeat adds nothing;
        # only_from: a change since the read (a bounce) is left alone.
        store.set_status(sub.id, to_status, source=source, only_from=from_status)
    except UnknownSubscriber:  # deleted in between
        return False
    return True


def _actions(token: str, nested: bool) -> dict[str, str]:
    """Where the page's forms post, relative to the page."""
    # Relative form actions keep working when a proxy serves the app under a prefix.
    up = "../" if nested else ""
    return {"unsubscribe_action": f"{up}{token}", "resubscribe_action": f"{up}{token}/resubscribe"}


async def _is_one_click(request: Request) -> bool:
    """Whether the body is RFC 8058's `List-Unsubscribe=One-Click`, urlencoded or multipart.

    A body that can't be parsed is not one-click; it still unsubscribes (as `web`), since
    the signed token, not the body, is what authorises the request.
    """
    try:
        fields = read_fields(request.headers.get("content-type", ""), await request.body())
    except FormError:  # malformed: treat as an unlabelled form post
        return False
    return any(k.strip().lower() == "list-unsubscribe" and v.strip().lower() == "one-click" for k, v in fields)


class UnsubscribeRoutes:
    """The handlers of /u/TOKEN and /u/TOKEN/resubscribe; `routes` go into the app."""

    def __init__(self, pages: Pages, signer: Signer, db: AppDatabase) -> None:
        self.pages = pages
        self.signer = signer
        self.db = db
        self.routes: list[BaseRoute] = [
            # One route for both methods, so a wrong method's 405 lists both in Allow.
            Route(UNSUBSCRIBE, self.token_page, methods=["GET", "POST"]),
            Route(RESUBSCRIBE, self.resubscribe, methods=["POST"]),
        ]

    def _invalid(self) -> HTMLResponse:
        return self.pages.invalid_link(_HOW_TO_LEAVE)

    def _subscriber_id(self, token: str) -> int | Response:
        """The subscriber a token names, or the page to answer instead: 400 for a bad
        link, the "this was a test" page for a test send's link (which changes nothing)."""
        try:
            purpose, subscriber_id = self.signer.read(token)
        except InvalidToken:
            return self._invalid()
        if purpose == "test":
            return self.pages.response("test-link.html.j2", title="This was a test message")
        return subscriber_id

    def _page(self, name: str, title: str, sub: SubscriberView, token: str, *, nested: bool = False) -> Response:
        # The same page for every reader in a status, but for the address and the links:
        # rendered once (a page took a third of a GET's time).
        reader = {"masked_email": sub.masked_email, **_actions(token, nested)}
        return HTMLResponse(self.pages.render_for_reader(name, reader, title=title, status=sub.status))

    async def token_page(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.unsubscribe(request)
        return await self.show(request)

    async def show(self, request: Request) -> Response:
        """GET /u/TOKEN: the confirmation page; changes nothing."""
        token = request.path_params["token"]
        subscriber_id = self._subscriber_id(token)
        if isinstance(subscriber_id, Response):
            return subscriber_id
        sub = await self.db.read(lambda store: look(store, subscriber_id))
        if sub is None:
            return self._invalid()
        return self._page("unsubscribe.html.j2", "Unsubscribe", sub, token)

    async def unsubscribe(self, request: Request) -> Response:
        """POST /u/TOKEN: the form on the page, or an RFC 8058 one-click POST."""
        token = request.path_params["token"]
        subscriber_id = self._subscriber_id(token)
        if isinstance(subscriber_id, Response):
            return subscriber_id
        source: Source = "one-click" if await _is_one_click(request) else "web"
        # The read, the change and its event in one step, and in the event loop's thread
        # when it can be (web/database.py): no hop between threads, each of which
        # waited for the interpreter lock.
        found = await self.db.write(lambda store: store.leave(subscriber_id, source), quick=True)
        if found is None:
            return self._invalid()
        sub = SubscriberView(mask_email(found.email), found.status)
        return self._page("unsubscribed.html.j2", "You are unsubscribed", sub, token)

    async def resubscribe(self, request: Request) -> Response:
        """POST /u/TOKEN/resubscribe: active again, unless mail to the address fails."""
        token = request.path_params["token"]
        subscriber_id = self._subscriber_id(token)
        if isinstance(subscriber_id, Response):
            return subscriber_id
        sub = await self.db.write(lambda store: move(store, subscriber_id, "unsubscribed", "active", "web"))
        if sub is None:
            return self._invalid()
        if sub.status in UNDELIVERABLE:
            return self.pages.notice(
                409,
                "We can't send to this address",
                f"Mail to {sub.masked_email} could not be delivered or was reported as unwanted, "
                "so we no longer send to it.",
                "To subscribe again, please write to the editors from that address.",
            )
        return self._page("resubscribed.html.j2", "You are subscribed again", sub, token, nested=True)


__all__ = ["SubscriberView", "UnsubscribeRoutes", "change", "look", "move", "move_found"]
