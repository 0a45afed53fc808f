"""rxqueue: background tasks as reactive streams.

Any store becomes a task backend from a fetcher (an Observable of claimed
tasks) and a sink (where new tasks go); a worker subscribes the fetcher to a
handler pipeline. See README.md for the tour.
"""

from rxqueue import backoff, ops
from rxqueue.backends import Backend, Capability, connect
from rxqueue.backends.custom import BackendBuilder, CustomBackend
from rxqueue.backends.memory import MemoryBackend
from rxqueue.clock import Clock, ManualClock
from rxqueue.codec import Codec, JsonCodec
from rxqueue.errors import (
    Abort,
    BackendError,
    BuildError,
    CodecError,
    FetcherTimeout,
    HandlerTimeout,
    RetryAfter,
    RxQueueError,
    SchemaError,
    TaskNotFound,
    UnsupportedOperation,
    WorkerError,
)
from rxqueue.streams import Wakeup, from_async_iterable, poll, to_async_iterable
from rxqueue.task import (
    ACTIVE,
    READY,
    TERMINAL,
    Done,
    Killed,
    Outcome,
    PushOptions,
    Retry,
    Status,
    Task,
    TaskId,
)
from rxqueue.worker import events, layers
from rxqueue.worker.builder import WorkerBuilder
from rxqueue.worker.context import TaskContext, WorkerContext
from rxqueue.worker.events import RunSummary
from rxqueue.worker.monitor import Monitor
from rxqueue.worker.worker import Worker, WorkerSettings

__version__ = "0.1.0"

__all__ = [
    "ACTIVE",
    "READY",
    "TERMINAL",
    "Abort",
    "Backend",
    "BackendBuilder",
    "BackendError",
    "BuildError",
    "Capability",
    "Clock",
    "Codec",
    "CodecError",
    "CustomBackend",
    "Done",
    "FetcherTimeout",
    "HandlerTimeout",
    "JsonCodec",
    "Killed",
    "ManualClock",
    "MemoryBackend",
    "Monitor",
    "Outcome",
    "PushOptions",
    "Retry",
    "RetryAfter",
    "RunSummary",
    "RxQueueError",
    "SchemaError",
    "Status",
    "Task",
    "TaskContext",
    "TaskId",
    "TaskNotFound",
    "UnsupportedOperation",
    "Wakeup",
    "Worker",
    "WorkerBuilder",
    "WorkerContext",
    "WorkerError",
    "WorkerSettings",
    "backoff",
    "connect",
    "events",
    "from_async_iterable",
    "layers",
    "ops",
    "poll",
    "to_async_iterable",
]
