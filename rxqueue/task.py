"""The task model: frozen records, statuses, outcomes and push options."""

from __future__ import annotations

import enum
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Generic, TypeAlias, TypeVar

import orjson

from rxqueue.clock import to_timestamp
from rxqueue.errors import InvalidOption

T = TypeVar("T")
TaskId: TypeAlias = str

DEFAULT_QUEUE: Final = "default"
DEFAULT_MAX_ATTEMPTS: Final = 3


class Status(enum.StrEnum):
    """Where a task is in its life. Values are stored as text by every backend."""

    PENDING = "Pending"  # waiting, maybe until run_at
    QUEUED = "Queued"  # claimed by a worker, not started yet
    RUNNING = "Running"
    DONE = "Done"
    FAILED = "Failed"  # an attempt failed; will run again at run_at
    KILLED = "Killed"  # attempts exhausted or aborted
    CANCELLED = "Cancelled"  # by request (backend.cancel); never retried
    WAITING = "Waiting"  # for the tasks in its depends_on to be Done (workflow steps)


TERMINAL: Final = frozenset({Status.DONE, Status.KILLED, Status.CANCELLED})
ACTIVE: Final = frozenset({Status.QUEUED, Status.RUNNING})
READY: Final = frozenset({Status.PENDING, Status.FAILED})


