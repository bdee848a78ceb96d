"""Fetching a feed over HTTP: a time limit, a size cap, redirects that cannot loop,
and conditional GET, so a feed that did not change is not downloaded again.

The validators each feed last answered with (ETag, Last-Modified) are kept per URL in
the workspace's git-ignored `private/feeds.json`, written whole or not at all. They are
only a cache: a missing or unreadable file means fetching every feed in full.

Every failure is one `HighlightsError` line naming the feed: a 404, a time-out, a
redirect loop, a body over the cap, a server that cannot be reached.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from highlightsmail import __version__
from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.files import write_file

__all__ = [
    "MAX_FEED_BYTES",
    "MAX_REDIRECTS",
    "STATE_FILE",
    "TIMEOUT_SECONDS",
    "Fetched",
    "Validators",
    "fetch",
    "load_validators",
    "read_file",
    "save_validators",
]

#: Seconds a whole fetch may take, connecting and reading included.
TIMEOUT_SECONDS = 20.0
#: The largest feed read (arXiv's busiest daily listing is about 1 MB).
MAX_FEED_BYTES = 10_000_000
#: Redirects followed for one fetch; more is as good as a loop.
MAX_REDIRECTS = 5
#: Where the validators are kept, under the workspace's private/ folder.
STATE_FILE = "feeds.json"
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Validators:
    """What a server said identifies its answer: sent back as If-None-Match and
    If-Modified-Since, so an unchanged feed answers 304 with no body."""

    etag: str | None = None
    last_modified: str | None = None

    def as_json(self) -> dict[str, str]:
        return {k: v for k, v in (("etag", self.etag), ("last_modified", self.last_modified)) if v}


@dataclass(frozen=True)
class Fetched:
    """A feed's body (None: not modified since the validators sent), the URL it came
    from after redirects, its content type and the validators to send next time."""

    body: bytes | None
    url: str
    content_type: str
    validators: Validators


class _Refused(Exception):
    """A redirect that is not followed; its message is the reason."""


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows at most MAX_REDIRECTS redirects, never the same URL twice, and only to
    http(s): urllib's own handler would also go to ftp:."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise _Refused(f"redirected to {newurl[:100]}, which is not http(s)")
        if newurl in self.seen or len(self.seen) >= MAX_REDIRECTS:
            raise _Refused(f"redirects in a loop (more than {MAX_REDIRECTS}, or back to a URL already visited)")
        self.seen.append(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(url: str, validators: Validators | None = None, *, timeout: float | None = None) -> Fetched:
    """GET `url`, conditionally when `validators` are given; the body is read up to
    MAX_FEED_BYTES within TIMEOUT_SECONDS. Raises HighlightsError with one line."""
    limit = TIMEOUT_SECONDS if timeout is None else timeout
    request = urllib.request.Request(url, headers=_headers(validators))
    redirects = _Redirects()
    redirects.seen.append(url)
    opener = urllib.request.build_opener(redirects)
    deadline = time.monotonic() + limit
    try:
        with opener.open(request, timeout=limit) as response:
            body = _read_capped(response, deadline)
            final = response.geturl()
            headers = response.headers
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 304:
            return Fetched(None, url, "", validators or Validators())
        raise HighlightsError(f"{url}: HTTP {exc.code} {exc.reason}".rstrip()) from None
    except (_Refused, HighlightsError) as exc:
        raise HighlightsError(f"{url}: {exc}") from None
    except TimeoutError:
        raise HighlightsError(f"{url}: no answer within {limit:g} seconds") from None
    except urllib.error.URLError as exc:
        raise HighlightsError(f"{url}: {_url_error(exc, limit)}") from None
    except (http.client.HTTPException, OSError, ValueError) as exc:
        raise HighlightsError(f"{url}: the answer broke off or could not be read ({_reason(exc)})") from None
    found = Validators(headers.get("ETag"), headers.get("Last-Modified"))
    return Fetched(body, final, headers.get("Content-Type", ""), found)


def _headers(validators: Validators | None) -> dict[str, str]:
    # No Accept-Encoding: urllib does not decompress, and a compressed body could expand
    # past the size cap after it was checked.
    headers = {
        "User-Agent": f"highlightsmail/{__version__} (feed reader)",
        "Accept": "application/atom+xml, application/rss+xml, application/rdf+xml, application/feed+json, "
        "application/xml;q=0.9, text/xml;q=0.9, application/json;q=0.8, */*;q=0.5",
    }
    if validators is not None and validators.etag:
        headers["If-None-Match"] = validators.etag
    if validators is not None and validators.last_modified:
        headers["If-Modified-Since"] = validators.last_modified
    return headers


def _read_capped(response: Any, deadline: float) -> bytes:
    """The body, refused past MAX_FEED_BYTES (by its Content-Length, or as it comes)
    or past the deadline (a server sending a byte a second keeps a socket busy)."""
    declared = response.headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > MAX_FEED_BYTES:
        raise HighlightsError(f"{_size(int(declared))}, more than the {_size(MAX_FEED_BYTES)} read")
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read(_CHUNK):
        size += len(chunk)
        if size > MAX_FEED_BYTES:
            raise HighlightsError(f"more than the {_size(MAX_FEED_BYTES)} read")
        if time.monotonic() > deadline:
            raise TimeoutError
        chunks.append(chunk)
    return b"".join(chunks)


def _size(size: int) -> str:
    """`1.2 MB`, `4 KB` (of 1000)."""
    unit, scale = ("MB", 1_000_000) if size >= 1_000_000 else ("KB", 1000)
    return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"


def _url_error(exc: urllib.error.URLError, limit: float) -> str:
    reason = exc.reason
    if isinstance(reason, TimeoutError):
        return f"no answer within {limit:g} seconds"
    if isinstance(reason, socket.gaierror):
        return f"cannot find the host ({reason.strerror or reason})"
    if isinstance(reason, OSError):
        return f"cannot connect ({reason.strerror or reason})"
    return f"cannot fetch it ({reason})"


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def read_file(path: Path) -> bytes:
    """A feed saved as a file, with the same size cap as a fetched one."""
    try:
        size = path.stat().st_size
        if size > MAX_FEED_BYTES:
            raise HighlightsError(f"{display_path(path)}: {_size(size)}, more than the {_size(MAX_FEED_BYTES)} read")
        return path.read_bytes()
    except OSError as exc:
        raise HighlightsError(f"{display_path(path)}: cannot read it ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------- the validators kept


def load_validators(path: Path) -> dict[str, Validators]:
    """The validators kept per feed URL; none when the file is missing or unreadable
    (it is a cache: the next fetch of each feed is a full one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        feeds = data["feeds"]
        return {
            url: Validators(_text(kept.get("etag")), _text(kept.get("last_modified")))
            for url, kept in feeds.items()
            if isinstance(url, str) and isinstance(kept, dict)
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.isprintable() and value else None


def save_validators(path: Path, kept: dict[str, Validators]) -> None:
    """Write the validators per feed URL, replacing the file whole."""
    data = {"feeds": {url: v.as_json() for url, v in sorted(kept.items()) if v.as_json()}}
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    write_file(path, text.encode("utf-8"))
