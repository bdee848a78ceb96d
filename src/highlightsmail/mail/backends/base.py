"""The small interface every backend fills in, and the retry loop they share.

The dispatcher owns the fixed order (claim a batch, commit `in_flight`, hand it to the
backend, commit the outcome); a backend only turns a batch into requests and says what
happened to each recipient.
"""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from highlightsmail.errors import HighlightsError
from highlightsmail.rendering.rendered import RenderedIssue

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Settings
    from highlightsmail.mail.message import Recipient, RecipientLinks

T = TypeVar("T")


class DeliveryError(HighlightsError):
    """A backend could not deliver; `reason` is shown to the editor and kept in the ledger."""


class TransientError(DeliveryError):
    """Known not to have been accepted, and worth trying again: the connection was
    refused or failed before the request (or SMTP DATA) was sent whole, throttling
    (429), a server error with an answer (5xx, SMTP 4xx). `retry_after` is the wait the
    server asked for, in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class InDoubtError(DeliveryError):
    """The request (or SMTP DATA, up to its final dot) was sent whole and no answer
    came: a time-out or a dropped connection. The server may have accepted it, so it is
    never sent again by itself; its recipients are in doubt until the editor decides."""


class PermanentError(DeliveryError):
    """A refusal that will not change by trying again (4xx, SMTP 5xx)."""


class Envelope(NamedTuple):
    """One recipient of a batch, with everything per-recipient already worked out (a
    named tuple: one is made per recipient)."""

    key: int  # the subscriber id (or the editor's index on a test send)
    recipient: Recipient
    links: RecipientLinks
    # The message token (tokens.py): its Message-ID, and its return address with VERP.
    # None on a test send, whose Message-ID is random.
    token: str | None = None


@dataclass(frozen=True)
class Batch:
    """Recipients handed to a backend together; the issue was rendered once for all."""

    number: int
    slug: str
    rendered: RenderedIssue
    settings: Settings
    envelopes: list[Envelope]
    test: bool = False
    # Every message's Date (when its run kept the message, so it can be told again); None: now.
    date: float | None = None

    @classmethod
    def of(
        cls,
        rendered: RenderedIssue,
        settings: Settings,
        envelopes: list[Envelope],
        *,
        number: int = 0,
        test: bool = False,
        date: float | None = None,
    ) -> Batch:
        """The one way a batch is made: its slug is the rendered email's."""
        return cls(number, rendered.slug, rendered, settings, envelopes, test, date)


@dataclass
class BatchResult:
    """What happened to each recipient of a batch: every key is in `sent`, `failed` or `in_doubt`."""

    sent: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    in_doubt: dict[int, str] = field(default_factory=dict)  # may or may not have gone out
    message_id: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, a bounded number of attempts."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0
    max_wait: float = 120.0  # never trust a server asking us to sleep for an hour

    def delay(self, attempt: int, asked: float | None) -> float:
        if asked is not None:
            return min(max(asked, 0.0), self.max_wait)
        return random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


def with_retries(
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, TransientError, float], None] | None = None,
) -> T:
    """Run `call`, retrying TransientError per the policy; the last one is re-raised.
    Anything else, InDoubtError included, goes up at once: sending again what may
    have been accepted could give someone a second copy."""
    attempt = 1
    while True:
        try:
            return call()
        except TransientError as err:
            if attempt >= policy.attempts:
                raise
            wait = policy.delay(attempt, err.retry_after)
            if on_retry:
                on_retry(attempt, err, wait)
            sleep(wait)
            attempt += 1


@dataclass(frozen=True)
class Suppression:
    """An address the provider knows has left: status is unsubscribed, bounced or complained."""

    email: str
    status: str
    detail: str = ""


class Backend(ABC):
    """A way of delivering. Subclasses fill in the hooks; the dispatcher calls them in order:
    `open()`, then `send_batch()` any number of times (from `concurrency` threads, one
    backend object each, made by `clone()`), then `close()`."""

    name: str = "?"
    batch_size: int = 100
    concurrency: int = 1
    #: Whether it reads each envelope's message token (its own Message-IDs, VERP); one
    #: that does not (SendGrid makes its own) is spared signing one per recipient.
    message_tokens: bool = True
    #: Whether a send may build and post its batches from worker processes
    #: (sending/workers.py): worth it where that work is Python's, not the server's.
    processes: bool = False

    def open(self) -> None:
        """Connect or check credentials before anything is claimed."""

    @abstractmethod
    def send_batch(self, batch: Batch) -> BatchResult:
        """Deliver a batch; retry transient errors inside. For the whole batch at once it
        may raise InDoubtError (every recipient in doubt) or another DeliveryError
        (every recipient failed, with its reason)."""

    def close(self) -> None:
        """Release connections."""

    def clone(self) -> Backend:
        """Another instance for another worker thread (clients that keep state per call
        must not be shared)."""
        return self

    def suppressions(self) -> Iterator[Suppression]:
        """Addresses the provider itself suppresses; nothing for backends without any."""
        return iter(())

    def hold_until(self, send_at: int, batch_id: str) -> None:
        """Have the provider hold what is sent from now on until `send_at` (a unix time),
        in its batch `batch_id`; only a provider that can (SendGrid) does."""
        raise PermanentError(f"{self.name} cannot hold a send until a time; schedule it with the runner")
