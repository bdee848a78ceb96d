"""Ways of delivering messages: outbox (files), smtp, sendgrid. One module each."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace
    from highlightsmail.mail.backends.base import Backend


def get_backend(ws: Workspace, name: str | None = None, *, test: bool = False) -> Backend:
    """The configured backend (or `name`), imported only when used."""
    # Imported here, not at the top: only the configured backend's libraries load (the
    # SendGrid client and its HTTP stack, smtplib and ssl), which a send pays for once.
    name = name or ws.settings.delivery.backend
    if name == "outbox":
        from highlightsmail.mail.backends.outbox import OutboxBackend

        return OutboxBackend(ws, test=test)
    if name == "smtp":
        from highlightsmail.mail.backends.smtp import SmtpBackend

        return SmtpBackend(ws)
    if name == "sendgrid":
        from highlightsmail.mail.backends.sendgrid import SendGridBackend

        return SendGridBackend(ws)
    raise ValueError(f"unknown backend {name!r}")
