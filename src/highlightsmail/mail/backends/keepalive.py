"""One kept-alive HTTP connection to SendGrid, for the requests of a send.

The `sendgrid` package's client (urllib under it) opens a new connection for every
request, and formats each body into a debug line that nobody reads: for a 1,000-recipient
batch that is most of what a request costs the sender. A send's worker keeps one
connection here instead (each worker its own backend, so its own connection).

What it keeps of the package's rules: a failure before the request is written whole
(connecting, or writing it) is `TransientError`, as it never arrived; once it is
written whole, no answer is `InDoubtError`. What keeping a connection adds: a server
may close one that sat idle, and a request written into a connection already closed
looks just like one that was taken and never answered. So a kept connection is used
again only when it is fresh (idle for less than `IDLE_REUSE` seconds) and the server
has not hung up on it (nothing to read on it while idle); otherwise a new one is made.
A request whose writing fails on a kept connection is written again once on a new
one: it never arrived whole, so nobody can get it twice.
"""

from __future__ import annotations

import http.client
import select
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlsplit

from highlightsmail.mail.backends.base import InDoubtError, TransientError

#: Seconds a connection may sit idle and still be used again: far below what servers
#: and load balancers allow, so one is not closed under a request being written.
IDLE_REUSE = 5.0


@dataclass(frozen=True)
class Answer:
    """A server's answer: status, headers and body (read whole, so the connection can
    carry the next request)."""

    status: int
    headers: Message
    body: bytes
    reason: str = ""


class KeptConnection:
    """Requests to one HTTP(S) origin over one connection kept between them. Not shared
    between threads."""

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout: float) -> None:
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.hostname = parts.hostname or ""
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.base_url = base_url
        self.headers = dict(headers)
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._idle_since = 0.0

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def request(self, method: str, path: str, body: bytes, headers: Mapping[str, str], what: str) -> Answer:
        """Send one request and read its answer. TransientError when it did not arrive
        whole; InDoubtError when it did and no answer came."""
        conn, kept = self._connection(what)
        try:
            conn.request(method, self.prefix + path, body=body, headers={**self.headers, **headers})
        except (http.client.HTTPException, OSError) as err:
            self.close()
            if not kept:
                raise self._unsent(err, what) from None
            # The server let go of the kept connection before the request went: a new one.
            conn, _kept = self._connection(what)
            try:
                conn.request(method, self.prefix + path, body=body, headers={**self.headers, **headers})
            except (http.client.HTTPException, OSError) as again:
                self.close()
                raise self._unsent(again, what) from None
        return self._answer(conn, what)

    def _answer(self, conn: http.client.HTTPConnection, what: str) -> Answer:
        """Read the answer to a request written whole."""
        try:
            response = conn.getresponse()
            body = response.read()
        except TimeoutError:
            self.close()
            raise InDoubtError(f"SendGrid did not answer {what} within {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as err:
            # RemoteDisconnected, a reset while waiting for the answer: sent whole, so
            # SendGrid may have taken it.
            self.close()
            raise InDoubtError(
                f"connection to SendGrid lost after sending {what}: {err or type(err).__name__}"
            ) from None
        if response.will_close:
            self.close()
        else:
            self._idle_since = time.monotonic()
        return Answer(response.status, response.headers, body, response.reason)

    def _connection(self, what: str) -> tuple[http.client.HTTPConnection, bool]:
        """The kept connection when it may carry another request (True), else a new one."""
        if self._conn is not None and self._usable():
            return self._conn, True
        self.close()
        conn: http.client.HTTPConnection
        if self.https:
            import ssl  # only for https (the stand-in server of the tests is http)

            conn = http.client.HTTPSConnection(
                self.hostname, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(self.hostname, self.port, timeout=self.timeout)
        try:
            conn.connect()
        except (http.client.HTTPException, OSError) as err:
            conn.close()
            raise self._unsent(err, what) from None
        self._conn = conn
        return conn, False

    def _usable(self) -> bool:
        """Whether the kept connection is fresh and the server has not closed it: an idle
        connection with something to read has been hung up on (or is out of step)."""
        conn = self._conn
        if conn is None or conn.sock is None or time.monotonic() - self._idle_since > IDLE_REUSE:
            return False
        try:
            readable, _w, _x = select.select([conn.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def _unsent(self, err: BaseException, what: str) -> TransientError:
        """A request that did not arrive whole: safe to try again."""
        if isinstance(err, TimeoutError):
            return TransientError(f"SendGrid did not take {what} within {self.timeout:g} s")
        return TransientError(f"cannot reach SendGrid at {self.base_url} ({what}): {err or type(err).__name__}")


__all__ = ["IDLE_REUSE", "Answer", "KeptConnection"]
