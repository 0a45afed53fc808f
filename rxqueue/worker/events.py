"""What a worker tells the world, as frozen records on ``worker.events``.

Times are the worker clock's epoch seconds. Events are built only while
someone observes them, so an unobserved worker pays nothing for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from rxqueue.task import TaskId


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a run did. ``failed`` counts attempts that did not succeed (retried + killed)."""

    done: int
    failed: int
    retried: int
    killed: int
    elapsed: float
    released: int = 0

    @property
    def processed(self) -> int:
        return self.done + self.retried + self.killed

    @property
    def tasks_per_second(self) -> float:
        return self.processed / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Started:
    worker: str
    at: float


@dataclass(frozen=True, slots=True)
class Idle:
    worker: str
    at: float


@dataclass(frozen=True, slots=True)
class Succeeded:
    worker: str
    task_id: TaskId
    attempt: int
    enqueued_at: float  # when the task became runnable: max(created_at, run_at)
    started_at: float
    finished_at: float


@dataclass(frozen=True, slots=True)
class Failed:
    """An attempt raised; followed by Retrying or Killed."""

    worker: str
    task_id: TaskId
    attempt: int
    error: str
    started_at: float
    finished_at: float


@dataclass(frozen=True, slots=True)
class Retrying:
    worker: str
    task_id: TaskId
    attempt: int
    at: float
    error: str


@dataclass(frozen=True, slots=True)
class Killed:
    worker: str
    task_id: TaskId
    attempt: int
    error: str


@dataclass(frozen=True, slots=True)
class FetcherError:
    """The fetcher raised; the worker stops unless the backend was piped through ops.retry."""

    worker: str
    error: str


@dataclass(frozen=True, slots=True)
class AckError:
    """Reporting outcomes to the store failed; leases will bring the tasks back."""

    worker: str
    error: str
    lost_updates: int


@dataclass(frozen=True, slots=True)
class Stopped:
    worker: str
    at: float
    summary: RunSummary


Event: TypeAlias = (
    Started | Idle | Succeeded | Failed | Retrying | Killed | FetcherError | AckError | Stopped
)
