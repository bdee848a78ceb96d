"""The preference page: `/p/TOKEN`, the "Manage preferences" link in every issue.

| request | answer |
| --- | --- |
| `GET /p/TOKEN` | the page: topics (a checkbox each), the name, a pause, unsubscribe from everything, "Download my data", "Erase me"; changes nothing (mail scanners open links) |
| `POST /p/TOKEN` | the page's forms, by `action`: `save` (topics, name, pause), `unsubscribe`, `download` (a JSON file of everything held), `erase` (asks to confirm), `erase-confirmed` (erases) |

- The token is of its own kind (`p`, tokens.Signer.make_preferences) and carries when it
  was made: an unsubscribe or confirmation token opens nothing here, and a preference
  token nothing elsewhere. A test send's token opens the "this was a test" page. A link
  older than LINK_VALID_DAYS only says so; an invalid one, or one whose subscriber is
  gone (erased), is 400 "This link is not valid". Nothing changes for any of them.
- Plain HTML forms, no script; every answer is a page (or the JSON download), no redirect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from highlightsmail.authoring.workspace import Workspace
from highlightsmail.errors import InvalidToken
from highlightsmail.store import Store, Subscriber, UnknownSubscriber
from highlightsmail.subscribers import privacy
from highlightsmail.subscribers.reading import check_name
from highlightsmail.tokens import Signer
from highlightsmail.urls import PREFERENCES
from highlightsmail.web.database import AppDatabase
from highlightsmail.web.forms import FormError, read_fields
from highlightsmail.web.pages import Pages, mask_email
from highlightsmail.web.unsubscribe import change

#: A preference link this old only says so: it can erase, so it does not last for ever.
LINK_VALID_DAYS = 120
#: The pauses a reader may choose, in weeks.
PAUSE_WEEKS = (1, 4, 12)
_MAX_FIELDS = 80  # a checkbox per topic (at most 50) and the rest

_HOW_TO_COME_BACK = (
    "Use the Manage preferences link in a recent email from us. "
    "The unsubscribe link at the bottom of any of our emails still works."
)


@dataclass(frozen=True)
class _Reader:
    """Whom a valid token names, as the page needs them."""

    sub: Subscriber
    topics: list[str]
    paused_until: str | None


def _read(store: Store, subscriber_id: int) -> _Reader | None:
    sub = store.get(subscriber_id)
    if sub is None:
        return None
    return _Reader(sub, store.topics(sub.id), store.paused_until(sub.id))


class PreferenceRoutes:
    """The handlers of /p/TOKEN; `routes` go into the app."""

    def __init__(self, ws: Workspace, pages: Pages, signer: Signer, db: AppDatabase) -> None:
        self.ws = ws
        self.pages = pages
        self.signer = signer
        self.db = db
        self.routes: list[BaseRoute] = [Route(PREFERENCES, self.page, methods=["GET", "POST"])]

    def _subscriber_id(self, token: str) -> int | Response:
        """The subscriber a token names, or the page to answer instead."""
        try:
            subscriber_id, made = self.signer.read_preferences(token)
        except InvalidToken:
            try:
                purpose, _sid = self.signer.read(token)
            except InvalidToken:
                purpose = ""
            if purpose == "test":
                return self.pages.response("test-link.html.j2", title="This was a test message")
            return self.pages.invalid_link(_HOW_TO_COME_BACK)
        if time.time() - made > LINK_VALID_DAYS * 86400:
            return self.pages.notice(
                410,
                "This link has expired",
                f"Links to your preferences work for {LINK_VALID_DAYS} days after the email was sent.",
                _HOW_TO_COME_BACK,
            )
        return subscriber_id

    async def page(self, request: Request) -> Response:
        token = request.path_params["token"]
        subscriber_id = self._subscriber_id(token)
        if isinstance(subscriber_id, Response):
            return subscriber_id
        reader = await self.db.read(lambda store: _read(store, subscriber_id))
        if reader is None:
            return self.pages.invalid_link(_HOW_TO_COME_BACK)
        if request.method == "GET":
            return self._show(reader, token)
        try:
            fields = read_fields(request.headers.get("content-type", ""), await request.body(), max_fields=_MAX_FIELDS)
        except FormError as exc:
            return self.pages.notice(400, "This form could not be read", str(exc), "Please go back and try again.")
        return await self._act(reader, token, fields)

    async def _act(self, reader: _Reader, token: str, fields: list[tuple[str, str]]) -> Response:
        action = next((v for k, v in fields if k == "action"), "")
        sid = reader.sub.id
        if action == "download":
            data = await self.db.read(lambda store: privacy.data_of(store, reader.sub))
            return Response(
                privacy.data_json(data),
                media_type="application/json",
                headers={"Content-Disposition": 'attachment; filename="my-data.json"'},
            )
        if action == "erase":
            return self.pages.response(
                "erase-confirm.html.j2",
                title="Erase everything about you?",
                masked_email=mask_email(reader.sub.email),
                action=token,
            )
        if action == "erase-confirmed":
            await self.db.write(lambda store: _erase(store, self.signer, sid))
            return self.pages.response("erased.html.j2", title="You are erased")
        if action == "unsubscribe":
            if reader.sub.status == "active":
                await self.db.write(lambda store: change(store, reader.sub, "active", "unsubscribed", "web"))
            return await self._again(sid, token, "You are unsubscribed from everything; we send you nothing more.")
        if action == "save" and reader.sub.status == "active":
            problem = await self.db.write(lambda store: self._save(store, sid, fields))
            if problem:
                return self._show(reader, token, problem=problem, status_code=400)
            return await self._again(sid, token, "Your preferences are saved.")
        return self._show(reader, token)

    async def _again(self, subscriber_id: int, token: str, saved: str) -> Response:
        reader = await self.db.read(lambda store: _read(store, subscriber_id))
        if reader is None:
            return self.pages.invalid_link(_HOW_TO_COME_BACK)
        return self._show(reader, token, saved=saved)

    def _save(self, store: Store, subscriber_id: int, fields: list[tuple[str, str]]) -> str | None:
        """Topics, name and pause from the form, in the writer; a problem to show, or None."""
        known = self.ws.settings.topic_ids()
        name = next((v for k, v in fields if k == "name"), None)
        if name is not None:
            try:
                name = check_name(name.strip())
            except ValueError as exc:
                return f"Name: {exc}"
        try:
            if known:
                store.set_topics(subscriber_id, [v for k, v in fields if k == "topic" and v in known])
            if name is not None:
                store.set_name(subscriber_id, name)
            pause = next((v for k, v in fields if k == "pause"), "keep")
            if pause == "none":
                store.pause(subscriber_id, None)
            elif pause.isdigit() and int(pause) in PAUSE_WEEKS:
                store.pause(subscriber_id, int(pause))
        except UnknownSubscriber:  # erased meanwhile
            return "This subscription no longer exists."
        return None

    def _show(
        self, reader: _Reader, token: str, *, saved: str = "", problem: str = "", status_code: int = 200
    ) -> HTMLResponse:
        sub = reader.sub
        topics = [
            {"id": t.id, "name": t.name, "description": t.description, "chosen": t.id in reader.topics}
            for t in self.ws.settings.topics
        ]
        context: dict[str, Any] = {
            "title": "Your preferences",
            "masked_email": mask_email(sub.email),
            "reader_name": sub.name,
            "status": sub.status,
            "topics": topics,
            "paused_until": (reader.paused_until or "")[:10],
            "pause_weeks": PAUSE_WEEKS,
            "action": token,  # relative: works under a proxy's prefix too
            "saved": saved,
            "problem": problem,
        }
        return self.pages.response("preferences.html.j2", status_code, **context)


def _erase(store: Store, signer: Signer, subscriber_id: int) -> None:
    sub = store.get(subscriber_id)
    if sub is not None:  # a repeat: already gone
        privacy.erase(store, signer, sub)


__all__ = ["LINK_VALID_DAYS", "PAUSE_WEEKS", "PreferenceRoutes"]
