"""One way to trust the servers highlightsmail connects to over TLS (SMTP, IMAP)."""

from __future__ import annotations

import os
import ssl


def client_context(cafile_env: str) -> ssl.SSLContext:
    """The system's trust store (SSL_CERT_FILE / SSL_CERT_DIR honoured), plus the PEM file
    named by the environment variable `cafile_env`, for a server with a private CA.
    ValueError, naming the variable, when that file cannot be loaded."""
    ctx = ssl.create_default_context()
    cafile = os.environ.get(cafile_env, "").strip()
    if cafile:
        try:
            ctx.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as err:
            raise ValueError(f"{cafile_env}={cafile}: cannot load certificates ({err})") from None
    return ctx
