"""What a worker tells the world, as frozen records on ``worker.events``.

Times are the worker clock's epoch seconds. Events are built only while
someone observes them, so an unobserved worker pays nothing for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from rxqueue._html import table
from rxqueue.task import TaskId


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a run did, as the store recorded it.

    ``failed`` counts attempts that did not succeed (retried + killed);
    ``released`` tasks went back unstarted; ``lost`` outcomes were not recorded
    (the lease had expired, or the store failed: see ``LeaseLost``/``AckError``).
    """

    done: int
    failed: int
    retried: int
    killed: int
    elapsed: float
    released: int = 0
    lost: int = 0
    cancelled: int = 0

    @property
    def processed(self) -> int:
        return self.done + self.retried + self.killed + self.cancelled

    @property
    def tasks_per_second(self) -> float:
        return self.processed / self.elapsed if self.elapsed > 0 else 0.0

    def _repr_html_(self) -> str:
        """A notebook shows a summary as a table."""
        rows = [
            ("done", self.done),
            ("retried", self.retried),
            ("killed", self.killed),
            ("cancelled", self.cancelled),
            ("released", self.released),
            ("lost", self.lost),
            ("elapsed", f"{self.elapsed:.3f} s"),
            ("tasks/s", f"{self.tasks_per_second:,.0f}"),
        ]
        return table(rows, caption="RunSummary")


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
class Cancelled:
    """The task was cancelled by request (``backend.cancel`` or ``worker.cancel``)."""

    worker: str
    task_id: TaskId
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Progress:
    """A running handler reported how far it got (``await ctx.progress(...)``)."""

    worker: str
    task_id: TaskId
    fraction: float
    note: str | None


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
class SourceError:
    """A source run beside the worker (``WorkerBuilder.cron``) failed, or its task
    could not be stored. The worker goes on; a source that raised has ended."""

    worker: str
    error: str


@dataclass(frozen=True, slots=True)
class LeaseLost:
    """The store refused an update: this worker no longer held the task.

    Its lease expired (the handler blocked the event loop, or the heartbeat
    could not reach the store, for longer than ``lease_timeout``) and the task
    was reclaimed, so another attempt may run or have run. ``finished`` says the
    refused update was this attempt's outcome, which is dropped.
    """

    worker: str
    task_id: TaskId
    finished: bool


@dataclass(frozen=True, slots=True)
class Stopped:
    worker: str
    at: float
    summary: RunSummary


Event: TypeAlias = (
    Started
    | Idle
    | Succeeded
    | Failed
    | Retrying
    | Killed
    | Cancelled
    | Progress
    | FetcherError
    | AckError
    | LeaseLost
    | SourceError
    | Stopped
)
