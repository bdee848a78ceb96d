"""SendGrid's side of the Event Webhook, for the tests and the webhook benchmark.

The local SendGrid-compatible server accepts mail; this is what SendGrid then does with
it: events in the documented format (one JSON list per POST, each event with `email`,
`timestamp`, `event`, `sg_event_id`, `sg_message_id`, `smtp-id`, `category`, the type's
own fields, and the request's custom args as top-level fields), signed with an ECDSA
P-256 key pair made for the test, as the signed Event Webhook does: the signature is
base64 DER over the timestamp header's value followed by the raw body.

    sender = EventSender()                       # a fresh key pair
    events = sender.for_request(accepted, "delivered")   # from a recorded mail/send request
    sender.post(url, events)                     # signed, now
    sender.post(url, sender.reordered(events))   # the same batch, shuffled
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# What each event type carries besides the common fields (SendGrid's Event Webhook reference).
_TYPE_FIELDS: dict[str, dict[str, Any]] = {
    "processed": {"pool": {"name": "new_MY_test", "id": 210}},
    "delivered": {"response": "250 2.0.0 OK 1712345678 d2-20020a05", "tls": 1, "ip": "168.1.1.1"},
    "deferred": {"response": "421 4.7.0 Try again later", "attempt": "1", "ip": "168.1.1.1"},
    "bounce": {
        "type": "bounce",
        "reason": "550 5.1.1 The email account that you tried to reach does not exist.",
        "status": "5.1.1",
        "bounce_classification": "Invalid Address",
        "tls": 1,
        "ip": "168.1.1.1",
    },
    "blocked": {
        "type": "blocked",
        "reason": "550 5.7.1 Service unavailable; client host blocked using a block list",
        "status": "5.7.1",
        "bounce_classification": "Reputation",
        "ip": "168.1.1.1",
    },
    "dropped": {"reason": "Bounced Address", "status": "5.0.0"},
    "spamreport": {},
    "unsubscribe": {},
    "group_unsubscribe": {"asm_group_id": 42, "useragent": "Mozilla/5.0", "ip": "255.255.255.255"},
    "open": {"useragent": "Mozilla/5.0 (Macintosh)", "ip": "255.255.255.255", "sg_machine_open": False},
    "click": {
        "useragent": "Mozilla/5.0 (Linux; Android 14)",
        "ip": "255.255.255.255",
        "url": "https://arxiv.org/abs/2401.01325",
        "url_offset": {"index": 0, "type": "html"},
    },
}
#: Every type the tests send. `blocked` is a `bounce` of type `blocked` on the wire.
EVENT_TYPES = tuple(_TYPE_FIELDS)


def new_event_id() -> str:
    """An sg_event_id like SendGrid's: 22 URL-safe base64 characters."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")


class EventSender:
    """SendGrid's signing key and its way of posting events."""

    def __init__(self) -> None:
        self._private = ec.generate_private_key(ec.SECP256R1())
        # What SendGrid's settings page shows: the DER of the public key in base64.
        der = self._private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode("ascii")

    # -- events

    def event(
        self,
        kind: str,
        *,
        email: str,
        issue: str | None = None,
        subscriber_id: int | str | None = None,
        at: float | None = None,
        message_id: str = "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        **fields: Any,
    ) -> dict[str, Any]:
        """One event of `kind` (any SendGrid type, or `blocked` for a blocked bounce)."""
        wire = "bounce" if kind == "blocked" else kind
        event: dict[str, Any] = {
            "email": email,
            "timestamp": int(at if at is not None else time.time()),
            "smtp-id": f"<{message_id.split('.')[0]}@ismtpd-555>",
            "event": wire,
            "category": ["highlights"],
            "sg_event_id": new_event_id(),
            "sg_message_id": message_id,
            **_TYPE_FIELDS[kind],
        }
        if issue is not None:
            event["issue"] = issue
        if subscriber_id is not None:
            event["subscriber_id"] = str(subscriber_id)
        event.update(fields)
        return event

    def for_request(self, accepted: Any, kind: str, *, at: float | None = None, **fields: Any) -> list[dict[str, Any]]:
        """One event of `kind` per personalization of an accepted mail/send request (an
        object with `body` and `message_id`, as the local server records it), carrying
        its custom args as SendGrid does."""
        body = accepted.body
        top = body.get("custom_args") or {}
        out = []
        for index, person in enumerate(body["personalizations"]):
            args = {**top, **(person.get("custom_args") or {})}
            event = self.event(
                kind,
                email=person["to"][0]["email"],
                at=at,
                message_id=f"{accepted.message_id}.filter0001.{index}.0",
                **fields,
            )
            event.update(args)
            out.append(event)
        return out

    # -- signing and posting

    def sign(self, body: bytes, timestamp: str) -> str:
        signature = self._private.sign(timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode("ascii")

    def headers(self, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(timestamp if timestamp is not None else time.time()))
        return {
            "Content-Type": "application/json",
            "User-Agent": "SendGrid Event API",
            SIGNATURE_HEADER: self.sign(body, stamp),
            TIMESTAMP_HEADER: stamp,
        }

    @staticmethod
    def encode(events: Iterable[Mapping[str, Any]]) -> bytes:
        return json.dumps(list(events), separators=(",", ":")).encode("utf-8")

    def post(
        self,
        url: str,
        events: Iterable[Mapping[str, Any]],
        *,
        client: httpx.Client | None = None,
        timestamp: int | None = None,
    ) -> httpx.Response:
        """POST one signed batch to `url` (the webhook's full URL)."""
        body = self.encode(events)
        headers = self.headers(body, timestamp=timestamp)
        if client is not None:
            return client.post(url, content=body, headers=headers)
        return httpx.post(url, content=body, headers=headers, timeout=30)

    # -- what SendGrid's delivery does to batches: retries, reordering, duplicates

    @staticmethod
    def reordered(events: list[dict[str, Any]], seed: int = 7) -> list[dict[str, Any]]:
        """The same events in another order (SendGrid does not promise any)."""
        out = list(events)
        random.Random(seed).shuffle(out)
        return out

    @staticmethod
    def duplicated(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each event twice in one batch, as when a retry overlaps a new batch."""
        return [e for event in events for e in (event, dict(event))]

    @staticmethod
    def batches(events: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
        for start in range(0, len(events), size):
            yield events[start : start + size]


__all__ = ["EVENT_TYPES", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "EventSender", "new_event_id"]
