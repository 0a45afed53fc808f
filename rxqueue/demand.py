"""Demand: what a worker tells its fetcher, below both backends and the worker.

A fetcher claims only what the worker can take. :class:`Demand` is that
contract: reserve slots, claim at most that many tasks, report what was
claimed (the *ledger*, from which a stop or a drop releases tasks), and wait
for capacity. :class:`Ledger` is the one implementation; the worker's
``WorkerContext`` extends it with identity and shared data. Backends,
``streams`` and ``ops`` depend on this module only, never on ``worker/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from rxqueue.clock import Clock
from rxqueue.task import Task, TaskId


@runtime_checkable
class Demand(Protocol):
    """The demand protocol fetchers honour. ``name`` is the claiming worker's name."""

    name: str
    prefetch: int
    clock: Clock

    @property
    def free_capacity(self) -> int: ...

    @property
    def claim_size(self) -> int:
        """How many tasks the next claim should ask for (at most ``prefetch``)."""
        ...

    def reserve(self, wanted: int) -> int: ...

    def claimed(self, reserved: int, tasks: Iterable[Task[Any]]) -> None: ...

    def dropped(self, tasks: Iterable[Task[Any]]) -> None: ...

    async def wait_for_capacity(self, at_least: int = 1) -> None: ...

    def wake(self) -> None: ...


class Ledger:
    """Capacity and the ledger of claimed-but-unstarted tasks of one worker run.

    ``in_transit`` holds tasks a fetcher claimed that have not reached the
    worker's buffer (an operator may hold them); ``buffered`` counts those in
    the buffer. Tasks that leave the pipe without reaching the worker (an
    operator filtered them, a subscription was disposed mid-claim) are
    :meth:`dropped`: out of the ledger and handed to ``on_dropped``, which
    releases them to the store at once.
    """

    def __init__(
        self,
        name: str,
        *,
        prefetch: int,
        clock: Clock,
        window: int | None = None,
        on_dropped: Callable[[list[Task[Any]]], None] | None = None,
    ) -> None:
        self.name = name
        self.prefetch = prefetch  # the bound: never more claimed-but-unstarted than this
        # The claim window adapts between its start and ``prefetch``: it doubles when
        # a full claim finds the worker run dry (handlers outpace claims) and halves
        # when the store runs short. Without ``window`` it is fixed at ``prefetch``.
        self.window = min(window or prefetch, prefetch)
        self._smallest_window = self.window
        self.clock = clock
        self.in_transit: dict[TaskId, Task[Any]] = {}
        # Dropped tasks that an operator may still emit late: the worker skips them.
        self.dropped_ids: set[TaskId] = set()
        self.buffered = 0
        self.stopping = False
        self._reserved = 0  # slots reserved by claims in progress
        self._capacity = asyncio.Event()
        self._wanted = 1  # the free capacity a waiting fetcher asked for
        self._waiting = False  # a fetcher waits in wait_for_capacity (checked per task)
        self._fetches_done = asyncio.Event()
        self._fetches_done.set()
        self._on_dropped = on_dropped

    @property
    def free_capacity(self) -> int:
        """How many more tasks this worker may hold claimed-but-unstarted."""
        if self.stopping:
            return 0
        return max(0, self.window - self._reserved - len(self.in_transit) - self.buffered)

    @property
    def claim_size(self) -> int:
        return self.window

    @property
    def claiming(self) -> bool:
        """Whether a claim is in progress (its tasks have not reached the ledger yet)."""
        return self._reserved > 0

    def reserve(self, wanted: int) -> int:
        """Reserve up to ``wanted`` slots before claiming; returns how many were granted.

        Pair with :meth:`claimed` once the claim returns (also when it failed).
        """
        granted = min(wanted, self.free_capacity)
        if granted > 0:
            self._fetches_done.clear()
            self._reserved += granted
        return granted

    def claimed(self, reserved: int, tasks: Iterable[Task[Any]]) -> None:
        """Record tasks a fetcher claimed against ``reserved`` slots (0 if it reserved none)."""
        in_transit, dropped = self.in_transit, self.dropped_ids
        count = 0
        for task in tasks:
            count += 1
            in_transit[task.id] = task
            if dropped:
                dropped.discard(task.id)  # claimed afresh: this copy is live
        if reserved and self._smallest_window < self.prefetch:
            self._adapt(reserved, count)
        if reserved:
            self._reserved -= reserved
            if self._reserved == 0:
                self._fetches_done.set()

    def _adapt(self, reserved: int, count: int) -> None:
        if count >= reserved and not self.buffered:
            # A full claim and nothing left to start: claims are the bottleneck.
            self.window = min(self.prefetch, self.window * 2)
        elif count * 2 < reserved:
            self.window = max(self._smallest_window, self.window // 2)

    def dropped(self, tasks: Iterable[Task[Any]]) -> None:
        """Claimed tasks that will never reach the worker: out of the ledger, back to the store."""
        lost = [task for task in tasks if self.in_transit.pop(task.id, None) is not None]
        if lost:
            self.dropped_ids.update(task.id for task in lost)
            if self._on_dropped is not None:
                self._on_dropped(lost)
            self.capacity_changed()

    async def wait_for_capacity(self, at_least: int = 1) -> None:
        """Return once :attr:`free_capacity` reaches ``at_least``, or is positive while
        the worker has run dry (a small claim then beats idling), or when woken by
        :meth:`wake`. Callers re-check: a return is a hint, not a promise."""
        if self._enough(at_least):
            return
        self._wanted = at_least
        self._capacity.clear()
        self._waiting = True
        try:
            await self._capacity.wait()
        finally:
            self._waiting = False

    def _enough(self, at_least: int) -> bool:
        free = self.free_capacity
        return free >= at_least or (free > 0 and not self.buffered and not self.in_transit)

    def capacity_changed(self) -> None:
        """A task left the buffer: wake a waiting fetcher if it now has enough room."""
        if self._waiting and not self._capacity.is_set() and self._enough(self._wanted):
            self._capacity.set()

    def wake(self) -> None:
        """Wake a waiting fetcher unconditionally (it is being disposed)."""
        self._capacity.set()

    async def wait_fetches_done(self) -> None:
        """Wait for claims in progress, so that every claimed task is in the ledger."""
        await self._fetches_done.wait()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, free_capacity={self.free_capacity})"
