"""`subscribers show EMAIL --issue ISSUE --eml FILE`: the message a subscriber got,
rebuilt from the message its dispatch kept (mail/kept.py) and what the ledger and the
dispatch's tag give again for them: their unsubscribe token, the Message-ID, the date.
Nothing is written unless the ledger holds a delivery of the issue to that address."""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

from highlightsmail.addresses import BadAddress, normalize_address
from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.files import write_file
from highlightsmail.mail.kept import rebuild, sender_domain_of, signing_key_of
from highlightsmail.mail.message import Recipient, make_message_id
from highlightsmail.store import Store, Subscriber
from highlightsmail.store.ledger_state import WENT
from highlightsmail.tokens import Signer, load_signer

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace

__all__ = ["Rebuilt", "Summary", "rebuild_message", "summary"]

#: Backends that give each message a Message-ID of their own (not derived from our tag).
_OWN_MESSAGE_IDS = ("sendgrid",)


@dataclass(frozen=True)
class Summary:
    """A subscriber in brief."""

    email: str
    name: str
    status: str
    created: str


@dataclass(frozen=True)
class Rebuilt:
    """A message written again: where, of which issue, to whom, how it stands in the ledger."""

    path: Path
    issue: str
    email: str
    state: str
    digest: str


def summary(ws: Workspace, address: str) -> Summary:
    """Who `address` is on the list; a HighlightsError when nobody."""
    _database(ws, f"{address}: not on the list")
    with Store.open(ws) as store:
        sub = _find(store, address)
    return Summary(sub.email, sub.name, sub.status, sub.created)


def _database(ws: Workspace, nothing: str) -> None:
    """`nothing` (as an error) when there is no database yet: none is made to say so."""
    if not ws.database_exists():
        raise HighlightsError(f"{nothing} (there is no database yet)")


def _find(store: Store, address: str) -> Subscriber:
    try:
        key = normalize_address(address)
    except BadAddress as err:
        raise HighlightsError(f"{address!r}: {err}") from None
    sub = store.find(key)
    if sub is None:
        raise HighlightsError(f"{address}: not on the list")
    return sub


def rebuild_message(ws: Workspace, address: str, slug: str, out: Path) -> Rebuilt:
    """Write to `out` the message of `slug` that `address` got, as the backend was given
    it (same headers, same decoded parts). A HighlightsError, and no file, when the
    ledger holds no delivery of the issue to that address, or nothing was kept."""
    _database(ws, f"{slug}: the ledger holds no delivery to {address}; nothing was written")
    with Store.open(ws) as store:
        sub = store.find(address.strip())
        found = store.delivery_state(slug, sub.id) if sub is not None else None
        if sub is None or found is None or found[0] not in WENT:
            raise HighlightsError(f"{slug}: the ledger holds no delivery to {address}; nothing was written")
        state, batch = found
        info = store.dispatch_info(slug)
        kept = store.kept_message(slug, batch)
    if info is None or kept is None:
        raise HighlightsError(f"{slug}: its dispatch kept no message (it began before messages were kept)")
    signer = _signer_of(ws, slug, kept.message)
    own_ids = info.backend in _OWN_MESSAGE_IDS or not info.tag
    message_id = (
        ""
        if own_ids
        else make_message_id(signer.make_message(slug, info.tag or "", sub.id), sender_domain_of(kept.message))
    )
    msg = rebuild(
        kept.message,
        Recipient(sub.email, sub.name, sub.id),
        token=signer.make(sub.id),
        message_id=message_id,
        date=kept.kept_at,
        preferences_token=signer.make_preferences(sub.id, int(kept.kept_at)),
    )
    if own_ids:
        del msg["Message-ID"]  # the provider gave it one of its own
    try:
        write_file(out, _as_bytes(msg), mode=0o600)  # it holds a working unsubscribe link
    except OSError as err:
        raise HighlightsError(f"{display_path(out)}: cannot write it: {err.strerror or err}") from None
    return Rebuilt(out, slug, sub.email, state, kept.digest)


def _signer_of(ws: Workspace, slug: str, kept: str) -> Signer:
    """The signer with the secret the kept message's links were signed with: after a
    rotation, the previous secret (HIGHLIGHTS_SECRET_PREVIOUS) it names."""
    signer = load_signer(ws.secret_path)
    key = signing_key_of(kept)
    if not key:
        return signer  # kept before the secret was named with it: the current one
    then = signer.signing_with(key)
    if then is None:
        raise HighlightsError(
            f"{slug}: its links were signed with a secret that is neither HIGHLIGHTS_SECRET nor in "
            "HIGHLIGHTS_SECRET_PREVIOUS; put that secret in HIGHLIGHTS_SECRET_PREVIOUS to rebuild it; "
            "nothing was written"
        )
    return then


def _as_bytes(msg: EmailMessage) -> bytes:
    """The message as an SMTP server would get it (CRLF); SMTPUTF8 for an address beyond ASCII."""
    try:
        return msg.as_bytes(policy=email.policy.SMTP)
    except UnicodeError:
        return msg.as_bytes(policy=email.policy.SMTPUTF8)
