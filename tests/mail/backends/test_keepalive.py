"""The kept-alive connection over https: the system's trust (SSL_CERT_FILE) decides, a
connection carries several requests, and a certificate nobody trusts is a failure to
connect (nothing was written, so trying again is safe), never a request in doubt."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from highlightsmail.mail.backends.base import TransientError
from highlightsmail.mail.backends.keepalive import KeptConnection
from support.smtp import make_tls


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(body)
        self.send_response(202)
        self.send_header("X-Message-Id", f"id-{len(self.server.bodies)}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.bodies: list[bytes] = []


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    tls = make_tls(tmp_path)
    server = _Server()
    server.socket = tls.server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, tls.ca_file
    finally:
        server.shutdown()
        server.server_close()


def test_https_requests_share_one_trusted_connection(
    tls_server: tuple[_Server, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca_file = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    kept = KeptConnection(f"https://localhost:{server.server_address[1]}", {"Authorization": "Bearer x"}, 5)
    try:
        answers = [kept.request("POST", "/v3/mail/send", b"{}", {}, "POST /v3/mail/send") for _ in range(3)]
    finally:
        kept.close()
    assert [a.status for a in answers] == [202, 202, 202]
    assert [a.headers.get("X-Message-Id") for a in answers] == ["id-1", "id-2", "id-3"]
    assert server.connections == 1 and server.bodies == [b"{}"] * 3


def test_an_untrusted_certificate_is_a_failure_to_connect(
    tls_server: tuple[_Server, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server, _ca_file = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nothing-trusted.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    kept = KeptConnection(f"https://localhost:{server.server_address[1]}", {}, 5)
    with pytest.raises(TransientError, match="cannot reach SendGrid at https://localhost"):
        kept.request("POST", "/v3/mail/send", b"{}", {}, "POST /v3/mail/send")
    assert server.bodies == []
