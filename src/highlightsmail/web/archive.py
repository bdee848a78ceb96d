"""The archive served by the web endpoint: the pages of `highlights publish`, built on the
fly from the workspace's files, under `archive.path` (`/archive` by default).

| request | answer |
| --- | --- |
| `GET PATH/` | the index of the issues sent so far |
| `GET PATH/SLUG/` | an issue's page (404 page for an issue not sent, or no such issue) |
| `GET PATH/feed.xml` | the Atom feed |
| `GET PATH`, `GET PATH/SLUG` | 308 to the same address with a `/`, where the pages' relative links work (for an issue in the archive; else the 404 page) |

Each answer carries an ETag (a digest of the body) and is answered 304 when the reader
already has it (If-None-Match, RFC 9110 13.1.2). Unlike the unsubscribe pages, these are
the same for every reader and hold nothing personal, so shared caches may keep them
(`Cache-Control: public`), for 5 minutes only, so that an issue just sent or corrected
shows soon; after that a cache asks again and mostly gets a 304. Search engines may list
them: they are how new readers find the newsletter. The other security headers are the
endpoint's own, with a policy that also lets the pages show the issues' images.
"""

from __future__ import annotations

import hashlib

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from highlightsmail.authoring.workspace import Workspace
from highlightsmail.rendering.publish import Archive, Entry
from highlightsmail.urls import FEED_FILE, urls
from highlightsmail.web.middleware import app_root, local_path

__all__ = ["ARCHIVE_CACHE_CONTROL", "ARCHIVE_CONTENT_SECURITY_POLICY", "archive_routes"]

ARCHIVE_CACHE_CONTROL = "public, max-age=300"
# The endpoint's policy (no script, nothing from elsewhere, no framing), except that the
# issues' images come from wherever the editors link them.
ARCHIVE_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src https: http:; style-src 'unsafe-inline'; form-action 'self' {origin}; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match against our ETag, by weak comparison (RFC 9110 13.1.2): `W/` does
    not count; `*` matches any current page."""
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


class _ArchiveEndpoint:
    def __init__(self, ws: Workspace) -> None:
        self.archive = Archive(ws)
        self.path = ws.settings.archive.path
        self.headers = {
            "Cache-Control": ARCHIVE_CACHE_CONTROL,
            "Content-Security-Policy": ARCHIVE_CONTENT_SECURITY_POLICY.format(origin=urls(ws.settings).origin()),
            # Indexable: the endpoint's own pages say noindex.
            "X-Robots-Tag": "all",
        }

    def _answer(self, request: Request, body: bytes, media_type: str) -> Response:
        etag = _etag(body)
        headers = {**self.headers, "ETag": etag}
        if _matches(request.headers.get("if-none-match", ""), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media_type, headers=headers)

    def _listing(self) -> list[Entry]:
        # A broken issue file is logged and left out: the rest of the archive still answers.
        return self.archive.entries(strict=False)[0]

    async def index(self, request: Request) -> Response:
        body = await run_in_threadpool(lambda: self.archive.index_page(self._listing()).encode("utf-8"))
        return self._answer(request, body, "text/html; charset=utf-8")

    async def feed(self, request: Request) -> Response:
        body = await run_in_threadpool(lambda: self.archive.feed(self._listing()))
        return self._answer(request, body, "application/atom+xml; charset=utf-8")

    def _issue(self, slug: str) -> bytes | None:
        entries = self._listing()
        for i, entry in enumerate(entries):
            if entry.slug == slug:
                newer = entries[i - 1] if i > 0 else None
                older = entries[i + 1] if i + 1 < len(entries) else None
                return self.archive.issue_page(entry, newer, older).encode("utf-8")
        return None

    async def issue(self, request: Request) -> Response:
        body = await run_in_threadpool(self._issue, request.path_params["slug"])
        if body is None:
            return await self.not_found(request)
        return self._answer(request, body, "text/html; charset=utf-8")

    async def not_found(self, request: Request) -> Response:
        # No Cache-Control of its own: the endpoint's no-store, since the issue may be sent soon.
        page = await run_in_threadpool(self.archive.not_found_page)
        return HTMLResponse(
            page, status_code=404, headers={"Content-Security-Policy": self.headers["Content-Security-Policy"]}
        )

    async def add_slash(self, request: Request) -> Response:
        """`PATH` and `PATH/SLUG` of an issue in the archive: 308 to the address with a
        `/`. The Location is built from the endpoint's own path and the slug of an issue
        it lists, never from what the request said: `PATH/https:evil.example` once sent
        browsers to evil.example. Any other address is the 404 page."""
        slug = request.path_params.get("slug")
        if slug is not None:
            known = await run_in_threadpool(lambda: any(e.slug == slug for e in self._listing()))
            if not known:
                return await self.not_found(request)
        where = local_path(app_root(request.scope), self.path, slug or "", slash=True)
        return RedirectResponse(where, status_code=308)


def archive_routes(ws: Workspace) -> list[BaseRoute]:
    """The archive's routes for the web endpoint; none when the archive is not enabled."""
    if not ws.settings.archive.enabled:
        return []
    endpoint = _ArchiveEndpoint(ws)
    path = ws.settings.archive.path
    return [
        Route(path, endpoint.add_slash, methods=["GET"]),
        Mount(
            path,
            routes=[
                Route("/", endpoint.index, methods=["GET"]),
                Route(f"/{FEED_FILE}", endpoint.feed, methods=["GET"]),
                Route("/{slug}/", endpoint.issue, methods=["GET"]),
                Route("/{slug}", endpoint.add_slash, methods=["GET"]),
                Route("/{rest:path}", endpoint.not_found, methods=["GET"]),
            ],
        ),
    ]
