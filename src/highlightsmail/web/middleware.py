"""What wraps every route: the security headers (and a plain 500 page for the unexpected),
the base path the app is served under, and the body limit (413). Also the two helpers
for the path the app lives at: `app_root` and `local_path` (a safe Location)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import quote

from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from highlightsmail.errors import HighlightsError
from highlightsmail.text import parse_number
from highlightsmail.web.pages import ROUTE_MAY_SET, SECURITY_HEADERS, Pages
from highlightsmail.web.redaction import redact

log = logging.getLogger("highlightsmail.web")  # one of redaction.LOGGERS

MAX_BODY_BYTES = 8 * 1024  # a one-click body is 26 bytes; a multipart one, a few hundred


class SecurityHeaders:
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
                message["headers"] = _secured(message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, send_secured)
        except Exception as exc:
            _log_failure(scope, exc)
            if started:
                raise
            await self.pages.server_error()(scope, receive, send_secured)


#: The security headers as ASGI sends them, and the lower-cased names a route may set.
_RAW_SECURITY = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in SECURITY_HEADERS.items()]
_RAW_MAY_SET = frozenset(name.lower().encode("latin-1") for name in ROUTE_MAY_SET)


def _secured(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A response's headers with the security headers: each replaces the route's own,
    except those of ROUTE_MAY_SET the route set. Raw ASGI pairs, not MutableHeaders:
    this runs for every answer."""
    raw = list(headers)
    present = {name.lower() for name, _ in raw}
    setting = [(n, v) for n, v in _RAW_SECURITY if n not in _RAW_MAY_SET or n not in present]
    if present.intersection(n for n, _ in setting):
        replaced = {n for n, _ in setting}
        raw = [(n, v) for n, v in raw if n.lower() not in replaced]
    raw.extend(setting)
    return raw


def _log_failure(scope: Scope, exc: Exception) -> None:
    where = f"{scope.get('method')} {redact(scope.get('path', ''))}"
    if isinstance(exc, HighlightsError):
        # Ours, such as a template the editor broke: its one line says it all.
        log.error("cannot answer %s: %s", where, exc.format_message())
    else:
        log.exception("error answering %s", where)


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


class BasePath:
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


class _TooLarge(Exception):
    """The body passed the limit while it was read."""


class _Disconnected(Exception):
    """The client went away before the whole body came."""


class BodyLimit:
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

    def _limit_for(self, scope: Scope) -> int:
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root + "/"):
            path = path[len(root) :]  # as routing sees it
        return self.paths.get(path, self.limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope)
        length = _declared_length(scope)
        try:
            if length is None or length > limit:
                raise _TooLarge
            body = await _read_body(receive, limit)
        except _TooLarge:
            await self._too_large(limit)(scope, receive, send)
            return
        except _Disconnected:
            return
        await self.app(scope, _replay(body, receive), send)


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length (0 when there is none), or None when it does not parse: a
    length the HTTP server let through that does not parse is more digits than any
    integer here holds (a malformed one it has refused already)."""
    declared = dict(scope.get("headers") or []).get(b"content-length")
    return 0 if declared is None else parse_number(declared)


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, counted as it comes: _TooLarge as soon as it passes `limit`."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body read already, then whatever comes next."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


__all__ = ["MAX_BODY_BYTES", "BasePath", "BodyLimit", "SecurityHeaders", "app_root", "local_path"]
