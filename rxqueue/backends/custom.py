"""Custom backends: any store, from a fetcher and a sink.

The apalis custom-backend page, in Python::

    backend = (BackendBuilder()            # or BackendBuilder.new_with_cfg(cfg)
               .database(db)               # any connection or pool object
               .fetcher(create_fetcher)    # (db, cfg, worker_ctx) -> Observable | AsyncIterable
               .sink(create_sink)          # (db, cfg) -> Observer | async callable(task)
               .ack(ack)                   # optional: (db, cfg, task, outcome) -> awaitable
               .getter(get)                # optional: (db, cfg, task_id) -> Task | None
               .family(family)             # optional: (db, cfg, run_id) -> list[Task]
               .build())

The sink receives tasks whose ``args`` are already encoded (``bytes``): store
them as they are, and have the fetcher hand them back the same way; the worker
decodes them, so a bad payload fails its task and never the worker. ``Done``
outcomes carry the result encoded the same way (``bytes``, or ``None``).

A fetcher that claims several tasks at once should use :func:`rxqueue.poll`,
the claim loop every backend shares: it sizes claims by the worker's demand
and keeps the ledger, so nothing claimed is stranded when the worker stops.

Workflows need ``.declare(Capability.DEPENDENCIES)``, a getter, a family lister
and an acker, and a store that follows the dependency rules of
:class:`~rxqueue.backends.base.Capability` (``examples/custom_sqlite_backend.py``
does, in SQLite): the sink stores a task with ``depends_on`` as Waiting, the
acker counts dependants down (Done) or kills them (Killed, Cancelled) and stores
``Done.spawn`` in the transaction of the Done, and the fetcher hands a claimed
dependant the list of its dependencies' results (:func:`rxqueue.codec.encode_list`).
"""


from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Any, Generic, Self, TypeVar

from reactivex import Observable

from rxqueue.acks import AckBatch
from rxqueue.backends.base import Backend, Capability
from rxqueue.clock import Clock, system_clock
from rxqueue.codec import DEFAULT_CODEC, Codec
from rxqueue.demand import Demand
from rxqueue.errors import (
    BackendError,
    BuildError,
    InvalidOption,
    RxQueueError,
    UnsupportedOperation,
    WorkerError,
)
from rxqueue.streams import from_async_iterable
from rxqueue.task import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    Done,
    Started,
    Task,
    TaskId,
    Update,
)

Db = TypeVar("Db")
Cfg = TypeVar("Cfg")

FetcherFactory = Callable[[Any, Any, Demand], Any]
SinkFactory = Callable[[Any, Any], Any]
AckFn = Callable[[Any, Any, Task[Any], Update], Awaitable[Any] | Any]
ReleaseFn = Callable[[Any, Any, Sequence[Task[Any]]], Awaitable[None] | None]
GetFn = Callable[[Any, Any, TaskId], Awaitable[Task[Any] | None] | Task[Any] | None]
FamilyFn = Callable[[Any, Any, TaskId], Awaitable[Sequence[Task[Any]]] | Sequence[Task[Any]]]

_UNSET: Any = object()


