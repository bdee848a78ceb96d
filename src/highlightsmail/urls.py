"""Every public address of a newsletter, built from its settings in one place.

The links in mail (unsubscribe, confirm, the issue's page in the archive), the pages that
print or post to an address (the archive's feed and signup form, `form`, `serve`), and
the web app's own route table all come from here, so an address is spelled once. The
route patterns are the web app's; their first segments are the ones the archive may not
take (`APP_SEGMENTS`).

Standard library only, and no import of the settings' module: anything with a
`base_url` and an `archive.path` will do (`Place`).
"""

from __future__ import annotations

import functools
import re
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

__all__ = [
    "APP_SEGMENTS",
    "CONFIRM",
    "FEED_FILE",
    "HEALTH",
    "NOT_FOUND_FILE",
    "PLAIN_NAME",
    "PREFERENCES",
    "RESUBSCRIBE",
    "SENDGRID_WEBHOOK",
    "SITE_FILES",
    "SUBSCRIBE",
    "TOKEN_SEGMENTS",
    "UNSUBSCRIBE",
    "Place",
    "Urls",
    "has_page",
    "urls",
]


class ArchivePlace(Protocol):
    @property
    def path(self) -> str: ...


class Place(Protocol):
    """What the addresses need of the settings (`workspace.Settings` fits)."""

    @property
    def base_url(self) -> str: ...

    @property
    def archive(self) -> ArchivePlace: ...


# The web app's routes: its route table is built from these alone.
UNSUBSCRIBE = "/u/{token}"
RESUBSCRIBE = "/u/{token}/resubscribe"
SUBSCRIBE = "/subscribe"
CONFIRM = "/confirm/{token}"
HEALTH = "/healthz"
PREFERENCES = "/p/{token}"
SENDGRID_WEBHOOK = "/webhooks/sendgrid"
_ROUTES = (UNSUBSCRIBE, RESUBSCRIBE, SUBSCRIBE, CONFIRM, HEALTH, SENDGRID_WEBHOOK, PREFERENCES)

#: First path segments the web app itself answers; the archive can't live under them.
APP_SEGMENTS = frozenset(route.split("/")[1] for route in _ROUTES)
#: First path segments of the routes that carry a token, which the logs cut.
TOKEN_SEGMENTS = frozenset(route.split("/")[1] for route in _ROUTES if "{token}" in route)

# The archive's own files at its top.
FEED_FILE = "feed.xml"
NOT_FOUND_FILE = "404.html"
#: No issue may take one of these names.
SITE_FILES = frozenset({"index.html", FEED_FILE, NOT_FOUND_FILE})
#: A name that makes a plain folder name and URL segment everywhere.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def has_page(slug: str) -> bool:
    """Whether an issue with this slug can have a page in the archive: its name makes a
    plain folder name and URL segment everywhere, and is none of the site's own files."""
    return bool(PLAIN_NAME.fullmatch(slug)) and slug not in SITE_FILES


class Urls:
    """The addresses of one newsletter (one base_url and archive path)."""

    def __init__(self, base_url: str, archive_path: str) -> None:
        #: base_url without its trailing slash; every address starts with it.
        self.base = base_url.rstrip("/")
        self.archive_path = archive_path
        #: An unsubscribe link is this and the recipient's token (kept whole: the send
        #: loop appends a token per recipient).
        self.unsubscribe_prefix = self.base + UNSUBSCRIBE.removesuffix("{token}")
        self.preferences_prefix = self.base + PREFERENCES.removesuffix("{token}")

    def unsubscribe(self, token: str) -> str:
        return self.unsubscribe_prefix + token

    def confirm(self, token: str) -> str:
        return self.base + CONFIRM.format(token=token)

    def preferences(self, token: str) -> str:
        """A reader's preference page (the "Manage preferences" link)."""
        return self.preferences_prefix + token

    def subscribe(self) -> str:
        return self.base + SUBSCRIBE

    def webhook(self) -> str:
        return self.base + SENDGRID_WEBHOOK

    def archive(self) -> str:
        """The archive's index page: base_url + archive.path + `/`."""
        return f"{self.base}{self.archive_path}/"

    def issue_page(self, slug: str) -> str:
        """An issue's page in the archive (the email's "View in browser" link), for a
        slug that `has_page`."""
        return f"{self.archive()}{quote(slug, safe='')}/"

    def feed(self) -> str:
        return self.archive() + FEED_FILE

    def origin(self) -> str:
        """`scheme://host[:port]` of base_url, lower-cased as a browser sends it."""
        parts = urlsplit(self.base)
        return f"{parts.scheme}://{parts.netloc}".lower()

    def mount_path(self) -> str:
        """The path of base_url (`/news` for https://example.org/news), which every link
        starts with; "" when there is none, or when its first segment is one the web app
        answers itself (`/u`, `/archive`...), where only a proxy that strips it can tell
        the two apart."""
        path = unquote(urlsplit(self.base).path).rstrip("/")
        if not path:
            return ""
        first = path.split("/")[1]
        return "" if first in APP_SEGMENTS or first == self.archive_path.split("/")[1] else path


def urls(settings: Place) -> Urls:
    """The addresses for these settings (made once per base_url and archive path)."""
    return _urls(settings.base_url, settings.archive.path)


@functools.lru_cache(maxsize=16)
def _urls(base_url: str, archive_path: str) -> Urls:
    return Urls(base_url, archive_path)
