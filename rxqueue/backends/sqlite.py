"""SQLite backend: the embedded default, durable and crash-safe.

``rxqueue.connect("sqlite:///tasks.db", queue="emails")``, or
``SqliteBackend("tasks.db", queue="emails")``.

**Durability.** The file runs in WAL mode. With ``durability="normal"`` (the
default, ``synchronous=NORMAL``) a committed task survives a crash of any
process, but a power cut or an operating-system crash may lose the last few
transactions (the file itself stays intact). ``durability="full"``
(``synchronous=FULL``) syncs every commit and survives power loss too, for
about a quarter of the throughput.

**Sharing.** Several queues share one file (``queue=`` picks one) and several
processes may open it at once. A claim is one ``UPDATE ... RETURNING``
statement under SQLite's write lock, so a task runs once, except that a task
whose worker died is run again once its lease expires (at-least-once).

**Cost model.** Each call on an aiosqlite connection is a hop to its thread
(35-80 µs), far more than the rest of a task's path. So operations are not run
one by one: each is a *job* queued on the backend's connection, and whatever
was queued while the previous hop ran (a claim, outcome batches, pushes, reads)
runs in the next hop, in one transaction. That is group commit for concurrent
pushes, and it bundles a worker's acks with its next claim
(:mod:`rxqueue.backends._sqlite_connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import weakref
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import orjson
from reactivex import Observable

from rxqueue.backends import _sqlite_schema as schema
from rxqueue.backends._sqlite_connection import Connection, Job
from rxqueue.backends.base import ALL_CAPABILITIES, Backend, decode_payload
from rxqueue.clock import Clock, system_clock
from rxqueue.codec import DEFAULT_CODEC, Codec
from rxqueue.errors import BackendError, CodecError, TaskNotFound, WorkerError
from rxqueue.streams import Wakeup, poll
from rxqueue.task import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    TERMINAL,
    Done,
    Killed,
    Retry,
    Started,
    Status,
    Task,
    TaskId,
    Update,
    task_from_fields,
)

if TYPE_CHECKING:
    from rxqueue.worker.context import WorkerContext

__all__ = ["SqliteBackend"]

R = TypeVar("R")
Row = tuple[Any, ...]

# --- SQL ------------------------------------------------------------------------------

_COLUMNS = (
    "id, queue, args, status, attempts, max_attempts, priority, run_at, created_at, "
    "lock_by, lock_at, done_at, last_error, result, metadata"
)
_READY = "status IN ('Pending', 'Failed')"  # exactly the partial index's WHERE
_ACTIVE = "status IN ('Queued', 'Running')"

_CLAIM = f"""
UPDATE tasks SET status = 'Queued', lock_by = ?, lock_at = ?
WHERE rowid IN (
    SELECT rowid FROM tasks WHERE queue = ? AND {_READY} AND run_at <= ?
    ORDER BY priority DESC, run_at, id LIMIT ?
)
RETURNING {_COLUMNS}
"""
_ANY_READY = f"SELECT 1 FROM tasks WHERE queue = ? AND {_READY} AND run_at <= ? LIMIT 1"
_HAS_WORK = f"SELECT EXISTS (SELECT 1 FROM tasks WHERE queue = ? AND {_READY} AND run_at <= ?)"

_INSERT = """
INSERT INTO tasks (id, queue, args, status, attempts, max_attempts, priority, run_at,
                   created_at, last_error, metadata)
