"""Shared by the web endpoint's tests: the app served by a real uvicorn on a loopback port,
subscribers in the real database (a SQLite file or PostgreSQL), and a dump of it to compare."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn

from helpers_db import raw_connection
from highlightsmail.authoring.workspace import Workspace, load_workspace
from highlightsmail.store import Store
from highlightsmail.tokens import Signer, load_signer
from highlightsmail.web.application import bind_socket, create_app


@contextmanager
def live_server(app) -> Iterator[str]:
    """uvicorn serving `app` in a background thread on 127.0.0.1:<free port>; yields the
    base URL and stops the server (waiting for it) on exit."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    # log_config=None: leave logging alone, so uvicorn's own errors reach pytest's caplog.
    config = uvicorn.Config(app, log_config=None, lifespan="on", proxy_headers=True)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class RawAnswer:
    """What the server sent back to a raw request: the status (0 when it closed the
    connection without answering), the headers as (lower-cased name, value), the body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k == name.lower()]
        return found[0] if found else None


def raw_http(
    base: str,
    target: str | bytes,
    method: str | bytes = "GET",
    headers: list[tuple[bytes | str, bytes | str]] | None = None,
    body: bytes = b"",
    *,
    host: bytes | None = b"x",
    content_length: bool = True,
) -> RawAnswer:
    """Send one request exactly as written, bytes and all (no client tidies up the
    target, the headers or the body), over a new connection; what came back."""

    def b(v: bytes | str) -> bytes:
        return v if isinstance(v, bytes) else v.encode("utf-8")

    lines = [b(method) + b" " + b(target) + b" HTTP/1.1"]
    if host is not None:
        lines.append(b"Host: " + host)
    lines += [b(k) + b": " + b(v) for k, v in headers or []]
    if content_length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        conn.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    head, _, rest = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        return RawAnswer(0, [], answer)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    pairs = [(k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in header_lines)]
    return RawAnswer(int(status_line.split(" ")[1]), pairs, rest)


class Site:
    """A workspace, its signer and database, and the endpoint serving it over HTTP."""

    def __init__(self, ws: Workspace, url: str) -> None:
        self.ws = ws
        self.url = url
        self.signer: Signer = load_signer(ws.secret_path)

    def store(self) -> Store:
        return Store.open(self.ws)

    def add(self, email: str, name: str = "", status: str = "active") -> int:
        with self.store() as store:
            sub, created = store.add(email, name, status=status)
        assert created
        return sub.id

    def link(self, subscriber_id: int, purpose: str = "unsubscribe") -> str:
        return f"{self.url}/u/{self.signer.make(subscriber_id, purpose)}"

    def status(self, subscriber_id: int) -> str:
        with self.store() as store:
            sub = store.get(subscriber_id)
        assert sub is not None
        return sub.status

    def events(self, subscriber_id: int) -> list[tuple[str | None, str, str]]:
        """(from, to, source) of each change, oldest first."""
        with self.store() as store:
            return [(e.from_status, e.to_status, e.source) for e in store.events(subscriber_id)]

    def dump(self) -> list[tuple]:
        return dump_people(self.ws.database_url or self.ws.db_path)


def dump_people(target: Path | str) -> list[tuple]:
    """Every row of subscribers and events, in order: equal dumps mean nothing changed."""
    with raw_connection(target) as conn:
        rows: list[tuple] = [("subscribers",), *map(tuple, conn.execute("SELECT * FROM subscribers ORDER BY id"))]
        rows += [("events",), *map(tuple, conn.execute("SELECT * FROM events ORDER BY id"))]
        return rows


@contextmanager
def serve_workspace(root: Path) -> Iterator[Site]:
    """The workspace at `root`, served by `create_app` exactly as `highlights serve` does."""
    ws = load_workspace(root)
    Store.open(ws).close()  # create the database before anyone reads it
    with live_server(create_app(ws)) as url:
        yield Site(ws, url)
