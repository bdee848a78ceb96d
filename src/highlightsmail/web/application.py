"""The web app made from a workspace: its route groups, its middlewares, its error pages
and its one database; and the two ways to run it, `highlights serve` (`open_server`) and
`uvicorn highlightsmail.web:app` (`app`, which finds the workspace when it starts).

Behaviour that holds for every route (each route module says what its routes do):

- A database that cannot be used (damaged, read-only, locked too long, a PostgreSQL
  server down or out of reach): 503 with Retry-After, and one line in the log naming the
  file or server and what to do; /healthz says so too (web/health.py).
- Every response carries a strict CSP, `Referrer-Policy: no-referrer` (the token is in the
  path and must not leak), `nosniff` and `Cache-Control: no-store`; the archive's pages may
  be cached and indexed. Bodies over 8 KiB: 413 (the webhook takes more). An unexpected
  error is a plain 500 page, its traceback in the log only.
- No redirects (RFC 8058 forbids them for the one-click POST): `/u/TOKEN/` is a 404.
- Logs never hold a working link (web/redaction.py).
- While it runs, it starts the scheduled sends that are due (sending/runner.py), as
  `highlights run-due` does.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from highlightsmail import urls
from highlightsmail.authoring.workspace import Workspace, load_workspace
from highlightsmail.errors import HighlightsError, show_warnings_plainly
from highlightsmail.serving import bind_socket
from highlightsmail.store import Store, UnusableDatabase
from highlightsmail.tokens import Signer, load_signer
from highlightsmail.web import accesslog, redaction, webhooks
from highlightsmail.web.archive import archive_routes
from highlightsmail.web.database import AppDatabase
from highlightsmail.web.health import health_route
from highlightsmail.web.middleware import BasePath, BodyLimit, SecurityHeaders
from highlightsmail.web.pages import Pages
from highlightsmail.web.preferences import PreferenceRoutes
from highlightsmail.web.signup import SignupEndpoint
from highlightsmail.web.unsubscribe import UnsubscribeRoutes

log = logging.getLogger("highlightsmail.web")  # one of redaction.LOGGERS


class _ErrorPages:
    """The app's answers to the errors a route raises: Starlette's own (404, 405...) and
    a database that cannot be used now."""

    def __init__(self, pages: Pages, db: AppDatabase) -> None:
        self.pages = pages
        self.db = db

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return self.pages.http_error(exc)

    async def database_error(self, request: Request, exc: Exception) -> Response:
        """503, and the log's one line saying what to do."""
        assert isinstance(exc, UnusableDatabase)
        # The path as routed, not request.url, which a Host header of `[` makes fail.
        log.error("cannot answer %s %s: %s", request.method, request.scope["path"], exc.format_message())
        self.db.unusable()  # whether the database is gone: one line if so
        return self.pages.try_again_later()


def create_app(ws: Workspace, signer: Signer | None = None) -> Starlette:
    """The ASGI app for this workspace: every route group, over one database."""
    if signer is None:
        signer = load_signer(ws.secret_path)
    redaction.install()
    pages = Pages(ws)
    db = AppDatabase(ws)
    sendgrid = webhooks.SendGridWebhook(ws, db)
    signup = SignupEndpoint(ws, pages, signer, db) if ws.settings.signup.enabled else None
    routes: list[BaseRoute] = [
        health_route(db.health),
        *UnsubscribeRoutes(pages, signer, db).routes,
        *PreferenceRoutes(ws, pages, signer, db).routes,
        *(signup.routes if signup else ()),
        *archive_routes(ws),
        *sendgrid.routes,
    ]
    redaction.check_token_routes(routes)
    middleware = [
        Middleware(BasePath, prefix=urls.urls(ws.settings).mount_path()),
        Middleware(SecurityHeaders, pages=pages),  # every answer gets the headers
        Middleware(BodyLimit, pages=pages, paths={urls.SENDGRID_WEBHOOK: webhooks.MAX_BODY_BYTES}),
    ]

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Imported here, not at the top: the send path loads only once the server starts.
        from highlightsmail.sending.runner import Runner

        if signup is not None:
            signup.start()  # sends what a previous server reserved and never sent
        runner = Runner(ws)  # starts the scheduled sends that are due, every 15 s at most
        runner.start()
        # What the app loaded and built to start is kept until it stops: the collector
        # need not walk it again at each full pass, which under load held up every
        # request at once (tens of ms in a signup's p99).
        gc.collect()
        gc.freeze()
        yield
        gc.unfreeze()  # an app in a process that goes on (a test's) leaves nothing kept
        runner.stop()  # waits for the batches under way of a send it runs
        if signup is not None:
            signup.close()  # waits for the emails under way, which use the database
        db.close()

    errors = _ErrorPages(pages, db)
    application = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: errors.http_error, UnusableDatabase: errors.database_error},
    )
    # No redirects at all (RFC 8058 forbids them for the POST): `/u/TOKEN/` is a 404,
    # not a 307 to `/u/TOKEN`.
    application.router.redirect_slashes = False
    return application


# ---------------------------------------------------------------- production entry points


class _LazyApp:
    """`highlightsmail.web:app` for uvicorn: finds the workspace (HIGHLIGHTS_WORKSPACE, or
    the current directory and its parents) on startup, not at import, so the module
    imports anywhere."""

    def __init__(self) -> None:
        self._app: Starlette | None = None

    def _build(self) -> Starlette:
        if self._app is None:
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


def uvicorn_config(app: ASGIApp) -> uvicorn.Config:
    """The settings `highlights serve` runs uvicorn with (configuring uvicorn's logging)."""
    return uvicorn.Config(
        app,
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        server_header=False,
        log_level="info",
    )


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
        config = uvicorn_config(self.app)
        # The server's lines written once per turn of the event loop, the access log's
        # made straight from its record (web/accesslog.py).
        kept = accesslog.batch("uvicorn", "uvicorn.access")
        try:
            uvicorn.Server(config).run(sockets=[self.sock])
        except KeyboardInterrupt:
            # uvicorn shuts down cleanly, then re-raises the Ctrl-C; stopping is the normal end.
            pass
        finally:
            for handler in kept:  # the lines of the loop's last turn
                handler.flush()
            self.sock.close()


def open_server(ws: Workspace, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """`highlights serve` up to the point of serving: the app (a generated secret warns
    as every command does), the database opened once, so an upgrade reports at start
    and a database that cannot be opened stops here with its one line, and the socket
    (port 0: any free port)."""
    application = create_app(ws)
    Store.open(ws).close()
    sock = bind_socket(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    return Server(application, sock, f"http://{shown_host}:{sock.getsockname()[1]}/")


__all__ = ["Server", "app", "create_app", "open_server", "uvicorn_config"]
