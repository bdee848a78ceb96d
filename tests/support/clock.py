"""A clock a test moves by hand, for the code that takes an injectable `clock`."""

from __future__ import annotations

from datetime import datetime, timedelta


class Clock:
    """A clock a test moves by hand: it says `now` until told to move."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
