"""Backoff policies: ``attempt`` (1-based) -> seconds to wait.

Shared by ``ops.retry`` (resubscribing a failed fetcher) and the worker's
``retry`` layer (when a failed task may run again).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

Backoff = Callable[[int], float]


@dataclass(frozen=True, slots=True)
class Exponential:
    """``base * factor ** (attempt - 1)``, capped at ``max``, spread by ``jitter``.

    ``jitter=0.1`` draws the delay uniformly from [90%, 110%] of the nominal
    value, so that many workers failing together do not retry together.
    """

    base: float = 1.0
    factor: float = 2.0
    max: float = 300.0
    jitter: float = 0.1
    rng: random.Random | None = None

    def __post_init__(self) -> None:
        if self.base < 0 or self.factor < 1 or self.max < 0 or not 0 <= self.jitter <= 1:
            raise ValueError(
                "Exponential backoff needs base >= 0, factor >= 1, max >= 0 and "
                f"0 <= jitter <= 1; got {self!r}"
            )

    def __call__(self, attempt: int) -> float:
        nominal = min(self.max, self.base * self.factor ** max(0, attempt - 1))
        if not self.jitter:
            return nominal
        draw = (self.rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return min(self.max, nominal * draw)


def exponential(
    base: float = 1.0, factor: float = 2.0, max: float = 300.0, jitter: float = 0.1
) -> Backoff:
    """Exponential backoff with jitter (the default for task retries)."""
    return Exponential(base=base, factor=factor, max=max, jitter=jitter)


def constant(seconds: float) -> Backoff:
    """The same delay after every attempt."""
    if seconds < 0:
        raise ValueError(f"constant backoff needs seconds >= 0, got {seconds!r}")
    return lambda _attempt: seconds
