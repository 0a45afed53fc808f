"""Injectable clocks: every backend and worker reads time through one.

Times are float seconds since the Unix epoch (UTC), as ``time.time()`` gives.
Tests pass a :class:`ManualClock` and move it forward instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]

system_clock: Clock = time.time


class ManualClock:
    """A clock that moves only when told to: ``clock.advance(30)``."""

    __slots__ = ("now",)

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; got advance({seconds!r})")
        self.now += seconds
        return self.now


def to_timestamp(value: float | datetime) -> float:
    """Accept a timestamp or an aware datetime; naive datetimes are taken as UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)