VALUES (?, ?, ?, 'Pending', ?, ?, ?, ?, ?, ?, ?)
"""

# Acks apply only while the acking worker still holds the lease.
_HELD = f"WHERE id = ? AND lock_by = ? AND {_ACTIVE}"
_UNLOCK = "attempts = attempts + 1, lock_by = NULL, lock_at = NULL"
_STARTED = f"UPDATE tasks SET status = 'Running' {_HELD}"
_DONE = f"UPDATE tasks SET status = 'Done', {_UNLOCK}, result = ?, done_at = ? {_HELD}"
_RETRY = f"UPDATE tasks SET status = 'Failed', {_UNLOCK}, run_at = ?, last_error = ? {_HELD}"
_KILLED = f"UPDATE tasks SET status = 'Killed', {_UNLOCK}, last_error = ?, done_at = ? {_HELD}"
_RELEASE = """
UPDATE tasks SET status = 'Pending', lock_by = NULL, lock_at = NULL
WHERE id = ? AND lock_by = ? AND status = 'Queued'
"""

# Leases: a task held by a worker whose heartbeat is older than the lease, or by a
# worker with no heartbeat row whose claim is older than the lease, is taken back.
_EXPIRED_HOLDERS = f"""
SELECT DISTINCT t.lock_by, w.name IS NULL
FROM tasks AS t LEFT JOIN workers AS w ON w.queue = t.queue AND w.name = t.lock_by
WHERE t.lock_by IS NOT NULL AND t.queue = :queue AND t.{_ACTIVE}
  AND CASE WHEN w.name IS NULL THEN :now - t.lock_at >= :lease
           ELSE :now - w.last_seen >= :lease END
"""
_EXPIRE = f"""
UPDATE tasks SET {_UNLOCK}, last_error = :reason,
    status = CASE WHEN attempts + 1 >= max_attempts THEN 'Killed' ELSE 'Pending' END,
    done_at = CASE WHEN attempts + 1 >= max_attempts THEN :now ELSE done_at END
WHERE lock_by = :name AND queue = :queue AND {_ACTIVE}
"""
_EXPIRE_ALL = _EXPIRE + " RETURNING id, status"
_EXPIRE_OLD = _EXPIRE + " AND :now - lock_at >= :lease RETURNING id, status"

_WORKER_SEEN = "SELECT last_seen, pid, host FROM workers WHERE queue = ? AND name = ?"
_REGISTER = """
INSERT OR REPLACE INTO workers (queue, name, last_seen, started_at, pid, host)
VALUES (?1, ?2, ?3, ?3, ?4, ?5)
"""
_HEARTBEAT = """
INSERT INTO workers (queue, name, last_seen, started_at, pid, host) VALUES (?1, ?2, ?3, ?3, ?4, ?5)
ON CONFLICT (queue, name) DO UPDATE SET last_seen = excluded.last_seen
"""
_UNREGISTER = "DELETE FROM workers WHERE queue = ? AND name = ? AND pid = ? AND host = ?"

# Inspection and management.
_GET = f"SELECT {_COLUMNS} FROM tasks WHERE id = ? AND queue = ?"
_STATUS = "SELECT status FROM tasks WHERE id = ? AND queue = ?"
_EXISTS = "SELECT 1 FROM tasks WHERE id = ?"
_STATS = "SELECT status, count(*) FROM tasks WHERE queue = ? GROUP BY status"
_LIST = f"SELECT {_COLUMNS} FROM tasks WHERE queue = ? ORDER BY rowid LIMIT ? OFFSET ?"
_LIST_STATUS = f"""
SELECT {_COLUMNS} FROM tasks WHERE queue = ? AND status = ? ORDER BY rowid LIMIT ? OFFSET ?
"""
_RETRY_NOW = """
UPDATE tasks SET status = 'Pending', run_at = ?, done_at = NULL, lock_by = NULL, lock_at = NULL,
    max_attempts = max(max_attempts, attempts + 1)
