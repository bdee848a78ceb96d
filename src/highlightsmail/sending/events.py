"""What a send tells whoever runs it while it runs: the command line prints, asks and
draws a progress bar; `Quiet` says nothing and answers yes (scripts, tests)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from highlightsmail.sending.plan import SendPlan

__all__ = ["Quiet", "SendEvents", "ignore"]


class SendEvents(Protocol):
    """What a send tells whoever runs it while it runs (the command line prints, asks
    and draws a progress bar); `Quiet` says nothing and answers yes."""

    def suppressions_applied(self, count: int, backend: str) -> None:
        """`count` subscribers were marked from the backend's suppression lists."""

    def found_in_doubt(self, count: int) -> None:
        """`count` recipients left in flight by a run that stopped are now in doubt."""

    def retrying_failed(self, count: int) -> None:
        """`count` recipients whose delivery failed before go back in the queue."""

    def confirm(self, plan: SendPlan) -> bool:
        """Whether to go ahead."""
        ...

    def progress(self, total: int) -> AbstractContextManager[Callable[[int], None]]:
        """A context giving a function that is called with each number of recipients done."""
        ...

    def stopping(self) -> None:
        """The first Ctrl-C: the batches under way finish, nothing more starts."""


class Quiet:
    """SendEvents that says nothing and answers yes (scripts, tests)."""

    def suppressions_applied(self, count: int, backend: str) -> None:
        return None

    def found_in_doubt(self, count: int) -> None:
        return None

    def retrying_failed(self, count: int) -> None:
        return None

    def confirm(self, plan: SendPlan) -> bool:
        return True

    def progress(self, total: int) -> AbstractContextManager[Callable[[int], None]]:
        return nullcontext(ignore)

    def stopping(self) -> None:
        return None


def ignore(n: int) -> None:
    """A progress function that counts nothing."""
    return None
