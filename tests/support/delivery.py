"""Shared by the backends' tests and benchmarks: the example issue rendered once, a
workspace with quick retries, batches of recipients, and the checks every delivered
message must pass (the headers and parts every message carries)."""

from __future__ import annotations

import re
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path
from typing import Any

from highlightsmail.authoring.workspace import Settings, Workspace, load_workspace
from highlightsmail.mail.backends.base import Batch, Envelope
from highlightsmail.mail.message import Recipient, recipient_links
from highlightsmail.rendering.rendered import UNSUBSCRIBE_PLACEHOLDER, RenderedIssue
from highlightsmail.tokens import Signer
from support.workspace import EXAMPLE_WORKSPACE

SIGNER = Signer(b"backend-tests-secret-0123456789abcdef")
#: The headers every message to a subscriber carries (with an https base_url).
READER_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)

_rendered: RenderedIssue | None = None


def example_issue() -> RenderedIssue:
    """The tests' example issue, rendered once per test session (read-only)."""
    global _rendered
    if _rendered is None:
        from highlightsmail.authoring.issue import load_issue
        from highlightsmail.rendering.render import render_issue

        ws = load_workspace(EXAMPLE_WORKSPACE)
        _rendered = render_issue(load_issue(ws.issue_path("2024-w02")), ws)
    return _rendered


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_workspace(root: Path, **changes: Any) -> Workspace:
    """The workspace at `root` with its settings changed (validated like highlights.yaml):
    delivery={"smtp": {...}}. Retries are quick unless changed."""
    ws = load_workspace(root)
    data = ws.settings.model_dump(by_alias=True)
    data = _merge(data, {"delivery": {"max_attempts": 4, "backoff": 0.01}})
    data = _merge(data, changes)
    return Workspace(root=ws.root, settings=Settings.model_validate(data))


def recipients(n: int, *, start: int = 1, domain: str = "example.org") -> list[Recipient]:
    """Subscribers with a few awkward names: non-ASCII, quotes and commas, none."""
    names = ["Ada Lovelace", "Zoë Ångström", 'Grace "Amazing" Hopper, Rear Admiral', ""]
    return [
        Recipient(email=f"reader{i}@{domain}", name=names[i % len(names)], subscriber_id=i)
        for i in range(start, start + n)
    ]


def make_batch(
    ws: Workspace,
    people: list[Recipient],
    *,
    test: bool = False,
    number: int = 1,
    rendered: RenderedIssue | None = None,
) -> Batch:
    rendered = rendered or example_issue()
    envelopes = []
    for index, person in enumerate(people, start=1):
        key = person.subscriber_id if person.subscriber_id is not None else index
        links = recipient_links(ws.settings, SIGNER, key, test=test)
        envelopes.append(Envelope(key=key, recipient=person, links=links))
    return Batch(
        number=number, slug=rendered.slug, rendered=rendered, settings=ws.settings, envelopes=envelopes, test=test
    )


def check_message(msg: EmailMessage, env: Envelope, settings: Settings, *, test: bool = False) -> None:
    """Everything a delivered message must be, for this recipient."""
    rendered = example_issue()
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content_charset() == "utf-8"
    assert msg["From"] == settings.from_
    assert getaddresses([str(msg["To"])]) == [(env.recipient.name, env.recipient.email)]
    assert msg["Subject"] == ("[TEST] " if test else "") + rendered.subject
    assert parsedate_to_datetime(str(msg["Date"])).tzinfo is not None
    # The numeric zone (RFC 5322 3.3): "GMT" and the other zone names are obsolete syntax.
    # (raw: the parsed header would show any zone as +0000)
    date = next(v for k, v in msg.raw_items() if k.lower() == "date")
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000", date), date
    assert re.fullmatch(r"<[^<>@\s]+@example\.org>", str(msg["Message-ID"]))
    assert msg["Reply-To"] == settings.reply_to
    assert msg["List-Id"] == '"AI Research Highlights" <highlights.example.org>'
    url = env.links.unsubscribe_url
    assert msg["List-Unsubscribe"] == f"<{url}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = parts[0].get_content(), parts[1].get_content()
    # The footer link in both parts is this recipient's List-Unsubscribe URL.
    assert UNSUBSCRIBE_PLACEHOLDER not in text and UNSUBSCRIBE_PLACEHOLDER not in html
    assert url in text
    assert f'href="{url}"' in html
    assert set(re.findall(r"https://highlights\.example\.org/u/[^\s\"<>]+", text + html)) == {url}
    # The preference page beside it, in both parts: a link of its own kind.
    preferences = env.links.preferences_url
    assert preferences in text and f'href="{preferences}"' in html
    assert re.fullmatch(r"https://highlights\.example\.org/p/[^\s\"<>]+", preferences), preferences
    assert set(re.findall(r"https://highlights\.example\.org/p/[^\s\"<>]+", text + html)) == {preferences}
    # And otherwise the issue as rendered once for everyone.
    want_html, want_text = rendered.personalize(url, preferences)
    assert html.replace("\r\n", "\n") == want_html.replace("\r\n", "\n") + ("" if want_html.endswith("\n") else "\n")
    assert text.replace("\r\n", "\n") == want_text + ("" if want_text.endswith("\n") else "\n")
