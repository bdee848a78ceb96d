"""The web app that base_url points at: unsubscribe pages and RFC 8058 one-click
unsubscribe, /healthz, the SendGrid event webhook, and (when enabled) the signup form
and the archive. `highlights serve` runs it; in production `uvicorn highlightsmail.web:app`.

application.py makes the app (its routes, middlewares and log redaction); signup.py,
archive.py and webhooks.py are the routes of their groups; forms.py reads posted forms.
`app` is looked up lazily, so importing one of these modules does not make the app.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":  # lazy: `uvicorn highlightsmail.web:app` without loading the app on import
        from highlightsmail.web.application import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
