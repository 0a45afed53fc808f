"""rxqueue: background tasks as reactive streams.

Any store becomes a task backend from a fetcher (an Observable of claimed
tasks) and a sink (where new tasks go); a worker subscribes the fetcher to a
handler pipeline. See README.md for the tour.
"""

from rxqueue import backoff, metrics, ops, sources
from rxqueue.acks import AckBatch
from rxqueue.backends import Backend, Capability, connect
from rxqueue.backends.custom import BackendBuilder, CustomBackend
from rxqueue.backends.memory import MemoryBackend
from rxqueue.clock import Clock, ManualClock
from rxqueue.codec import Codec, JsonCodec
from rxqueue.demand import Demand, Ledger
from rxqueue.errors import (
    Abort,
    BackendClosed,
    BackendError,
    BackendUnavailable,
    BuildError,
    CodecError,
    FetcherTimeout,
    HandlerTimeout,
    InvalidOption,
    InvalidTransition,
    RetryAfter,
    RxQueueError,
    SchemaError,
    TaskExists,
    TaskNotFound,
    UnsupportedOperation,
    WorkerError,
)
from rxqueue.stats import QueueStats
from rxqueue.streams import Doorbell, Wakeup, from_async_iterable, poll, to_async_iterable
from rxqueue.task import (
    ACTIVE,
    READY,
    TERMINAL,
    Cancelled,
    Done,
    Killed,
    Outcome,
    Progress,
    PushOptions,
    Retry,
    Started,
    Status,
    Task,
    TaskId,
    Update,
    dependency_failed,
)
from rxqueue.worker import events, layers
from rxqueue.worker.builder import WorkerBuilder
from rxqueue.worker.context import TaskContext, WorkerContext
from rxqueue.worker.events import RunSummary
from rxqueue.worker.monitor import Monitor
from rxqueue.worker.progress import ProgressBar
from rxqueue.worker.worker import Worker, WorkerSettings
from rxqueue.workflow import (
    DagFlow,
    Node,
    Router,
    StepStatus,
    Workflow,
    WorkflowStatus,
    cancel_workflow,
    workflow_status,
)

__version__ = "0.1.0"

__all__ = [
    "ACTIVE",
    "READY",
    "TERMINAL",
    "Abort",
    "AckBatch",
    "Backend",
    "BackendBuilder",
    "BackendClosed",
    "BackendError",
    "BackendUnavailable",
    "BuildError",
    "Cancelled",
    "Capability",
    "Clock",
    "Codec",
    "CodecError",
    "CustomBackend",
    "Demand",
    "Done",
    "Doorbell",
    "FetcherTimeout",
    "HandlerTimeout",
    "InvalidOption",
    "InvalidTransition",
    "JsonCodec",
    "Killed",
    "Ledger",
    "ManualClock",
    "MemoryBackend",
    "Monitor",
    "Outcome",
    "Progress",
    "ProgressBar",
    "PushOptions",
    "QueueStats",
    "Retry",
    "RetryAfter",
    "RunSummary",
    "RxQueueError",
    "SchemaError",
    "Started",
    "Status",
    "Task",
    "TaskContext",
    "TaskExists",
    "TaskId",
    "TaskNotFound",
    "UnsupportedOperation",
    "Update",
    "Wakeup",
    "Worker",
    "WorkerBuilder",
    "Workflow",
    "WorkflowStatus",
    "DagFlow",
    "Node",
    "Router",
    "StepStatus",
    "workflow_status",
    "cancel_workflow",
    "dependency_failed",
    "WorkerContext",
    "WorkerError",
    "WorkerSettings",
    "backoff",
    "connect",
    "events",
    "from_async_iterable",
    "layers",
    "metrics",
    "ops",
    "poll",
    "sources",
    "to_async_iterable",
]
