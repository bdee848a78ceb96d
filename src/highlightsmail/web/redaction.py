"""Logs never hold a working link. In a logged path (uvicorn's access and error logs, and
ours) whatever follows a token route (`/u/`, `/confirm/`: TOKEN_ROUTES) is cut but the
token's kind and id, however the path was mangled or escaped, and anything shaped like a
token elsewhere has its signature cut. `install` puts the filter on every logger that may
write a path; `check_token_routes` refuses an app with a token route the logs do not cut.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

from starlette.routing import BaseRoute

from highlightsmail import urls

#: The first path segment of every route that carries a token (`/u/TOKEN`,
#: `/confirm/TOKEN`). The logs cut whatever follows `/SEGMENT/`, and the app refuses a
#: route with a `{token}` that is not listed here: a new token route joins by being
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

#: Every logger that may write a request's path or a link: uvicorn's access and error
#: logs, and ours (a filter on a logger sees only the records logged on it, not those
#: of its children, so each is named).
LOGGERS = (
    "uvicorn.access",
    "uvicorn.error",
    "highlightsmail.web",
    "highlightsmail.signup",
    "highlightsmail.webhooks",
)


@functools.cache
def _after_token_route() -> re.Pattern[str]:
    """`/u/` (any token route, either case) and everything after it."""
    routes = "|".join(sorted(map(re.escape, TOKEN_ROUTES)))
    return re.compile(rf"(/(?:{routes})/)(.*)", re.IGNORECASE | re.DOTALL)


def _after_route(match: re.Match[str]) -> str:
    if not match.group(2):
        return match.group()
    head = _TOKEN_HEAD.match(match.group(2))
    return match.group(1) + (head.group() if head else "") + _REDACTED


def _cut(text: str) -> str:
    text = _after_token_route().sub(_after_route, text)
    return _TOKEN_SHAPED.sub(lambda m: m.group(1) + _REDACTED, text)


def redact(text: str, *, safe: str = _LOG_SAFE) -> str:
    """A logged path that holds no working link (`_redact` says how), remembered for the
    short texts every request logs again (its method, path, protocol, the access log's
    format): working them out was most of a log record's cost."""
    if len(text) > _REMEMBERED_LENGTH:
        return _redact(text, safe)
    return _remembered(text, safe)


#: Texts longer than this are worked out each time (a traceback's line, a long query).
_REMEMBERED_LENGTH = 512


def _redact(text: str, safe: str) -> str:
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


# A few thousand short texts: a token's path is remembered only as its redacted form
# is, in this process's memory, which held the request anyway.
_remembered = functools.lru_cache(maxsize=4096)(_redact)


def redact_lines(text: str) -> str:
    """`redact` for a message or a traceback: each line on its own, so a token route
    cuts the rest of its line, not the lines after it (and spaces stay spaces)."""
    return "\n".join(redact(line, safe=_LOG_SAFE + ' "<>') for line in text.split("\n"))


def _redact_value(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def _redact_args(args: tuple[Any, ...] | Mapping[str, Any] | None) -> tuple[Any, ...] | Mapping[str, Any] | None:
    """A record's arguments, a tuple or a mapping, with each text redacted."""
    if isinstance(args, tuple):
        return tuple(map(_redact_value, args))
    if isinstance(args, Mapping):
        return {k: _redact_value(v) for k, v in args.items()}
    return args


class RedactTokens(logging.Filter):
    """Applies `redact` to a record's message, its arguments and its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_lines(record.msg)
        record.args = _redact_args(record.args)
        if record.exc_info and not record.exc_text:
            # Formatted once here: the handlers' formatters reuse exc_text.
            record.exc_text = redact_lines(logging.Formatter().formatException(record.exc_info))
        return True


def install() -> None:
    """The filter on every logger of LOGGERS (once each, however many apps are made)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def check_token_routes(routes: Iterable[BaseRoute]) -> None:
    """Every route with a token in its path is one the logs know to cut."""
    for route in routes:
        path = getattr(route, "path", "")
        if "{token}" in path and path.split("/")[1] not in TOKEN_ROUTES:
            raise RuntimeError(
                f"{path}: a route with a token must be listed in web.redaction.TOKEN_ROUTES, or its links are logged"
            )
        check_token_routes(getattr(route, "routes", []))  # a Mount's


__all__ = ["LOGGERS", "TOKEN_ROUTES", "RedactTokens", "check_token_routes", "install", "redact", "redact_lines"]
