"""The web endpoint: unsubscribe pages, RFC 8058 one-click unsubscribe, and a health check.

Run by `highlights serve`, or in production as `uvicorn highlightsmail.web:app`.

Behaviour worth knowing (the product contract has the table of routes):

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
- With `signup.enabled`, the signup form and its confirmation links (web/signup.py):
  `/subscribe` and `/confirm/TOKEN`; a confirmation token opens nothing on `/u/`.
- Invalid, altered or unknown-subscriber tokens: 400 "This link is not valid".
- A database that cannot be used (damaged, read-only, locked too long, a PostgreSQL
  server down or out of reach): 503 with Retry-After, and one line in the log naming the
  file or server and what to do. `/healthz` says so too (503, with that line), within
  half a second whatever the database does, so a load balancer takes the process out
  of rotation; the log says once when the database goes and once when it is back.
- On PostgreSQL several processes (on several machines) may serve the same list: every
  write is one transaction in the database, and each process borrows connections from a
  small pool.
- Logs never hold a working link: in a logged path (the access log, the error log and
  ours) whatever follows a token route (`/u/`, `/confirm/`: TOKEN_ROUTES) is cut but the
  token's kind and id, however the path was mangled or escaped, and anything shaped like
  a token elsewhere has its signature cut.
- Every response carries a strict CSP, `Referrer-Policy: no-referrer` (the token is in the
  path and must not leak), `nosniff` and `Cache-Control: no-store`. Bodies over 8 KiB: 413.
  The archive's pages (web/archive.py, when enabled) may be cached and indexed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import quote, unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from highlightsmail import templating, urls
from highlightsmail.dburl import describe_url
from highlightsmail.errors import HighlightsError, InvalidToken, display_path
from highlightsmail.serving import bind_socket
from highlightsmail.store import UNDELIVERABLE, UnusableDatabase
from highlightsmail.text import parse_number

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from highlightsmail.authoring.workspace import Workspace
    from highlightsmail.store import Source, Status, Store
    from highlightsmail.tokens import Signer

log = logging.getLogger("highlightsmail.web")

MAX_BODY_BYTES = 8 * 1024  # a one-click body is 26 bytes; a multipart one, a few hundred
RETRY_AFTER_S = 300  # a database that cannot be used now: come back in five minutes

# No scripts, no images, nothing from elsewhere; inline styles only; forms post back here.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
}

#: Headers a route may set for itself (the archive's pages may be cached and indexed,
#: and show images); every other security header is the same on every answer.
ROUTE_MAY_SET = frozenset({"Content-Security-Policy", "Cache-Control", "X-Robots-Tag"})


def mask_email(address: str) -> str:
    """`ad***@example.org`: enough for the owner to recognise, little for anyone else."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    shown = local[:2] if len(local) > 3 else local[:1]
    return f"{shown}***" + (f"@{domain}" if domain else "")


# ---------------------------------------------------------------- pages


class Pages:
    """The HTML pages: the workspace's `templates/pages/` first, then the package's.

    If a workspace template fails to render, the package's own page is used instead
    (and the error logged): a typo in a customised page must never stop an unsubscribe.
    """

    def __init__(self, ws: Workspace) -> None:
        self._env = templating.environment(templating.workspace_loader(ws.templates_dir))
        self._fallback = templating.environment(templating.package_loader())
        self._common = {"newsletter": ws.settings.name, "postal_address": ws.settings.postal_address}

    def render(self, name: str, **context: Any) -> str:
        context = {**self._common, **context}
        try:
            return self._env.get_template(f"pages/{name}").render(context)
        except Exception:  # a syntax error, but also a file that is not UTF-8 or not readable
            log.exception("templates/pages/%s failed to render; using the built-in page", name)
            return self._fallback.get_template(f"pages/{name}").render(context)

    def response(
        self, name: str, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any
    ) -> HTMLResponse:
        return HTMLResponse(self.render(name, **context), status_code=status_code, headers=headers)

    def notice(
        self, status_code: int, title: str, *paragraphs: str, headers: dict[str, str] | None = None
    ) -> HTMLResponse:
        return self.response("notice.html.j2", status_code, headers, title=title, paragraphs=paragraphs)


