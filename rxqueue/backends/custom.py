"""Custom backends: any store, from a fetcher and a sink.

The apalis custom-backend page, in Python::

    backend = (BackendBuilder()            # or BackendBuilder.new_with_cfg(cfg)
               .database(db)               # any connection or pool object
               .fetcher(create_fetcher)    # (db, cfg, worker_ctx) -> Observable | AsyncIterable
               .sink(create_sink)          # (db, cfg) -> Observer | async callable(task)
               .ack(ack)                   # optional: (db, cfg, task, outcome) -> awaitable
               .build())

The sink receives tasks whose ``args`` are already encoded (``bytes``): store
them as they are, and have the fetcher hand them back the same way; the worker
decodes them, so a bad payload fails its task and never the worker.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from reactivex import Observable

from rxqueue.backends.base import Backend
from rxqueue.clock import Clock, system_clock
from rxqueue.codec import DEFAULT_CODEC, Codec
from rxqueue.errors import BackendError, BuildError, WorkerError
from rxqueue.streams import from_async_iterable
from rxqueue.task import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, Outcome, Started, Task, Update

if TYPE_CHECKING:
    from rxqueue.worker.context import WorkerContext

Db = TypeVar("Db")
Cfg = TypeVar("Cfg")

FetcherFactory = Callable[[Any, Any, "WorkerContext"], Any]
SinkFactory = Callable[[Any, Any], Any]
AckFn = Callable[[Any, Any, Task[Any], Outcome], Awaitable[None] | None]
ReleaseFn = Callable[[Any, Any, Sequence[Task[Any]]], Awaitable[None] | None]

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
        """``ack(db, config, task, outcome)`` records Done / Retry / Killed."""
        self._ack = _callable("ack", ack)
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
        assert self._fetcher is not None and self._sink is not None
        return CustomBackend(
            db=self._db,
            config=self._config,
            fetcher=self._fetcher,
            sink=self._sink,
            ack=self._ack,
            release=self._release,
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

    def _fetcher(self, ctx: WorkerContext) -> Observable[Any]:
        source = self._fetcher_factory(self.db, self.config, ctx)
        if isinstance(source, Observable):
            return source
        if isinstance(source, AsyncIterable):
            return from_async_iterable(source, ctx)
        raise WorkerError(
            f"the fetcher returned {type(source).__name__}; it must return a reactivex "
            "Observable or an async iterable (e.g. an async generator) of Task | None"
        )

    def _sink_target(self) -> Any:
        if self._sink_instance is None:
            self._sink_instance = self._sink_factory(self.db, self.config)
        return self._sink_instance

    async def _store(self, tasks: Sequence[Task[Any]], payloads: Sequence[bytes]) -> None:
        target = self._sink_target()
        write = getattr(target, "on_next", None) or target
        if not callable(write):
            raise BackendError(
                f"the sink factory returned {type(target).__name__}; it must return an "
                "Observer (with on_next) or an async callable taking a Task"
            )
        for task, payload in zip(tasks, payloads, strict=True):
            try:
                result = write(task.evolve(args=payload))
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                raise BackendError(f"the sink failed to store task {task.id}: {exc}") from exc

    async def report(self, updates: Sequence[tuple[Task[Any], Update]], ctx: WorkerContext) -> None:
        if self._ack is None:
            return
        for task, update in updates:
            if isinstance(update, Started):
                continue
            result = self._ack(self.db, self.config, task, update)
            if inspect.isawaitable(result):
                await result

    async def release(self, tasks: Sequence[Task[Any]], ctx: WorkerContext) -> None:
        if self._release is not None:
            result = self._release(self.db, self.config, tasks)
            if inspect.isawaitable(result):
                await result


def _callable(part: str, value: Any) -> Any:
    if not callable(value):
        raise BuildError(f"{part}() takes a function, got {type(value).__name__}")
    return value
