"""In-memory backend: the reference semantics, for tests and notebooks.

Everything a durable backend does, in one process and with no durability:
priorities, ``run_at``, retries, leases, waiting for results. Payloads are
still encoded on push and handed to workers encoded, so code tested here
meets the same codec rules as on SQLite.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reactivex import Observable

from rxqueue.backends.base import ALL_CAPABILITIES, Backend, decode_payload
from rxqueue.clock import Clock, system_clock
from rxqueue.codec import DEFAULT_CODEC, Codec
from rxqueue.errors import TaskNotFound, WorkerError
from rxqueue.streams import Wakeup, poll
from rxqueue.task import (
    ACTIVE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    READY,
    TERMINAL,
    Done,
    Killed,
    Retry,
    Started,
    Status,
    Task,
    TaskId,
    Update,
    task_from_fields,
)

if TYPE_CHECKING:
    from rxqueue.worker.context import WorkerContext


class _Row:
    """The mutable record behind a task; workers only ever see Task snapshots."""

    __slots__ = (
        "args",
        "attempts",
        "created_at",
        "done_at",
        "id",
        "last_error",
        "lock_at",
        "lock_by",
        "max_attempts",
        "metadata",
        "priority",
        "queue",
        "result",
        "run_at",
        "status",
        "version",
    )

    def __init__(self, task: Task[Any], payload: bytes) -> None:
        self.id = task.id
        self.queue = task.queue
        self.args = payload
        self.status = Status.PENDING
        self.attempts = task.attempts
        self.max_attempts = task.max_attempts
        self.priority = task.priority
        self.run_at = task.run_at
        self.created_at = task.created_at
        self.lock_by: str | None = None
        self.lock_at: float | None = None
        self.done_at: float | None = None
        self.last_error = task.last_error
        self.result: Any = None
        self.metadata = task.metadata
        self.version = 0  # bumped whenever the row re-enters a heap; stale entries skip

    def snapshot(self) -> Task[Any]:
        return task_from_fields(
            self.id,
            self.queue,
            self.args,
            self.status,
            self.attempts,
            self.max_attempts,
            self.priority,
            self.run_at,
            self.created_at,
            self.lock_by,
            self.lock_at,
            self.done_at,
            self.last_error,
            self.result,
            self.metadata,
        )


class MemoryBackend(Backend):
    """A complete backend in a dict and two heaps. ``rxqueue.connect("memory://")``."""

    capabilities = ALL_CAPABILITIES

    def __init__(
        self,
        *,
        queue: str = DEFAULT_QUEUE,
        codec: Codec = DEFAULT_CODEC,
        clock: Clock = system_clock,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        lease_timeout: float = 60.0,
        poll_interval: float = 0.05,
        max_poll_interval: float = 1.0,
    ) -> None:
        super().__init__(queue=queue, codec=codec, clock=clock, max_attempts=max_attempts)
        self.lease_timeout = lease_timeout
        self.poll_interval = poll_interval
        self.max_poll_interval = max(poll_interval, max_poll_interval)
        self._rows: dict[TaskId, _Row] = {}
        self._seq = itertools.count()
        # ready: (-priority, run_at, seq, version, row); scheduled: (run_at, seq, version, row)
        self._ready: list[tuple[int, float, int, int, _Row]] = []
        self._scheduled: list[tuple[float, int, int, _Row]] = []
        self._heartbeats: dict[str, float] = {}
        self._locked: dict[str, set[TaskId]] = {}
        self._waiters: dict[TaskId, list[asyncio.Future[Task[Any]]]] = {}
        self.wakeup = Wakeup()

    # --- heaps ----------------------------------------------------------------------

    def _enqueue(self, row: _Row) -> None:
        row.version += 1
        if row.run_at <= self.clock():
            entry = (-row.priority, row.run_at, next(self._seq), row.version, row)
            heapq.heappush(self._ready, entry)
        else:
            heapq.heappush(self._scheduled, (row.run_at, next(self._seq), row.version, row))

    def _promote_due(self, now: float) -> None:
        scheduled, ready = self._scheduled, self._ready
        while scheduled and scheduled[0][0] <= now:
            run_at, seq, version, row = heapq.heappop(scheduled)
            if row.version == version and row.status in READY:
                heapq.heappush(ready, (-row.priority, run_at, seq, version, row))

    def _claim(self, limit: int, worker: str) -> list[Task[Any]]:
        now = self.clock()
        self._promote_due(now)
        ready = self._ready
        claimed: list[Task[Any]] = []
        locked = self._locked.setdefault(worker, set())
        while ready and len(claimed) < limit:
            _, _, _, version, row = heapq.heappop(ready)
            if row.version != version or row.status not in READY:
                continue
            row.status = Status.QUEUED
            row.lock_by = worker
            row.lock_at = now
            locked.add(row.id)
            claimed.append(row.snapshot())
        return claimed

    def _unlock(self, row: _Row) -> None:
        if row.lock_by is not None:
            held = self._locked.get(row.lock_by)
            if held is not None:
                held.discard(row.id)
        row.lock_by = None
        row.lock_at = None

    # --- fetcher / sink / acker ------------------------------------------------------

    def _fetcher(self, ctx: WorkerContext) -> Observable[Any]:
        async def fetch_many(limit: int) -> list[Task[Any]]:
            return self._claim(limit, ctx.name)

        return poll(
            fetch_many,
            ctx,
            interval=self.poll_interval,
            max_interval=self.max_poll_interval,
            wakeup=self.wakeup,
        )

    async def _store(self, tasks: Sequence[Task[Any]], payloads: Sequence[bytes]) -> None:
        for task in tasks:
            if task.id in self._rows:
                raise ValueError(f"a task with id {task.id!r} already exists")
        for task, payload in zip(tasks, payloads, strict=True):
            row = _Row(task, payload)
            self._rows[task.id] = row
            self._enqueue(row)
        self.wakeup.notify()

    async def report(self, updates: Sequence[tuple[Task[Any], Update]], ctx: WorkerContext) -> None:
        now = self.clock()
        for task, update in updates:
            row = self._rows.get(task.id)
            if row is None or row.lock_by != ctx.name or row.status not in ACTIVE:
                continue  # lease lost: another worker owns this task now
            if isinstance(update, Started):
                row.status = Status.RUNNING
                continue
            row.attempts += 1
            self._unlock(row)
            if isinstance(update, Done):
                row.status = Status.DONE
                row.result = update.result
                row.done_at = now
            elif isinstance(update, Retry):
                row.status = Status.FAILED
                row.run_at = update.at
                row.last_error = update.error
                self._enqueue(row)
                continue
            elif isinstance(update, Killed):
                row.status = Status.KILLED
                row.last_error = update.error
                row.done_at = now
            self._finished(row)
        if any(isinstance(update, Retry) for _, update in updates):
            self.wakeup.notify()

    def _finished(self, row: _Row) -> None:
        waiters = self._waiters.pop(row.id, None)
        if waiters:
            task = decode_payload(self.codec, row.snapshot())
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(task)

    async def release(self, tasks: Sequence[Task[Any]], ctx: WorkerContext) -> None:
        for task in tasks:
            row = self._rows.get(task.id)
            if row is not None and row.lock_by == ctx.name and row.status is Status.QUEUED:
                self._unlock(row)
                row.status = Status.PENDING
                self._enqueue(row)
        self.wakeup.notify()

    # --- workers and leases -------------------------------------------------------

    async def register_worker(self, ctx: WorkerContext) -> None:
        seen = self._heartbeats.get(ctx.name)
        if seen is not None and self.clock() - seen < self.lease_timeout:
            raise WorkerError(
                f"a worker named {ctx.name!r} is alive (heartbeat "
                f"{self.clock() - seen:.1f}s ago); give this worker another name"
            )
        self._heartbeats[ctx.name] = self.clock()

    async def heartbeat(self, ctx: WorkerContext) -> None:
        self._heartbeats[ctx.name] = self.clock()

    async def unregister_worker(self, ctx: WorkerContext) -> None:
        self._heartbeats.pop(ctx.name, None)

    async def reclaim(self) -> int:
        now = self.clock()
        reclaimed = 0
        for worker, held in list(self._locked.items()):
            seen = self._heartbeats.get(worker)
            if seen is not None and now - seen < self.lease_timeout:
                continue
            for task_id in list(held):
                row = self._rows[task_id]
                if row.status not in ACTIVE:
                    continue
                self._unlock(row)
                row.attempts += 1
                row.last_error = f"lease expired: worker {worker!r} stopped heartbeating"
                if row.attempts >= row.max_attempts:
                    row.status = Status.KILLED
                    row.done_at = now
                    self._finished(row)
                else:
                    row.status = Status.PENDING
                    self._enqueue(row)
                reclaimed += 1
            if not held:
                self._locked.pop(worker, None)
        if reclaimed:
            self.wakeup.notify()
        return reclaimed

    # --- inspection -------------------------------------------------------------------

    def _row(self, task_id: TaskId) -> _Row:
        row = self._rows.get(task_id)
        if row is None:
            raise TaskNotFound(f"no task {task_id!r} in queue {self.queue!r}")
        return row

    async def get(self, task_id: TaskId) -> Task[Any] | None:
        row = self._rows.get(task_id)
        return None if row is None else decode_payload(self.codec, row.snapshot())

    async def wait_for(
        self, task_id: TaskId, *, timeout: float | None = None, poll_interval: float = 0.05
    ) -> Task[Any]:
        row = self._row(task_id)
        if row.status in TERMINAL:
            return decode_payload(self.codec, row.snapshot())
        waiter: asyncio.Future[Task[Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(waiter)
        async with asyncio.timeout(timeout):
            return await waiter

    async def stats(self) -> dict[Status, int]:
        counts = dict.fromkeys(Status, 0)
        for row in self._rows.values():
            counts[row.status] += 1
        return counts

    async def list(
        self, *, status: Status | None = None, limit: int = 100, offset: int = 0
    ) -> list[Task[Any]]:
        rows = (row for row in self._rows.values() if status is None or row.status is status)
        picked = itertools.islice(rows, offset, offset + limit)
        return [decode_payload(self.codec, row.snapshot()) for row in picked]

    async def retry(self, task_id: TaskId) -> None:
        row = self._row(task_id)
        if row.status not in (Status.FAILED, Status.KILLED):
            raise ValueError(
                f"only Failed or Killed tasks can be retried; {task_id} is {row.status}"
            )
        row.status = Status.PENDING
        row.run_at = self.clock()
        row.done_at = None
        row.max_attempts = max(row.max_attempts, row.attempts + 1)
        self._enqueue(row)
        self.wakeup.notify()

    async def kill(self, task_id: TaskId, reason: str = "killed by request") -> None:
        row = self._row(task_id)
        if row.status in TERMINAL:
            return
        self._unlock(row)
        row.version += 1  # drop it from the heaps
        row.status = Status.KILLED
        row.last_error = reason
        row.done_at = self.clock()
        self._finished(row)

    async def vacuum(self, older_than: float = 0.0) -> int:
        cutoff = self.clock() - older_than
        doomed = [
            row.id
            for row in self._rows.values()
            if row.status in TERMINAL and row.done_at is not None and row.done_at <= cutoff
        ]
        for task_id in doomed:
            del self._rows[task_id]
        return len(doomed)

    async def has_work(self, horizon: float) -> bool:
        now = self.clock()
        self._promote_due(now)
        if any(row.version == v and row.status in READY for *_, v, row in self._ready):
            return True
        limit = now + horizon
        return any(
            run_at <= limit and row.version == v and row.status in READY
            for run_at, _, v, row in self._scheduled
        )
