"""The typed ack batch: what a worker's flush asks its backend to record.

A worker collects updates (``Started`` markers and outcomes) and flushes them
as one :class:`AckBatch`, split by kind; a backend applies the whole batch in
one transaction. Kinds are sorted here and only here, so an unknown kind
fails loudly in one place for every backend. Workflows and cancellation add
kinds as new fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rxqueue.task import Cancelled, Done, Killed, Progress, Retry, Started, Task, TaskId, Update


@dataclass(slots=True)
class AckBatch:
    """One flush of one worker (``worker`` is its name; acks apply only to tasks it holds).

    ``done`` results are already encoded by the worker's codec (``None``: no
    result). Apply order: started, then outcomes, so a task started and
    finished within one batch ends finished.
    """

    worker: str
    started: list[Task[Any]] = field(default_factory=list)
    # Progress of tasks still running (no outcome: never refused as a lost lease).
    progress: list[tuple[Task[Any], Progress]] = field(default_factory=list)
    done: list[tuple[Task[Any], bytes | None]] = field(default_factory=list)
    retried: list[tuple[Task[Any], Retry]] = field(default_factory=list)
    killed: list[tuple[Task[Any], Killed]] = field(default_factory=list)
    cancelled: list[tuple[Task[Any], Cancelled]] = field(default_factory=list)
    # Per Done that spawns (a workflow's fan-out): the tasks to store with it, their
    # payloads encoded, and the Waiting task that joins them. A backend stores them
    # in the batch's transaction, before the Done, and only if the Done is recorded.
    spawned: list[tuple[Task[Any], tuple[Task[Any], ...], TaskId | None]] = field(
        default_factory=list
    )

    @classmethod
    def of(cls, worker: str, updates: Iterable[tuple[Task[Any], Update]]) -> AckBatch:
        """Sort updates by kind; ``Done.result`` must be ``bytes`` or ``None`` here."""
        batch = cls(worker)
        for task, update in updates:
            kind = type(update)
            if kind is Done:
                result = update.result  # type: ignore[union-attr]
                if result is not None and not isinstance(result, bytes):
                    raise TypeError(
                        f"AckBatch: Done.result of task {task.id} is {type(result).__name__}; "
                        "the worker encodes results before acking"
                    )
                batch.done.append((task, result))
                if update.spawn:  # type: ignore[union-attr]
                    batch.spawned.append((task, update.spawn, update.join))  # type: ignore[union-attr]
            elif kind is Started:
                batch.started.append(task)
            elif kind is Progress:
                batch.progress.append((task, update))  # type: ignore[arg-type]
            elif kind is Retry:
                batch.retried.append((task, update))  # type: ignore[arg-type]
            elif kind is Killed:
                batch.killed.append((task, update))  # type: ignore[arg-type]
            elif kind is Cancelled:
                batch.cancelled.append((task, update))  # type: ignore[arg-type]
            else:
                raise TypeError(
                    f"AckBatch: unknown update {update!r} for task {task.id}; "
                    "expected Started, Progress, Done, Retry, Killed or Cancelled"
                )
        return batch

    def __len__(self) -> int:
        return len(self.started) + len(self.progress) + self.outcomes

    @property
    def finished(self) -> list[TaskId]:
        """Ids of tasks this batch ends (Done, Killed, Cancelled): ``wait_for`` callers wake."""
        ended = [task.id for task, _ in self.done] + [task.id for task, _ in self.killed]
        return ended + [task.id for task, _ in self.cancelled]

    @property
    def outcomes(self) -> int:
        """How many outcomes (not Started markers) the batch holds."""
        return len(self.done) + len(self.retried) + len(self.killed) + len(self.cancelled)