# ---------------------------------------------------------------- database work (in a worker thread)


@dataclass(frozen=True)
class SubscriberView:
    """What a page shows of a subscriber."""

    masked_email: str
    status: str


#: /healthz answers within this, whatever the database does: a load balancer gives up on
#: a check after a second or a few, and a check that waited out a connect timeout
#: (libpq's shortest is 2 s; the pool's wait, 5 s) looked like a dead process.
HEALTH_WAIT_S = 0.5
#: While the database cannot be used, it is asked again this often, so that its return
#: is noticed (and logged) with or without requests.
HEALTH_RETRY_S = 2.0


class DatabaseHealth:
    """Whether the database answers, and one line in the log at each change: when it
    goes (with the reason) and when it is back, however many requests fail between.

    A check runs in a thread of its own, one at a time; /healthz waits at most
    HEALTH_WAIT_S for it, then answers with the state last known (or that the database
    did not answer in time), and the check's outcome counts when it comes. A request
    that failed on the database starts a check too. While the database is gone, it is
    checked every HEALTH_RETRY_S until it is back."""

    def __init__(self, check: Callable[[], str | None], where: str) -> None:
        self._check = check
        self._where = where
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._running: Future[str | None] | None = None
        self._watching = False
        self._closed = threading.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")

    def start(self) -> Future[str | None]:
        """The check under way, or a new one (once closed: the state last known)."""
        with self._lock:
            if self._closed.is_set():
                known: Future[str | None] = Future()
                known.set_result(self._problem)
                return known
            if self._running is None or self._running.done():
                self._running = self._thread.submit(self._run)
            return self._running

    async def problem(self) -> str | None:
        """Why the database cannot be used now (None: it answers), within HEALTH_WAIT_S."""
        running = asyncio.wrap_future(self.start())
        try:
            return await asyncio.wait_for(asyncio.shield(running), HEALTH_WAIT_S)
        except TimeoutError:
            return self._problem or f"{self._where}: the database did not answer within {HEALTH_WAIT_S:g} s"

    def _run(self) -> str | None:
        problem = self._check()
        with self._lock:
            before, self._problem = self._problem, problem
            watch = problem is not None and not self._watching and not self._closed.is_set()
            self._watching |= watch
        if problem is not None and before is None:
            log.error("database unavailable: %s", problem)
        elif problem is None and before is not None:
            # A warning, as the going was an error: both reach a log that shows only those.
            log.warning("database available again: %s", self._where)
        if watch:
            threading.Thread(target=self._watch, name="health-watch", daemon=True).start()
        return problem

    def _watch(self) -> None:
        try:
            while not self._closed.wait(HEALTH_RETRY_S):
                if self.start().result() is None:
                    return
        except CancelledError:  # the app stopped meanwhile
            pass
        finally:
            with self._lock:
                self._watching = False

    def close(self) -> None:
        with self._lock:
            self._closed.set()
        self._thread.shutdown(wait=False, cancel_futures=True)


