"""The pages every route group answers with: the workspace's `templates/pages/` (falling
back to the package's), the security headers they all carry, the notices they share (an
invalid link, an HTTP error, a database to try again later) and how a reader's address
is shown on them."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse

from highlightsmail import templating
from highlightsmail.authoring.workspace import Workspace

log = logging.getLogger("highlightsmail.web")  # one of redaction.LOGGERS

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

TOO_MANY_REQUESTS = "Too many requests from your address; please try again later."


def mask_email(address: str) -> str:
    """`ad***@example.org`: enough for the owner to recognise, little for anyone else."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    shown = local[:2] if len(local) > 3 else local[:1]
    return f"{shown}***" + (f"@{domain}" if domain else "")


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

    # -- the notices several routes answer with

    def invalid_link(self, what_next: str) -> HTMLResponse:
        """400 for a link that does not read, whatever was wrong with it; `what_next`
        says how to do what the link was for."""
        return self.notice(
            400,
            "This link is not valid",
            "The link may have been cut short or changed on its way to you.",
            what_next,
        )

    def too_many_requests(self, wait: int, headers: dict[str, str] | None = None) -> HTMLResponse:
        """429: this client asked too often; `wait` seconds until it may again."""
        return self.notice(
            429,
            "Please wait a little",
            TOO_MANY_REQUESTS,
            headers={**(headers or {}), "Retry-After": str(wait)},
        )

    def http_error(self, exc: HTTPException) -> HTMLResponse:
        """Starlette's own refusals (404, 405...) as pages."""
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            return self.notice(404, "Page not found", "There is nothing at this address.", headers=headers)
        if exc.status_code == 405:
            return self.notice(405, "Not allowed", "This page does not accept that kind of request.", headers=headers)
        return self.notice(exc.status_code, "Request not accepted", str(exc.detail), headers=headers)

    def try_again_later(self) -> HTMLResponse:
        """503: the database cannot be used now. The reader learns that nothing changed
        and to come back later (a mail provider's one-click POST is retried)."""
        return self.notice(
            503,
            "Please try again later",
            "We could not reach the list of subscribers just now, so nothing was changed.",
            "Please use the link again in a few minutes.",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    def server_error(self) -> HTMLResponse:
        """500: something unexpected; the log has the details, the page none."""
        return self.notice(
            500, "Something went wrong", "The page could not be shown. Please try the link again in a few minutes."
        )


__all__ = [
    "CONTENT_SECURITY_POLICY",
    "RETRY_AFTER_S",
    "ROUTE_MAY_SET",
    "SECURITY_HEADERS",
    "TOO_MANY_REQUESTS",
    "Pages",
    "mask_email",
]