class BackendBuilder(Generic[Db, Cfg]):
    """Builds a :class:`CustomBackend`; :meth:`build` names every missing part."""

    def __init__(self, config: Cfg | None = None) -> None:
        self._config = config
        self._db: Any = _UNSET
        self._fetcher: FetcherFactory | None = None
        self._sink: SinkFactory | None = None
        self._ack: AckFn | None = None
        self._release: ReleaseFn | None = None
        self._getter: GetFn | None = None
        self._family: FamilyFn | None = None
        self._capabilities: set[Capability] = set()
        self._queue = DEFAULT_QUEUE
        self._codec: Codec = DEFAULT_CODEC
        self._clock: Clock = system_clock
        self._max_attempts = DEFAULT_MAX_ATTEMPTS

    @classmethod
    def new(cls) -> BackendBuilder[Any, None]:
        return BackendBuilder()

    @classmethod
    def new_with_cfg(cls, config: Cfg) -> BackendBuilder[Any, Cfg]:
        """A builder whose fetcher, sink and acker receive ``config``."""
        return BackendBuilder(config)

    def database(self, db: Db) -> Self:
        """The connection or pool handed to the fetcher, sink and acker."""
        self._db = db
        return self

    def fetcher(self, factory: FetcherFactory) -> Self:
        """``factory(db, config, worker_ctx)`` returns an Observable or async iterable
        of ``Task`` (claimed) or ``None`` (nothing right now)."""
        self._fetcher = _callable("fetcher", factory)
        return self

    def sink(self, factory: SinkFactory) -> Self:
        """``factory(db, config)`` returns an Observer (``on_next(task)``) or an async
        callable ``(task) -> None`` that persists one task."""
        self._sink = _callable("sink", factory)
        return self

    def ack(self, ack: AckFn) -> Self:
        """``ack(db, config, task, update)`` records ``Started`` (the handler is
        running; optional to record), ``Done``, ``Retry``, ``Killed`` or ``Cancelled``.

        Return ``False`` when the task was no longer this worker's (its lease
        was lost, it was killed): the worker reports the late update as dropped.
        For a final outcome (``Done``, ``Killed``, ``Cancelled``), ``task.done_at``
        is when it ended, by the backend's clock. With ``Capability.DEPENDENCIES``
        a ``Done`` may carry ``spawn`` (tasks to store, args encoded already, in
        the same transaction and only if the Done is recorded) and ``join`` (a
        Waiting task that then waits for them too, after its own dependencies).
        """
        self._ack = _callable("ack", ack)
        return self

    def getter(self, get: GetFn) -> Self:
        """``get(db, config, task_id)`` returns the stored Task or None: Fetch by ID.

        Declares ``Capability.GET``, so ``backend.get`` and ``wait_for`` work.
        """
        self._getter = _callable("getter", get)
        self._capabilities.add(Capability.GET)
        return self

    def family(self, family: FamilyFn) -> Self:
        """``family(db, config, run_id)`` returns the task ``run_id`` and every task
        whose id starts with ``run_id + "/"``, in any queue, oldest first: a
        workflow run and its steps (``backend.family``, which workflow status reads).
        """
        self._family = _callable("family", family)
        return self

    def declare(self, *capabilities: Capability) -> Self:
        """Declare what the store honours (``Capability.DELAY``, ``PRIORITY``,
        ``RETRY``, ``DEPENDENCIES``): the conformance suite then holds the backend
        to it. ``DEPENDENCIES`` (workflows) also needs ``.getter``, ``.family`` and
        ``.ack``; :meth:`build` says which are missing."""
        for capability in capabilities:
            if not isinstance(capability, Capability):
                raise BuildError(f"declare() takes Capability values, got {capability!r}")
            if capability is Capability.UNIQUE:
                raise BuildError(
                    "a custom backend cannot declare Capability.UNIQUE: its sink stores "
                    "tasks one by one and cannot answer a taken key with the holder's id"
                )
            if capability is Capability.LIMITS:
                raise BuildError(
                    "a custom backend cannot declare Capability.LIMITS: rate_limit= and "
                    "max_running= are options of the stores that enforce them in their claim"
                )
        self._capabilities.update(capabilities)
        return self

    def release(self, release: ReleaseFn) -> Self:
        """``release(db, config, tasks)`` returns claimed-but-unstarted tasks on stop."""
        self._release = _callable("release", release)
        return self

    def queue(self, name: str) -> Self:
        self._queue = name
        return self

    def codec(self, codec: Codec) -> Self:
        self._codec = codec
        return self

    def clock(self, clock: Clock) -> Self:
        self._clock = clock
        return self

    def max_attempts(self, n: int) -> Self:
        self._max_attempts = n
        return self

    def build(self) -> CustomBackend:
        missing = [
            part
            for part, value in (
                ("database", self._db is not _UNSET),
                ("fetcher", self._fetcher is not None),
                ("sink", self._sink is not None),
            )
            if not value
        ]
        if missing:
            calls = "".join(f".{part}(...)" for part in missing)
            raise BuildError(
                f"cannot build the backend: no {' and no '.join(missing)} given; "
                f"call {calls} before .build()"
            )
        if Capability.DEPENDENCIES in self._capabilities:
            needs = [
                f".{part}(...) ({why})"
                for part, value, why in (
                    ("getter", self._getter, "a push checks that its dependencies are stored"),
                    ("family", self._family, "workflow status lists a run's steps"),
                    ("ack", self._ack, "a Done releases the tasks that wait for it"),
                )
                if value is None
            ]
            if needs:
                raise BuildError(
                    "cannot build the backend: Capability.DEPENDENCIES (workflows) also "
                    f"needs {' and '.join(needs)}; give them before .build()"
                )
        assert self._fetcher is not None and self._sink is not None
        return CustomBackend(
            db=self._db,
            config=self._config,
            fetcher=self._fetcher,
            sink=self._sink,
            ack=self._ack,
            release=self._release,
            getter=self._getter,
            family=self._family,
            capabilities=frozenset(self._capabilities),
            queue=self._queue,
            codec=self._codec,
            clock=self._clock,
            max_attempts=self._max_attempts,
        )


