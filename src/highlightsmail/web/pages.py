"""The pages every route group answers with: the workspace's `templates/pages/` (falling
back to the package's), the security headers they all carry, the notices they share (an
invalid link, an HTTP error, a database to try again later) and how a reader's address
is shown on them."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta
from markupsafe import escape
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


#: Stand-ins for a reader's values when a page is rendered once: the second has what
#: HTML escapes, so a template that does not escape a value is not rendered once.
_PROBES = ("zqReaderValue{}Qz", 'zq&<"Other"{}\'>-longer-Qz')


@dataclass(frozen=True)
class _Once:
    """A page rendered once for every reader: the templates it came from (as Jinja had
    them then), and its text around each reader's value (None: render it each time)."""

    templates: tuple[tuple[str, jinja2.Template], ...]
    parts: tuple[str, ...] | None = None
    names: tuple[str, ...] = ()


class Pages:
    """The HTML pages: the workspace's `templates/pages/` first, then the package's.

    If a workspace template fails to render, the package's own page is used instead
    (and the error logged): a typo in a customised page must never stop an unsubscribe.
    """

    def __init__(self, ws: Workspace) -> None:
        self._env = templating.environment(templating.workspace_loader(ws.templates_dir))
        self._fallback = templating.environment(templating.package_loader())
        self._common = {"newsletter": ws.settings.name, "postal_address": ws.settings.postal_address}
        self._once: dict[tuple[str, tuple[tuple[str, Any], ...]], _Once] = {}
        self._once_lock = threading.Lock()

    def render(self, name: str, **context: Any) -> str:
        context = {**self._common, **context}
        try:
            return self._env.get_template(f"pages/{name}").render(context)
        except Exception:  # a syntax error, but also a file that is not UTF-8 or not readable
            log.exception("templates/pages/%s failed to render; using the built-in page", name)
            return self._fallback.get_template(f"pages/{name}").render(context)

    def render_for_reader(self, name: str, reader: Mapping[str, str], **context: Any) -> str:
        """`render(name, **context, **reader)`, for a page whose `reader` values (text)
        are all that differs from one reader to the next: rendered once for the rest of
        the context, then each reader's values put in, escaped as the page escapes them.
        The page is rendered anew when one of its template files changes, and each time
        when its templates do more with a reader's value than show it (a filter, a test)
        or cannot be rendered (the built-in page stands in, with its line in the log)."""
        key = (name, tuple(sorted(context.items())))
        once = self._once.get(key)
        if once is None or not self._current(once):
            once = self._render_once(name, reader, context)
            with self._once_lock:
                self._once[key] = once
        if once.parts is None:
            return self.render(name, **context, **reader)
        pieces = [once.parts[0]]
        for value_name, part in zip(once.names, once.parts[1:], strict=True):
            pieces += (str(escape(reader[value_name])), part)
        return "".join(pieces)

    def _current(self, once: _Once) -> bool:
        """Whether the templates a page was rendered from are the ones Jinja has now."""
        try:
            return all(self._env.get_template(n) is t for n, t in once.templates)
        except Exception:  # a template deleted or broken since: rendered as `render` does
            return False

    def _render_once(self, name: str, reader: Mapping[str, str], context: Mapping[str, Any]) -> _Once:
        try:
            found = self._templates(f"pages/{name}")
        except Exception:  # not there, or broken: `render` says so, each time
            return _Once(())
        if found is None:
            return _Once(())
        templates, sources = found
        if not _only_shown(reader, sources):
            return _Once(templates)
        outputs = []
        for probe in _PROBES:
            values = {k: probe.format(i) for i, k in enumerate(reader)}
            try:
                text = templates[0][1].render({**self._common, **context, **values})
            except Exception:
                return _Once(templates)
            outputs.append((values, text))
        (first, text), (second, expected) = outputs
        if not first:  # the same page for everyone
            return _Once(templates, (text,), ())
        by_value = {v: k for k, v in first.items()}
        pieces = re.split("(" + "|".join(map(re.escape, by_value)) + ")", text)
        parts, names = tuple(pieces[0::2]), tuple(by_value[v] for v in pieces[1::2])
        rebuilt = parts[0] + "".join(str(escape(second[n])) + p for n, p in zip(names, parts[1:], strict=True))
        if rebuilt != expected:  # not every value shown plainly and escaped
            return _Once(templates)
        return _Once(templates, parts, names)

    def _templates(self, first: str) -> tuple[tuple[tuple[str, jinja2.Template], ...], list[str]] | None:
        """`first` and every template it extends, includes or imports, as loaded now,
        and their sources; None when one of those names is worked out while rendering."""
        found: dict[str, jinja2.Template] = {}
        sources = []
        todo = [first]
        while todo:
            name = todo.pop()
            if name in found:
                continue
            found[name] = self._env.get_template(name)
            assert self._env.loader is not None
            sources.append(self._env.loader.get_source(self._env, name)[0])
            for referenced in meta.find_referenced_templates(self._env.parse(sources[-1])):
                if referenced is None:
                    return None
                todo.append(referenced)
        return tuple(found.items()), sources

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


def _only_shown(reader: Mapping[str, str], sources: list[str]) -> bool:
    """Whether every mention of a reader's value in the templates' sources is a plain
    `{{ name }}` (so the probes stand for any value)."""
    for value_name in reader:
        word = re.compile(rf"\b{re.escape(value_name)}\b")
        shown = re.compile(rf"{{{{-?\s*{re.escape(value_name)}\s*-?}}}}")
        for source in sources:
            if len(word.findall(source)) != len(shown.findall(source)):
                return False
    return True


__all__ = [
    "CONTENT_SECURITY_POLICY",
    "RETRY_AFTER_S",
    "ROUTE_MAY_SET",
    "SECURITY_HEADERS",
    "TOO_MANY_REQUESTS",
    "Pages",
    "mask_email",
]
