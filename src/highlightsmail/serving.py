"""What the two servers (the web endpoint and the preview) share: the listening socket."""

from __future__ import annotations

import errno
import socket

from highlightsmail.errors import HighlightsError


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), or a one-line error saying why not.

    Binding before uvicorn starts turns "address in use" into a sentence instead of a
    log record, and lets the caller print the real port when it asked for port 0.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HighlightsError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "; pick another with --port" if exc.errno == errno.EADDRINUSE else ""
        raise HighlightsError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    sock.set_inheritable(True)
    return sock
