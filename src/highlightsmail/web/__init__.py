"""The web app that base_url points at. `highlights serve` runs it; in production
`uvicorn highlightsmail.web:app`.

| route | module |
| --- | --- |
| `GET /healthz` | health.py: 200 `ok`, or 503 saying why the database cannot be used |
| `GET`, `POST /u/TOKEN`; `POST /u/TOKEN/resubscribe` | unsubscribe.py: the page, the unsubscribe (RFC 8058 one-click too), resubscribing |
| `/subscribe`, `/confirm/TOKEN` (with `signup.enabled`) | signup.py: the form and its confirmation links |
| `archive.path` and below (with `archive.enabled`) | archive.py: the archive's pages and feed |
| `POST /webhooks/sendgrid` | webhooks.py: SendGrid's signed Event Webhook |

application.py makes the app from these groups, with the middlewares (middleware.py:
security headers, base path, body limit), the pages they share (pages.py), log
redaction (redaction.py) and the one database every group uses (database.py);
forms.py reads posted forms. `app` is looked up lazily, so importing one of these
modules does not make the app.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":  # lazy: `uvicorn highlightsmail.web:app` without loading the app on import
        from highlightsmail.web.application import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