class _IdSource:
    """UUIDv7 text ids: sortable by creation time, unique across processes.

    48 bits of milliseconds, a 12-bit counter (``rand_a``) that keeps ids from
    one process strictly increasing within a millisecond, and 62 random bits.
    ``random`` (reseeded in forked children) rather than ``os.urandom``: ids
    are not secrets, and the system call costs a third of the time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._seq = 0

    def __call__(self) -> TaskId:
        ms = time.time_ns() // 1_000_000
        with self._lock:
            if ms <= self._last_ms:
                self._seq += 1
                if self._seq > 0xFFF:  # counter exhausted: borrow the next millisecond
                    self._last_ms += 1
                    self._seq = 0
                ms = self._last_ms
            else:
                self._last_ms, self._seq = ms, 0
            seq = self._seq
        tail = random.getrandbits(62) | 0x8000000000000000  # variant bits 10
        return "%08x-%04x-%04x-%04x-%012x" % (  # noqa: UP031  (measured faster than f-strings)
            ms >> 16,
            ms & 0xFFFF,
            0x7000 | seq,
            tail >> 48,
            tail & 0xFFFFFFFFFFFF,
        )


new_task_id = _IdSource()


@dataclass(frozen=True, slots=True, kw_only=True)
class Task(Generic[T]):
    """One unit of work and its state in the store.

    Times are epoch seconds (see :mod:`rxqueue.clock`). ``args`` is the payload;
    a fetcher may hand it over still encoded (``bytes``), in which case the
    worker decodes it, so that a bad payload fails this task and nothing else.
    """

    id: TaskId = field(default_factory=new_task_id)
    queue: str = DEFAULT_QUEUE
    args: T
    status: Status = Status.PENDING
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    priority: int = 0
    run_at: float = field(default_factory=time.time)
    created_at: float = field(default_factory=time.time)
    lock_by: str | None = None
    lock_at: float | None = None
    done_at: float | None = None
    last_error: str | None = None
    result: Any = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # While the task is unfinished (and until ``unique_until``, finished or not), no
    # other task of its queue may hold ``unique_key``: a push with it returns this id.
    unique_key: str | None = None
    unique_until: float | None = None
    # What the handler last reported with ``await ctx.progress(fraction, note)``.
    progress: float | None = None
    progress_note: str | None = None
    # Stored Waiting until every one of these tasks is Done; its payload then becomes
    # the list of their results, in this order, and its delay (run_at - created_at)
    # counts from then. One of them Killed or Cancelled kills it. Read only by stores.
    depends_on: tuple[TaskId, ...] = ()

    def evolve(self, **changes: Any) -> Task[T]:
        """A copy with ``changes`` applied (the record itself never changes)."""
        return replace(self, **changes)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def _repr_html_(self) -> str:
        """A notebook shows a task as a table of its fields (see :mod:`rxqueue._html`)."""
        from rxqueue._html import task_table

        return task_table(self)


FIELDS: Final = tuple(Task.__dataclass_fields__)
_SETTERS: Final = {name: getattr(Task, name).__set__ for name in FIELDS}
_DEFAULTS: Final[dict[str, Any]] = {
    "queue": DEFAULT_QUEUE,
    "status": Status.PENDING,
    "attempts": 0,
    "max_attempts": DEFAULT_MAX_ATTEMPTS,
    "priority": 0,
    "lock_by": None,
    "lock_at": None,
    "done_at": None,
    "last_error": None,
    "result": None,
    "unique_key": None,
    "unique_until": None,
    "progress": None,
    "progress_note": None,
    "depends_on": (),
}


def task_reader(
    columns: Sequence[str],
    convert: Mapping[str, Callable[[Any], Any]] | None = None,
    *,
    attributes: bool = False,
) -> Callable[[Any], Task[Any]]:
    """A fast ``row -> Task`` for rows whose values are the fields named by ``columns``.

    Every backend turns stored rows into tasks through one of these: fields are
    matched by name once, when the reader is made, so a row costs one setter
    call per field and no ``__init__`` (about 0.9 µs against 2.4 µs). Fields a
    row lacks take their defaults; ``convert[name]`` maps a stored value (text
    status, JSON metadata, ...) to the field's type. With ``attributes``, the
    reader takes an object and reads ``obj.<column>`` instead of ``row[i]``.
    """
    unknown = [name for name in columns if name not in _SETTERS]
    if unknown:
        raise ValueError(f"task_reader: {unknown} are not Task fields ({', '.join(FIELDS)})")
    missing = [name for name in FIELDS if name not in columns]
    if "args" in missing or "id" in missing:
        raise ValueError("task_reader: rows must hold at least id and args")
    converters = convert or {}
    # Generated once per reader, as dataclasses generates __init__: one setter call
    # per column, no loop, no per-field branch (a loop over 17 setters costs twice).
    namespace: dict[str, Any] = {"new": object.__new__, "Task": Task, "default": _default}
    lines = ["def read(row):", "    task = new(Task)"]
    for index, name in enumerate(columns):
        namespace[f"set_{name}"] = _SETTERS[name]
        value = f"row.{name}" if attributes else f"row[{index}]"
        if name in converters:
            namespace[f"convert_{name}"] = converters[name]
            value = f"convert_{name}({value})"
        lines.append(f"    set_{name}(task, {value})")
    for name in missing:
        namespace[f"set_{name}"] = _SETTERS[name]
        lines.append(f"    set_{name}(task, default({name!r}))")
    lines.append("    return task")
    exec("\n".join(lines), namespace)  # the source is built above from field names only
    read: Callable[[Any], Task[Any]] = namespace["read"]
    read.__doc__ = f"A Task from a row of ({', '.join(columns)})."
    return read


def _default(name: str) -> Any:
    if name in _DEFAULTS:
        return _DEFAULTS[name]
    if name == "metadata":
        return {}
    if name in ("run_at", "created_at"):
        return time.time()
    raise AssertionError(name)  # id and args are required


read_fields = task_reader(FIELDS)
"""A Task from every field's value, in declaration order (``FIELDS``)."""


def task_from_fields(*values: Any) -> Task[Any]:
    """A Task from every field's value, in declaration order (``FIELDS``)."""
    return read_fields(values)


