"""What backends on one store share inside a process: doorbell, waiters, revocations.

Keyed by the running loop (asyncio primitives belong to one loop, and tests
run many) and by a store key (a SQLite file and queue, a memory backend's
identity, a PostgreSQL schema and queue), so that a push through one backend
instance wakes the fetchers of another at once, a report through one wakes
``wait_for`` callers of another, and a kill reaches the workers of this
process holding that task.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Hashable, Iterable

from rxqueue.streams import Doorbell, Wakeup
from rxqueue.task import TaskId

Revoked = Callable[[list[TaskId]], None]
CancelRequests = Callable[[list[tuple[TaskId, str]]], None]


class LocalChannel:
    """The in-process side of one store: see the module docstring."""

    __slots__ = ("cancel_listeners", "doorbell", "revocation_listeners", "waiters")

    def __init__(self, doorbell: Doorbell | None = None) -> None:
        self.doorbell: Doorbell = doorbell or Wakeup()
        self.waiters: dict[TaskId, list[asyncio.Future[None]]] = {}
        self.revocation_listeners: list[Revoked] = []
        self.cancel_listeners: list[CancelRequests] = []

    def watch(self, task_id: TaskId) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(task_id, []).append(future)
        return future

    def unwatch(self, task_id: TaskId, future: asyncio.Future[None]) -> None:
        waiting = self.waiters.get(task_id)
        if waiting is not None:
            with contextlib.suppress(ValueError):
                waiting.remove(future)
            if not waiting:
                del self.waiters[task_id]

    def finished(self, task_ids: Iterable[TaskId]) -> None:
        if not self.waiters:
            return
        for task_id in task_ids:
            for future in self.waiters.pop(task_id, ()):
                if not future.done():
                    future.set_result(None)

    def on_revoked(self, listener: Revoked) -> Callable[[], None]:
        """Call ``listener(ids)`` when tasks are killed; returns the undo."""
        self.revocation_listeners.append(listener)

        def undo() -> None:
            with contextlib.suppress(ValueError):
                self.revocation_listeners.remove(listener)

        return undo

    def revoked(self, task_ids: list[TaskId]) -> None:
        for listener in list(self.revocation_listeners):
            listener(task_ids)

    def on_cancel(self, listener: CancelRequests) -> Callable[[], None]:
        """Call ``listener([(id, reason)])`` when running tasks are asked to cancel."""
        self.cancel_listeners.append(listener)

        def undo() -> None:
            with contextlib.suppress(ValueError):
                self.cancel_listeners.remove(listener)

        return undo

    def cancel_requested(self, requests: list[tuple[TaskId, str]]) -> None:
        for listener in list(self.cancel_listeners):
            listener(requests)


_CHANNELS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[Hashable, LocalChannel]
] = weakref.WeakKeyDictionary()


def channel(key: Hashable, make_doorbell: Callable[[], Doorbell] | None = None) -> LocalChannel:
    """The channel for ``key`` on the running loop, made on first use."""
    loop = asyncio.get_running_loop()
    per_loop = _CHANNELS.get(loop)
    if per_loop is None:
        per_loop = _CHANNELS[loop] = {}
    found = per_loop.get(key)
    if found is None:
        found = per_loop[key] = LocalChannel(make_doorbell() if make_doorbell else None)
    return found