class Subscriptions:
    """The endpoint's database work. On SQLite each call opens its own Store, so requests
    served in different threads never share a SQLite connection; the store's busy timeout
    and BEGIN IMMEDIATE let these writes wait out an import instead of failing.

    One more Store stays open for the app's lifetime: on SQLite, because when the last
    connection to a WAL database closes, SQLite checkpoints and removes the WAL, which
    costs a sync per request (about 25 ms instead of 1 ms here); on PostgreSQL, it is the
    Store every call uses, borrowing a connection from its pool for each transaction.
    """

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws
        self._keeper: Store | None = None
        self._keeper_lock = threading.Lock()
        where = describe_url(ws.database_url) if ws.database_url else display_path(ws.db_path)
        self.health = DatabaseHealth(self.check, where)

    def _store(self) -> AbstractContextManager[Store]:
        from highlightsmail.store import Store

        keeper = self._keeper
        if keeper is None:
            with self._keeper_lock:
                if self._keeper is None:
                    self._keeper = Store.open(self._ws, pooled=True)  # a new SQLite file's schema too
                keeper = self._keeper
        if keeper.postgresql:
            return nullcontext(keeper)  # shared by every thread: closed with the app
        return Store.open(self._ws)

    def check(self) -> str | None:
        """Why the database cannot be used now, or None when it answers. On PostgreSQL
        over a connection of its own, with the shortest connect timeout libpq takes, not
        one from the pool: the pool's connections may all be busy serving (load is not
        ill health), and it waits between attempts to reconnect."""
        from highlightsmail.store import Store

        try:
            if self._ws.database_url:
                with Store.open(self._ws, timeout=2) as store:
                    store.ping()
            else:
                with self._store() as store:
                    store.ping()
        except HighlightsError as exc:
            return exc.format_message()
        return None

    def close(self) -> None:
        self.health.close()
        with self._keeper_lock:
            if self._keeper is not None:
                self._keeper.close()
                self._keeper = None

    def look(self, subscriber_id: int) -> SubscriberView | None:
        with self._store() as store:
            sub = store.get(subscriber_id)
        return None if sub is None else SubscriberView(mask_email(sub.email), sub.status)

    def unsubscribe(self, subscriber_id: int, source: Source) -> SubscriberView | None:
        return self._move(subscriber_id, "active", "unsubscribed", source)

    def resubscribe(self, subscriber_id: int) -> SubscriberView | None:
        return self._move(subscriber_id, "unsubscribed", "active", "web")

    def _move(
        self, subscriber_id: int, from_status: Status, to_status: Status, source: Source
    ) -> SubscriberView | None:
        """`from_status` -> `to_status`; any other status is left as it is (a bounced or
        complained address stays so). None for an unknown subscriber."""
        from highlightsmail.store import UnknownSubscriber

        with self._store() as store:
            # The subscriber the id names: for a row merged into another (the same
            # address), that one, so an old link acts on the person it was sent to.
            sub = store.get(subscriber_id)
            if sub is None:
                return None
            if sub.status == from_status:
                try:
                    # Records an event only when the status changes, so a repeat adds nothing;
                    # only_from: a change since the read above (a bounce) is left alone.
                    store.set_status(sub.id, to_status, source=source, only_from=from_status)
                except UnknownSubscriber:  # deleted in between
                    return None
                sub = store.get(sub.id) or sub
        return SubscriberView(mask_email(sub.email), sub.status)


# ---------------------------------------------------------------- the app


