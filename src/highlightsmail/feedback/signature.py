"""SendGrid's signed Event Webhook: the verification key and the signature check.

SendGrid signs each batch with ECDSA P-256 over SHA-256: the signature (header
`X-Twilio-Email-Event-Webhook-Signature`, base64 DER) covers the timestamp header
`X-Twilio-Email-Event-Webhook-Timestamp` followed by the raw body. It is checked with the
`sendgrid` package's own Event Webhook helper against the key from
`SENDGRID_WEBHOOK_PUBLIC_KEY` or `delivery.sendgrid.webhook_public_key`. A timestamp more
than 5 minutes away is refused too, so a captured batch cannot be replayed later.

The web app's route (web/webhooks.py) checks each post here; `check` names a key that would
not load before the app is started.
"""

from __future__ import annotations

import binascii
import os
from typing import Any

from highlightsmail.authoring.workspace import Workspace
from highlightsmail.errors import HighlightsError
from highlightsmail.text import parse_number

ENV_PUBLIC_KEY = "SENDGRID_WEBHOOK_PUBLIC_KEY"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_SKEW_S = 300
MAX_TIMESTAMP = 10**12 - 1  # Unix seconds of twelve digits at most: past the year 30000


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
    # Here, not at the top: sendgrid's package brings its HTTP client, and `check`
    # imports this module for one setting.
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


def refusal(key: Any | None, signature: str | None, timestamp: str | None, body: bytes, now: float) -> str | None:
    """Why a post must be refused, or None when it is signed by `key` and fresh at `now`."""
    if key is None:
        return "no verification key is configured"
    if not signature or not timestamp:
        return "no signature or timestamp header"
    seconds = parse_number(timestamp, high=MAX_TIMESTAMP)
    if seconds is None:
        return "a timestamp that is not Unix seconds"
    if abs(now - seconds) > MAX_SKEW_S:
        return "a timestamp more than 5 minutes away"
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        return "a body that is not UTF-8"
    from sendgrid.helpers.eventwebhook import EventWebhook  # see _parse_public_key

    try:
        ok = EventWebhook().verify_signature(payload, signature, timestamp, key)
    except (binascii.Error, ValueError, TypeError):
        ok = False
    return None if ok else "a signature that does not verify"


__all__ = [
    "ENV_PUBLIC_KEY",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "load_public_key",
    "public_key_problem",
    "refusal",
]
