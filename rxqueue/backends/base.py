"""The backend contract, in domain verbs.

A backend is two halves over one store, plus the acker that closes the loop:

* **fetcher**: ``backend.fetcher(demand)``, a cold Observable of claimed tasks
  (``None`` meaning "nothing right now") honouring the worker's
  :class:`~rxqueue.demand.Demand`, composed with ``backend.pipe(...)``;
* **sink**: ``push`` / ``push_many`` / ``send`` / ``send_many``, each returning
  once the store accepted the tasks (``connection=`` joins the caller's
  transaction where the store can);
* **acker**: ``report(batch)`` applies one typed :class:`~rxqueue.acks.AckBatch`
  in one transaction; ``release(tasks, worker)`` hands back
  claimed-but-unstarted tasks. Acker verbs take the worker's name.

Lifecycle: ``open()`` (schema, pools, listeners) runs on first use and in
``async with``; ``close()`` stops the workers running on the backend, then
releases its connections.

Subclasses implement the ``_hooks``; the public methods here validate input,
encode payloads and apply the composed operators, once, for every backend.
Inspection verbs (``get``, ``list``, ``stats``, ...) are optional: a backend
declares what it supports in :attr:`Backend.capabilities`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Self

from reactivex import Observable

from rxqueue.acks import AckBatch
from rxqueue.backends.local import LocalChannel, Revoked, channel
from rxqueue.backends.sink import SinkObserver
from rxqueue.clock import Clock, system_clock
from rxqueue.codec import DEFAULT_CODEC, Codec
from rxqueue.demand import Demand
from rxqueue.errors import (
    BackendClosed,
    CodecError,
    InvalidOption,
    TaskNotFound,
    UnsupportedOperation,
)
from rxqueue.stats import QueueStats
from rxqueue.streams import Doorbell, Wakeup, poll, track
from rxqueue.task import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    TERMINAL,
    PushOptions,
    Status,
    Task,
    TaskId,
    check_int,
    check_unique_key,
    validate_task,
)
from rxqueue.tracing import traced, traced_tasks

Operator = Callable[[Observable[Any]], Observable[Any]]
StopWorker = Callable[[], Awaitable[None]]


class Capability(enum.StrEnum):
    """Optional verbs a backend may support; the conformance suite skips the rest."""

    GET = "get"  # get(task_id), wait_for(task_id)
    LIST = "list"  # list(...), stats()
    MANAGE = "manage"  # retry(task_id), kill(task_id), vacuum(...)
    LEASES = "leases"  # heartbeats and reclaiming tasks of dead workers
    HAS_WORK = "has_work"  # has_work(horizon) for run_until_idle
    DELAY = "delay"  # run_at in the future is honoured
    PRIORITY = "priority"  # higher priority claimed first
    RETRY = "retry"  # Failed tasks come back at run_at
    TRANSACTIONS = "transactions"  # push(..., connection=conn) joins the caller's transaction
    UNIQUE = "unique"  # push(..., unique_key=...) is idempotent, enforced by the store
    CANCEL = "cancel"  # cancel(task_id) ends a waiting task, or a running one in its worker
    PROGRESS = "progress"  # await ctx.progress(...) is stored; get() shows it
    LIMITS = "limits"  # rate_limit= and max_running= hold across every worker of the queue
    # Task.depends_on waits in the store and Done(spawn=...) stores with its Done: workflows.
    # The rules every store follows (memory, SQLite, PostgreSQL and custom alike;
    # tests/test_dependencies.py holds each one to them):
    # 1. A task with depends_on is stored Waiting, counting its dependencies not yet
    #    Done; an unknown one is refused (InvalidOption), nothing stored. All Done:
    #    released at once; one Killed or Cancelled: Killed at once.
    # 2. A task ending Done counts its Waiting dependants down; one at zero is
    #    released: Pending, run_at = parent's done_at + (run_at - created_at).
    # 3. A task ending Killed or Cancelled, by any path, kills its Waiting dependants,
    #    transitively, naming the first failed task ("dependency <id> ended <status>: ...").
    # 4. A claimed dependant's payload is the list of its dependencies' results, in
    #    order (codec.encode_list); the stored payload is a placeholder.
    # 5. AckBatch.spawned: stored in the ack's transaction, before its Dones, only if
    #    the parent is still held by that claim; the join task then also waits for them.
    # 6. vacuum keeps a finished task while an unfinished one depends on it.
    DEPENDENCIES = "dependencies"


ALL_CAPABILITIES = frozenset(Capability) - {Capability.TRANSACTIONS}
CancelRequest = tuple[TaskId, str]  # (task id, reason) for the worker that holds the task


class _Lifecycle:
    """Open/closed state and attached workers, shared by a backend and its ``pipe`` copies."""

    __slots__ = ("closed", "lock", "opened", "workers")

    def __init__(self) -> None:
        self.opened = False
        self.closed = False
        self.lock: asyncio.Lock | None = None
        self.workers: dict[int, StopWorker] = {}


class Backend(ABC):
    """Base of every backend. See the module docstring for the contract."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(
        self,
        *,
        queue: str = DEFAULT_QUEUE,
        codec: Codec = DEFAULT_CODEC,
        clock: Clock = system_clock,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if not isinstance(queue, str) or not queue:
            raise InvalidOption(f"queue must be a non-empty string, got {queue!r}")
        self.queue = queue
        self.codec = codec
        self.clock = clock
        self.max_attempts = check_int("max_attempts", max_attempts, low=1)
        self._operators: tuple[Operator, ...] = ()
        self._life = _Lifecycle()
        # Which in-process channel (doorbell, waiters, revocations) this store uses;
        # backends over a shared store (a file, a server schema) key it by that store.
        self._channel_key: Hashable = (type(self).__name__, id(self), queue)

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> Self:
        """Prepare the store (schema, pools, listeners); called on first use and by
        ``async with``. Idempotent."""
        life = self._life
        if life.closed:
            raise BackendClosed(f"{self!r} is closed; open a new backend")
        if life.opened:
            return self
        if life.lock is None:
            life.lock = asyncio.Lock()
        async with life.lock:
            if not life.opened:
                await self._open()
                life.opened = True
        return self

    async def _open(self) -> None:
        """Hook: open connections and prepare the schema."""

    async def close(self) -> None:
        """Stop the workers running on this backend (they release what they hold),
        then release connections; the backend cannot be used afterwards."""
        life = self._life
        if life.closed:
            return
        stoppers = list(life.workers.values())
        if stoppers:
            await asyncio.gather(*(stop() for stop in stoppers), return_exceptions=True)
        life.closed = True
        await self._close()

    async def _close(self) -> None:
        """Hook: release connections."""

    def attach(self, stop: StopWorker) -> Callable[[], None]:
        """Register a running worker's ``stop`` (awaited by :meth:`close`); returns the undo."""
        workers = self._life.workers
        key = id(stop)
        workers[key] = stop

        def detach() -> None:
            workers.pop(key, None)

        return detach

    @property
    def closed(self) -> bool:
        return self._life.closed

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- the in-process channel ------------------------------------------------------

    def _make_doorbell(self) -> Doorbell:
        """Hook: the doorbell fetchers wait on (default: in-process only)."""
        return Wakeup()

    def _local(self) -> LocalChannel:
        return channel(self._channel_key, self._make_doorbell)

    def on_revoked(self, listener: Revoked) -> Callable[[], None]:
        """Call ``listener(task_ids)`` when tasks of this store are killed in this
        process (a worker drops them if it has not started them); returns the undo."""
        return self._local().on_revoked(listener)

    # --- composition ------------------------------------------------------------

    def pipe(self, *operators: Operator) -> Self:
        """A backend with the same store, sink and acker, whose fetcher is piped
        through ``operators`` (``rxqueue.ops`` or plain ``reactivex.operators``)."""
        piped = copy.copy(self)
        piped._operators = self._operators + operators
        return piped

    @property
    def batch_size_hint(self) -> int:
        """The largest ``ops.batch`` size in this backend's pipe (1 if none)."""
        sizes = [getattr(op, "batch_size", 1) for op in self._operators]
        return max([1, *sizes])

    def fetcher(self, demand: Demand) -> Observable[Any]:
        """The composed fetcher for one worker: one subscription per worker.

        Each operator is :func:`~rxqueue.streams.track`-ed, so a task it drops or
        holds when disposed goes back to the store through the ledger.
        """
        source = self._fetcher(demand)
        for operator in self._operators:
            source = track(operator, demand)(source)
        return source

    @abstractmethod
    def _fetcher(self, demand: Demand) -> Observable[Any]:
        """A cold Observable of claimed tasks (or ``None``) honouring ``demand``."""

    # --- sink ---------------------------------------------------------------------

    async def push(
        self,
        args: Any,
        *,
        delay: float | None = None,
        run_at: float | datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        metadata: dict[str, Any] | None = None,
        task_id: TaskId | None = None,
        unique_key: str | None = None,
        unique_for: float | None = None,
        connection: Any = None,
    ) -> TaskId:
        """Enqueue ``args``; returns the task's id once the store holds it.

        Options are checked first (:class:`~rxqueue.errors.InvalidOption` names a
        bad one); nothing is stored unless every check passes. ``connection=``
        stores the task inside the caller's open transaction, on backends that
        declare ``Capability.TRANSACTIONS``.

        ``unique_key``: while a task of this queue with that key is unfinished
        (Pending, Queued, Running or Failed awaiting a retry), the push stores
        nothing and returns that task's id. ``unique_for`` seconds keep the key
        taken that long after the push, finished or not. The store enforces it,
        across processes (backends that declare ``Capability.UNIQUE``).
        """
        if unique_for is not None and unique_key is None:
            raise InvalidOption("unique_for needs a unique_key")
        options = PushOptions(
            delay=delay,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            metadata=metadata,
            task_id=task_id,
            unique_key=unique_key,
            unique_for=unique_for,
        )
        return (await self._push([args], options, connection))[0]

    async def push_many(
        self,
        args_list: Iterable[Any],
        *,
        delay: float | None = None,
        run_at: float | datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        metadata: dict[str, Any] | None = None,
        unique_keys: Sequence[str | None] | None = None,
        unique_for: float | None = None,
        connection: Any = None,
    ) -> list[TaskId]:
        """Enqueue many payloads in one store operation, all or none; their ids in order.

        ``unique_keys`` holds one key (or None) per payload, as ``push``'s
        ``unique_key``: a payload whose key is taken, or was given to an earlier
        payload of the same call, returns the holder's id and stores nothing.
        """
        options = PushOptions(
            delay=delay,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            metadata=metadata,
            unique_for=unique_for,
        )
        if unique_keys is None:
            if unique_for is not None:
                raise InvalidOption("unique_for needs unique_keys")
            return await self._push(args_list, options, connection)
        payloads = list(args_list)
        keys = _check_unique_keys(unique_keys, len(payloads))
        return await self._push(payloads, options, connection, keys)

    async def _push(
        self,
        args_list: Iterable[Any],
        options: PushOptions,
        connection: Any,
        unique_keys: Sequence[str | None] | None = None,
    ) -> list[TaskId]:
        options = traced(options)  # the current span's trace context, if any
        now, queue, max_attempts = self.clock(), self.queue, self.max_attempts
        if unique_keys is None:
            tasks = [
                options.build(args, queue=queue, now=now, max_attempts=max_attempts)
                for args in args_list
            ]
        else:
            tasks = [
                options.build(args, queue=queue, now=now, max_attempts=max_attempts, unique_key=key)
                for args, key in zip(args_list, unique_keys, strict=True)
            ]
        return await self._send(tasks, connection)  # built from checked options

    async def send(self, task: Task[Any], *, connection: Any = None) -> TaskId:
        """Store a task you built; returns its id once the store holds it."""
        return (await self.send_many([task], connection=connection))[0]

    async def send_many(
        self, tasks: Sequence[Task[Any]], *, connection: Any = None
    ) -> list[TaskId]:
        """Store tasks you built, all or none; returns their ids.

        A task built for another queue is stored in this backend's queue.
        """
        checked: list[Task[Any]] = []
        for task in tasks:
            if not isinstance(task, Task):
                raise TypeError(
                    f"send expects Task objects, got {type(task).__name__}; "
                    "use push(args) to enqueue a plain payload"
                )
            validate_task(task)
            checked.append(task if task.queue == self.queue else task.evolve(queue=self.queue))
        return await self._send(traced_tasks(checked), connection)

    async def _send(self, tasks: list[Task[Any]], connection: Any) -> list[TaskId]:
        if not tasks:
            return []
        if connection is not None and Capability.TRANSACTIONS not in self.capabilities:
            raise UnsupportedOperation(
                f"{type(self).__name__} cannot store a task inside your transaction "
                "(connection=); it does not declare Capability.TRANSACTIONS"
            )
        ids = [task.id for task in tasks]
        if len(set(ids)) != len(ids):
            repeated = next(task_id for task_id in ids if ids.count(task_id) > 1)
            raise InvalidOption(f"task id {repeated!r} appears twice in one send_many")
        if Capability.DEPENDENCIES not in self.capabilities and any(
            task.depends_on for task in tasks
        ):
            raise UnsupportedOperation(
                f"{type(self).__name__} cannot hold a task until others finish (depends_on=, "
                "workflows); it does not declare Capability.DEPENDENCIES"
            )
        keyed = any(task.unique_key is not None for task in tasks)
        if keyed and Capability.UNIQUE not in self.capabilities:
            raise UnsupportedOperation(
                f"{type(self).__name__} cannot keep tasks unique (unique_key=); it does "
                "not declare Capability.UNIQUE"
            )
        encode = self.codec.encode
        encoded: list[bytes] = []
        for index, task in enumerate(tasks):
            try:
                encoded.append(encode(task.args))
            except CodecError as exc:
                raise CodecError(f"task {index} ({task.id}): {exc}") from exc
        await self.open()
        if not keyed:
            return list(await self._store(tasks, encoded, connection))
        # A key given twice in one call: the later tasks answer with the first one's id.
        first: dict[str, int] = {}
        source: list[int] = []  # per task, the index of the task whose answer it takes
        for index, task in enumerate(tasks):
            key = task.unique_key
            source.append(index if key is None else first.setdefault(key, index))
        kept = [index for index, origin in enumerate(source) if origin == index]
        if len(kept) == len(tasks):
            return list(await self._store(tasks, encoded, connection))
        stored = await self._store(
            [tasks[i] for i in kept], [encoded[i] for i in kept], connection
        )
        answers = dict(zip(kept, stored, strict=True))
        return [answers[origin] for origin in source]

    def sink(self, on_error: Callable[[Exception], None] | None = None) -> SinkObserver:
        """This backend's sink as a reactivex Observer: ``source.subscribe(backend.sink())``.

        Tasks are stored as they are; other items are pushed as payloads. Storage
        errors go to ``on_error`` (and ``sink.errors``), never into the source.
        ``await sink.flush()`` returns once everything received is stored.
        """
        return SinkObserver(self, on_error)

    @abstractmethod
    async def _store(
        self, tasks: Sequence[Task[Any]], payloads: Sequence[bytes], connection: Any = None
    ) -> Sequence[TaskId]:
        """Persist ``tasks`` durably, all or none (``payloads[i]`` is ``tasks[i].args``
        encoded); return, per task, the id stored (or the existing task's id, where
        a store answers a duplicate with it). Raise ``TaskExists`` for a taken id.

        With ``Capability.UNIQUE``: a task whose ``unique_key`` (distinct within one
        call) is held in this queue, by an unfinished task or one whose
        ``unique_until`` is still ahead, is not stored; its answer is the holder's id."""

    # --- acker --------------------------------------------------------------------

    @abstractmethod
    async def report(self, batch: AckBatch) -> Sequence[TaskId]:
        """Apply one ack batch in one transaction, in order, only to tasks ``batch.worker``
        still holds *from the same claim* (``lock_by`` is the worker and ``attempts``
        is the claimed snapshot's: a task reclaimed and claimed again is a new claim);
        return the ids whose updates were refused (the lease was lost)."""

    async def release(self, tasks: Sequence[Task[Any]], worker: str) -> None:
        """Hand claimed-but-unstarted tasks back to the store, attempts unchanged."""

    # --- workers and leases -------------------------------------------------------------

    async def register_worker(self, worker: str) -> None:
        """Called once when a worker starts; refuses a name that is alive."""

    async def heartbeat(self, worker: str) -> Sequence[CancelRequest]:
        """Called every heartbeat interval while a worker runs; returns the cancel
        requests for tasks that worker holds (it cancels them and acks Cancelled)."""
        return ()

    async def unregister_worker(self, worker: str) -> None:
        """Called once when a worker stops."""

    async def reclaim(self) -> int:
        """Return tasks of workers whose lease expired to the store; how many."""
        return 0

    # --- inspection (capability-gated) --------------------------------------------

    def _require(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            raise UnsupportedOperation(
                f"{type(self).__name__} does not support {capability.value}(); "
                f"it supports: {', '.join(sorted(self.capabilities)) or 'nothing optional'}"
            )

    async def get(self, task_id: TaskId) -> Task[Any] | None:
        """The task with this id (payload and result decoded where they decode), or None."""
        self._require(Capability.GET)
        await self.open()
        task = await self._get(task_id)
        return None if task is None else self._shown(task)

    async def _get(self, task_id: TaskId) -> Task[Any] | None:
        raise NotImplementedError

    def _shown(self, task: Task[Any]) -> Task[Any]:
        """For ``get``/``list``: payload and result decoded where they decode."""
        task = decode_payload(self.codec, task)
        if isinstance(task.result, bytes):
            with contextlib.suppress(CodecError):
                task = task.evolve(result=self.codec.decode(task.result))
        return task

    async def wait_for(
        self, task_id: TaskId, *, timeout: float | None = None, poll_interval: float = 0.05
    ) -> Task[Any]:
        """Wait until the task is Done or Killed and return it.

        A report from this process wakes the wait at once; a task finished by
        another process is seen by polling, every ``poll_interval`` seconds at
        first, backing off to one second. Raises :class:`TaskNotFound` for an
        unknown id and ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        self._require(Capability.GET)
        local = self._local()
        delay = poll_interval
        async with asyncio.timeout(timeout):
            while True:
                signal = local.watch(task_id)
                try:
                    task = await self.get(task_id)
                    if task is None:
                        raise TaskNotFound(f"no task {task_id!r} in queue {self.queue!r}")
                    if task.status in TERMINAL:
                        return task
                    await asyncio.wait({signal}, timeout=delay)
                    woken = signal.done()
                finally:
                    local.unwatch(task_id, signal)
                delay = poll_interval if woken else min(1.0, delay * 2)

    async def stats(self) -> QueueStats:
        """How many tasks of this queue are in each status (every status present): a
        dict, shown as a table in notebooks."""
        self._require(Capability.LIST)
        await self.open()
        counts = dict.fromkeys(Status, 0)
        counts.update(await self._stats())
        return QueueStats(counts, queue=self.queue)

    async def _stats(self) -> dict[Status, int]:
        raise NotImplementedError

    async def list(
        self, *, status: Status | str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Task[Any]]:
        """Tasks of this queue, oldest first, optionally of one status (``"Failed"`` works)."""
        self._require(Capability.LIST)
        wanted = None if status is None else as_status(status)
        check_int("limit", limit, low=0)
        check_int("offset", offset, low=0)
        await self.open()
        return [self._shown(task) for task in await self._list(wanted, limit, offset)]

    async def _list(
        self, status: Status | None, limit: int, offset: int
    ) -> builtins.list[Task[Any]]:
        raise NotImplementedError

    async def family(self, run_id: TaskId) -> builtins.list[Task[Any]]:
        """The task ``run_id`` and every task whose id starts with ``run_id + "/"``, in
        any queue of the store, oldest first: a workflow run and its steps."""
        self._require(Capability.DEPENDENCIES)
        await self.open()
        return [self._shown(task) for task in await self._family(run_id)]

    async def _family(self, run_id: TaskId) -> builtins.list[Task[Any]]:
        raise NotImplementedError

    async def retry(self, task_id: TaskId) -> None:
        """Put a Failed or Killed task back to Pending, ready now.

        Raises :class:`TaskNotFound`, or :class:`InvalidTransition` for a task in
        another status.
        """
        self._require(Capability.MANAGE)
        await self.open()
        await self._retry(task_id)
        self._local().doorbell.notify()

    async def _retry(self, task_id: TaskId) -> None:
        raise NotImplementedError

    async def cancel(self, task_id: TaskId, reason: str = "cancelled by request") -> Status:
        """Cancel a task: never retried, it ends ``Cancelled`` with ``reason``.

        A waiting task (Pending, or Failed awaiting a retry) ends at once. A claimed
        or running one is cancelled in the worker that holds it: at once in this
        process, within one heartbeat interval in another; its handler sees
        ``CancelledError`` at its next await (``ctx.cancelled`` turns true), and
        the worker goes on. Returns the status the task has now (``Cancelled``,
        or ``Queued``/``Running`` while the request travels, or the final status
        of a task that had already finished, which is left as it is).
        """
        self._require(Capability.CANCEL)
        if not isinstance(reason, str) or not reason:
            raise InvalidOption(f"reason must be a non-empty string, got {reason!r}")
        await self.open()
        status = await self._cancel(task_id, reason)
        local = self._local()
        if status is Status.CANCELLED:
            local.finished([task_id])
        elif status in (Status.QUEUED, Status.RUNNING):
            local.cancel_requested([(task_id, reason)])
        return status

    async def _cancel(self, task_id: TaskId, reason: str) -> Status:
        """End a waiting task as Cancelled, or record the request on a claimed one
        (for its holder's heartbeat); return the task's status after the call."""
        raise NotImplementedError

    def on_cancel(
        self, listener: Callable[[builtins.list[CancelRequest]], None]
    ) -> Callable[[], None]:
        """Call ``listener(requests)`` when tasks of this store are asked to cancel in
        this process (a worker cancels those it holds at once); returns the undo."""
        return self._local().on_cancel(listener)

    async def kill(self, task_id: TaskId, reason: str = "killed by request") -> None:
        """Kill a task that has not finished. A claimed task not yet started does not
        run; a running one finishes its attempt, whose outcome is then ignored."""
        self._require(Capability.MANAGE)
        await self.open()
        if await self._kill(task_id, reason):
            local = self._local()
            local.finished([task_id])
            local.revoked([task_id])

    async def _kill(self, task_id: TaskId, reason: str) -> bool:
        """Kill it unless finished; True if this call killed it."""
        raise NotImplementedError

    async def vacuum(self, older_than: float = 0.0) -> int:
        """Delete Done/Killed tasks finished more than ``older_than`` seconds ago."""
        self._require(Capability.MANAGE)
        await self.open()
        return await self._vacuum(older_than)

    async def _vacuum(self, older_than: float) -> int:
        raise NotImplementedError

    async def has_work(self, horizon: float) -> bool | None:
        """Is any task ready now or due within ``horizon`` seconds? None: cannot tell."""
        return None

    def __repr__(self) -> str:
        ops = f", ops={len(self._operators)}" if self._operators else ""
        return f"{type(self).__name__}(queue={self.queue!r}{ops})"


class ClaimingBackend(Backend):
    """A backend whose store claims with one call, ``_claim(worker, limit)``.

    Its fetcher is the shared claim loop (:func:`~rxqueue.streams.poll`) over
    that call, waiting on the backend's doorbell between empty claims.
    """

    poll_interval: float = 0.05
    max_poll_interval: float = 1.0

    @abstractmethod
    async def _claim(self, worker: str, limit: int) -> builtins.list[Task[Any]]:
        """Claim up to ``limit`` ready tasks for ``worker``, in claim order."""

    def _fetcher(self, demand: Demand) -> Observable[Any]:
        name, claim = demand.name, self._claim

        async def fetch_many(limit: int) -> builtins.list[Task[Any]]:
            return await claim(name, limit)

        return poll(
            fetch_many,
            demand,
            interval=self.poll_interval,
            max_interval=self.max_poll_interval,
            wakeup=self._local().doorbell,
        )

    def _expired(self, changed: Sequence[Sequence[Any]]) -> None:
        """After leases were taken back (rows of id, status): wake fetchers, and the
        ``wait_for`` callers of tasks that ended Killed (or Cancelled, when asked to)."""
        if changed:
            local = self._local()
            local.doorbell.notify()
            ended = (Status.KILLED, Status.CANCELLED)
            local.finished(task_id for task_id, status in changed if status in ended)


# --- limits shared by all workers ----------------------------------------------------------

# Token counts are floats refilled by elapsed epoch seconds, which keep only about
# 0.24 µs of precision today: a refill meant to make a whole token may come out a
# hair short. A token is counted whole when it is due within this many seconds.
_TIME_SLACK = 1e-6


@dataclass(frozen=True, slots=True)
class Limits:
    """A queue's limits, checked by the store inside every claim (``Capability.LIMITS``).

    ``rate_limit=(n, per)``: a token bucket of ``n`` tokens, refilled continuously at
    ``n / per`` tokens a second; a claimed task takes one. A full bucket (the start,
    or a queue idle for ``per`` seconds) lets a burst of ``n`` claims through at once,
    so any window of ``per`` seconds holds at most ``2 * n`` claims, and over a long
    run the rate tends to ``n / per``. ``max_running=n``: at most ``n`` tasks of the
    queue are claimed or running (Queued or Running) at once, whoever holds them.

    The bucket's state lives in the store, per queue; the refill rate is the
    claiming backend's own, so every process of a queue should set the same limits.
    """

    rate_limit: tuple[int, float] | None = None
    max_running: int | None = None

    @classmethod
    def check(cls, rate_limit: Any, max_running: Any) -> Limits | None:
        """The limits these options ask for (None for none); InvalidOption names a bad one."""
        rate: tuple[int, float] | None = None
        if rate_limit is not None:
            if (
                not isinstance(rate_limit, tuple | list)
                or len(rate_limit) != 2
                or isinstance(rate_limit[0], bool)
                or not isinstance(rate_limit[0], int)
                or rate_limit[0] < 1
                or isinstance(rate_limit[1], bool)
                or not isinstance(rate_limit[1], int | float)
                or not math.isfinite(rate_limit[1])
                or rate_limit[1] <= 0
            ):
                raise InvalidOption(
                    "rate_limit must be a pair (count, seconds): at most count task starts "
                    "(a positive int) per seconds (a positive finite number), e.g. "
                    f"(100, 1.0); got {rate_limit!r}"
                )
            rate = (int(rate_limit[0]), float(rate_limit[1]))
        if max_running is not None and (
            isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1
        ):
            raise InvalidOption(
                f"max_running must be a positive int (tasks claimed or running at once), "
                f"got {max_running!r}"
            )
        if rate is None and max_running is None:
            return None
        return cls(rate, max_running)

    def refill(self, stored: Sequence[float] | None, now: float) -> tuple[float, float]:
        """The bucket at ``now`` from its ``stored`` (tokens, time): (tokens, its new
        time). Nothing stored yet: a full bucket.

        A clock behind the stored time (another host's) adds nothing and keeps the
        stored time, so the bucket never runs backwards."""
        if stored is None:
            return (0.0 if self.rate_limit is None else float(self.rate_limit[0]), now)
        tokens, updated_at = float(stored[0]), float(stored[1])
        if self.rate_limit is None:
            return (0.0, max(updated_at, now))
        count, per = self.rate_limit
        elapsed = max(0.0, now - updated_at)
        return (min(float(count), tokens + elapsed * count / per), max(updated_at, now))

    def allowance(self, wanted: int, tokens: float, active: int) -> int:
        """How many tasks a claim may take: ``wanted``, bounded by the whole tokens in
        the bucket and by the room ``max_running`` leaves beside ``active`` tasks."""
        allowed = wanted
        if self.rate_limit is not None:
            count, per = self.rate_limit
            allowed = min(allowed, math.floor(tokens + _TIME_SLACK * count / per))
        if self.max_running is not None:
            allowed = min(allowed, self.max_running - active)
        return max(0, allowed)

    def spend(self, tokens: float, taken: int) -> float:
        """The tokens left after a claim took ``taken`` tasks."""
        if self.rate_limit is None:
            return tokens
        return max(0.0, tokens - taken)


def frees_room(limits: Limits | None, batch: AckBatch) -> bool:
    """Did ``batch`` end tasks of a queue under ``max_running``? Then fetchers waiting
    for room in this process are rung (others find it at their next poll)."""
    return bool(limits is not None and limits.max_running is not None and batch.finished)


def _check_unique_keys(keys: Any, count: int) -> list[str | None]:
    """``push_many``'s ``unique_keys``: one key or None per payload; else InvalidOption."""
    if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
        raise InvalidOption(
            f"unique_keys must be a list of keys (or None), one per payload, got {keys!r}"
        )
    if len(keys) != count:
        raise InvalidOption(f"unique_keys holds {len(keys)} keys for {count} payloads")
    for index, key in enumerate(keys):
        if key is not None:
            check_unique_key(key, f"unique_keys[{index}]")
    return list(keys)


def as_status(value: Status | str) -> Status:
    """``value`` as a Status (``"Done"`` or ``"done"`` work); InvalidOption names the choices."""
    if isinstance(value, Status):
        return value
    if isinstance(value, str):
        for status in Status:
            if value.lower() == status.value.lower():
                return status
    choices = ", ".join(status.value for status in Status)
    raise InvalidOption(f"status must be one of {choices}; got {value!r}")


def decode_payload(codec: Codec, task: Task[Any]) -> Task[Any]:
    """For display (``get``/``list``): decode a bytes payload if it decodes."""
    if isinstance(task.args, bytes | bytearray | memoryview):
        try:
            return task.evolve(args=codec.decode(bytes(task.args)))
        except CodecError:
            return task
    return task
