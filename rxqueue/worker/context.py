"""What a worker tells its fetcher and its handlers.

:class:`WorkerContext` is the worker's side of the demand contract: it is a
:class:`~rxqueue.demand.Ledger` (capacity, reservations, the ledger of
claimed-but-unstarted tasks) plus the worker's shared data.
:class:`TaskContext` is what a handler receives as its second argument.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from rxqueue.clock import Clock
from rxqueue.demand import Ledger
from rxqueue.errors import InvalidOption
from rxqueue.task import Progress, Task, TaskId

D = TypeVar("D")


class WorkerContext(Ledger):
    """Identity, capacity ledger and shared data of one running worker."""

    def __init__(
        self,
        name: str,
        *,
        concurrency: int,
        prefetch: int,
        clock: Clock,
        window: int | None = None,
        data: Mapping[type, Any] | None = None,
        on_dropped: Callable[[list[Task[Any]]], None] | None = None,
    ) -> None:
        super().__init__(
            name, prefetch=prefetch, clock=clock, window=window, on_dropped=on_dropped
        )
        self.concurrency = concurrency
        self._data: dict[type, Any] = dict(data or {})
        self.cancelled: set[TaskId] = set()  # tasks asked to cancel, until their outcome
        self.on_progress: Callable[[Task[Any], Progress], None] | None = None  # set by a run

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


class TaskContext:
    """What a handler sees of the task it runs and of its worker."""

    __slots__ = ("_batch", "task", "worker")

    def __init__(
        self, task: Task[Any], worker: WorkerContext, batch: Sequence[Task[Any]] = ()
    ) -> None:
        self.task = task
        self.worker = worker
        self._batch = batch

    @property
    def tasks(self) -> Sequence[Task[Any]]:
        """Every task of the call: the batch for a batch handler, else just ``task``."""
        return self._batch or (self.task,)

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

    async def progress(self, fraction: float, note: str | None = None) -> None:
        """Report how far this task got (0.0 to 1.0) and, optionally, a note.

        ``backend.get`` shows the latest report (written with the worker's next
        ack flush, at most every ``progress_interval``), and ``worker.events``
        emits each one as a ``Progress`` event. Report as often as you like.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise InvalidOption(f"progress must be a number from 0 to 1, got {fraction!r}")
        if not 0.0 <= fraction <= 1.0:  # NaN fails this too
            raise InvalidOption(f"progress must be a number from 0 to 1, got {fraction!r}")
        if note is not None and not isinstance(note, str):
            raise InvalidOption(f"a progress note must be a string, got {type(note).__name__}")
        hook = self.worker.on_progress
        if hook is not None:
            hook(self.task, Progress(float(fraction), note))

    @property
    def cancelled(self) -> bool:
        """True once this task was asked to cancel: a handler that polls may stop here
        (one that awaits sees ``CancelledError`` at its next await anyway)."""
        return self.task.id in self.worker.cancelled

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
