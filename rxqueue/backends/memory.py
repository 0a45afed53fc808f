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
from rxqueue.codec import DEFAULT_CODEC, Codec, encode_list
from rxqueue.errors import (
    InvalidOption,
    InvalidTransition,
    TaskExists,
    TaskNotFound,
    UnsupportedOperation,
    WorkerError,
)
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
    dependency_failed,
    task_reader,
)

_SNAPSHOT = task_reader(FIELDS, attributes=True)  # a Task from a _Row's fields, by name
_FAILED = frozenset({Status.KILLED, Status.CANCELLED})


class _Row:
    """The mutable record behind a task; workers only ever see Task snapshots."""

    __slots__ = (
        "args",
        "attempts",
        "cancel_reason",
        "created_at",
        "depends_on",
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
        "waiting",
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
        self.depends_on: tuple[TaskId, ...] = task.depends_on  # its inputs, in order
        self.waiting = 0  # dependencies not Done yet (status Waiting while > 0)

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
        self._dependants: dict[TaskId, list[TaskId]] = {}  # parent -> tasks that wait for it

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
            task = row.snapshot()
            if row.depends_on:  # a fresh snapshot, not yet shared: set it in place
                object.__setattr__(task, "args", self._inputs(row))
            claimed.append(task)
        return claimed

    def _inputs(self, row: _Row) -> bytes:
        """The payload of a task that depended on others: their results, in order."""
        rows = self._rows
        results = [None if (p := rows.get(each)) is None else p.result for each in row.depends_on]
        return encode_list(self.codec, results)

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
        self._check_stored(tasks)
        for index, holder in held.items():
            ids[index] = holder
        kept = [index for index in range(len(tasks)) if index not in held]
        self._insert_all([tasks[i] for i in kept], [payloads[i] for i in kept])
        if len(held) < len(tasks):
            self._local().doorbell.notify()
        return ids

    def _check_stored(self, tasks: Sequence[Task[Any]]) -> None:
        """Refuse, before storing any, tasks of another queue or depending on unknown ones."""
        batch = {task.id for task in tasks}
        for task in tasks:
            if task.queue != self.queue:
                raise UnsupportedOperation(
                    f"MemoryBackend holds one queue ({self.queue!r}); task {task.id!r} is for "
                    f"queue {task.queue!r}. Use SQLite or PostgreSQL for several queues"
                )
            for parent in task.depends_on:
                if parent not in self._rows and parent not in batch:
                    raise InvalidOption(
                        f"task {task.id!r} depends on {parent!r}, which is not stored: push "
                        "the tasks it depends on first, or in the same call"
                    )

    def _insert_all(self, tasks: Sequence[Task[Any]], payloads: Sequence[bytes]) -> None:
        """Insert checked tasks; those with dependencies wait for the ones not Done
        (dependencies may be among ``tasks``), or end Killed if one failed."""
        waiting: list[_Row] = []
        for task, payload in zip(tasks, payloads, strict=True):
            row = _Row(task, payload)
            self._rows[task.id] = row
            if task.unique_key is not None:
                self._take(task.unique_key, task.id)
            if task.depends_on:
                row.status = Status.WAITING
                waiting.append(row)
            else:
                self._enqueue(row)
        for row in waiting:
            for parent_id in row.depends_on:
                self._dependants.setdefault(parent_id, []).append(row.id)
        now = self.clock()
        for row in waiting:
            if row.status is not Status.WAITING:
                continue  # killed meanwhile, with a dependency of the same batch
            parents = [self._rows[each] for each in row.depends_on]
            failed = next((parent for parent in parents if parent.status in _FAILED), None)
            if failed is not None:
                self._fail_dependants_of(failed, [row.id])
                continue
            row.waiting = sum(1 for parent in parents if parent.status is not Status.DONE)
            if row.waiting == 0:
                self._release(row, now)

    def _release(self, row: _Row, since: float) -> None:
        row.status = Status.PENDING
        row.run_at = since + (row.run_at - row.created_at)  # its delay counts from now
        self._enqueue(row)

    def _settle(self, row: _Row) -> list[TaskId]:
        """After ``row`` ended: what the SQL stores' triggers do to its dependants.
        Done counts them down and releases those with nothing left to wait for;
        Killed or Cancelled kills them, and theirs. Returns the ids killed."""
        waiting = self._dependants.get(row.id)
        if not waiting:
            return []
        if row.status is Status.DONE:
            for child_id in waiting:
                child = self._rows.get(child_id)
                if child is not None and child.status is Status.WAITING:
                    child.waiting -= 1
                    if child.waiting == 0:
                        self._release(child, row.done_at or self.clock())
            self._local().doorbell.notify()
            return []
        return self._fail_dependants_of(row, waiting)

    def _fail_dependants_of(self, row: _Row, children: Sequence[TaskId]) -> list[TaskId]:
        reason = dependency_failed(row.id, row.status, row.last_error)
        killed: list[TaskId] = []
        for child_id in children:
            child = self._rows.get(child_id)
            if child is None or child.status is not Status.WAITING:
                continue
            child.status, child.waiting = Status.KILLED, 0
            child.last_error, child.done_at = reason, row.done_at or self.clock()
            killed.append(child_id)
            killed += self._settle(child)
        return killed

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
        for parent, spawned, join in batch.spawned:
            if self._held(parent, worker) is not None:
                self._spawn(spawned, join)
        ended: list[_Row] = []
        for task, result in batch.done:
            row = self._held(task, worker)
            if row is None:
                refused.append(task.id)
                continue
            self._end(row, Status.DONE, now)
            row.result = result
            ended.append(row)
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
            ended.append(row)
        for task, cancelled in batch.cancelled:
            row = self._held(task, worker)
            if row is None:
                refused.append(task.id)
                continue
            self._end(row, Status.CANCELLED, now)
            row.last_error = cancelled.error
            ended.append(row)
        failed = [task_id for row in ended for task_id in self._settle(row)]
        local = self._local()
        if batch.retried or frees_room(self.limits, batch):
            local.doorbell.notify()
        local.finished(batch.finished + failed if failed else batch.finished)
        return refused

    def _spawn(self, spawned: Sequence[Task[Any]], join: TaskId | None) -> None:
        """Store a Done's fan-out (payloads already encoded); ``join`` waits for it too."""
        self._check_stored(spawned)
        self._insert_all(spawned, [task.args for task in spawned])
        row = None if join is None else self._rows.get(join)
        if row is not None and row.status is Status.WAITING:
            row.depends_on += tuple(task.id for task in spawned)
            row.waiting += len(spawned)
            for task in spawned:
                self._dependants.setdefault(task.id, []).append(row.id)

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
                    self._local().finished([row.id, *self._settle(row)])
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
                killed += self._settle(row)
                expired += 1
                continue
            self._unlock(row)
            row.attempts += 1
            row.last_error = f"lease expired: worker {worker!r} stopped heartbeating"
            if row.attempts >= row.max_attempts:
                row.status = Status.KILLED
                row.done_at = now
                killed.append(row.id)
                killed += self._settle(row)
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
        if row.status in READY or row.status is Status.WAITING:
            self._cancelled(row, reason)
            self._local().finished(self._settle(row))
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
        self._local().finished(self._settle(row))
        return True

    async def _vacuum(self, older_than: float) -> int:
        cutoff = self.clock() - older_than
        rows = self._rows

        def needed(task_id: TaskId) -> bool:  # by a child that has not finished
            return any(
                (child := rows.get(each)) is not None and child.status not in TERMINAL
                for each in self._dependants.get(task_id, ())
            )

        doomed = [
            row.id
            for row in rows.values()
            if row.status in TERMINAL
            and row.done_at is not None
            and row.done_at <= cutoff
            and not needed(row.id)
        ]
        for task_id in doomed:
            self._dependants.pop(task_id, None)
            row = self._rows.pop(task_id)
            if row.unique_key is not None and self._unique.get(row.unique_key) == task_id:
                del self._unique[row.unique_key]
        return len(doomed)

    async def _family(self, run_id: TaskId) -> list[Task[Any]]:
        prefix = f"{run_id}/"
        return [
            row.snapshot()
            for task_id, row in self._rows.items()
            if task_id == run_id or task_id.startswith(prefix)
        ]

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
