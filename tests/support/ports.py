"""The one free-port helper: a loopback port nothing listens on, for a server a test or a
benchmark starts (SMTP, PostgreSQL, Dovecot, uvicorn)."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (the OS picks it; the caller binds it next)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
