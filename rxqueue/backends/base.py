"""The backend contract, in domain verbs.

A backend is two halves over one store, plus the acker that closes the loop:

* **fetcher**: ``backend.fetcher(ctx)``, a cold Observable of claimed tasks
  (``None`` meaning "nothing right now"), composed with ``backend.pipe(...)``;
* **sink**: ``push`` / ``push_many`` / ``send`` / ``send_many``, each returning
  once the store accepted the tasks;
* **acker**: ``report(updates, ctx)``: outcomes and started markers in batches;
  ``release(tasks, ctx)`` hands back claimed-but-unstarted tasks.

Subclasses implement the ``_hooks``; the public methods here validate input,
encode payloads and apply the composed operators, once, for every backend.
Inspection verbs (``get``, ``list``, ``stats``, ...) are optional: a backend
declares what it supports in :attr:`Backend.capabilities`.
"""

from __future__ import annotations

import asyncio
import copy
import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self

from reactivex import Observable

from rxqueue.backends.sink import SinkObserver
from rxqueue.clock import Clock, system_clock
from rxqueue.codec import DEFAULT_CODEC, Codec
from rxqueue.errors import CodecError, TaskNotFound, UnsupportedOperation
from rxqueue.task import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    TERMINAL,
    PushOptions,
    Status,
    Task,
    TaskId,
    Update,
)

if TYPE_CHECKING:
    from rxqueue.worker.context import WorkerContext

Operator = Callable[[Observable[Any]], Observable[Any]]


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


