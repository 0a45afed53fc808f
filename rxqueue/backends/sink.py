"""A backend's sink as a reactivex Observer.

``source.subscribe(backend.sink())`` stores every item the source emits: a
``Task`` as it is, anything else as a payload pushed with default options.
One drain coroutine stores items in order, in batches (one ``send_many`` per
batch), so a periodic or cron-like Observable feeds a queue directly.

Ticks of :mod:`rxqueue.sources` are idempotent: their task ids are built from
the source's name and the tick (:func:`rxqueue.sources.is_tick_task`), so when
several processes run one source, all but the first store of a tick raise
``TaskExists``. The sink counts those as already stored (``sink.existing``),
not as errors. A ``TaskExists`` for any other task is an error, as before.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reactivex import abc

from rxqueue.errors import CodecError, TaskExists
from rxqueue.sources import is_tick_task
from rxqueue.task import PushOptions, Task

if TYPE_CHECKING:
    from rxqueue.backends.base import Backend

MAX_BATCH = 500


class SinkObserver(abc.ObserverBase[Any]):
    """Observer face of a backend's sink; ``await sink.flush()`` waits for durability."""

    def __init__(
        self, backend: Backend, on_error: Callable[[Exception], None] | None = None
    ) -> None:
        self._backend = backend
        self._on_store_error = on_error
        self._pending: deque[Task[Any]] = deque()
        self._drain: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.stored = 0
        self.existing = 0  # source ticks another process (or an earlier store) had stored
        self.errors: list[Exception] = []
        self.completed = False

    def on_next(self, value: Any) -> None:
        if not isinstance(value, Task):
            options = PushOptions()
            backend = self._backend
            value = options.build(
                value, queue=backend.queue, now=backend.clock(), max_attempts=backend.max_attempts
            )
        self._pending.append(value)
        self._idle.clear()
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._run())

    def on_error(self, error: Exception) -> None:
        self._report(error)

    def on_completed(self) -> None:
        self.completed = True

    async def flush(self) -> None:
        """Return once everything received so far is stored (or failed and was reported)."""
        await self._idle.wait()

    async def _run(self) -> None:
        pending = self._pending
        try:
            while pending:
                batch = [pending.popleft() for _ in range(min(MAX_BATCH, len(pending)))]
                await self._store(batch)
        finally:
            self._drain = None
            if not pending:  # cancelled with items left: a later on_next restarts the drain
                self._idle.set()

    async def _store(self, batch: list[Task[Any]]) -> None:
        try:
            await self._backend.send_many(batch)
            self.stored += len(batch)
        except (CodecError, TaskExists) as exc:
            if len(batch) == 1:
                if isinstance(exc, TaskExists) and is_tick_task(batch[0]):
                    self.existing += 1  # this tick is in the store already: that is success
                else:
                    self._report(exc)
                return
            # One bad payload or taken id must not cost the others their place: one by one.
            for task in batch:
                await self._store([task])
        except Exception as exc:  # reported, never raised into the source
            self._report(exc)

    def _report(self, error: Exception) -> None:
        self.errors.append(error)
        if self._on_store_error is not None:
            self._on_store_error(error)