WHERE id = ?
"""
_KILL = """
UPDATE tasks SET status = 'Killed', lock_by = NULL, lock_at = NULL, last_error = ?, done_at = ?
WHERE id = ?
"""
_VACUUM = """
DELETE FROM tasks WHERE queue = ? AND status IN ('Done', 'Killed') AND done_at <= ?
"""


# --- rows <-> tasks -----------------------------------------------------------------------


def _payload(value: Any) -> bytes:
    """The stored payload as bytes, whatever the column holds: a NULL or TEXT written
    by another tool still reaches the worker, whose decoding then kills that task."""
    if isinstance(value, bytes):
        return value
    if value is None:
        return b""
    return str(value).encode()


def _metadata(text: Any, *, lenient: bool) -> dict[str, Any]:
    if text is None or text == "":
        return {}
    try:
        value = orjson.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"metadata is {type(value).__name__}, not a JSON object")
    except ValueError:
        if lenient:
            return {}
        raise
    return value


def _task(row: Row, *, lenient: bool = False) -> Task[Any]:
    """A Task from a row of ``_COLUMNS``; ``args`` and ``result`` stay encoded.

    Unreadable metadata raises ValueError (a claim kills that row), unless
    ``lenient`` (for display: ``get`` and ``list`` show it as empty).
    """
    (task_id, queue, args, status, attempts, max_attempts, priority, run_at, created_at,
     lock_by, lock_at, done_at, last_error, result, metadata) = row  # fmt: skip
    return task_from_fields(  # the Task fields, in the order of _COLUMNS
        task_id,
        queue,
        _payload(args),
        Status(status),
        attempts,
        max_attempts,
        priority,
        run_at,
        created_at,
        lock_by,
        lock_at,
        done_at,
        last_error,
        result,
        _metadata(metadata, lenient=lenient),
    )


def _claim_order(task: Task[Any]) -> tuple[int, float, str]:
    return (-task.priority, task.run_at, task.id)


def _encode_result(codec: Codec, result: Any) -> bytes | None:
    """A result the codec cannot encode is stored as NULL: the task still succeeded."""
    if result is None:
        return None
    try:
        return codec.encode(result)
    except Exception:
        return None


def _encode_metadata(task: Task[Any]) -> str | None:
    if not task.metadata:
        return None
    try:
        return orjson.dumps(dict(task.metadata), option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError as exc:
        raise CodecError(
            f"task {task.id}: metadata must be JSON-serialisable for SQLite ({exc})"
        ) from exc


# --- what backends on one file share inside a process ---------------------------------------


class _Local:
    """The doorbell of the fetchers of one (file, queue) and its ``wait_for`` waiters.

    Shared by every SqliteBackend on that file and queue in this process and
    event loop, so a push wakes the fetchers of another instance at once, and a
    report through one instance wakes ``wait_for`` callers of another.
    """

    __slots__ = ("waiters", "wakeup")

    def __init__(self) -> None:
        self.wakeup = Wakeup()
        self.waiters: dict[TaskId, list[asyncio.Future[None]]] = {}

    def watch(self, task_id: TaskId) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(task_id, []).append(future)
        return future

    def unwatch(self, task_id: TaskId, future: asyncio.Future[None]) -> None:
        waiting = self.waiters.get(task_id)
        if waiting is not None:
            with contextlib.suppress(ValueError):
                waiting.remove(future)
            if not waiting:
                del self.waiters[task_id]

    def finished(self, task_ids: Iterable[TaskId]) -> None:
        if not self.waiters:
            return
        for task_id in task_ids:
            for future in self.waiters.pop(task_id, ()):
                if not future.done():
                    future.set_result(None)


# Keyed by loop first: asyncio primitives belong to one loop, and tests run many.
_LOCALS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], _Local]] = (
    weakref.WeakKeyDictionary()
)


def _local(key: tuple[str, str]) -> _Local:
    loop = asyncio.get_running_loop()
    per_loop = _LOCALS.get(loop)
    if per_loop is None:
        per_loop = _LOCALS[loop] = {}
    local = per_loop.get(key)
    if local is None:
        local = per_loop[key] = _Local()
    return local


def _locate(path: str | os.PathLike[str]) -> tuple[str, bool, str]:
    """(what sqlite3 opens, whether it is a ``file:`` URI, the file's absolute path)."""
    text = os.fspath(path)
    if text.startswith("file:"):
        return text, True, os.path.abspath(unquote(urlsplit(text).path))
    if text in ("", ":memory:"):
        raise ValueError(
            "SqliteBackend needs a database file: workers and producers share tasks "
            "through it. Give a path such as 'tasks.db' (or use MemoryBackend)."
        )
    return text, False, os.path.abspath(text)


class _Acks:
    """One ``report()`` batch, split by kind into ``executemany`` parameters."""

    __slots__ = ("done", "killed", "retried", "started")

    def __init__(
        self, updates: Sequence[tuple[Task[Any], Update]], worker: str, now: float, codec: Codec
    ) -> None:
        self.started: list[Row] = []
        self.done: list[Row] = []
        self.retried: list[Row] = []
        self.killed: list[Row] = []
        for task, update in updates:
            if isinstance(update, Started):
                self.started.append((task.id, worker))
            elif isinstance(update, Done):
                self.done.append((_encode_result(codec, update.result), now, task.id, worker))
            elif isinstance(update, Retry):
                self.retried.append((update.at, update.error, task.id, worker))
            elif isinstance(update, Killed):
                self.killed.append((update.error, now, task.id, worker))
            else:
                raise TypeError(f"report() got {update!r}; expected Started/Done/Retry/Killed")

    def apply(self, conn: sqlite3.Connection) -> None:
        # Started first: a task started and finished in one batch ends finished.
        for statement, rows in (
            (_STARTED, self.started),
            (_DONE, self.done),
            (_RETRY, self.retried),
            (_KILLED, self.killed),
        ):
            if rows:
                conn.executemany(statement, rows)

    @property
    def finished(self) -> list[TaskId]:
        return [row[2] for row in self.done] + [row[2] for row in self.killed]


class _DuplicateId(Exception):
    """An insert hit an existing id; ``_store`` finds which one after the rollback."""


# --- the backend -------------------------------------------------------------------------------


class SqliteBackend(Backend):
    """Tasks in a SQLite file, shared by any number of workers and processes.

    Connections open lazily on first use; :meth:`close` (or ``async with``)
    closes them. ``path`` may be a ``file:...`` URI (e.g. ``?mode=ro``).
    ``lease_timeout`` is how long a worker may go without a heartbeat before its
    tasks are reclaimed; ``heartbeat_interval`` is how often workers send one.
    See the module docstring for ``durability``.
    """

    capabilities = ALL_CAPABILITIES

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        queue: str = DEFAULT_QUEUE,
        codec: Codec = DEFAULT_CODEC,
        clock: Clock = system_clock,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        lease_timeout: float = 60.0,
        heartbeat_interval: float = 10.0,
        durability: schema.Durability = "normal",
        poll_interval: float = 0.05,
        max_poll_interval: float = 1.0,
        busy_timeout: float = 5.0,
    ) -> None:
        super().__init__(queue=queue, codec=codec, clock=clock, max_attempts=max_attempts)
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}")
        positive = {
            "lease_timeout": lease_timeout,
            "heartbeat_interval": heartbeat_interval,
            "poll_interval": poll_interval,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds, got {busy_timeout!r}")
        target, uri, self.path = _locate(path)
        self.lease_timeout = lease_timeout
        self.heartbeat_interval = heartbeat_interval
        self.durability = durability
        self.poll_interval = poll_interval
        self.max_poll_interval = max(poll_interval, max_poll_interval)
        self.busy_timeout = busy_timeout
        self._db = Connection(
            target, uri=uri, path=self.path, durability=durability, busy_timeout=busy_timeout
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SqliteBackend:
        """``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``; a query string
        (``?mode=ro``) becomes SQLite URI parameters."""
        parts = urlsplit(url)
        if parts.scheme.lower() != "sqlite":
            raise BackendError(f"{url!r} is not a sqlite:// URL")
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise BackendError(
                f"{url!r} names no database file: write sqlite:///relative.db or "
                "sqlite:////absolute/path.db (an in-memory database cannot be shared "
                "by workers; use memory:// for that)"
            )
        path = unquote(parts.path[1:])
        if parts.query:
            path = f"file:{quote(path)}?{parts.query}"
        return cls(path, **options)

    def __repr__(self) -> str:
        ops = f", ops={len(self._operators)}" if self._operators else ""
        return f"SqliteBackend({self.path!r}, queue={self.queue!r}{ops})"

    # --- plumbing -------------------------------------------------------------------------

    def _local(self) -> _Local:
        return _local((self.path, self.queue))

    async def _write(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        return await self._db.run(Job(fn, write=True))

    async def _read(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        return await self._db.run(Job(fn))

    def _shown(self, task: Task[Any]) -> Task[Any]:
        """For ``get``/``list``: payload and result decoded where they decode."""
        task = decode_payload(self.codec, task)
        if isinstance(task.result, bytes):
            with contextlib.suppress(CodecError):
                task = task.evolve(result=self.codec.decode(task.result))
        return task

    def _expired(self, changed: Sequence[Row]) -> None:
        """After leases were taken back: wake fetchers, and waiters of killed tasks."""
        if changed:
            local = self._local()
            local.wakeup.notify()
            local.finished(task_id for task_id, status in changed if status == Status.KILLED)

    # --- fetcher --------------------------------------------------------------------------

    def _fetcher(self, ctx: WorkerContext) -> Observable[Any]:
        async def fetch_many(limit: int) -> list[Task[Any]]:
            return await self._claim(ctx.name, limit)

        return poll(
            fetch_many,
            ctx,
            interval=self.poll_interval,
            max_interval=self.max_poll_interval,
            wakeup=self._local().wakeup,
        )

    async def _claim(self, worker: str, limit: int) -> list[Task[Any]]:
        """Claim up to ``limit`` ready tasks for ``worker``, in claim order
        (priority desc, run_at, id), payloads still encoded.

        The fetcher's one store call; tests may call it to act as a worker.
        """
        now = self.clock()
        queue = self.queue

        def claim(conn: sqlite3.Connection) -> list[Task[Any]]:
            rows = conn.execute(_CLAIM, (worker, now, queue, now, limit)).fetchall()
            tasks: list[Task[Any]] = []
            corrupt: list[Row] = []
            for row in rows:
                try:
                    tasks.append(_task(row))
                except (ValueError, TypeError) as exc:
                    corrupt.append((f"corrupt task row: {exc}", now, row[0], worker))
            if corrupt:
                conn.executemany(_KILLED, corrupt)
            tasks.sort(key=_claim_order)
            return tasks

        def any_ready(conn: sqlite3.Connection) -> bool:
            return conn.execute(_ANY_READY, (queue, now)).fetchone() is not None

        return await self._db.run(Job(claim, write=True, probe=any_ready, empty=[]))

    # --- sink -------------------------------------------------------------------------------

    async def _store(self, tasks: Sequence[Task[Any]], payloads: Sequence[bytes]) -> None:
        ids = [task.id for task in tasks]
        if len(set(ids)) != len(ids):
            repeated = next(task_id for task_id in ids if ids.count(task_id) > 1)
            raise ValueError(f"task id {repeated!r} appears twice in one send_many")
        rows = [
            (task.id, self.queue, payload, task.attempts, task.max_attempts, task.priority,
             task.run_at, task.created_at, task.last_error, _encode_metadata(task))
            for task, payload in zip(tasks, payloads, strict=True)
        ]  # fmt: skip

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.executemany(_INSERT, rows)
            except sqlite3.IntegrityError as exc:
                raise _DuplicateId(str(exc)) from exc

        try:
            await self._write(insert)
        except _DuplicateId:
            taken = await self._read(partial(_first_existing, ids=ids))
            raise ValueError(f"a task with id {taken!r} already exists") from None
        self._local().wakeup.notify()

    # --- acker ------------------------------------------------------------------------------

    async def report(self, updates: Sequence[tuple[Task[Any], Update]], ctx: WorkerContext) -> None:
        if not updates:
            return
        acks = _Acks(updates, ctx.name, self.clock(), self.codec)
        await self._write(acks.apply)
        local = self._local()
        if acks.retried:
            local.wakeup.notify()
        if local.waiters:
            local.finished(acks.finished)

    async def release(self, tasks: Sequence[Task[Any]], ctx: WorkerContext) -> None:
        rows = [(task.id, ctx.name) for task in tasks]
        if rows:
            await self._write(partial(_executemany, statement=_RELEASE, rows=rows))
        self._local().wakeup.notify()

    # --- workers and leases -------------------------------------------------------------------

    async def register_worker(self, ctx: WorkerContext) -> None:
        """Record the worker; refuse a name whose heartbeat is still fresh.

        Tasks still held under this name belong to a dead predecessor (this worker
        has claimed nothing yet): they are taken back as by :meth:`reclaim`.
        """
        queue, name, now, lease = self.queue, ctx.name, self.clock(), self.lease_timeout
        pid, host = os.getpid(), socket.gethostname()

        def register(conn: sqlite3.Connection) -> list[Row]:
            seen = conn.execute(_WORKER_SEEN, (queue, name)).fetchone()
            if seen is not None and now - seen[0] < lease:
                raise WorkerError(
                    f"a worker named {name!r} is alive on queue {queue!r} of {self.path} "
                    f"(pid {seen[1]} on {seen[2]}, heartbeat {now - seen[0]:.1f}s ago); "
                    "give this worker another name, or stop the other one first"
                )
            orphans = _expire(conn, queue=queue, name=name, now=now, lease=None)
            conn.execute(_REGISTER, (queue, name, now, pid, host))
            return orphans

        self._expired(await self._write(register))

    async def heartbeat(self, ctx: WorkerContext) -> None:
        row = (self.queue, ctx.name, self.clock(), os.getpid(), socket.gethostname())
        await self._write(partial(_executemany, statement=_HEARTBEAT, rows=[row]))

    async def unregister_worker(self, ctx: WorkerContext) -> None:
        """Forget the worker (only this process's registration of the name)."""
        row = (self.queue, ctx.name, os.getpid(), socket.gethostname())
        await self._write(partial(_executemany, statement=_UNREGISTER, rows=[row]))

    async def reclaim(self) -> int:
        """Take back tasks whose worker's lease expired: Pending with one more
        attempt, or Killed once attempts reach max_attempts."""
        queue, now, lease = self.queue, self.clock(), self.lease_timeout

        def holders(conn: sqlite3.Connection) -> list[Row]:
            params = {"queue": queue, "now": now, "lease": lease}
            return conn.execute(_EXPIRED_HOLDERS, params).fetchall()

        def reclaim(conn: sqlite3.Connection) -> list[Row]:
            changed: list[Row] = []
            for name, unknown in holders(conn):
                only_older = lease if unknown else None
                changed += _expire(conn, queue=queue, name=name, now=now, lease=only_older)
            return changed

        job = Job(reclaim, write=True, probe=lambda conn: bool(holders(conn)), empty=[])
        changed = await self._db.run(job)
        self._expired(changed)
        return len(changed)

    # --- inspection ---------------------------------------------------------------------------

    async def get(self, task_id: TaskId) -> Task[Any] | None:
        row = await self._read(partial(_select_task, task_id=task_id, queue=self.queue))
        return None if row is None else self._shown(_task(row, lenient=True))

    async def wait_for(
        self, task_id: TaskId, *, timeout: float | None = None, poll_interval: float = 0.05
    ) -> Task[Any]:
        """Wait until the task is Done or Killed and return it.

        A report from this process wakes the wait at once; a task finished by
        another process is seen by polling, every ``poll_interval`` seconds at
        first, backing off to ``max_poll_interval``.
        """
        local = self._local()
        delay = poll_interval
        async with asyncio.timeout(timeout):
            while True:
                signal = local.watch(task_id)
                try:
                    task = await self.get(task_id)
                    if task is None:
                        raise TaskNotFound(f"no task {task_id!r} in queue {self.queue!r}")
                    if task.status in TERMINAL:
                        return task
                    await asyncio.wait({signal}, timeout=delay)
                    woken = signal.done()
                finally:
                    local.unwatch(task_id, signal)
                delay = poll_interval if woken else min(self.max_poll_interval, delay * 2)

    async def stats(self) -> dict[Status, int]:
        rows = await self._read(partial(_fetchall, statement=_STATS, params=(self.queue,)))
        counts = dict.fromkeys(Status, 0)
        for status, count in rows:
            counts[Status(status)] = count
        return counts

    async def list(
        self, *, status: Status | None = None, limit: int = 100, offset: int = 0
    ) -> list[Task[Any]]:
        params: tuple[Any, ...]
        if status is None:
            statement, params = _LIST, (self.queue, limit, offset)
        else:
            statement, params = _LIST_STATUS, (self.queue, Status(status).value, limit, offset)
        rows = await self._read(partial(_fetchall, statement=statement, params=params))
        return [self._shown(_task(row, lenient=True)) for row in rows]

    async def retry(self, task_id: TaskId) -> None:
        now, queue = self.clock(), self.queue

        def retry(conn: sqlite3.Connection) -> None:
            status = _status_of(conn, task_id, queue)
            if status not in (Status.FAILED, Status.KILLED):
                raise ValueError(
                    f"only Failed or Killed tasks can be retried; {task_id} is {status}"
                )
            conn.execute(_RETRY_NOW, (now, task_id))

        await self._write(retry)
        self._local().wakeup.notify()

    async def kill(self, task_id: TaskId, reason: str = "killed by request") -> None:
        now, queue = self.clock(), self.queue

        def kill(conn: sqlite3.Connection) -> bool:
            if _status_of(conn, task_id, queue) in TERMINAL:
                return False
            conn.execute(_KILL, (reason, now, task_id))
            return True

        if await self._write(kill):
            self._local().finished([task_id])

    async def vacuum(self, older_than: float = 0.0) -> int:
        cutoff, queue = self.clock() - older_than, self.queue

        def vacuum(conn: sqlite3.Connection) -> int:
            return conn.execute(_VACUUM, (queue, cutoff)).rowcount

        return await self._write(vacuum)

    async def has_work(self, horizon: float) -> bool:
        params = (self.queue, self.clock() + horizon)
        rows = await self._read(partial(_fetchall, statement=_HAS_WORK, params=params))
        return bool(rows[0][0])

    async def close(self) -> None:
        await self._db.close()


# --- small statements run as jobs ------------------------------------------------------------


def _executemany(conn: sqlite3.Connection, *, statement: str, rows: Sequence[Row]) -> None:
    conn.executemany(statement, rows)


def _fetchall(conn: sqlite3.Connection, *, statement: str, params: Sequence[Any]) -> list[Row]:
    return conn.execute(statement, params).fetchall()


def _select_task(conn: sqlite3.Connection, *, task_id: TaskId, queue: str) -> Row | None:
    row: Row | None = conn.execute(_GET, (task_id, queue)).fetchone()
    return row


def _status_of(conn: sqlite3.Connection, task_id: TaskId, queue: str) -> Status:
    row = conn.execute(_STATUS, (task_id, queue)).fetchone()
    if row is None:
        raise TaskNotFound(f"no task {task_id!r} in queue {queue!r}")
    return Status(row[0])


def _first_existing(conn: sqlite3.Connection, *, ids: Sequence[TaskId]) -> TaskId | None:
    for task_id in ids:
        if conn.execute(_EXISTS, (task_id,)).fetchone():
            return task_id
    return None


def _expire(
    conn: sqlite3.Connection, *, queue: str, name: str, now: float, lease: float | None
) -> list[Row]:
    """End ``name``'s leases in ``queue`` (only claims older than ``lease``, if given)."""
    params = {
        "queue": queue,
        "name": name,
        "now": now,
        "lease": lease,
        "reason": f"lease expired: worker {name!r} stopped heartbeating",
    }
    return conn.execute(_EXPIRE_ALL if lease is None else _EXPIRE_OLD, params).fetchall()
