"""The one way the send path makes a batch of an email: each recipient's envelope (their
links, and the message token of an issue's dispatch) worked out here, for the send loop,
the welcome issue, the test send and the confirmation email alike."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from highlightsmail.mail.backends.base import Batch, Envelope
from highlightsmail.mail.message import Recipient, RecipientLinks, links_maker, recipient_links
from highlightsmail.rendering.rendered import RenderedIssue
from highlightsmail.urls import urls

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Settings
    from highlightsmail.tokens import Signer

__all__ = ["Addressee", "Batches"]


class Addressee(Protocol):
    """A subscriber an issue goes to (a row of the ledger fits)."""

    @property
    def subscriber_id(self) -> int: ...

    @property
    def email(self) -> str: ...

    @property
    def name(self) -> str: ...


class Batches:
    """Batches of one rendered email. `tag` is the dispatch's: every message token, and
    so every Message-ID, derives from it and the subscriber's id (nothing per recipient
    is stored to know it again); without it the Message-IDs are random. `date` is the
    Date of every message to subscribers (when the run kept its message); None: when each is built."""

    def __init__(
        self,
        rendered: RenderedIssue,
        settings: Settings,
        signer: Signer,
        *,
        tag: str | None = None,
        date: float | None = None,
    ) -> None:
        self.rendered = rendered
        self.settings = settings
        self.signer = signer
        self.tag = tag
        self.date = date
        self._links: Callable[[int], RecipientLinks] | None = None

    def _subscriber_links(self) -> Callable[[int], RecipientLinks]:
        # Worked out at first use (two threads may both do it: the same result).
        if self._links is None:
            self._links = links_maker(self.settings, self.signer, self.date)
        return self._links

    def to_subscribers(self, rows: Iterable[Addressee], *, number: int = 0, tokens: bool = True) -> Batch:
        """An issue to subscribers: each one's unsubscribe links and (unless `tokens` is
        False: the backend does not read them) message token."""
        links = self._subscriber_links()
        slug, tag, make_message = self.rendered.slug, self.tag if tokens else None, self.signer.make_message
        envelopes = [
            Envelope(
                row.subscriber_id,
                Recipient(row.email, row.name, row.subscriber_id),
                links(row.subscriber_id),
                make_message(slug, tag, row.subscriber_id) if tag else None,
            )
            for row in rows
        ]
        return Batch.of(self.rendered, self.settings, envelopes, number=number, date=self.date)

    def to_editors(self, recipients: Iterable[Recipient]) -> Batch:
        """A test send: keyed 1, 2, ... in order, with test links (they open a page that
        says "this was a test" and change nothing) and random Message-IDs."""
        envelopes = [
            Envelope(index, recipient, recipient_links(self.settings, self.signer, index, test=True))
            for index, recipient in enumerate(recipients, start=1)
        ]
        return Batch.of(self.rendered, self.settings, envelopes, test=True)

    def confirmation(self, recipient: Recipient, made: int) -> Batch:
        """The confirmation email to a subscriber, its link made at `made`. The link
        stands where an issue has its unsubscribe link, and no List-* header goes with
        it: the reader has not joined."""
        return self.confirmations([(recipient, made)])

    def confirmations(self, asked: Iterable[tuple[Recipient, int]]) -> Batch:
        """The confirmation email to several subscribers at once, each (recipient, the
        time their link was made) as `confirmation` makes it: one batch, so a backend
        hands them over together. Each subscriber at most once (a batch's results are
        by subscriber)."""
        confirm_url = urls(self.settings).confirm
        make_confirm = self.signer.make_confirm
        envelopes: list[Envelope] = []
        keys: set[int] = set()
        for recipient, made in asked:
            sid = recipient.subscriber_id
            if sid is None:
                raise ValueError("a confirmation email goes to a subscriber")
            if sid in keys:
                raise ValueError(f"subscriber #{sid} twice in one batch of confirmation emails")
            keys.add(sid)
            url = confirm_url(make_confirm(sid, made))
            envelopes.append(Envelope(sid, recipient, RecipientLinks(unsubscribe_url=url, headers={})))
        return Batch.of(self.rendered, self.settings, envelopes)
