"""What the sending commands return: nothing here writes to the terminal, each command
gives back what happened as a dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

from highlightsmail.sending.plan import SendPlan
from highlightsmail.store import DELIVERY_STATES, DeliveryState

__all__ = ["Reason", "SendOutcome", "Summary", "TestSendResult"]


@dataclass(frozen=True)
class Summary:
    """How a dispatch stands: how many recipients are in each ledger state."""

    counts: Mapping[DeliveryState, int]

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> Summary:
        return cls({cast(DeliveryState, state): counts.get(state, 0) for state in DELIVERY_STATES})

    def __getitem__(self, state: DeliveryState) -> int:
        return self.counts.get(state, 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def settled(self) -> Summary:
        """With the rows of a run that is no longer running counted as what they are:
        in doubt (nobody knows whether their batch went out)."""
        counts = dict(self.counts)
        counts["in_doubt"] = counts.get("in_doubt", 0) + counts.pop("in_flight", 0)
        counts["in_flight"] = 0
        return Summary(counts)


@dataclass(frozen=True)
class Reason:
    """Recipients that ended in one state (failed, in doubt) for one reason."""

    state: DeliveryState
    reason: str
    count: int


@dataclass(frozen=True)
class TestSendResult:
    slug: str
    recipients: list[str]
    backend: str
    fingerprint: str
    dry_run: bool = False
    audience: str | None = None  # whom the real send would reach (plan.audience_line)


@dataclass
class SendOutcome:
    plan: SendPlan
    dry_run: bool = False
    suppressed: int = 0  # marked from the provider's lists (would be, on a dry run)
    summary: Summary | None = None  # the ledger after the run (None on a dry run)
    reasons: list[Reason] = field(default_factory=list)  # this run's failures and doubts
    nothing_left: bool = False
    stopped: bool = False  # Ctrl-C: what was under way finished, the rest is pending
    paused_until: str | None = None  # a sending limit was reached: it may go on then (stored format)
    cancelled: bool = False  # `send --cancel` stopped it: the rest is pending, shown as cancelled