class _Endpoint:
    """The route handlers, sharing the workspace's pages, signer and database."""

    def __init__(self, ws: Workspace, signer: Signer) -> None:
        self.pages = Pages(ws)
        self.signer = signer
        self.db = Subscriptions(ws)

    # -- helpers

    def _read(self, token: str) -> tuple[str, int]:
        try:
            return self.signer.read(token)
        except InvalidToken:
            raise _BadLink from None

    def invalid(self) -> HTMLResponse:
        return self.pages.notice(
            400,
            "This link is not valid",
            "The link may have been cut short or changed on its way to you.",
            "To unsubscribe, use the link at the bottom of the newsletter email itself, "
            "or reply to it and we will take you off the list.",
        )

    def test_page(self) -> HTMLResponse:
        return self.pages.response("test-link.html.j2", title="This was a test message")

    def _actions(self, token: str, nested: bool) -> _Actions:
        # Relative form actions keep working when a proxy serves the app under a prefix.
        up = "../" if nested else ""
        return {"unsubscribe_action": f"{up}{token}", "resubscribe_action": f"{up}{token}/resubscribe"}

    # -- routes

    async def healthz(self, request: Request) -> Response:
        """200 `ok`, or 503 with the one line saying why the database cannot be used."""
        problem = await self.db.health.problem()
        if problem is not None:
            return PlainTextResponse(f"database unavailable: {problem}", status_code=503)
        return PlainTextResponse("ok")

    async def token_page(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.unsubscribe(request)
        return await self.show(request)

    def _subscriber_id(self, token: str) -> int | Response:
        """The subscriber a token names, or the page to answer instead: 400 for a bad
        link, the "this was a test" page for a test send's link (which changes nothing)."""
        try:
            purpose, subscriber_id = self._read(token)
        except _BadLink:
            return self.invalid()
        if purpose == "test":
            return self.test_page()
        return subscriber_id

    async def show(self, request: Request) -> Response:
        """GET /u/TOKEN: the confirmation page; changes nothing."""
        token = request.path_params["token"]
        subscriber_id = self._subscriber_id(token)
        if isinstance(subscriber_id, Response):
            return subscriber_id
        sub = await run_in_threadpool(self.db.look, subscriber_id)
        if sub is None:
            return self.invalid()
        return self.pages.response(
            "unsubscribe.html.j2",
            title="Unsubscribe",
            masked_email=sub.masked_email,
            status=sub.status,
            **self._actions(token, nested=False),
        )

    async def unsubscribe(self, request: Request) -> Response:
        """POST /u/TOKEN: the form on the page, or an RFC 8058 one-click POST."""
        token = request.path_params["token"]
        subscriber_id = self._subscriber_id(token)
        if isinstance(subscriber_id, Response):
            return subscriber_id
        source: Source = "one-click" if await _is_one_click(request) else "web"
        sub = await run_in_threadpool(self.db.unsubscribe, subscriber_id, source)
        if sub is None:
            return self.invalid()
        return self.pages.response(
            "unsubscribed.html.j2",
            title="You are unsubscribed",
            masked_email=sub.masked_email,
            status=sub.status,
            **self._actions(token, nested=False),
        )

    async def resubscribe(self, request: Request) -> Response:
        """POST /u/TOKEN/resubscribe: active again, unless mail to the address fails."""
        token = request.path_params["token"]
        subscriber_id = self._subscriber_id(token)
        if isinstance(subscriber_id, Response):
            return subscriber_id
        sub = await run_in_threadpool(self.db.resubscribe, subscriber_id)
        if sub is None:
            return self.invalid()
        if sub.status in UNDELIVERABLE:
            return self.pages.notice(
                409,
                "We can't send to this address",
                f"Mail to {sub.masked_email} could not be delivered or was reported as unwanted, "
                "so we no longer send to it.",
                "To subscribe again, please write to the editors from that address.",
            )
        return self.pages.response(
            "resubscribed.html.j2",
            title="You are subscribed again",
            masked_email=sub.masked_email,
            status=sub.status,
            **self._actions(token, nested=True),
        )

    # -- errors

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            return self.pages.notice(404, "Page not found", "There is nothing at this address.", headers=headers)
        if exc.status_code == 405:
            return self.pages.notice(
                405, "Not allowed", "This page does not accept that kind of request.", headers=headers
            )
        return self.pages.notice(exc.status_code, "Request not accepted", str(exc.detail), headers=headers)

    async def database_error(self, request: Request, exc: Exception) -> Response:
        """503: the database cannot be used now. The log gets the one line saying what
        to do; the reader, that nothing changed and to come back later (a mail
        provider's one-click POST is retried)."""
        assert isinstance(exc, UnusableDatabase)
        # The path as routed, not request.url, which a Host header of `[` makes fail.
        log.error("cannot answer %s %s: %s", request.method, request.scope["path"], exc.format_message())
        self.db.health.start()  # whether the database is gone: one line if so
        return self.pages.notice(
            503,
            "Please try again later",
            "We could not reach the list of subscribers just now, so nothing was changed.",
            "Please use the link again in a few minutes.",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


class _Actions(TypedDict):
    """Where the page's forms post, relative to the page."""

    unsubscribe_action: str
    resubscribe_action: str


class _BadLink(Exception):
    """A token that does not read; always answered with the same 400 page."""


async def _is_one_click(request: Request) -> bool:
    """Whether the body is RFC 8058's `List-Unsubscribe=One-Click`, urlencoded or multipart.

    A body that can't be parsed is not one-click; it still unsubscribes (as `web`), since
    the signed token, not the body, is what authorises the request.
    """
    from highlightsmail.web.forms import FormError, read_fields

    try:
        fields = read_fields(request.headers.get("content-type", ""), await request.body())
    except FormError:  # malformed: treat as an unlabelled form post
        return False
    return any(k.strip().lower() == "list-unsubscribe" and v.strip().lower() == "one-click" for k, v in fields)


class _SecurityHeaders:
    """Adds the security headers to every response, and turns an unexpected error into a
    plain 500 page (also with the headers), logging the traceback instead of showing it."""

    def __init__(self, app: ASGIApp, pages: Pages) -> None:
        self.app = app
        self.pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in ROUTE_MAY_SET or name not in headers:
                        headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_secured)
        except Exception as exc:
            where = f"{scope.get('method')} {_redact(scope.get('path', ''))}"
            if isinstance(exc, HighlightsError):
                # Ours, such as a template the editor broke: its one line says it all.
                log.error("cannot answer %s: %s", where, exc.format_message())
            else:
                log.exception("error answering %s", where)
            if started:
                raise
            page = self.pages.notice(
                500, "Something went wrong", "The page could not be shown. Please try the link again in a few minutes."
            )
            await page(scope, receive, send_secured)


def app_root(scope: Scope) -> str:
    """The path the whole app is served under (base_url's path, or uvicorn's
    --root-path), also from inside a Mount, which adds its own path to `root_path`."""
    return str(scope.get("app_root_path", scope.get("root_path", "")))


def local_path(*parts: str, slash: bool = False) -> str:
    """A path on this site, for a Location header: `/` and the segments of `parts`,
    each %-escaped, empty, `.` and `..` ones dropped. It starts with one `/`, never two
    or a backslash, so no browser reads it as another site (`//evil.example`,
    `/\\evil.example`), a segment is never a scheme (`https:evil.example`), and it never
    climbs out of the path it was built from."""
    segments = [s for part in parts for s in part.split("/") if s not in ("", ".", "..")]
    path = "/" + "/".join(quote(s, safe="") for s in segments)
    return path + "/" if slash and segments else path


class _BasePath:
    """Links are base_url + /u/TOKEN, and a proxy forwards them with base_url's path
    (nginx `proxy_pass http://127.0.0.1:8000;`) or without it (`.../8000/;`): both reach
    the same routes. The path becomes the ASGI root path, and a request path without it
    gets it in front, as routing expects (it strips the root path from the path)."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prefix = self.prefix
        if prefix and scope["type"] == "http" and not scope.get("root_path"):
            path = scope.get("path", "")
            if not (path == prefix or path.startswith(prefix + "/")):
                path = prefix + path
            scope = {**scope, "root_path": prefix, "path": path}
        await self.app(scope, receive, send)


class _BodyLimit:
    """Refuses bodies over `limit` bytes with 413, by Content-Length and by counting what
    actually arrives (a chunked body has no Content-Length). The body is read here, then
    replayed to the app, so the app never sees more than the limit."""

    def __init__(
        self, app: ASGIApp, pages: Pages, limit: int = MAX_BODY_BYTES, paths: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.pages = pages
        self.limit = limit
        self.paths = paths or {}  # a larger limit for these exact paths

    def _too_large(self, limit: int) -> HTMLResponse:
        # Connection: close, since the rest of the body is left unread.
        return self.pages.notice(
            413,
            "Request too large",
            f"This address accepts at most {limit} bytes.",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root + "/"):
            path = path[len(root) :]  # as routing sees it
        limit = self.paths.get(path, self.limit)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        # A length the HTTP server let through that does not parse is more digits than
        # any integer here holds (a malformed one it has refused already).
        length = 0 if declared is None else parse_number(declared)
        if length is None or length > limit:
            await self._too_large(limit)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(limit)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(ws: Workspace, signer: Signer | None = None) -> Starlette:
    """The ASGI app for this workspace: unsubscribe pages, one-click POST, health."""
    if signer is None:
        from highlightsmail.tokens import load_signer

        signer = load_signer(ws.secret_path)
    from highlightsmail.web.archive import archive_routes

    _install_log_redaction()
    endpoint = _Endpoint(ws, signer)
    from highlightsmail.web import webhooks

    sendgrid_events = webhooks.SendGridWebhook(ws)
    signup = None
    if ws.settings.signup.enabled:
        from highlightsmail.web.signup import SignupEndpoint

        signup = SignupEndpoint(ws, endpoint.pages, signer)
    routes = [
        Route(urls.HEALTH, endpoint.healthz, methods=["GET"]),
        # One route for both methods, so a wrong method's 405 lists both in Allow.
        Route(urls.UNSUBSCRIBE, endpoint.token_page, methods=["GET", "POST"]),
        Route(urls.RESUBSCRIBE, endpoint.resubscribe, methods=["POST"]),
        *(signup.routes if signup else ()),
        *archive_routes(ws),
        Route(urls.SENDGRID_WEBHOOK, sendgrid_events.handle, methods=["POST"]),
    ]
    _check_token_routes(routes)
    middleware = [
        Middleware(_BasePath, prefix=urls.urls(ws.settings).mount_path()),
        Middleware(_SecurityHeaders, pages=endpoint.pages),  # every answer gets the headers
        Middleware(_BodyLimit, pages=endpoint.pages, paths={urls.SENDGRID_WEBHOOK: webhooks.MAX_BODY_BYTES}),
    ]

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        endpoint.db.close()
        sendgrid_events.close()
        if signup is not None:
            signup.close()  # waits for the emails under way

    application = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: endpoint.http_error, UnusableDatabase: endpoint.database_error},
    )
    # No redirects at all (RFC 8058 forbids them for the POST): `/u/TOKEN/` is a 404,
    # not a 307 to `/u/TOKEN`.
    application.router.redirect_slashes = False
    return application


# ---------------------------------------------------------------- logs


def _check_token_routes(routes: list[BaseRoute]) -> None:
    """Every route with a token in its path is one the logs know to cut."""
    for route in routes:
        path = getattr(route, "path", "")
        if "{token}" in path and path.split("/")[1] not in TOKEN_ROUTES:
            raise RuntimeError(
                f"{path}: a route with a token must be listed in web.TOKEN_ROUTES, or its links are logged"
            )
        _check_token_routes(getattr(route, "routes", []))  # a Mount's


#: The first path segment of every route that carries a token (`/u/TOKEN`,
#: `/confirm/TOKEN`). The logs cut whatever follows `/SEGMENT/`, and create_app refuses
#: a route with a `{token}` that is not listed here: a new token route joins by being
#: added to urls.py, and is redacted from its first request on.
TOKEN_ROUTES = urls.TOKEN_SEGMENTS

#: Anything shaped like a token, on any path: a kind and an id (either letter case,
#: since a reader could lower-case them again), a dot (a confirmation token has its
#: time too, and a second dot), and 22 or more URL-safe base64 characters, the
#: signature, which is what makes the link work and is all that is cut.
_TOKEN_SHAPED = re.compile(r"([a-z][0-9a-z]{0,13}\.(?:[0-9a-z]{1,13}\.)?)[A-Za-z0-9_-]{22,}", re.IGNORECASE)
#: What a token starts with, which the log keeps, so it still says whom a request was for.
_TOKEN_HEAD = re.compile(r"[a-z][0-9a-z]{0,13}\.(?:[0-9a-z]{1,13}\.)?", re.IGNORECASE)
_REDACTED = "[redacted]"
# Characters left as they are when a logged path is escaped again after decoding.
_LOG_SAFE = "/?&=:;,+@!$'()*[]"


@functools.cache
def _after_token_route() -> re.Pattern[str]:
    """`/u/` (any token route, either case) and everything after it."""
    routes = "|".join(sorted(map(re.escape, TOKEN_ROUTES)))
    return re.compile(rf"(/(?:{routes})/)(.*)", re.IGNORECASE | re.DOTALL)


def _cut(text: str) -> str:
    def after_route(match: re.Match[str]) -> str:
        if not match.group(2):
            return match.group()
        head = _TOKEN_HEAD.match(match.group(2))
        return match.group(1) + (head.group() if head else "") + _REDACTED

    text = _after_token_route().sub(after_route, text)
    return _TOKEN_SHAPED.sub(lambda m: m.group(1) + _REDACTED, text)


def _redact(text: str, *, safe: str = _LOG_SAFE) -> str:
    """A logged path that holds no working link: whatever follows a token route (`/u/`,
    `/confirm/`) is cut, however mangled (`/u/u1+.SIG`, a signature split by `%20` or
    followed by `%0D%0A`), except the token's kind and id; anything token-shaped
    elsewhere loses its signature. It looks through %-escapes, and escapes of escapes
    (`/%2575/` is `/u/`); a path that hid a token that way is logged decoded, cut, and
    escaped again, so it cannot break the log line either."""
    decoded = text
    for _ in range(16):  # each layer of escapes is shorter: this ends long before
        if "%" not in decoded or (once := unquote(decoded)) == decoded:
            break
        decoded = once
    cut = _cut(decoded)
    if cut == decoded:
        return text  # nothing of a token at any depth
    return cut if decoded == text else quote(cut, safe=safe)


def _redact_lines(text: str) -> str:
    """`_redact` for a message or a traceback: each line on its own, so a token route
    cuts the rest of its line, not the lines after it (and spaces stay spaces)."""
    return "\n".join(_redact(line, safe=_LOG_SAFE + ' "<>') for line in text.split("\n"))


class _RedactTokens(logging.Filter):
    """Applies `_redact` to a record's message, its arguments and its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _redact_lines(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            # Formatted once here: the handlers' formatters reuse exc_text.
            record.exc_text = _redact_lines(logging.Formatter().formatException(record.exc_info))
        return True


#: Every logger that may write a request's path or a link: uvicorn's access and error
#: logs, and ours.
_REDACTED_LOGGERS = (
    "uvicorn.access",
    "uvicorn.error",
    "highlightsmail.web",
    "highlightsmail.signup",
    "highlightsmail.webhooks",
)


def _install_log_redaction() -> None:
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactTokens) for f in logger.filters):
            logger.addFilter(_RedactTokens())


