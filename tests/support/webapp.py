"""Shared by the web endpoint's tests: the app served by a real uvicorn on a loopback port,
subscribers in the real database (a SQLite file or PostgreSQL), and a dump of it to compare."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn

from highlightsmail.authoring.workspace import Workspace, load_workspace
from highlightsmail.serving import bind_socket
from highlightsmail.store import Store
from highlightsmail.tokens import Signer, load_signer
from highlightsmail.web.application import create_app
from highlightsmail.web.pages import CONTENT_SECURITY_POLICY
from support.db import raw_connection


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


# ---------------------------------------------------------------- the app as a real process


@dataclass
class Served:
    """A web process started by `serve_process`: its URL and what it printed, line by
    line as it comes (all of it once the process has stopped)."""

    url: str
    process: subprocess.Popen[str]
    stdout: list[str]
    stderr: list[str]

    @property
    def log(self) -> str:
        """Everything it printed, both streams."""
        return "".join(self.stdout) + "".join(self.stderr)


@contextmanager
def serve_process(
    root: Path,
    env: dict[str, str] | None = None,
    *,
    command: list[str] | None = None,
    port: int | None = None,
    check: bool = True,
    environ: Mapping[str, str] | None = None,
    stop_timeout: float = 60,
) -> Iterator[Served]:
    """`highlights serve --port 0` in the workspace `root` as a real process (or `command`,
    such as uvicorn, listening on `port`); yields once /healthz answers 200. `env` is
    added to `environ` (os.environ unless given). Stopped with Ctrl-C (SIGINT), which
    lets it finish the emails under way (killed after `stop_timeout` seconds); with
    `check` its exit status must then be 0. Several processes: one ExitStack."""
    if command is None:
        command = [str(Path(sys.executable).with_name("highlights")), "serve", "--port", "0"]
    proc = subprocess.Popen(
        command,
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**(os.environ if environ is None else environ), "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    assert proc.stdout is not None and proc.stderr is not None
    served = Served("", proc, [], [])
    readers: list[threading.Thread] = []
    try:
        if port is None:  # `serve` prints its URL first
            first = proc.stdout.readline()
            served.stdout.append(first)
            found = re.search(r"http://127\.0\.0\.1:\d+", first)
            assert found, first + (proc.stderr.read() if proc.poll() is not None else "")
            served.url = found.group(0)
        else:
            served.url = f"http://127.0.0.1:{port}"
        # Both pipes are read all along (uvicorn's access log goes to stdout), so the
        # process never stops on a full pipe.
        for pipe, lines in ((proc.stdout, served.stdout), (proc.stderr, served.stderr)):
            readers.append(threading.Thread(target=lines.extend, args=(pipe,), daemon=True))
            readers[-1].start()
        _wait_healthy(served)
        yield served
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for reader in readers:
            reader.join(10)
    if check:
        assert proc.returncode == 0, served.log


def _wait_healthy(served: Served) -> None:
    with httpx.Client() as client:
        for _ in range(400):
            assert served.process.poll() is None, f"it stopped: {served.log}"
            try:
                if client.get(f"{served.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise AssertionError(f"{served.url}/healthz did not answer 200: {served.log}")


# ---------------------------------------------------------------- pages


class _Forms(HTMLParser):
    """The forms of a page: action, method and the fields they would post."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action"), "method": (a.get("method") or "get").lower(), "fields": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value") or ""


def forms_of(html: str) -> list[dict]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def server_text(caplog: pytest.LogCaptureFixture) -> str:
    """What the server logged, formatted (the test's own HTTP client logs its requests
    too, with the whole link: not the server's doing)."""
    return "\n".join(
        caplog.handler.format(r) for r in caplog.records if r.name.startswith(("uvicorn", "highlightsmail"))
    )


def wait_for_log(caplog: pytest.LogCaptureFixture, start: str) -> None:
    """Until a record starting with `start` was logged (by the server's threads)."""
    for _ in range(1000):
        if any(r.getMessage().startswith(start) for r in caplog.records):
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"nothing logged starting with {start!r}")


def assert_secure_headers(response: httpx.Response) -> None:
    h = response.headers
    assert h["content-security-policy"] == CONTENT_SECURITY_POLICY
    for part in ("default-src 'none'", "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'"):
        assert part in h["content-security-policy"]
    assert "script-src" not in h["content-security-policy"]  # so scripts fall back to 'none'
    assert h["referrer-policy"] == "no-referrer"
    assert h["x-content-type-options"] == "nosniff"
    assert h["cache-control"] == "no-store"
    assert "set-cookie" not in h
