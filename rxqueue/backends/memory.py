"""In-memory backend: the reference semantics, for tests and notebooks.

Everything a durable backend does, in one process and with no durability:
priorities, ``run_at``, retries, leases, waiting for results. Payloads are
still encoded on push and handed to workers encoded, so code tested here
meets the same codec rules as on SQLite.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import Any

import orjson

from rxqueue.acks import AckBatch
from rxqueue.backends.base import ALL_CAPABILITIES, ClaimingBackend, Limits, frees_room
from rxqueue.clock import Clock, system_clock
from rxqueue.codec import DEFAULT_CODEC, Codec
from rxqueue.errors import InvalidTransition, TaskExists, TaskNotFound, WorkerError
from rxqueue.task import (
    ACTIVE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    FIELDS,
    READY,
    TERMINAL,
    Status,
    Task,
    TaskId,
    task_reader,
)

_SNAPSHOT = task_reader(FIELDS, attributes=True)  # a Task from a _Row's fields, by name


class _Row:
    """The mutable record behind a task; workers only ever see Task snapshots."""

    __slots__ = (
        "args",
        "attempts",
        "cancel_reason",
        "created_at",
        "done_at",
        "id",
        "last_error",
        "lock_at",
        "lock_by",
        "max_attempts",
        "metadata",
        "priority",
        "progress",
        "progress_note",
        "queue",
        "result",
        "run_at",
        "status",
        "unique_key",
        "unique_until",
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
        self.result: bytes | None = None  # encoded by the worker's codec, as stores keep it
        # Stored as JSON on every durable backend: the same round trip here.
        self.metadata = orjson.loads(orjson.dumps(dict(task.metadata))) if task.metadata else {}
        self.unique_key = task.unique_key
        self.unique_until = task.unique_until
        self.progress: float | None = None
        self.progress_note: str | None = None
        self.version = 0  # bumped whenever the row re-enters a heap; stale entries skip
        self.cancel_reason: str | None = None  # asked to cancel while claimed

    def snapshot(self) -> Task[Any]:
        return _SNAPSHOT(self)


class MemoryBackend(ClaimingBackend):
    """A complete backend in a dict and two heaps. ``rxqueue.connect("memory://")``.

    ``rate_limit=(n, per)`` and ``max_running=n`` limit the claims of every worker
    on this backend (see :class:`~rxqueue.backends.base.Limits`)."""

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
        rate_limit: tuple[int, float] | None = None,
        max_running: int | None = None,
    ) -> None:
        super().__init__(queue=queue, codec=codec, clock=clock, max_attempts=max_attempts)
        self.limits = Limits.check(rate_limit, max_running)
        self._bucket: tuple[float, float] | None = None  # (tokens, updated_at) once claimed
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
        self._unique: dict[str, TaskId] = {}  # unique_key -> the task that holds it

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

    async def _claim(self, worker: str, limit: int) -> list[Task[Any]]:
        now = self.clock()
        self._promote_due(now)
        limits = self.limits
        if limits is None:
            return self._claim_ready(limit, worker, now)
        # Under rate_limit / max_running: as many as they allow, tokens spent per task.
        tokens, updated_at = limits.refill(self._bucket, now)
        active = 0
        if limits.max_running is not None:
            active = sum(
                1
                for held in self._locked.values()
                for task_id in held
                if (row := self._rows.get(task_id)) is not None and row.status in ACTIVE
            )
        claimed = self._claim_ready(limits.allowance(limit, tokens, active), worker, now)
        if claimed:  # else the stored bucket refills to the same tokens later
            self._bucket = (limits.spend(tokens, len(claimed)), updated_at)
        return claimed

    def _claim_ready(self, limit: int, worker: str, now: float) -> list[Task[Any]]:
        """Claim up to ``limit`` ready tasks for ``worker``, highest priority first."""
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

    async def _store(
        self, tasks: Sequence[Task[Any]], payloads: Sequence[bytes], connection: Any = None
    ) -> list[TaskId]:
        ids = [task.id for task in tasks]
        held: dict[int, TaskId] = {}  # index -> the id of the task that holds its key
        for index, task in enumerate(tasks):
            if task.unique_key is not None:
                holder = self._holder(task.unique_key)
                if holder is not None:
                    held[index] = holder
        for index, task in enumerate(tasks):
            if index not in held and task.id in self._rows:
                raise TaskExists(task.id)
        for index, (task, payload) in enumerate(zip(tasks, payloads, strict=True)):
            if index in held:
                ids[index] = held[index]
                continue
            row = _Row(task, payload)
            self._rows[task.id] = row
            if task.unique_key is not None:
                self._take(task.unique_key, task.id)
            self._enqueue(row)
        if len(held) < len(tasks):
            self._local().doorbell.notify()
        return ids

    def _holder(self, key: str) -> TaskId | None:
        """The id of the task that holds ``key`` now, or None if it is free."""
        holder = self._unique.get(key)
        row = None if holder is None else self._rows.get(holder)
        if row is None or row.unique_key != key:
            return None
        if row.status in TERMINAL and (row.unique_until or 0.0) <= self.clock():
            return None
        return holder

    def _take(self, key: str, task_id: TaskId) -> None:
        """Give a free ``key`` to ``task_id``; its finished holder lets go of it, as
        in SQL stores (where a unique index allows one holder per key)."""
        old = self._unique.get(key)
        row = None if old is None else self._rows.get(old)
        if row is not None and row.unique_key == key:
            row.unique_key = None
        self._unique[key] = task_id

    def _held(self, task: Task[Any], worker: str) -> _Row | None:
        row = self._rows.get(task.id)
        if (
            row is None
            or row.lock_by != worker
            or row.attempts != task.attempts
            or row.status not in ACTIVE
        ):
            return None  # lease lost: reclaimed (and maybe claimed again) since
        return row

    async def report(self, batch: AckBatch) -> list[TaskId]:
        now, worker = self.clock(), batch.worker
        refused: list[TaskId] = []
        for task, progress in batch.progress:  # not an outcome: never refused
            row = self._held(task, worker)
            if row is not None:
                row.progress, row.progress_note = progress.fraction, progress.note
        for task in batch.started:
            row = self._held(task, worker)
            if row is None:
                refused.append(task.id)
            else:
                row.status = Status.RUNNING
        for task, result in batch.done:
            row = self._held(task, worker)
            if row is None:
                refused.append(task.id)
                continue
            self._end(row, Status.DONE, now)
            row.result = result
        for task, retry in batch.retried:
            row = self._held(task, worker)
            if row is None:
                refused.append(task.id)
                continue
            row.attempts += 1
            if row.cancel_reason is not None:  # asked to cancel meanwhile: never retried
                self._cancelled(row, row.cancel_reason)
                continue
            self._unlock(row)
            row.status = Status.FAILED
            row.run_at = retry.at
            row.last_error = retry.error
            self._enqueue(row)
        for task, killed in batch.killed:
            row = self._held(task, worker)
            if row is None:
                refused.append(task.id)
                continue
            self._end(row, Status.KILLED, now)
            row.last_error = killed.error
        for task, cancelled in batch.cancelled:
            row = self._held(task, worker)
            if row is None:
                refused.append(task.id)
                continue
            self._end(row, Status.CANCELLED, now)
            row.last_error = cancelled.error
        local = self._local()
        if batch.retried or frees_room(self.limits, batch):
            local.doorbell.notify()
        local.finished(batch.finished)
        return refused

    def _end(self, row: _Row, status: Status, now: float) -> None:
        row.attempts += 1
        self._unlock(row)
        row.status = status
        row.done_at = now

    async def release(self, tasks: Sequence[Task[Any]], worker: str) -> None:
        for task in tasks:
            row = self._rows.get(task.id)
            if row is not None and row.lock_by == worker and row.status is Status.QUEUED:
                if row.cancel_reason is not None:  # asked to cancel: it must not run again
                    self._cancelled(row, row.cancel_reason)
                    self._local().finished([row.id])
                    continue
                self._unlock(row)
                row.status = Status.PENDING
                self._enqueue(row)
        self._local().doorbell.notify()

    # --- workers and leases -------------------------------------------------------

    async def register_worker(self, worker: str) -> None:
        """Record the worker; refuse a name whose heartbeat is still fresh.

        Tasks still held under this name belong to a dead predecessor (this worker
        has claimed nothing yet): they are taken back as by :meth:`reclaim`.
        """
        now = self.clock()
        seen = self._heartbeats.get(worker)
        if seen is not None and now - seen < self.lease_timeout:
            raise WorkerError(
                f"a worker named {worker!r} is alive on queue {self.queue!r} (heartbeat "
                f"{now - seen:.1f}s ago); give this worker another name, or stop the "
                "other one first"
            )
        self._expire(worker, now, only_older=False)
        self._heartbeats[worker] = now

    async def heartbeat(self, worker: str) -> list[tuple[TaskId, str]]:
        self._heartbeats[worker] = self.clock()
        requests: list[tuple[TaskId, str]] = []
        for task_id in self._locked.get(worker, ()):
            row = self._rows.get(task_id)
            if row is not None and row.cancel_reason is not None and row.status in ACTIVE:
                requests.append((task_id, row.cancel_reason))
        return requests

    async def unregister_worker(self, worker: str) -> None:
        self._heartbeats.pop(worker, None)

    async def reclaim(self) -> int:
        """Take back tasks whose worker's lease expired: Pending with one more attempt,
        or Killed once attempts reach max_attempts. A holder with no heartbeat loses
        only claims older than the lease (it may be a worker that never registered)."""
        now = self.clock()
        reclaimed = 0
        for worker in list(self._locked):
            seen = self._heartbeats.get(worker)
            if seen is not None and now - seen < self.lease_timeout:
                continue
            reclaimed += self._expire(worker, now, only_older=seen is None)
        return reclaimed

    def _expire(self, worker: str, now: float, *, only_older: bool) -> int:
        held = self._locked.get(worker)
        if not held:
            return 0
        killed: list[TaskId] = []
        expired = 0
        for task_id in list(held):
            row = self._rows.get(task_id)
            if row is None or row.status not in ACTIVE:
                held.discard(task_id)
                continue
            if only_older and row.lock_at is not None and now - row.lock_at < self.lease_timeout:
                continue
            if row.cancel_reason is not None:  # asked to cancel: it must not run again
                self._cancelled(row, row.cancel_reason)
                killed.append(row.id)
                expired += 1
                continue
            self._unlock(row)
            row.attempts += 1
            row.last_error = f"lease expired: worker {worker!r} stopped heartbeating"
            if row.attempts >= row.max_attempts:
                row.status = Status.KILLED
                row.done_at = now
                killed.append(row.id)
            else:
                row.status = Status.PENDING
                self._enqueue(row)
            expired += 1
        if not held:
            self._locked.pop(worker, None)
        if expired:
            local = self._local()
            local.doorbell.notify()
            local.finished(killed)
        return expired

    # --- inspection -------------------------------------------------------------------

    def _row(self, task_id: TaskId) -> _Row:
        row = self._rows.get(task_id)
        if row is None:
            raise TaskNotFound(f"no task {task_id!r} in queue {self.queue!r}")
        return row

    async def _get(self, task_id: TaskId) -> Task[Any] | None:
        row = self._rows.get(task_id)
        return None if row is None else row.snapshot()

    async def _stats(self) -> dict[Status, int]:
        counts = dict.fromkeys(Status, 0)
        for row in self._rows.values():
            counts[row.status] += 1
        return counts

    async def _list(self, status: Status | None, limit: int, offset: int) -> list[Task[Any]]:
        rows = (row for row in self._rows.values() if status is None or row.status is status)
        return [row.snapshot() for row in itertools.islice(rows, offset, offset + limit)]

    async def _retry(self, task_id: TaskId) -> None:
        row = self._row(task_id)
        if row.status not in (Status.FAILED, Status.KILLED):
            raise InvalidTransition(
                f"only Failed or Killed tasks can be retried; {task_id} is {row.status}"
            )
        self._unlock(row)
        row.status = Status.PENDING
        row.run_at = self.clock()
        row.done_at = None
        row.max_attempts = max(row.max_attempts, row.attempts + 1)
        self._enqueue(row)

    async def _cancel(self, task_id: TaskId, reason: str) -> Status:
        row = self._row(task_id)
        if row.status in READY:
            self._cancelled(row, reason)
        elif row.status in ACTIVE:
            row.cancel_reason = reason  # its worker cancels it: at once here, or at a heartbeat
        return row.status

    def _cancelled(self, row: _Row, reason: str) -> None:
        self._unlock(row)
        row.version += 1  # drop it from the heaps
        row.status = Status.CANCELLED
        row.last_error = f"cancelled: {reason}"
        row.done_at = self.clock()

    async def _kill(self, task_id: TaskId, reason: str) -> bool:
        row = self._row(task_id)
        if row.status in TERMINAL:
            return False
        self._unlock(row)
        row.version += 1  # drop it from the heaps
        row.status = Status.KILLED
        row.last_error = reason
        row.done_at = self.clock()
        return True

    async def _vacuum(self, older_than: float) -> int:
        cutoff = self.clock() - older_than
        doomed = [
            row.id
            for row in self._rows.values()
            if row.status in TERMINAL and row.done_at is not None and row.done_at <= cutoff
        ]
        for task_id in doomed:
            row = self._rows.pop(task_id)
            if row.unique_key is not None and self._unique.get(row.unique_key) == task_id:
                del self._unique[row.unique_key]
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
