"""One error root for rxqueue; each subclass is named for what the user can do.

Driver errors (sqlite3, asyncpg, redis) never escape a backend: they are
wrapped in :class:`BackendError` with ``raise ... from exc``.
"""

from __future__ import annotations


class RxQueueError(Exception):
    """Root of every error rxqueue raises on purpose."""


class BuildError(RxQueueError):
    """A builder was asked to build with a part missing or malformed."""


class CodecError(RxQueueError):
    """A payload could not be encoded (at push) or decoded (at run).

    Encoding errors are raised to the caller of ``push``; decoding errors kill
    the one task whose payload is bad, never the worker.
    """


class BackendError(RxQueueError):
    """The store refused or failed an operation; the driver error is ``__cause__``."""


class TaskNotFound(BackendError):
    """No task with that id exists in this backend's queue."""


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
