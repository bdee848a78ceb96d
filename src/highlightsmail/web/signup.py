"""The signup routes of the web endpoint, served when `signup.enabled` is true.

| request | answer |
| --- | --- |
| `GET /subscribe` | the page with the form (email, optional name); a query string changes nothing |
| `POST /subscribe` | form-encoded, multipart or JSON (`email`, `name`, the trap `website`): always the same 200 ("check your inbox"; JSON `{"status": "pending"}`), whatever the address's state; a malformed field: 400 naming it; over 30 per client and hour: 429 with Retry-After |
| `OPTIONS /subscribe` | CORS preflight, for the sites in `signup.allowed_origins` only |
| `GET /confirm/TOKEN` | the page with a Confirm button; changes nothing (scanners fetch links) |
| `POST /confirm/TOKEN` | active, with consent recorded; again: the same page; an expired link: 410, a page offering a new link (`action=resend` sends it) |

The pages are the workspace's `templates/pages/` (falling back to the package's), with the
endpoint's security headers, no script, and readable on a phone. JSON may be posted from
the pages of `allowed_origins` (the answer names that origin in
Access-Control-Allow-Origin); a JSON post naming any other origin is refused with 403.
The HTML form needs no CORS: a browser sends a form post from any site, and the answer is
a page for the reader, not data for the site.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from highlightsmail.authoring.workspace import Workspace
from highlightsmail.errors import InvalidToken
from highlightsmail.store import Joining, Store
from highlightsmail.subscribers.signup import (
    EMAIL_FIELD,
    MAILS_PER_ADDRESS,
    NAME_FIELD,
    FieldProblem,
    LinkState,
    Signup,
    read_form,
)
from highlightsmail.text import is_utf8
from highlightsmail.tokens import Signer
from highlightsmail.urls import CONFIRM, SUBSCRIBE, urls
from highlightsmail.web.database import AppDatabase
from highlightsmail.web.forms import FormError, read_fields
from highlightsmail.web.pages import TOO_MANY_REQUESTS, Pages, mask_email

log = logging.getLogger("highlightsmail.web")

_P = ParamSpec("_P")
_T = TypeVar("_T")

PENDING = {"status": "pending"}
#: The form's checkbox of a topic (one field per topic ticked), and the JSON's list.
TOPIC_FIELD = "topic"
TOPICS_FIELD = "topics"
_MAX_FIELDS = 80  # the form's fields and a checkbox per topic (at most 50)
#: Every answer of /subscribe differs by the Origin it was asked from (CORS).
_VARY = {"Vary": "Origin"}
_PREFLIGHT_MAX_AGE = "600"


class _BadBody(Exception):
    """A body that cannot be read as what its Content-Type says."""


def _wants_json(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def _fields(request: Request, as_json: bool) -> dict[str, Any]:
    """The posted fields: a JSON object, or a form (urlencoded or multipart). Text that
    is not UTF-8 comes as lone surrogates, for read_form to refuse by field."""
    body = await request.body()
    if as_json:
        try:
            data = json.loads(body.decode("utf-8", "surrogateescape"))
        except (ValueError, RecursionError):
            raise _BadBody("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _BadBody('the body must be a JSON object, like {"email": "reader@example.org"}')
        return data
    try:
        fields: dict[str, Any] = {}
        for key, value in read_fields(request.headers.get("content-type", ""), body, max_fields=_MAX_FIELDS):
            if key == TOPIC_FIELD:
                fields.setdefault(TOPICS_FIELD, []).append(value)  # a checkbox per topic
            else:
                fields.setdefault(key, value)  # the first of repeated fields
        return fields
    except FormError:  # malformed multipart, too many fields, a file
        raise _BadBody("the form could not be read") from None


def _client(request: Request) -> str | None:
    # uvicorn has already put the address from X-Forwarded-For here when the request
    # came through a trusted proxy (FORWARDED_ALLOW_IPS), and only then.
    return request.client.host if request.client else None


def choose_topics(store: Store, ws: Workspace, email: str, chosen: object) -> None:
    """The topics ticked on the form, for an address that joined just now (pending, in
    no topic yet); none ticked: the default ones. Anyone else's topics stay as they are:
    the form proves nothing about who sent it, so only the preference page changes them."""
    sub = store.find(email)
    if sub is None or sub.status != "pending" or store.topics(sub.id):
        return
    known = ws.settings.topic_ids()
    ids = [t for t in chosen if isinstance(t, str) and t in known] if isinstance(chosen, list) else []
    store.set_topics(sub.id, ids or ws.settings.default_topics())


class SignupEndpoint:
    """The handlers of /subscribe and /confirm/TOKEN; `routes` go into the app,
    `close` runs when it stops (waiting for emails under way)."""

    def __init__(self, ws: Workspace, pages: Pages, signer: Signer, db: AppDatabase) -> None:
        self.ws = ws
        self.pages = pages
        self.db = db
        # The emails' own writes take turns with the app's: a writer that finds the
        # SQLite file locked sleeps in growing steps (POST /subscribe's p99 was 0.5 s).
        self.signup = Signup(ws, signer, store=db.store, writing=db.writing)
        # Rendered now, so a confirmation template that cannot render stops the endpoint
        # with one line, not every reader's email later with a line in the log.
        self.signup.mailer.confirmation_email()
        self.allowed = frozenset(ws.settings.signup.allowed_origins)
        self.own_origin = urls(ws.settings).origin()
        self.routes: list[BaseRoute] = [
            Route(SUBSCRIBE, self.subscribe, methods=["GET", "POST", "OPTIONS"]),
            Route(CONFIRM, self.confirm, methods=["GET", "POST"]),
        ]

    def start(self) -> None:
        """The app starts serving: the confirmation emails a previous server reserved and
        never sent go out now."""
        self.signup.mailer.start()

    def close(self) -> None:
        self.signup.close()

    async def _write(self, work: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """`work` as one of the app's writes (AppDatabase.write), which take turns."""
        return await self.db.write(lambda _store: work(*args, **kwargs))

    # -- /subscribe

    async def subscribe(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return self._preflight(request)
        if request.method == "POST":
            return await self._post(request)
        return self._form_page()  # GET (and HEAD): whatever the query string says

    def _form_page(self, status_code: int = 200, problem: FieldProblem | None = None, **values: str) -> Response:
        return self.pages.response(
            "subscribe.html.j2",
            status_code,
            headers=_VARY,
            title="Subscribe",
            email_value=values.get(EMAIL_FIELD, ""),
            name_value=values.get(NAME_FIELD, ""),
            topics=[
                {"id": t.id, "name": t.name, "description": t.description, "chosen": t.default}
                for t in self.ws.settings.topics
            ],
            problem_field=problem.field if problem else None,
            problem=_problem_text(problem) if problem else None,
        )

    def _cors(self, request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin and origin in self.allowed:
            return {"Access-Control-Allow-Origin": origin, **_VARY}
        return dict(_VARY)

    def _preflight(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin not in self.allowed or request.headers.get("access-control-request-method") != "POST":
            return Response(status_code=403, headers=_VARY)
        return Response(
            status_code=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": _PREFLIGHT_MAX_AGE,
                **_VARY,
            },
        )

    def _foreign_json(self, request: Request, as_json: bool) -> bool:
        """JSON from a page elsewhere (a browser asks first, and is refused; a client
        that skips asking is refused the same way)."""
        origin = request.headers.get("origin")
        return as_json and origin is not None and origin not in self.allowed and origin.lower() != self.own_origin

    async def _post(self, request: Request) -> Response:
        as_json = _wants_json(request)
        headers = self._cors(request)
        if self._foreign_json(request, as_json):
            return JSONResponse({"error": "this origin may not post here"}, 403, headers=headers)
        try:
            fields = await _fields(request, as_json)
        except _BadBody as exc:
            return await self._not_taken(request, as_json, headers, self._bad_body(exc, as_json, headers))
        try:
            form = read_form(fields)
        except FieldProblem as problem:
            return await self._not_taken(request, as_json, headers, self._bad_field(problem, as_json, headers, fields))
        # Counted, added, the email reserved and the topics chosen in one transaction, a
        # quick write (in the event loop when it can be: web/database.py); the email is
        # queued once it is committed, which is when the write returns.
        client = _client(request)
        topics = bool(self.ws.settings.topics) and not form.trapped

        def join(store: Store) -> Joining:
            if not topics:
                return self.signup.join(form, client, store)
            with store.transaction():
                joining = self.signup.join(form, client, store)
                if joining.wait is None:
                    choose_topics(store, self.ws, form.email, fields.get(TOPICS_FIELD))
                return joining

        wait = self.signup.mail(await self.db.write(join, quick=True)).wait
        if wait is not None:
            return self._too_many(as_json, wait, headers)
        return self._accepted(as_json, headers)

    async def _not_taken(self, request: Request, as_json: bool, headers: dict[str, str], refusal: Response) -> Response:
        """A request that was not taken counts too, in a write of its own: over the limit,
        the answer is 429 whatever was sent; else `refusal`."""
        wait = await self._write(self.signup.allow_post, _client(request))
        return refusal if wait is None else self._too_many(as_json, wait, headers)

    def _too_many(self, as_json: bool, wait: int, headers: dict[str, str]) -> Response:
        if as_json:
            return JSONResponse({"error": TOO_MANY_REQUESTS}, 429, headers={**headers, "Retry-After": str(wait)})
        return self.pages.too_many_requests(wait, headers)

    def _bad_body(self, exc: _BadBody, as_json: bool, headers: dict[str, str]) -> Response:
        if as_json:
            return JSONResponse({"error": str(exc)}, 400, headers=headers)
        return self.pages.notice(400, "Request not accepted", f"{str(exc).capitalize()}.", headers=headers)

    def _bad_field(
        self, problem: FieldProblem, as_json: bool, headers: dict[str, str], fields: dict[str, Any]
    ) -> Response:
        if as_json:
            return JSONResponse({"error": problem.message, "field": problem.field}, 400, headers=headers)
        # Shown again in the form, to correct.
        return self._form_page(400, problem, **_shown(fields))

    def _accepted(self, as_json: bool, headers: dict[str, str]) -> Response:
        """The one answer to every request to join that was taken, whatever the address:
        the page rendered once (while its templates are unchanged)."""
        if as_json:
            return JSONResponse(PENDING, 200, headers=headers)
        minutes = int(MAILS_PER_ADDRESS[0][0].total_seconds() // 60)  # when asking again can send again
        page = self.pages.render_for_reader("subscribe-sent.html.j2", {}, title="Check your inbox", minutes=minutes)
        return HTMLResponse(page, headers=headers)

    # -- /confirm/TOKEN

    async def confirm(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            if request.method == "POST":
                state = await self._use(request, token)
            else:
                state = await run_in_threadpool(self.signup.look, token)
        except InvalidToken:
            state = None
        if state is None:
            return self._invalid()
        if isinstance(state, Response):
            return state
        return self._link_page(state, token)

    async def _use(self, request: Request, token: str) -> LinkState | Response | None:
        """POST /confirm/TOKEN: confirm, or (`action=resend` on an expired or spent
        link) send a new link."""
        try:
            fields = read_fields(request.headers.get("content-type", ""), await request.body())
        except FormError:  # the token authorises; an unreadable body just asks for nothing
            fields = []
        action = next((value for key, value in fields if key == "action"), "")
        if action == "resend":
            found = await run_in_threadpool(self.signup.look, token)
            if found is not None and found.state in ("expired", "spent"):
                wait = await self._write(self.signup.allow_post, _client(request))
                if wait is not None:
                    return self.pages.too_many_requests(wait)
                await self._write(self.signup.resend, token)
                return self._accepted(False, {})
        return await self._write(self.signup.confirm, token, _client(request))

    def _link_page(self, state: LinkState, token: str) -> Response:
        masked = mask_email(state.subscriber.email)
        # Relative: the page is /confirm/TOKEN, so its form posts to the same address
        # (and keeps working when a proxy serves the app under a prefix).
        action = token
        if state.state in ("confirmed", "active"):
            return self.pages.response(
                "confirmed.html.j2",
                title="You are subscribed",
                masked_email=masked,
                already=state.state == "active",
                welcome=state.welcome is not None,
            )
        if state.state == "confirm":
            return self.pages.response(
                "confirm.html.j2", title="Confirm your subscription", masked_email=masked, confirm_action=action
            )
        return self.pages.response(
            "confirm-expired.html.j2",
            410,
            title="This link no longer works",
            masked_email=masked,
            confirm_action=action,
            reason=state.state,
            days=self.ws.settings.signup.confirm_within_days,
        )

    def _invalid(self) -> Response:
        return self.pages.invalid_link(
            "To subscribe, use the form again: a new email with a link to confirm will follow."
        )


def _shown(fields: dict[str, Any]) -> dict[str, str]:
    """What was posted, to show again in the form to correct: text fields only."""
    return {k: v for k in (EMAIL_FIELD, NAME_FIELD) if isinstance(v := fields.get(k), str) and is_utf8(v)}


def _problem_text(problem: FieldProblem) -> str:
    return problem.naming({EMAIL_FIELD: "Email address", NAME_FIELD: "Name"}.get(problem.field, problem.field))


__all__ = ["PENDING", "SignupEndpoint"]
