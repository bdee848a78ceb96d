"""`POST /webhooks/sendgrid`: SendGrid's signed Event Webhook.

SendGrid signs each batch with ECDSA P-256 over SHA-256: the signature (header
`X-Twilio-Email-Event-Webhook-Signature`, base64 DER) covers the timestamp header
`X-Twilio-Email-Event-Webhook-Timestamp` followed by the raw body. It is checked with the
`sendgrid` package's own Event Webhook helper against the key from
`SENDGRID_WEBHOOK_PUBLIC_KEY` or `delivery.sendgrid.webhook_public_key`.

- No key configured, a missing or bad signature, or a timestamp more than 5 minutes
  away: 403, nothing recorded (a captured batch cannot be replayed later either).
- A valid batch is recorded in one transaction and answered 200 with the counts.
  SendGrid retries any batch that got another answer, so recording is idempotent: each
  event is kept once by its `sg_event_id`. Events for unknown issues or subscribers are
  counted and ignored, never a 5xx; a busy database is a 503, which SendGrid retries.
"""

from __future__ import annotations

import binascii
import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from highlightsmail.errors import HighlightsError
from highlightsmail.text import parse_number
from highlightsmail.urls import SENDGRID_WEBHOOK

if TYPE_CHECKING:
    from starlette.requests import Request

    from highlightsmail.store import RecordResult, Store
    from highlightsmail.workspace import Workspace

log = logging.getLogger("highlightsmail.webhooks")

ENV_PUBLIC_KEY = "SENDGRID_WEBHOOK_PUBLIC_KEY"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_SKEW_S = 300
MAX_TIMESTAMP = 10**12 - 1  # Unix seconds of twelve digits at most: past the year 30000
# SendGrid posts a batch every 30 seconds or when it reaches 768 KB, so a batch is at
# most 768 KB plus one event; twice that leaves room and still bounds memory.
MAX_BODY_BYTES = 2 * 1024 * 1024


def load_public_key(ws: Workspace) -> Any | None:
    """The verification key as an ECDSA public key object, or None when none is set.

    SendGrid shows it as base64 (the DER of the key); a pasted PEM block is accepted too.
    A key that does not load is an error naming where it came from."""
    from_env = os.environ.get(ENV_PUBLIC_KEY, "").strip()
    where = ENV_PUBLIC_KEY if from_env else "delivery.sendgrid.webhook_public_key"
    text = from_env or (ws.settings.delivery.sendgrid.webhook_public_key or "").strip()
    if not text:
        return None
    key, problem = _parse_public_key(text)
    if problem:
        raise HighlightsError(f"{where}: {problem}")
    return key


def public_key_problem(text: str) -> str | None:
    """Why `text` is not a verification key the webhook can use (None when it is)."""
    return _parse_public_key(text.strip())[1]


def _parse_public_key(text: str) -> tuple[Any, str | None]:
    # The armour lines of a PEM block, if any, go; the base64 between them stays.
    body = "".join("".join(line.split()) for line in text.splitlines() if not line.strip().startswith("-----"))
    from cryptography.hazmat.primitives.asymmetric import ec
    from sendgrid.helpers.eventwebhook import EventWebhook

    try:
        key = EventWebhook().convert_public_key_to_ecdsa(body)
    except (ValueError, TypeError) as exc:
        return None, (
            f"not a verification key (paste the base64 key SendGrid shows for the signed Event Webhook): {exc}"
        )
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return None, "SendGrid signs with an ECDSA P-256 key; this is another kind of key"
    return key, None


class SendGridWebhook:
    """The route handler, holding the key and one database connection for the app's life."""

    def __init__(self, ws: Workspace, *, clock: Any = time.time) -> None:
        self._ws = ws
        self._key = load_public_key(ws)
        self._clock = clock
        self._store: Store | None = None
        self._lock = threading.Lock()
        if self._key is None:
            # Not a warning: most workspaces send through SMTP or the outbox and need no key.
            log.info("no %s or delivery.sendgrid.webhook_public_key: %s answers 403", ENV_PUBLIC_KEY, SENDGRID_WEBHOOK)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    async def handle(self, request: Request) -> Response:
        """POST /webhooks/sendgrid."""
        body = await request.body()  # at most MAX_BODY_BYTES: the app's body limit saw to that
        why = self._refusal(request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER), body)
        if why is not None:
            log.warning("refused a SendGrid webhook post: %s", why)
            return JSONResponse({"error": "forbidden"}, status_code=403)
        try:
            events = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            events = None
        if not isinstance(events, list):
            # Signed by SendGrid and still not a list of events: retrying will not help.
            log.error("a signed SendGrid webhook post is not a JSON list of events")
            return JSONResponse({"error": "expected a JSON list of events"}, status_code=400)
        try:
            result, ignored = await run_in_threadpool(self._record, events)
        except HighlightsError as exc:  # the database stayed busy: let SendGrid try again
            log.error("could not record SendGrid events: %s", exc.message)
            return JSONResponse({"error": "busy"}, status_code=503, headers={"Retry-After": "30"})
        return JSONResponse(
            {
                "recorded": result.recorded,
                "duplicates": result.duplicates,
                "ignored": ignored + result.unknown,
                "status_changes": result.changed,
            }
        )

    def _refusal(self, signature: str | None, timestamp: str | None, body: bytes) -> str | None:
        """Why the request must be refused, or None when it is signed by the key and fresh."""
        if self._key is None:
            return "no verification key is configured"
        if not signature or not timestamp:
            return "no signature or timestamp header"
        seconds = parse_number(timestamp, high=MAX_TIMESTAMP)
        if seconds is None:
            return "a timestamp that is not Unix seconds"
        if abs(self._clock() - seconds) > MAX_SKEW_S:
            return "a timestamp more than 5 minutes away"
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            return "a body that is not UTF-8"
        from sendgrid.helpers.eventwebhook import EventWebhook

        try:
            ok = EventWebhook().verify_signature(payload, signature, timestamp, self._key)
        except (binascii.Error, ValueError, TypeError):
            ok = False
        return None if ok else "a signature that does not verify"

    def _record(self, events: list[Any]) -> tuple[RecordResult, int]:
        from highlightsmail.events import record, sendgrid_row

        rows = [row for row in map(sendgrid_row, events) if row is not None]
        with self._lock:
            if self._store is None:
                from highlightsmail.store import Store

                self._store = Store.open(self._ws, pooled=True)
            result = record(
                self._store,
                rows,
                source="sendgrid-webhook",
                soft_limit=self._ws.settings.delivery.bounces.soft_limit,
            )
        return result, len(events) - len(rows)


__all__ = ["ENV_PUBLIC_KEY", "MAX_BODY_BYTES", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "SendGridWebhook"]
