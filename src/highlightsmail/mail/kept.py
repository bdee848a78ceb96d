"""The message a dispatch sends, kept once with its per-recipient parts as placeholders,
and the message one subscriber got, rebuilt from it.

`keepable` turns a rendered email into text (JSON: its headers in order and its two
parts) where To, Date, Message-ID and the recipient's token in the unsubscribe links
are placeholders. `rebuild` puts one recipient's values back: their address, the
date its run kept the message, the Message-ID made from the dispatch's tag, their unsubscribe token.
All of those are derived again (tokens.py), so nothing per recipient is written at
send time for this. The rebuilt message has the same headers and the same decoded
parts as the one handed to the backend; its MIME boundary and transfer encodings may
differ."""

from __future__ import annotations

import json
from email.message import EmailMessage
from typing import TYPE_CHECKING

from highlightsmail.errors import HighlightsError
from highlightsmail.mail.message import (
    Recipient,
    build_message,
    format_recipient,
    links_for,
    mail_date,
    unsubscribe_url,
)
from highlightsmail.rendering.rendered import RenderedIssue
from highlightsmail.urls import urls

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Settings

__all__ = ["KEPT_FORMAT", "keepable", "rebuild", "sender_domain_of", "signing_key_of"]

#: Stands for the recipient's unsubscribe token in the kept message (links and List-*).
TOKEN_PLACEHOLDER = "-highlights_recipient_token-"
#: Stands for the recipient's preference-page token (made at the message's date).
PREFERENCES_TOKEN_PLACEHOLDER = "-highlights_preferences_token-"
_TO = "-highlights_recipient-@example.invalid"
_DATE = "-highlights_date-"
_MESSAGE_ID = "<-highlights_message_id-@example.invalid>"
_PER_MESSAGE = {"to": _TO, "date": _DATE, "message-id": _MESSAGE_ID}
#: What the email package adds itself when the parts are set.
_MIME_HEADERS = ("mime-version", "content-type", "content-transfer-encoding")
KEPT_FORMAT = 1


def keepable(rendered: RenderedIssue, settings: Settings, *, key: str = "") -> str:
    """The message every subscriber of a dispatch of `rendered` gets, as text to keep:
    what differs per recipient left as placeholders; `key` names the secret its links
    are signed with (tokens.Signer.key_id)."""
    links = links_for(
        settings,
        unsubscribe_url(settings, TOKEN_PLACEHOLDER),
        urls(settings).preferences(PREFERENCES_TOKEN_PLACEHOLDER),
    )
    msg = build_message(rendered, settings, Recipient(email=_TO), links, date=0.0, message_id=_MESSAGE_ID)
    headers = []
    for name, value in msg.items():
        lname = name.lower()
        if lname in _MIME_HEADERS:
            continue
        headers.append([name, _PER_MESSAGE.get(lname, str(value))])
    html, text = rendered.personalize(links.unsubscribe_url, links.preferences_url)
    kept = {"format": KEPT_FORMAT, "slug": rendered.slug, "headers": headers, "text": text, "html": html}
    if key:
        kept["key"] = key
    return json.dumps(kept, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _read(kept: str) -> dict[str, object]:
    try:
        data = json.loads(kept)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("format") != KEPT_FORMAT:
        raise HighlightsError("the kept message is in a form this highlightsmail does not read")
    return data


def signing_key_of(kept: str) -> str:
    """The name of the secret the kept message's links were signed with ("" when it was
    kept before that was recorded)."""
    key = _read(kept).get("key", "")
    return key if isinstance(key, str) else ""


def sender_domain_of(kept: str) -> str:
    """The domain of the kept message's From address (its Message-IDs are made with it)."""
    from email.utils import parseaddr

    for name, value in _headers(_read(kept)):
        if name.lower() == "from":
            return parseaddr(value)[1].rpartition("@")[2] or "localhost"
    return "localhost"


def _headers(data: dict[str, object]) -> list[tuple[str, str]]:
    found = data.get("headers")
    if not isinstance(found, list):
        raise HighlightsError("the kept message has no headers")
    return [(str(name), str(value)) for name, value in found]


def rebuild(
    kept: str, recipient: Recipient, *, token: str, message_id: str, date: float, preferences_token: str = ""
) -> EmailMessage:
    """The message `recipient` got: the kept one with their address, `date`, their
    `message_id`, their unsubscribe `token` and their `preferences_token` in place of
    the placeholders."""
    data = _read(kept)
    text, html = str(data["text"]), str(data["html"])
    if preferences_token:
        text = text.replace(PREFERENCES_TOKEN_PLACEHOLDER, preferences_token)
        html = html.replace(PREFERENCES_TOKEN_PLACEHOLDER, preferences_token)
    values = {"to": format_recipient(recipient), "date": mail_date(date), "message-id": message_id}
    msg = EmailMessage()
    for name, value in _headers(data):
        msg[name] = values.get(name.lower(), value.replace(TOKEN_PLACEHOLDER, token))
    msg.set_content(text.replace(TOKEN_PLACEHOLDER, token), subtype="plain", charset="utf-8")
    msg.add_alternative(html.replace(TOKEN_PLACEHOLDER, token), subtype="html", charset="utf-8")
    return msg
