"""`POST /webhooks/sendgrid`: SendGrid's signed Event Webhook (the signature is checked
in signature.py).

- No key configured, a missing or bad signature, or a timestamp more than 5 minutes
  away: 403, nothing recorded (a captured batch cannot be replayed later either).
- A valid batch is recorded in one transaction and answered 200 with the counts.
  SendGrid retries any batch that got another answer, so recording is idempotent: each
  event is kept once by its `sg_event_id`. Events for unknown issues or subscribers are
  counted and ignored, never a 5xx; a busy database is a 503, which SendGrid retries.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from highlightsmail.authoring.workspace import Workspace
from highlightsmail.errors import HighlightsError
from highlightsmail.feedback.events import record, sendgrid_row
from highlightsmail.feedback.signature import (
    ENV_PUBLIC_KEY,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    load_public_key,
    refusal,
)
from highlightsmail.store import RecordResult, UnusableDatabase
from highlightsmail.urls import SENDGRID_WEBHOOK
from highlightsmail.web.database import AppDatabase

log = logging.getLogger("highlightsmail.webhooks")

# SendGrid posts a batch every 30 seconds or when it reaches 768 KB, so a batch is at
# most 768 KB plus one event; twice that leaves room and still bounds memory.
MAX_BODY_BYTES = 2 * 1024 * 1024


class SendGridWebhook:
    """The route's handler, holding the key; `routes` go into the app."""

    def __init__(self, ws: Workspace, db: AppDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self._ws = ws
        self._db = db
        self._key = load_public_key(ws)
        self._clock = clock
        self.routes: list[BaseRoute] = [Route(SENDGRID_WEBHOOK, self.handle, methods=["POST"])]
        if self._key is None:
            # Not a warning: most workspaces send through SMTP or the outbox and need no key.
            log.info("no %s or delivery.sendgrid.webhook_public_key: %s answers 403", ENV_PUBLIC_KEY, SENDGRID_WEBHOOK)

    async def handle(self, request: Request) -> Response:
        """POST /webhooks/sendgrid."""
        body = await request.body()  # at most MAX_BODY_BYTES: the app's body limit saw to that
        why = refusal(
            self._key, request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER), body, self._clock()
        )
        if why is not None:
            log.warning("refused a SendGrid webhook post: %s", why)
            return JSONResponse({"error": "forbidden"}, status_code=403)
        events = _events(body)
        if events is None:
            # Signed by SendGrid and still not a list of events: retrying will not help.
            log.error("a signed SendGrid webhook post is not a JSON list of events")
            return JSONResponse({"error": "expected a JSON list of events"}, status_code=400)
        try:
            result, ignored = await run_in_threadpool(self._record, events)
        except HighlightsError as exc:  # the database stayed busy: let SendGrid try again
            log.error("could not record SendGrid events: %s", exc.message)
            if isinstance(exc, UnusableDatabase):
                self._db.unusable()
            return JSONResponse({"error": "busy"}, status_code=503, headers={"Retry-After": "30"})
        return JSONResponse(
            {
                "recorded": result.recorded,
                "duplicates": result.duplicates,
                "ignored": ignored + result.unknown,
                "status_changes": result.changed,
            }
        )

    def _record(self, events: list[Any]) -> tuple[RecordResult, int]:
        rows = [row for row in map(sendgrid_row, events) if row is not None]
        with self._db.writing() as store:
            result = record(
                store,
                rows,
                source="sendgrid-webhook",
                soft_limit=self._ws.settings.delivery.bounces.soft_limit,
            )
        return result, len(events) - len(rows)


def _events(body: bytes) -> list[Any] | None:
    """The posted JSON list of events; None for anything else."""
    try:
        events = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    return events if isinstance(events, list) else None


__all__ = ["MAX_BODY_BYTES", "SendGridWebhook"]
