"""What is held about one reader, and erasing it: `subscribers show` and the preference
page's "Download my data", `subscribers forget` and its "Erase me".

After erasure only a keyed hash of the address (HMAC with the workspace's secret,
`tokens.Signer.address_hash`) stays, so `subscribers import` refuses the address by
line ("erased on request"); a signup through the form, confirmed by the reader, may
bring it back.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from highlightsmail.addresses import address_key
from highlightsmail.errors import HighlightsError
from highlightsmail.store import Store, Subscriber
from highlightsmail.subscribers.manage import address_argument
from highlightsmail.tokens import Signer, load_signer

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace


def data_of(store: Store, sub: Subscriber) -> dict[str, Any]:
    """Everything held about a subscriber, as JSON-ready values (`Store.personal_data`)."""
    return {"id": sub.id, **store.personal_data(sub.id)}


def data_json(data: dict[str, Any]) -> str:
    """The data as the JSON file a reader downloads and `show --format json` prints."""
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def _found(store: Store, address: str) -> Subscriber:
    sub = store.find(address)
    if sub is None:
        raise HighlightsError(f"{address}: not on the list")
    return sub


def _database(ws: Workspace, address: str) -> None:
    """An error when there is no database yet: none is made to say so."""
    if not ws.database_url and not ws.database_exists():
        raise HighlightsError(f"{address}: not on the list (there is no database yet)")


def show(ws: Workspace, email: str) -> dict[str, Any]:
    """`subscribers show EMAIL --format ...`: everything held about that address."""
    address = address_argument(email)
    _database(ws, address)
    with Store.open(ws) as store:
        return data_of(store, _found(store, address))


def erase(store: Store, signer: Signer, sub: Subscriber) -> None:
    """Erase a subscriber: every row naming them goes, the keyed hash of the address stays."""
    store.forget(sub.id, signer.address_hash(address_key(sub.email)))


def forget(ws: Workspace, email: str) -> Subscriber:
    """`subscribers forget EMAIL`: erase that address; returns the subscriber as it was."""
    address = address_argument(email)
    _database(ws, address)
    signer = load_signer(ws.secret_path)
    with Store.open(ws) as store:
        sub = _found(store, address)
        erase(store, signer, sub)
        return sub


def show_table(data: dict[str, Any]) -> str:
    """The data as text for a terminal."""
    lines = [
        f"email:     {data['email']}",
        f"name:      {data['name']}",
        f"status:    {data['status']}",
        f"created:   {data['created']}",
        f"updated:   {data['updated']}",
        f"topics:    {', '.join(data['topics']) or '-'}",
    ]
    if data["paused_until"]:
        lines.append(f"paused until {data['paused_until']}")
    for title, key, fields in (
        ("consents", "consents", ("at", "source", "ip")),
        ("history", "events", ("at", "from_status", "to_status", "source")),
        ("deliveries", "deliveries", ("issue", "state")),
        ("delivery events", "delivery_events", ("issue", "kind", "at")),
    ):
        rows = data[key]
        lines.append(f"{title}: {len(rows)}")
        lines.extend("  " + "  ".join(str(row[f] if row[f] is not None else "-") for f in fields) for row in rows)
    return "\n".join(lines) + "\n"


__all__ = ["data_json", "data_of", "erase", "forget", "show", "show_table"]