class CustomBackend(Backend):
    """A backend made of user functions; see :class:`BackendBuilder`."""

    def __init__(
        self,
        *,
        db: Any,
        config: Any,
        fetcher: FetcherFactory,
        sink: SinkFactory,
        ack: AckFn | None,
        release: ReleaseFn | None,
        getter: GetFn | None = None,
        family: FamilyFn | None = None,
        capabilities: frozenset[Capability] = frozenset(),
        queue: str,
        codec: Codec,
        clock: Clock,
        max_attempts: int,
    ) -> None:
        super().__init__(queue=queue, codec=codec, clock=clock, max_attempts=max_attempts)
        self.db = db
        self.config = config
        self._fetcher_factory = fetcher
        self._sink_factory = sink
        self._sink_instance: Any = None
        self._ack = ack
        self._release = release
        self._getter = getter
        self._family_of = family
        self.capabilities = capabilities  # type: ignore[misc]  # per instance, by the builder
        # Set by an ack that may have released tasks, read (once) by has_work; a list,
        # so that pipe() copies share it.
        self._maybe_released: list[bool] = [False]

    def _fetcher(self, demand: Demand) -> Observable[Any]:
        source = self._fetcher_factory(self.db, self.config, demand)
        if isinstance(source, Observable):
            return source
        if isinstance(source, AsyncIterable):
            unused = [source]

            def fresh() -> AsyncIterable[Any]:
                # ops.retry resubscribes: each subscription needs its own generator.
                if unused:
                    return unused.pop()
                made = self._fetcher_factory(self.db, self.config, demand)
                if not isinstance(made, AsyncIterable):
                    raise WorkerError(
                        f"the fetcher returned {type(made).__name__} the second time"
                    )
                return made

            return from_async_iterable(fresh, demand)
        raise WorkerError(
            f"the fetcher returned {type(source).__name__}; it must return a reactivex "
            "Observable or an async iterable (e.g. an async generator) of Task | None"
        )

    def _sink_target(self) -> Any:
        if self._sink_instance is None:
            self._sink_instance = self._sink_factory(self.db, self.config)
        return self._sink_instance

    async def _store(
        self, tasks: Sequence[Task[Any]], payloads: Sequence[bytes], connection: Any = None
    ) -> list[TaskId]:
        target = self._sink_target()
        write = getattr(target, "on_next", None) or target
        if not callable(write):
            raise BackendError(
                f"the sink factory returned {type(target).__name__}; it must return an "
                "Observer (with on_next) or an async callable taking a Task"
            )
        order: Sequence[int] = range(len(tasks))
        if Capability.DEPENDENCIES in self.capabilities and any(t.depends_on for t in tasks):
            order = await self._dependencies_first(tasks)
        for index in order:
            task, payload = tasks[index], payloads[index]
            try:
                result = write(task.evolve(args=payload))
                if inspect.isawaitable(result):
                    await result
            except RxQueueError:
                raise  # the sink's own answer (TaskExists, ...) stands
            except Exception as exc:
                raise BackendError(f"the sink failed to store task {task.id}: {exc}") from exc
        self._local().doorbell.notify()
        return [task.id for task in tasks]

    async def report(self, batch: AckBatch) -> list[TaskId]:
        if self._ack is None:
            return []
        refused: list[TaskId] = []
        now = self.clock()
        updates: list[tuple[Task[Any], Update]] = [(task, Started(now)) for task in batch.started]
        spawns = {parent.id: (spawn, join) for parent, spawn, join in batch.spawned}
        for task, result in batch.done:
            spawn, join = spawns.get(task.id, ((), None))
            updates.append((task.evolve(done_at=now), Done(result, spawn, join)))
        updates += batch.retried
        updates += [(task.evolve(done_at=now), killed) for task, killed in batch.killed]
        updates += [(task.evolve(done_at=now), cancel) for task, cancel in batch.cancelled]
        for task, outcome in updates:
            answer = self._ack(self.db, self.config, task, outcome)
            if inspect.isawaitable(answer):
                answer = await answer
            if answer is False:
                refused.append(task.id)
        local = self._local()
        if Capability.DEPENDENCIES in self.capabilities and batch.done:
            # A Done may have released dependants or stored spawned tasks.
            self._maybe_released[0] = True
            local.doorbell.notify()
        local.finished(batch.finished)
        return refused

    async def has_work(self, horizon: float) -> bool | None:
        """None (cannot tell), but True once after an ack that may have released
        tasks (with ``Capability.DEPENDENCIES``), so ``run_until_idle`` claims again."""
        released, self._maybe_released[0] = self._maybe_released[0], False
        return True if released else None

    async def _dependencies_first(self, tasks: Sequence[Task[Any]]) -> list[int]:
        """The order in which the sink stores ``tasks``: each after those of the call
        it depends on. Refuses, before storing any, a dependency neither in the call
        nor stored (the getter tells), and tasks of one call that wait for each other."""
        index = {task.id: i for i, task in enumerate(tasks)}
        for task in tasks:
            for parent in task.depends_on:
                if parent not in index and await self._get(parent) is None:
                    raise InvalidOption(
                        f"task {task.id!r} depends on {parent!r}, which is not stored: push "
                        "the tasks it depends on first, or in the same call"
                    )
        order: list[int] = []
        state = [0] * len(tasks)  # 0: not placed, 1: being placed, 2: placed
        for start in range(len(tasks)):
            if state[start]:
                continue
            state[start] = 1
            stack = [(start, iter(tasks[start].depends_on))]
            while stack:
                i, parents = stack[-1]
                for parent in parents:
                    j = index.get(parent)
                    if j is None or state[j] == 2:
                        continue
                    if state[j] == 1:
                        raise InvalidOption(
                            f"tasks {tasks[j].id!r} and {tasks[i].id!r} wait for each other "
                            "(depends_on makes a cycle): none would ever run"
                        )
                    state[j] = 1
                    stack.append((j, iter(tasks[j].depends_on)))
                    break
                else:
                    stack.pop()
                    state[i] = 2
                    order.append(i)
        return order

    async def release(self, tasks: Sequence[Task[Any]], worker: str) -> None:
        if self._release is not None:
            result = self._release(self.db, self.config, tasks)
            if inspect.isawaitable(result):
                await result

    async def _get(self, task_id: TaskId) -> Task[Any] | None:
        if self._getter is None:
            return None
        found = self._getter(self.db, self.config, task_id)
        if inspect.isawaitable(found):
            found = await found
        if found is not None and not isinstance(found, Task):
            raise BackendError(
                f"the getter returned {type(found).__name__} for {task_id!r}; "
                "it must return a Task or None"
            )
        return found

    async def family(self, run_id: TaskId) -> list[Task[Any]]:
        """The task ``run_id`` and every task whose id starts with ``run_id + "/"``,
        oldest first: needs the builder's ``.family(...)`` (not ``list``)."""
        if self._family_of is None:
            raise UnsupportedOperation(
                f"{type(self).__name__} cannot list a workflow run's tasks: give the "
                "builder .family(fn), fn(db, config, run_id) -> list[Task]"
            )
        await self.open()
        return [self._shown(task) for task in await self._family(run_id)]

    async def _family(self, run_id: TaskId) -> list[Task[Any]]:
        if self._family_of is None:
            return []
        found = self._family_of(self.db, self.config, run_id)
        if inspect.isawaitable(found):
            found = await found
        tasks = list(found)
        for task in tasks:
            if not isinstance(task, Task):
                raise BackendError(
                    f"the family lister returned {type(task).__name__} for {run_id!r}; "
                    "it must return a list of Task"
                )
        return tasks


def _callable(part: str, value: Any) -> Any:
    if not callable(value):
        raise BuildError(f"{part}() takes a function, got {type(value).__name__}")
    return value