ALL_CAPABILITIES = frozenset(Capability)


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
        if not queue:
            raise ValueError("queue name must be a non-empty string")
        self.queue = queue
        self.codec = codec
        self.clock = clock
        self.max_attempts = max_attempts
        self._operators: tuple[Operator, ...] = ()

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

    def fetcher(self, ctx: WorkerContext) -> Observable[Any]:
        """The composed fetcher for one worker: one subscription per worker."""
        source = self._fetcher(ctx)
        return source.pipe(*self._operators) if self._operators else source

    @abstractmethod
    def _fetcher(self, ctx: WorkerContext) -> Observable[Any]:
        """A cold Observable of claimed tasks (or ``None``) honouring ``ctx`` demand."""

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
    ) -> TaskId:
        """Enqueue ``args``; returns the new task's id once the store holds it."""
        options = PushOptions(
            delay=delay,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            metadata=metadata,
            task_id=task_id,
        )
        return (await self._push([args], options))[0]

    async def push_many(
        self,
        args_list: Iterable[Any],
        *,
        delay: float | None = None,
        run_at: float | datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[TaskId]:
        """Enqueue many payloads in one store operation; returns their ids in order."""
        options = PushOptions(
            delay=delay,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            metadata=metadata,
        )
        return await self._push(args_list, options)

    async def _push(self, args_list: Iterable[Any], options: PushOptions) -> list[TaskId]:
        now, queue, max_attempts = self.clock(), self.queue, self.max_attempts
        tasks = [
            options.build(args, queue=queue, now=now, max_attempts=max_attempts)
            for args in args_list
        ]
        return await self.send_many(tasks)

    async def send(self, task: Task[Any]) -> TaskId:
        """Store a task you built; returns its id once the store holds it."""
        return (await self.send_many([task]))[0]

    async def send_many(self, tasks: Sequence[Task[Any]]) -> list[TaskId]:
        """Store tasks you built, all or none; returns their ids."""
        if not tasks:
            return []
        encoded: list[bytes] = []
        for index, task in enumerate(tasks):
            if not isinstance(task, Task):
                raise TypeError(
                    f"send expects Task objects, got {type(task).__name__}; "
                    "use push(args) to enqueue a plain payload"
                )
            if task.queue != self.queue:
                task = task.evolve(queue=self.queue)
            try:
                encoded.append(self.codec.encode(task.args))
            except CodecError as exc:
                raise CodecError(f"task {index} ({task.id}): {exc}") from exc
        await self._store(tasks, encoded)
        return [task.id for task in tasks]

    def sink(self, on_error: Callable[[Exception], None] | None = None) -> SinkObserver:
        """This backend's sink as a reactivex Observer: ``source.subscribe(backend.sink())``.

        Tasks are stored as they are; other items are pushed as payloads. Storage
        errors go to ``on_error`` (and ``sink.errors``), never into the source.
        ``await sink.flush()`` returns once everything received is stored.
        """
        return SinkObserver(self, on_error)

    @abstractmethod
    async def _store(self, tasks: Sequence[Task[Any]], payloads: Sequence[bytes]) -> None:
        """Persist ``tasks`` durably (``payloads[i]`` is ``tasks[i].args`` encoded)."""

    # --- acker --------------------------------------------------------------------

    @abstractmethod
    async def report(self, updates: Sequence[tuple[Task[Any], Update]], ctx: WorkerContext) -> None:
        """Record outcomes (Done / Retry / Killed) and Started markers, in one batch."""

    async def release(self, tasks: Sequence[Task[Any]], ctx: WorkerContext) -> None:
        """Hand claimed-but-unstarted tasks back to the store, attempts unchanged."""

    # --- workers and leases -------------------------------------------------------------

    async def register_worker(self, ctx: WorkerContext) -> None:
        """Called once when a worker starts."""

    async def heartbeat(self, ctx: WorkerContext) -> None:
        """Called every heartbeat interval while a worker runs."""

    async def unregister_worker(self, ctx: WorkerContext) -> None:
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
        """The task with this id (payload decoded), or None."""
        self._require(Capability.GET)
        raise NotImplementedError

    async def wait_for(
        self, task_id: TaskId, *, timeout: float | None = None, poll_interval: float = 0.05
    ) -> Task[Any]:
        """Wait until the task is Done or Killed and return it.

        Raises :class:`TaskNotFound` for an unknown id and ``TimeoutError`` when
        ``timeout`` seconds pass first.
        """
        self._require(Capability.GET)
        async with asyncio.timeout(timeout):
            while True:
                task = await self.get(task_id)
                if task is None:
                    raise TaskNotFound(f"no task {task_id!r} in queue {self.queue!r}")
                if task.status in TERMINAL:
                    return task
                await asyncio.sleep(poll_interval)

    async def stats(self) -> dict[Status, int]:
        """How many tasks of this queue are in each status (every status present)."""
        self._require(Capability.LIST)
        raise NotImplementedError

    async def list(
        self, *, status: Status | None = None, limit: int = 100, offset: int = 0
    ) -> list[Task[Any]]:
        """Tasks of this queue, oldest first, optionally of one status."""
        self._require(Capability.LIST)
        raise NotImplementedError

    async def retry(self, task_id: TaskId) -> None:
        """Put a Failed or Killed task back to Pending, ready now."""
        self._require(Capability.MANAGE)
        raise NotImplementedError

    async def kill(self, task_id: TaskId, reason: str = "killed by request") -> None:
        """Kill a task that has not finished (a running one finishes its attempt first)."""
        self._require(Capability.MANAGE)
        raise NotImplementedError

    async def vacuum(self, older_than: float = 0.0) -> int:
        """Delete Done/Killed tasks finished more than ``older_than`` seconds ago."""
        self._require(Capability.MANAGE)
        raise NotImplementedError

    async def has_work(self, horizon: float) -> bool | None:
        """Is any task ready now or due within ``horizon`` seconds? None: cannot tell."""
        return None

    # --- lifecycle ------------------------------------------------------------------

    async def close(self) -> None:
        """Release connections; the backend cannot be used afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        ops = f", ops={len(self._operators)}" if self._operators else ""
        return f"{type(self).__name__}(queue={self.queue!r}{ops})"


def decode_payload(codec: Codec, task: Task[Any]) -> Task[Any]:
    """For display (``get``/``list``): decode a bytes payload if it decodes."""
    if isinstance(task.args, bytes | bytearray | memoryview):
        try:
            return task.evolve(args=codec.decode(bytes(task.args)))
        except CodecError:
            return task
    return task
