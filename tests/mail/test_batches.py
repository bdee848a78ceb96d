"""The one batch builder: an issue's batch for subscribers (links and message tokens from
the dispatch's tag), a test send's, and the confirmation email's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.mail.backends.sendgrid import SendGridBackend
from highlightsmail.mail.batches import Batches
from highlightsmail.mail.message import Recipient, links_maker, recipient_links
from highlightsmail.rendering.rendered import RenderedIssue
from highlightsmail.tokens import Signer, new_dispatch_tag
from highlightsmail.urls import urls

SIGNER = Signer(b"k" * 32)
TAG = new_dispatch_tag()
RENDERED = RenderedIssue(slug="2024-w02", subject="News", preheader="", html="<p>x</p>", text="x")


@dataclass(frozen=True)
class Row:
    subscriber_id: int
    email: str
    name: str


def test_subscribers_get_their_links_and_message_tokens_from_the_tag(workspace: Path) -> None:
    settings = load_workspace(workspace).settings
    rows = [Row(7, "ada@example.org", "Ada"), Row(9, "bob@example.org", "")]
    batch = Batches(RENDERED, settings, SIGNER, tag=TAG).to_subscribers(rows, number=3)
    assert (batch.number, batch.slug, batch.test) == (3, "2024-w02", False)
    assert [e.key for e in batch.envelopes] == [7, 9]
    assert batch.envelopes[0].recipient == Recipient("ada@example.org", "Ada", 7)
    assert batch.envelopes[1].links == links_maker(settings, SIGNER)(9)
    assert batch.envelopes[1].token == SIGNER.make_message("2024-w02", TAG, 9)
    untagged = Batches(RENDERED, settings, SIGNER).to_subscribers(rows)
    assert [e.token for e in untagged.envelopes] == [None, None]
    # A backend that does not read them (SendGrid makes its own Message-IDs) gets none.
    unread = Batches(RENDERED, settings, SIGNER, tag=TAG).to_subscribers(rows, tokens=False)
    assert [e.token for e in unread.envelopes] == [None, None]
    assert [e.links for e in unread.envelopes] == [e.links for e in batch.envelopes]
    assert SendGridBackend.message_tokens is False


def test_a_test_send_is_keyed_in_order_with_test_links(workspace: Path) -> None:
    settings = load_workspace(workspace).settings
    editors = [Recipient("ed@example.org", "Ed"), Recipient("al@example.org")]
    batch = Batches(RENDERED, settings, SIGNER, tag=TAG).to_editors(editors)
    assert batch.test and [e.key for e in batch.envelopes] == [1, 2]
    assert batch.envelopes[1].links == recipient_links(settings, SIGNER, 2, test=True)
    assert [e.token for e in batch.envelopes] == [None, None]


def test_the_confirmation_link_stands_alone_without_list_headers(workspace: Path) -> None:
    settings = load_workspace(workspace).settings
    batch = Batches(RENDERED, settings, SIGNER).confirmation(Recipient("new@example.org", "", 5), made=1700000000)
    (envelope,) = batch.envelopes
    assert envelope.key == 5 and envelope.links.headers == {}
    assert envelope.links.unsubscribe_url == urls(settings).confirm(SIGNER.make_confirm(5, 1700000000))
    with pytest.raises(ValueError, match="goes to a subscriber"):
        Batches(RENDERED, settings, SIGNER).confirmation(Recipient("editor@example.org"), made=1)


def test_confirmations_to_several_make_one_batch_each_subscriber_once(workspace: Path) -> None:
    settings = load_workspace(workspace).settings
    asked = [(Recipient("a@example.org", "A", 5), 1700000000), (Recipient("b@example.org", "", 8), 1700000060)]
    batch = Batches(RENDERED, settings, SIGNER).confirmations(asked)
    assert [e.key for e in batch.envelopes] == [5, 8] and batch.slug == RENDERED.slug
    assert batch.envelopes[1].links.unsubscribe_url == urls(settings).confirm(SIGNER.make_confirm(8, 1700000060))
    assert all(e.links.headers == {} for e in batch.envelopes)
    with pytest.raises(ValueError, match="twice"):
        Batches(RENDERED, settings, SIGNER).confirmations([*asked, (Recipient("a@example.org", "A", 5), 1)])
