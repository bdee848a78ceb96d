"""A loopback HTTP server that serves feeds the way a test arranges: a body with its
headers, a status, a redirect, or a wait longer than the reader's time limit; it
records every request's headers, so a test can see what a conditional GET sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """What one path answers."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds of silence after the headers
    chunked: bool = False  # no Content-Length: the body ends when the connection does


@dataclass
class FeedServer:
    base: str
    routes: dict[str, Route]
    requests: list[tuple[str, dict[str, str]]]

    def url(self, path: str) -> str:
        return self.base + path

    def serve(self, path: str, body: bytes, content_type: str = "application/xml", **headers: str) -> str:
        self.routes[path] = Route(body=body, headers={"Content-Type": content_type, **headers})
        return self.url(path)


@contextmanager
def feed_server() -> Iterator[FeedServer]:
    """A server on 127.0.0.1 in a thread, for the duration of the block."""
    routes: dict[str, Route] = {}
    requests: list[tuple[str, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            requests.append((self.path, dict(self.headers.items())))
            route = routes.get(self.path, Route(status=404, body=b"not found"))
            etag = route.headers.get("ETag")
            if etag and self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.end_headers()
                return
            self.send_response(route.status)
            for name, value in route.headers.items():
                self.send_header(name, value)
            if not route.chunked:
                self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.flush()
            if route.delay:
                time.sleep(route.delay)
            try:
                self.wfile.write(route.body)
            except OSError:
                pass  # the reader gave up

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FeedServer(f"http://127.0.0.1:{server.server_address[1]}", routes, requests)
    finally:
        server.shutdown()
        server.server_close()
