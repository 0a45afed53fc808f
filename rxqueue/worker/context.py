"""What a worker tells its fetcher and its handlers.

:class:`WorkerContext` is the worker's side of the demand contract: a fetcher
claims at most :attr:`WorkerContext.free_capacity` tasks, reports what it
claimed with :meth:`WorkerContext.claimed` (the ledger the worker releases
from on stop), and waits for capacity with :meth:`wait_for_capacity`.
:class:`TaskContext` is what a handler receives as its second argument.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from rxqueue.clock import Clock
from rxqueue.task import Task, TaskId

D = TypeVar("D")


class WorkerContext:
    """Identity, capacity ledger and shared data of one running worker."""

    def __init__(
        self,
        name: str,
        *,
        concurrency: int,
        prefetch: int,
        clock: Clock,
        data: Mapping[type, Any] | None = None,
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.clock = clock
        self._data: dict[type, Any] = dict(data or {})
        # Claimed by a fetcher, not yet in the worker's buffer (e.g. held by an operator).
        self.in_transit: dict[TaskId, Task[Any]] = {}
        self.buffered = 0  # tasks in the worker's buffer, not started
        self._reserved = 0  # slots reserved by claims in progress
        self._capacity = asyncio.Event()
        self._wanted = 1  # the free capacity a waiting fetcher asked for
        self._fetches_done = asyncio.Event()
        self._fetches_done.set()
        self.stopping = False

    # --- demand -----------------------------------------------------------------

    @property
    def free_capacity(self) -> int:
        """How many more tasks this worker may hold claimed-but-unstarted."""
        if self.stopping:
            return 0
        return max(0, self.prefetch - self._reserved - len(self.in_transit) - self.buffered)

    def reserve(self, wanted: int) -> int:
        """Reserve up to ``wanted`` slots before claiming; returns how many were granted.

        Pair with :meth:`claimed` once the claim returns.
        """
        granted = min(wanted, self.free_capacity)
        if granted > 0:
            self._fetches_done.clear()
            self._reserved += granted
        return granted

    def claimed(self, reserved: int, tasks: Iterable[Task[Any]]) -> None:
        """Record tasks a fetcher claimed against ``reserved`` slots (0 if it reserved none)."""
        in_transit = self.in_transit
        for task in tasks:
            in_transit[task.id] = task
        if reserved:
            self._reserved -= reserved
            if self._reserved == 0:
                self._fetches_done.set()

    async def wait_for_capacity(self, at_least: int = 1) -> None:
        """Return once :attr:`free_capacity` reaches ``at_least``, or is positive while
        the worker has run dry (a small claim then beats idling), or when woken by
        :meth:`wake`. Callers re-check: a return is a hint, not a promise."""
        if self._enough(at_least):
            return
        self._wanted = at_least
        self._capacity.clear()
        await self._capacity.wait()

    def _enough(self, at_least: int) -> bool:
        free = self.free_capacity
        return free >= at_least or (free > 0 and not self.buffered and not self.in_transit)

    def capacity_changed(self) -> None:
        """A task left the buffer: wake a waiting fetcher if it now has enough room."""
        if not self._capacity.is_set() and self._enough(self._wanted):
            self._capacity.set()

    def wake(self) -> None:
        """Wake a waiting fetcher unconditionally (it is being disposed)."""
        self._capacity.set()

    async def wait_fetches_done(self) -> None:
        """Wait for claims in progress, so that every claimed task is in the ledger."""
        await self._fetches_done.wait()

    # --- shared data ------------------------------------------------------------

    def data(self, kind: type[D]) -> D:
        """The object registered with ``WorkerBuilder.data(obj)`` for ``kind``."""
        try:
            return self._data[kind]  # type: ignore[no-any-return]
        except KeyError:
            for value in self._data.values():
                if isinstance(value, kind):
                    return value
            raise LookupError(
                f"no data of type {kind.__name__} registered; "
                f"add it with WorkerBuilder(...).data(obj)"
            ) from None

    def __repr__(self) -> str:
        return f"WorkerContext({self.name!r}, free_capacity={self.free_capacity})"


class TaskContext:
    """What a handler sees of the task it runs and of its worker."""

    __slots__ = ("task", "worker")

    def __init__(self, task: Task[Any], worker: WorkerContext) -> None:
        self.task = task
        self.worker = worker

    @property
    def task_id(self) -> TaskId:
        return self.task.id

    @property
    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry, ..."""
        return self.task.attempts + 1

    @property
    def queue(self) -> str:
        return self.task.queue

    @property
    def worker_name(self) -> str:
        return self.worker.name

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self.task.metadata

    def data(self, kind: type[D]) -> D:
        return self.worker.data(kind)

    def __repr__(self) -> str:
        return f"TaskContext(task_id={self.task_id!r}, attempt={self.attempt})"