# ---------------------------------------------------------------- production entry points


class _LazyApp:
    """`highlightsmail.web:app` for uvicorn: finds the workspace (HIGHLIGHTS_WORKSPACE, or
    the current directory and its parents) on startup, not at import, so the module
    imports anywhere."""

    def __init__(self) -> None:
        self._app: Starlette | None = None

    def _build(self) -> Starlette:
        if self._app is None:
            from highlightsmail.authoring.workspace import load_workspace
            from highlightsmail.errors import show_warnings_plainly

            show_warnings_plainly()  # one `warning: ...` line each in the server's log, as commands print them
            self._app = create_app(load_workspace())
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            app = self._build()
        except HighlightsError as exc:
            if scope["type"] == "lifespan":
                # uvicorn prints this and exits, instead of serving 500s.
                await receive()
                await send({"type": "lifespan.startup.failed", "message": exc.format_message()})
                return
            raise
        await app(scope, receive, send)


app = _LazyApp()


@dataclass
class Server:
    """The endpoint bound to its socket, ready to run: `url` is where it listens."""

    app: Starlette
    sock: socket.socket
    url: str

    def run(self) -> None:
        """Serve with uvicorn until Ctrl-C, then close the socket.

        Trusts X-Forwarded-Proto/For from the addresses in FORWARDED_ALLOW_IPS
        (uvicorn's setting; 127.0.0.1 by default), so it can sit behind a reverse proxy
        doing HTTPS.
        """
        import uvicorn

        config = uvicorn.Config(
            self.app,
            proxy_headers=True,
            forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
            server_header=False,
            log_level="info",
        )
        try:
            uvicorn.Server(config).run(sockets=[self.sock])
        except KeyboardInterrupt:
            # uvicorn shuts down cleanly, then re-raises the Ctrl-C; stopping is the normal end.
            pass
        finally:
            self.sock.close()


def open_server(ws: Workspace, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """`highlights serve` up to the point of serving: the app (a generated secret warns
    as every command does), the database opened once, so an upgrade reports at start
    and a database that cannot be opened stops here with its one line, and the socket
    (port 0: any free port)."""
    from highlightsmail.store import Store

    application = create_app(ws)
    Store.open(ws).close()
    sock = bind_socket(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    return Server(application, sock, f"http://{shown_host}:{sock.getsockname()[1]}/")


__all__ = [
    "CONTENT_SECURITY_POLICY",
    "MAX_BODY_BYTES",
    "SECURITY_HEADERS",
    "TOKEN_ROUTES",
    "app",
    "app_root",
    "bind_socket",
    "create_app",
    "local_path",
    "mask_email",
    "open_server",
]
