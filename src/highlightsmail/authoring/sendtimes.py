"""The settings about when mail goes: the workspace's time zone, how long a missed
schedule may still be sent (`schedule.grace`) and the sending limits' rate
(`delivery.rate_limit`). Each is checked here with a message saying what to write, and
read into seconds for `sending/`."""

from __future__ import annotations

import re
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict

__all__ = ["Duration", "Rate", "ScheduleSettings", "Zone", "rate_of", "seconds_of", "zone_problem"]

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_SHORT = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
_DURATION = re.compile(r"\s*(\d{1,6})\s*([a-z]+?)s?\s*")
_RATE = re.compile(r"\s*(\d{1,9})\s*/\s*(second|minute|hour)\s*")


def _unit(word: str) -> int | None:
    return _UNITS.get(_SHORT.get(word, word))


def seconds_of(value: str) -> int:
    """`6 hours`, `30 minutes`, `90m`, `1 day` in seconds (the value is checked)."""
    match = _DURATION.fullmatch(value.lower())
    unit = _unit(match.group(2)) if match else None
    if match is None or unit is None:
        raise ValueError("must be a duration like `6 hours`, `30 minutes` or `1 day`")
    return int(match.group(1)) * unit


def _duration(value: str) -> str:
    seconds_of(value)
    return value


def rate_of(value: str) -> tuple[int, int]:
    """`10000/hour` as (10000, 3600): how many recipients in how many seconds."""
    match = _RATE.fullmatch(value.lower())
    if match is None or int(match.group(1)) < 1:
        raise ValueError("must be a rate like `10000/hour` or `50/minute` (N/second, N/minute or N/hour, N >= 1)")
    return int(match.group(1)), _UNITS[match.group(2)]


def _rate(value: str) -> str:
    rate_of(value)
    return value


def zone_problem(name: str) -> str | None:
    """What is wrong with a time zone's name (None when the zone is known)."""
    if not name or name != name.strip() or ".." in name or name.startswith("/"):
        return f"unknown time zone {name!r}; write an IANA name like Europe/Berlin or UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return f"unknown time zone {name!r}; write an IANA name like Europe/Berlin or UTC"
    return None


def _zone(value: str) -> str:
    problem = zone_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Duration = Annotated[str, AfterValidator(_duration)]
Rate = Annotated[str, AfterValidator(_rate)]
Zone = Annotated[str, AfterValidator(_zone)]


class ScheduleSettings(BaseModel):
    """`schedule:` in highlights.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A runner that starts this long after a schedule's time still sends it; later it is missed.
    grace: Duration = "6 hours"

    @property
    def grace_seconds(self) -> int:
        return seconds_of(self.grace)