# --- validation: bad input is refused before anything is stored ------------------------

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1  # the range every store (PostgreSQL integer) holds


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_int(name: str, value: Any, *, low: int = _INT_MIN, high: int = _INT_MAX) -> int:
    """``value`` if it is an int in ``[low, high]``; else :class:`InvalidOption` naming it."""
    if not _is_int(value):
        raise InvalidOption(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise InvalidOption(f"{name} must be between {low} and {high}, got {value!r}")
    return int(value)


def check_seconds(name: str, value: Any, *, minimum: float | None = None) -> float:
    """``value`` as float if it is a finite number (>= ``minimum``); else InvalidOption."""
    if not _is_number(value) or not math.isfinite(value):
        raise InvalidOption(
            f"{name} must be a finite number of seconds, got {value!r} ({type(value).__name__})"
        )
    if minimum is not None and value < minimum:
        raise InvalidOption(f"{name} must be >= {minimum:g} seconds, got {value!r}")
    return float(value)


def check_metadata(value: Any) -> dict[str, Any]:
    """``value`` as a dict if it is a JSON object with text keys; else InvalidOption."""
    if not isinstance(value, Mapping):
        raise InvalidOption(f"metadata must be a dict, got {type(value).__name__}")
    metadata = dict(value)
    bad_keys = [key for key in metadata if not isinstance(key, str)]
    if bad_keys:
        raise InvalidOption(f"metadata keys must be strings, got {bad_keys[0]!r}")
    try:
        encoded = orjson.dumps(metadata)
    except TypeError as exc:
        raise InvalidOption(f"metadata must be JSON-serialisable: {exc}") from exc
    if b"null" in encoded and orjson.loads(encoded) != metadata:  # NaN/inf became null
        raise InvalidOption("metadata must be JSON-serialisable: it holds NaN or Infinity")
    return metadata


def check_unique_key(value: Any, name: str = "unique_key") -> str:
    """``value`` if it is a non-empty string of at most 255 characters; else InvalidOption."""
    if not isinstance(value, str) or not value or len(value) > 255:
        raise InvalidOption(
            f"{name} must be a non-empty string of at most 255 characters, got {value!r}"
        )
    return value


def check_task_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise InvalidOption(
            f"task_id must be a non-empty string of at most 255 characters, got {value!r}"
        )
    return value


def dependency_failed(task_id: TaskId, status: str, error: str | None) -> str:
    """Why a task is killed because its dependency ``task_id`` ended ``status``
    (Killed or Cancelled) with ``error``: every store writes this same reason, and
    a chain of dependants carries the first failure's reason down unchanged."""
    if error is not None and error.startswith("dependency "):
        return error
    return f"dependency {task_id} ended {status}" + (f": {error}" if error else "")


def check_depends_on(task_id: TaskId, depends_on: Any) -> tuple[TaskId, ...]:
    """``depends_on`` as a tuple of distinct task ids other than ``task_id``."""
    if isinstance(depends_on, str) or not isinstance(depends_on, Sequence):
        raise InvalidOption(f"depends_on must be a sequence of task ids, got {depends_on!r}")
    ids = tuple(depends_on)
    for each in ids:
        check_task_id(each)
    if len(set(ids)) != len(ids):
        raise InvalidOption(f"depends_on names a task twice: {list(ids)!r}")
    if task_id in ids:
        raise InvalidOption("a task cannot depend on itself")
    return ids


def validate_task(task: Task[Any]) -> None:
    """Refuse a Task whose fields no store could hold (``send`` calls this)."""
    try:
        check_task_id(task.id)
        if not isinstance(task.queue, str) or not task.queue:
            raise InvalidOption(f"queue must be a non-empty string, got {task.queue!r}")
        check_int("attempts", task.attempts, low=0)
        check_int("max_attempts", task.max_attempts, low=1)
        check_int("priority", task.priority)
        check_seconds("run_at", task.run_at)
        check_seconds("created_at", task.created_at)
        if task.metadata:
            check_metadata(task.metadata)
        if task.unique_key is not None:
            check_unique_key(task.unique_key)
        if task.unique_until is not None:
            check_seconds("unique_until", task.unique_until)
        if task.depends_on:
            check_depends_on(task.id, task.depends_on)
    except InvalidOption as exc:
        raise InvalidOption(f"task {task.id!r}: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class PushOptions:
    """How a pushed task is scheduled. ``delay`` and ``run_at`` are exclusive.

    ``unique_key`` makes the push idempotent: while a task of the queue holding
    that key is unfinished, or for ``unique_for`` seconds after the push, finished
    or not, pushing it again stores nothing and returns the holder's id.

    Every option is checked here, before anything is stored: a malformed one
    raises :class:`~rxqueue.errors.InvalidOption` naming it.
    """

    delay: float | None = None
    run_at: float | datetime | None = None
    priority: int = 0
    max_attempts: int | None = None
    metadata: Mapping[str, Any] | None = None
    task_id: TaskId | None = None
    unique_key: str | None = None
    unique_for: float | None = None

    def __post_init__(self) -> None:
        if self.delay is not None and self.run_at is not None:
            raise InvalidOption("give either delay= or run_at=, not both")
        if self.delay is not None:
            check_seconds("delay", self.delay, minimum=0.0)
        run_at = self.run_at
        if not (run_at is None or isinstance(run_at, datetime)) and (
            not _is_number(run_at) or not math.isfinite(run_at)
        ):
            raise InvalidOption(
                f"run_at must be a datetime or a finite epoch timestamp, got {run_at!r}"
            )
        check_int("priority", self.priority)
        if self.max_attempts is not None:
            check_int("max_attempts", self.max_attempts, low=1)
        if self.metadata is not None:
            object.__setattr__(self, "metadata", check_metadata(self.metadata))
        if self.task_id is not None:
            check_task_id(self.task_id)
        if self.unique_key is not None:
            check_unique_key(self.unique_key)
        if self.unique_for is not None:
            check_seconds("unique_for", self.unique_for, minimum=0.0)

    def build(
        self,
        args: Any,
        *,
        queue: str,
        now: float,
        max_attempts: int,
        unique_key: str | None = None,
    ) -> Task[Any]:
        """The task to store; ``unique_key`` (checked by the caller) overrides the option's."""
        key = unique_key or self.unique_key
        unique_for = self.unique_for
        run_at = now + (self.delay or 0.0) if self.run_at is None else to_timestamp(self.run_at)
        return read_fields(  # every field, in declaration order
            (
                self.task_id or new_task_id(),
                queue,
                args,
                Status.PENDING,
                0,
                self.max_attempts or max_attempts,
                self.priority,
                run_at,
                now,
                None,
                None,
                None,
                None,
                None,
                dict(self.metadata or {}),
                key,
                None if key is None or unique_for is None else now + unique_for,
                None,
                None,
                (),
            )
        )


# Outcomes: what the worker's handler pipeline reports back to the acker.


@dataclass(frozen=True, slots=True)
class Done:
    """The handler returned; ``result`` is stored if the codec can encode it.

    ``spawn``: tasks stored in the same transaction that records this Done, and
    only if it is recorded (a workflow's fan-out); ``join``: a Waiting task that
    also waits for every spawned task, after its own dependencies, in spawn order.
    """

    result: Any = None
    spawn: tuple[Task[Any], ...] = ()
    join: TaskId | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """The attempt failed; run again at ``at`` (status ``Failed`` until then)."""

    at: float
    error: str


@dataclass(frozen=True, slots=True)
class Killed:
    """No further attempts: exhausted, aborted, undecodable or cancelled."""

    error: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Cancelled by request: the attempt was cut short (or never started); final."""

    reason: str

    @property
    def error(self) -> str:
        return f"cancelled: {self.reason}"


Outcome: TypeAlias = Done | Retry | Killed | Cancelled


@dataclass(frozen=True, slots=True)
class Started:
    """Not an outcome: the handler began (status ``Running``).

    The worker sends it in the same ack batch as outcomes, and only for tasks
    still running at flush time, so a fast task costs no extra write.
    """

    at: float


@dataclass(frozen=True, slots=True)
class Progress:
    """Not an outcome: how far the running handler got (``await ctx.progress(...)``).

    The worker writes the latest one per task with its next ack flush, at most
    every ``progress_interval`` seconds, so reporting often costs nothing.
    """

    fraction: float
    note: str | None = None


Update: TypeAlias = Started | Progress | Done | Retry | Killed | Cancelled
