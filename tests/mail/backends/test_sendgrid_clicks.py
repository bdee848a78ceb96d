"""`delivery.sendgrid.track_clicks`: SendGrid's click tracking on every link of the HTML
part but the unsubscribe link, never in the text part; requests checked by the local
SendGrid server against the official schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from highlightsmail.mail.backends.sendgrid import ENV_API_KEY, ENV_HOST, SendGridBackend
from highlightsmail.rendering.rendered import PREFERENCES_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER
from support.delivery import example_issue, make_batch, make_workspace, recipients
from support.sendgrid import SendGridServer

API_KEY = "SG.track-clicks"


@pytest.fixture
def sg(monkeypatch: pytest.MonkeyPatch) -> Iterator[SendGridServer]:
    server = SendGridServer(api_key=API_KEY)
    with server:
        monkeypatch.setenv(ENV_API_KEY, API_KEY)
        monkeypatch.setenv(ENV_HOST, server.url)
        yield server


def anchors(html: str) -> list[str]:
    return re.findall(r"<a\s[^>]*>", html)


def send(root: Path, sg: SendGridServer, **sendgrid: object) -> dict:
    ws = make_workspace(root, delivery={"backend": "sendgrid", "sendgrid": sendgrid})
    backend = SendGridBackend(ws)
    backend.open()
    result = backend.send_batch(make_batch(ws, recipients(3)))
    assert result.failed == {} and sg.rejected == []
    return sg.accepted[-1].body


def test_track_clicks_tracks_every_html_link_but_the_reader_s_own(workspace: Path, sg: SendGridServer) -> None:
    """The unsubscribe link and the preference page carry the reader's token: SendGrid's
    click tracking leaves both alone."""
    body = send(workspace, sg, track_clicks=True)
    assert body["tracking_settings"]["click_tracking"] == {"enable": True, "enable_text": False}
    text, html = (part["value"] for part in body["content"])
    links = anchors(html)
    own = [a for a in links if UNSUBSCRIBE_PLACEHOLDER in a or PREFERENCES_PLACEHOLDER in a]
    others = [a for a in links if a not in own]
    assert len(own) == 2 and all(a.startswith("<a clicktracking=off ") for a in own)
    assert len(others) > 10 and not any("clicktracking" in a for a in others)
    # Only the attribute was added: the rest of the HTML and the text part are as rendered.
    rendered = example_issue()
    assert html.replace("<a clicktracking=off ", "<a ") == rendered.html
    assert text == rendered.text


def test_click_tracking_stays_off_by_default(workspace: Path, sg: SendGridServer) -> None:
    body = send(workspace, sg)
    assert body["tracking_settings"]["click_tracking"] == {"enable": False, "enable_text": False}
    assert "clicktracking" not in body["content"][1]["value"]
