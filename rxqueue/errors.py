"""One error root for rxqueue; each subclass is named for what the user can do.

Driver errors (sqlite3, asyncpg, redis) never escape a backend: they are
wrapped at the boundary with ``raise ... from exc``, as
:class:`BackendUnavailable` when trying again may succeed (a lock, a lost
connection) and as another :class:`BackendError` when it cannot (a read-only
file, a damaged schema). Retry loops retry only :class:`BackendUnavailable`.
"""

from __future__ import annotations


class RxQueueError(Exception):
    """Root of every error rxqueue raises on purpose."""


class BuildError(RxQueueError):
    """A builder was asked to build with a part missing or malformed."""


class InvalidOption(RxQueueError, ValueError):
    """A push option or task field is malformed; the message names it. Nothing was stored."""


class CodecError(RxQueueError):
    """A payload could not be encoded (at push) or decoded (at run).

    Encoding errors are raised to the caller of ``push``; decoding errors kill
    the one task whose payload is bad, never the worker.
    """


class BackendError(RxQueueError):
    """The store refused or failed an operation for good; the driver error is ``__cause__``.

    Trying the same operation again will fail the same way (a read-only file,
    a full disk, a damaged schema): something must be fixed first.
    """


class BackendUnavailable(BackendError):
    """The store could not be reached or was busy; the same operation may succeed later.

    A lock held too long, a lost connection, a server restarting.
    """


class BackendClosed(BackendError):
    """The backend was closed; open a new one."""


class TaskNotFound(BackendError):
    """No task with that id exists in this backend's queue."""


class TaskExists(RxQueueError, ValueError):
    """A task with that id is already stored; nothing was stored by this call."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(
            f"a task with id {task_id!r} already exists; leave task_id= unset for a new id"
        )


class InvalidTransition(RxQueueError, ValueError):
    """The task is not in a status from which that operation is allowed."""


class SchemaError(BackendError):
    """The store's schema is newer than this rxqueue understands, or is damaged."""


class FetcherTimeout(RxQueueError):
    """A fetcher emitted nothing within the time ``ops.timeout`` allows."""


class UnsupportedOperation(RxQueueError):
    """The backend does not declare the capability this call needs."""


class WorkerError(RxQueueError):
    """A worker was misconfigured or stopped because its fetcher failed for good."""


class Abort(RxQueueError):
    """Raised by a handler: fail this task now, no further attempts."""


class RetryAfter(RxQueueError):
    """Raised by a handler: try this task again after ``seconds``.

    Counts as an attempt; once ``max_attempts`` is reached the task is killed.
    """

    def __init__(self, seconds: float, reason: str = "") -> None:
        if seconds < 0:
            raise ValueError(f"RetryAfter needs seconds >= 0, got {seconds!r}")
        self.seconds = float(seconds)
        self.reason = reason
        super().__init__(reason or f"retry requested after {seconds:g}s")


class HandlerTimeout(RxQueueError):
    """The handler ran longer than the worker's ``timeout`` layer allows."""
