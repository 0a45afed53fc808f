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

import os
import socket
import sqlite3
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import orjson

from rxqueue.acks import AckBatch
from rxqueue.backends import _sqlite_schema as schema
from rxqueue.backends._rows import (
    COLUMN_NAMES,
    answer_ids,
    claim_order,
    metadata_json,
    read_claimed,
    read_shown,
)
from rxqueue.backends._sqlite_connection import Connection, Job
from rxqueue.backends.base import ALL_CAPABILITIES, ClaimingBackend, Limits, frees_room
from rxqueue.backends.local import channel
from rxqueue.clock import Clock, system_clock
from rxqueue.codec import DEFAULT_CODEC, Codec, encode_list
from rxqueue.errors import (
    BackendError,
    InvalidOption,
    InvalidTransition,
    TaskExists,
    TaskNotFound,
    WorkerError,
)
from rxqueue.streams import Doorbell, Wakeup
from rxqueue.task import (
    ACTIVE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    READY,
    TERMINAL,
    Status,
    Task,
    TaskId,
    check_seconds,
    dependency_failed,
)

__all__ = ["SqliteBackend"]

R = TypeVar("R")
Row = tuple[Any, ...]

# --- SQL ------------------------------------------------------------------------------

_COLUMNS = ", ".join(COLUMN_NAMES)
_READY = "status IN ('Pending', 'Failed')"  # exactly the partial index's WHERE
_ACTIVE = "status IN ('Queued', 'Running')"
_FINISHED = "status IN ('Done', 'Killed', 'Cancelled')"

_CLAIM = f"""
UPDATE tasks SET status = 'Queued', lock_by = ?, lock_at = ?
WHERE rowid IN (
    SELECT rowid FROM tasks WHERE queue = ? AND {_READY} AND run_at <= ?
    ORDER BY priority DESC, run_at, id LIMIT ?
)
RETURNING {_COLUMNS}, dependencies
"""
# Limits (a claim under rate_limit / max_running, inside its write transaction). The
# tasks a queue holds are counted through tasks_leases: only held tasks are in it.
_BUCKET = "SELECT tokens, updated_at FROM limits WHERE queue = ?"
_SET_BUCKET = """
INSERT INTO limits (queue, tokens, updated_at) VALUES (?1, ?2, ?3)
ON CONFLICT (queue) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at
"""
_HELD_COUNT = f"""
SELECT count(*) FROM tasks INDEXED BY tasks_leases
WHERE lock_by IS NOT NULL AND queue = ? AND {_ACTIVE}
"""
_ANY_READY = f"SELECT 1 FROM tasks WHERE queue = ? AND {_READY} AND run_at <= ? LIMIT 1"
_HAS_WORK = f"SELECT EXISTS (SELECT 1 FROM tasks WHERE queue = ? AND {_READY} AND run_at <= ?)"

_INSERT = """
INSERT INTO tasks (id, queue, args, status, attempts, max_attempts, priority, run_at,
                   created_at, last_error, metadata)
VALUES (?, ?, ?, 'Pending', ?, ?, ?, ?, ?, ?, ?)
"""

# Unique keys, in one write transaction: let go of keys whose holders finished (and
# whose unique_until passed), insert what holds a free key, then read every key's holder.
_KEYS = "unique_key IS NOT NULL AND unique_key IN (SELECT value FROM json_each(?))"
_RELEASE_KEYS = f"""
UPDATE tasks SET unique_key = NULL
WHERE queue = ? AND {_KEYS} AND {_FINISHED} AND coalesce(unique_until, 0) <= ?
"""
_INSERT_UNIQUE = """
INSERT INTO tasks (id, queue, args, status, attempts, max_attempts, priority, run_at,
                   created_at, last_error, metadata, unique_key, unique_until)
VALUES (?, ?, ?, 'Pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
"""
_KEY_HOLDERS = f"SELECT unique_key, id FROM tasks WHERE queue = ? AND {_KEYS}"

# Dependencies: a task waits (status Waiting) until `waiting` parents are Done;
# _settle counts down, releases and fails dependants wherever a task ends.
_INSERT_WAITING = """
INSERT INTO tasks (id, queue, args, status, attempts, max_attempts, priority, run_at,
                   created_at, last_error, metadata, waiting, dependencies)
VALUES (?, ?, ?, 'Waiting', ?, ?, ?, ?, ?, ?, ?, ?11, ?11)
"""
_EDGE = "INSERT INTO task_edges (child, position, parent) VALUES (?, ?, ?)"
_PARENTS = "SELECT id, status, last_error FROM tasks WHERE id IN (SELECT value FROM json_each(?))"
_KILL_WAITING = """
UPDATE tasks SET status = 'Killed', waiting = 0, last_error = ?, done_at = ?
WHERE id = ? AND status = 'Waiting'
"""
# Parents already Done when the task is stored: its delay counts from now.
_COUNT_DOWN = """
UPDATE tasks SET waiting = waiting - ?,
    status = CASE WHEN waiting = ? THEN 'Pending' ELSE status END,
    run_at = CASE WHEN waiting = ? THEN ? + (run_at - created_at) ELSE run_at END
WHERE id = ? AND status = 'Waiting'
"""
_ANY_EDGE = "SELECT 1 FROM task_edges LIMIT 1"
_ENDED = "SELECT id, status, last_error FROM tasks WHERE id IN (SELECT value FROM json_each(?))"
# $1 now, $2 the ids of tasks just Done: one statement counts all their children down.
_COUNT_DOWN_ALL = """
UPDATE tasks SET waiting = waiting - c.n,
    status = CASE WHEN waiting = c.n THEN 'Pending' ELSE status END,
    run_at = CASE WHEN waiting = c.n THEN ?1 + (run_at - created_at) ELSE run_at END
FROM (
    SELECT child, count(*) AS n FROM task_edges
    WHERE parent IN (SELECT value FROM json_each(?2)) GROUP BY child
) AS c
WHERE tasks.id = c.child AND tasks.status = 'Waiting'
RETURNING queue, status
"""
_CHILDREN = "SELECT child FROM task_edges WHERE parent = ?"
_NEXT_POSITION = "SELECT coalesce(max(position) + 1, 0) FROM task_edges WHERE child = ?"
_JOIN_MORE = """
UPDATE tasks SET waiting = waiting + ?1, dependencies = dependencies + ?1
WHERE id = ?2 AND status = 'Waiting'
"""
_INPUTS = """
SELECT e.child, p.result FROM task_edges AS e LEFT JOIN tasks AS p ON p.id = e.parent
WHERE e.child IN (SELECT value FROM json_each(?)) ORDER BY e.child, e.position
"""
_FAMILY = f"SELECT {_COLUMNS} FROM tasks WHERE id = ? OR (id >= ? AND id < ?) ORDER BY rowid"

# Acks apply only while the acking worker still holds the lease.
_HELD = f"WHERE id = ? AND lock_by = ? AND attempts = ? AND {_ACTIVE}"  # this very claim
_HOLDS = f"SELECT 1 FROM tasks {_HELD}"
_UNLOCK = "attempts = attempts + 1, lock_by = NULL, lock_at = NULL"
_STARTED = f"UPDATE tasks SET status = 'Running' {_HELD}"
_PROGRESS = f"UPDATE tasks SET progress = ?, progress_note = ? {_HELD}"
_DONE = f"UPDATE tasks SET status = 'Done', {_UNLOCK}, result = ?, done_at = ? {_HELD}"
# A task asked to cancel while this attempt ran is never retried: it ends Cancelled.
_RETRY = f"""
UPDATE tasks SET status = CASE WHEN cancel_reason IS NULL THEN 'Failed' ELSE 'Cancelled' END,
    {_UNLOCK}, run_at = ?,
    last_error = CASE WHEN cancel_reason IS NULL THEN ? ELSE 'cancelled: ' || cancel_reason END,
    done_at = CASE WHEN cancel_reason IS NULL THEN done_at ELSE ? END
{_HELD}
"""
_KILLED = f"UPDATE tasks SET status = 'Killed', {_UNLOCK}, last_error = ?, done_at = ? {_HELD}"
_CANCELLED = (
    f"UPDATE tasks SET status = 'Cancelled', {_UNLOCK}, last_error = ?, done_at = ? {_HELD}"
)
# A released task goes back to Pending, unless it was asked to cancel: then it ends
# Cancelled (it must not run again), with no attempt counted, as cancel() ends a
# waiting one.
_ASKED = "cancel_reason IS NOT NULL"
_RELEASE = f"""
UPDATE tasks SET lock_by = NULL, lock_at = NULL,
    status = CASE WHEN {_ASKED} THEN 'Cancelled' ELSE 'Pending' END,
    last_error = CASE WHEN {_ASKED} THEN 'cancelled: ' || cancel_reason ELSE last_error END,
    done_at = CASE WHEN {_ASKED} THEN ? ELSE done_at END
WHERE id = ? AND lock_by = ? AND status = 'Queued'
RETURNING status
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
# A task asked to cancel ends Cancelled instead (no attempt counted), as on release.
_EXPIRE = f"""
UPDATE tasks SET lock_by = NULL, lock_at = NULL,
    attempts = CASE WHEN {_ASKED} THEN attempts ELSE attempts + 1 END,
    last_error = CASE WHEN {_ASKED} THEN 'cancelled: ' || cancel_reason ELSE :reason END,
    status = CASE WHEN {_ASKED} THEN 'Cancelled'
                  WHEN attempts + 1 >= max_attempts THEN 'Killed' ELSE 'Pending' END,
    done_at = CASE WHEN {_ASKED} OR attempts + 1 >= max_attempts THEN :now ELSE done_at END
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
# The cancel requests for the tasks a worker holds, read with its heartbeat.
_CANCEL_REQUESTS = f"""
SELECT id, cancel_reason FROM tasks
WHERE lock_by = ? AND queue = ? AND {_ACTIVE} AND {_ASKED}
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
_CANCEL_NOW = """
UPDATE tasks SET status = 'Cancelled', lock_by = NULL, lock_at = NULL, last_error = ?, done_at = ?
WHERE id = ?
"""
_CANCEL_LATER = "UPDATE tasks SET cancel_reason = ? WHERE id = ?"
# A finished parent stays while a child that has not finished may still need its result.
_VACUUM = f"""
DELETE FROM tasks WHERE queue = ? AND {_FINISHED} AND done_at <= ? AND NOT EXISTS (
    SELECT 1 FROM task_edges AS e JOIN tasks AS c ON c.id = e.child
    WHERE e.parent = tasks.id AND NOT c.{_FINISHED})
"""
_VACUUM_EDGES = "DELETE FROM task_edges WHERE child NOT IN (SELECT id FROM tasks)"


# --- rows <-> tasks -----------------------------------------------------------------------


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


def _apply_acks(
    conn: sqlite3.Connection, batch: AckBatch, now: float
) -> tuple[list[TaskId], set[str]]:
    """Apply one ack batch (in the hop's transaction): the ids refused (lease lost),
    and the queues where it released or spawned tasks (workflow steps).

    Started first: a task started and finished in one batch ends finished.
    """
    worker = batch.worker
    refused: list[TaskId] = []
    spawned = _spawn(conn, batch, now) if batch.spawned else set()
    if batch.progress:  # not an outcome: a task no longer held just keeps its old progress
        conn.executemany(
            _PROGRESS,
            [(p.fraction, p.note, task.id, worker, task.attempts) for task, p in batch.progress],
        )
    for statement, rows in (
        (_STARTED, [(task.id, worker, task.attempts) for task in batch.started]),
        (_DONE, [(result, now, task.id, worker, task.attempts) for task, result in batch.done]),
        (_RETRY, [(r.at, r.error, now, t.id, worker, t.attempts) for t, r in batch.retried]),
        (_KILLED, [(k.error, now, task.id, worker, task.attempts) for task, k in batch.killed]),
        (
            _CANCELLED,
            [(c.error, now, task.id, worker, task.attempts) for task, c in batch.cancelled],
        ),
    ):
        if not rows:
            continue
        conn.execute("SAVEPOINT acks")
        changed = conn.executemany(statement, rows).rowcount
        if changed < len(rows):
            # Some lease was lost: redo this kind row by row to learn which.
            conn.execute("ROLLBACK TO acks")
            for row in rows:
                if conn.execute(statement, row).rowcount == 0:
                    refused.append(row[-3])
        conn.execute("RELEASE acks")
    lost = set(refused)
    done = [task.id for task, _ in batch.done if task.id not in lost]
    # A retry asked to cancel meanwhile ends Cancelled: _settle reads what those became.
    ended = [
        task.id
        for group in (batch.retried, batch.killed, batch.cancelled)
        for task, _ in group
        if task.id not in lost
    ]
    released = _settle(conn, now, done=done, ended=ended) if done or ended else set()
    return refused, released | spawned


def _settle(
    conn: sqlite3.Connection, now: float, *, done: Sequence[TaskId] = (),
    ended: Sequence[TaskId] = (),
) -> set[str]:  # fmt: skip
    """What tasks that ended do to the tasks waiting for them, in the same transaction:
    each of ``done`` counts them down and releases those with nothing left to wait
    for; each of ``ended`` that is now Killed or Cancelled kills them, and theirs,
    naming the first failed task. Every path that ends a task calls it. Returns
    the queues of the tasks it released.

    While no task waits for another, one probe of an empty table is all it costs.
    """
    if conn.execute(_ANY_EDGE).fetchone() is None:
        return set()
    released: set[str] = set()
    if done:
        counted = conn.execute(_COUNT_DOWN_ALL, (now, orjson.dumps(done).decode()))
        released.update(queue for queue, status in counted if status == "Pending")
    if not ended:
        return released
    rows = conn.execute(_ENDED, (orjson.dumps(list(ended)).decode(),)).fetchall()
    # Failures spread breadth-first; each dependant keeps the first failure's reason.
    frontier = [
        (task_id, dependency_failed(task_id, status, error))
        for task_id, status, error in rows
        if status in ("Killed", "Cancelled")
    ]
    while frontier:
        following: list[tuple[TaskId, str]] = []
        for parent, reason in frontier:
            for (child,) in conn.execute(_CHILDREN, (parent,)).fetchall():
                if conn.execute(_KILL_WAITING, (reason, now, child)).rowcount:
                    following.append((child, reason))
        frontier = following
    return released


def _spawn(conn: sqlite3.Connection, batch: AckBatch, now: float) -> set[str]:
    """Store what each Done of ``batch`` spawns, if its parent is still held by this
    claim (its Done is then recorded in this transaction too); the queues it went to."""
    queues: set[str] = set()
    for parent, spawned, join in batch.spawned:
        held = conn.execute(_HOLDS, (parent.id, batch.worker, parent.attempts)).fetchone()
        if held is None or not spawned:
            continue
        rows = [
            (task.id, task.queue, task.args, task.attempts, task.max_attempts, task.priority,
             task.run_at, task.created_at, task.last_error, metadata_json(task))
            for task in spawned
        ]  # fmt: skip
        if any(task.depends_on for task in spawned):
            _insert_with_dependencies(conn, spawned, rows, now)
        else:
            conn.executemany(_INSERT, rows)
        queues.update(task.queue for task in spawned)
        if join is not None:
            first = conn.execute(_NEXT_POSITION, (join,)).fetchone()[0]
            conn.executemany(
                _EDGE,
                [(join, first + index, task.id) for index, task in enumerate(spawned)],
            )
            conn.execute(_JOIN_MORE, (len(spawned), join))
    return queues


def _insert_with_dependencies(
    conn: sqlite3.Connection, tasks: Sequence[Task[Any]], rows: Sequence[Row], now: float
) -> None:
    """Insert ``tasks`` (some with ``depends_on``): those wait for their unfinished
    dependencies, are released at once if all are Done, or killed if one failed.
    Every dependency must exist, in the store or among ``tasks``."""
    plain = [row for row, task in zip(rows, tasks, strict=True) if not task.depends_on]
    if plain:
        conn.executemany(_INSERT, plain)
    dependants = [(row, task) for row, task in zip(rows, tasks, strict=True) if task.depends_on]
    conn.executemany(_INSERT_WAITING, [(*row, len(task.depends_on)) for row, task in dependants])
    conn.executemany(
        _EDGE,
        [
            (task.id, position, parent)
            for _, task in dependants
            for position, parent in enumerate(task.depends_on)
        ],
    )
    for _, task in dependants:
        found = {
            row[0]: row[1:]
            for row in conn.execute(_PARENTS, (orjson.dumps(task.depends_on).decode(),))
        }
        unknown = [parent for parent in task.depends_on if parent not in found]
        if unknown:
            raise InvalidOption(
                f"task {task.id!r} depends on {unknown[0]!r}, which is not stored: push "
                "the tasks it depends on first, or in the same call"
            )
        failed = next(
            (p for p in task.depends_on if found[p][0] in ("Killed", "Cancelled")), None
        )
        if failed is not None:
            status, error = found[failed]
            conn.execute(_KILL_WAITING, (dependency_failed(failed, status, error), now, task.id))
            _settle(conn, now, ended=[task.id])  # its own dependants in this call
            continue
        done = sum(1 for p in task.depends_on if found[p][0] == "Done")
        if done:
            conn.execute(_COUNT_DOWN, (done, done, done, now, task.id))


def _with_inputs(conn: sqlite3.Connection, rows: list[Row], codec: Codec) -> list[Row]:
    """Claimed rows (each ending with its ``dependencies`` count) as task rows, those
    of tasks that depended on others with their payload made of the results of
    those, in order (their stored payload is a placeholder)."""
    dependent = [row[0] for row in rows if row[-1]]
    if not dependent:
        return [row[:-1] for row in rows]
    inputs: dict[TaskId, list[bytes | None]] = {}
    for child, result in conn.execute(_INPUTS, (orjson.dumps(dependent).decode(),)):
        inputs.setdefault(child, []).append(result)
    return [  # args is the third column (COLUMN_NAMES)
        row[:-1] if row[0] not in inputs
        else (*row[:2], encode_list(codec, inputs[row[0]]), *row[3:-1])
        for row in rows
    ]


# Backends on one file and queue share one doorbell in a process (and event loop):
# how many of them are open, so that only the last one to close closes it.
_DOORBELL_USERS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


class _DuplicateId(Exception):
    """An insert hit an existing id; ``_store`` finds which one after the rollback."""


# --- the backend -------------------------------------------------------------------------------


class SqliteBackend(ClaimingBackend):
    """Tasks in a SQLite file, shared by any number of workers and processes.

    Connections open lazily on first use; :meth:`close` (or ``async with``)
    closes them. ``path`` may be a ``file:...`` URI (e.g. ``?mode=ro``).
    ``lease_timeout`` is how long a worker may go without a heartbeat before its
    tasks are reclaimed; ``heartbeat_interval`` is how often workers send one.
    See the module docstring for ``durability``. ``rate_limit=(n, per)`` (at most
    ``n`` task starts per ``per`` seconds) and ``max_running=n`` (tasks claimed or
    running at once) hold for the queue across every worker and process, checked
    inside the claim (see :class:`~rxqueue.backends.base.Limits`).
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
        rate_limit: tuple[int, float] | None = None,
        max_running: int | None = None,
    ) -> None:
        super().__init__(queue=queue, codec=codec, clock=clock, max_attempts=max_attempts)
        self.limits = Limits.check(rate_limit, max_running)
        if durability not in ("normal", "full"):
            raise InvalidOption(f"durability must be 'normal' or 'full', got {durability!r}")
        positive = {
            "lease_timeout": lease_timeout,
            "heartbeat_interval": heartbeat_interval,
            "poll_interval": poll_interval,
        }
        for name, value in positive.items():
            if check_seconds(name, value) <= 0:
                raise InvalidOption(f"{name} must be a positive number of seconds, got {value!r}")
        check_seconds("max_poll_interval", max_poll_interval)
        check_seconds("busy_timeout", busy_timeout, minimum=0.0)
        target, uri, self.path = _locate(path)
        self._channel_key = ("sqlite", self.path, queue)
        self.lease_timeout = lease_timeout
        self.heartbeat_interval = heartbeat_interval
        self.durability = durability
        self.poll_interval = poll_interval
        self.max_poll_interval = max(poll_interval, max_poll_interval)
        self.busy_timeout = busy_timeout
        self._db = Connection(
            target, uri=uri, path=self.path, durability=durability, busy_timeout=busy_timeout
        )
        # The closable doorbell this backend (and its pipe copies) holds while open.
        self._doorbell_held: list[Doorbell] = []

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

    async def _open(self) -> None:
        await self._read(_nothing)  # connects, checks the schema version, migrates
        doorbell = self._local().doorbell
        if callable(getattr(doorbell, "close", None)):
            _DOORBELL_USERS[doorbell] = _DOORBELL_USERS.get(doorbell, 0) + 1
            self._doorbell_held.append(doorbell)

    async def _close(self) -> None:
        await self._db.close()
        # Close the shared doorbell only if no other open backend uses it, and give
        # the channel a fresh one, so that a backend opened later still rings.
        while self._doorbell_held:
            doorbell = self._doorbell_held.pop()
            users = _DOORBELL_USERS.get(doorbell, 1) - 1
            if users > 0:
                _DOORBELL_USERS[doorbell] = users
                continue
            _DOORBELL_USERS.pop(doorbell, None)
            doorbell.close()  # type: ignore[attr-defined]
            local = self._local()
            if local.doorbell is doorbell:
                local.doorbell = self._make_doorbell()

    def _make_doorbell(self) -> Doorbell:
        # Workers in other processes learn of a push at once, not at their next poll.
        try:
            from rxqueue.backends._doorbell import SocketDoorbell
        except ImportError:  # the helper module is still being written
            return Wakeup()
        return SocketDoorbell(f"sqlite:{self.path}:{self.queue}")

    def _doorbell_of(self, queue: str) -> Doorbell:
        """The doorbell of another queue of this file, to wake its workers here and in
        other processes."""
        from rxqueue.backends._doorbell import SocketDoorbell

        key = ("sqlite", self.path, queue)
        return channel(key, lambda: SocketDoorbell(f"sqlite:{self.path}:{queue}")).doorbell

    async def _write(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        return await self._db.run(Job(fn, write=True))

    async def _read(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        return await self._db.run(Job(fn))

    # --- fetcher: the shared claim loop over _claim (ClaimingBackend) ------------------------

    async def _claim(self, worker: str, limit: int) -> list[Task[Any]]:
        """Claim up to ``limit`` ready tasks for ``worker``, in claim order
        (priority desc, run_at, id), payloads still encoded.

        The fetcher's one store call; tests may call it to act as a worker. Under
        :attr:`limits` it claims what they allow, reading and updating the queue's
        bucket in the same write transaction (one writer at a time, across processes).
        """
        now = self.clock()
        queue = self.queue
        limits = self.limits
        codec = self.codec

        def claim(conn: sqlite3.Connection) -> list[Task[Any]]:
            if limits is None:
                rows = conn.execute(_CLAIM, (worker, now, queue, now, limit)).fetchall()
            else:
                rows = _claim_limited(
                    conn, limits, worker=worker, queue=queue, now=now, limit=limit
                )
            if rows:
                rows = _with_inputs(conn, rows, codec)
            tasks: list[Task[Any]] = []
            corrupt: list[Row] = []
            for row in rows:
                try:
                    tasks.append(read_claimed(row))
                except (ValueError, TypeError) as exc:
                    corrupt.append((f"corrupt task row: {exc}", now, row[0], worker, row[4]))
            if corrupt:
                conn.executemany(_KILLED, corrupt)
            tasks.sort(key=claim_order)
            return tasks

        def any_ready(conn: sqlite3.Connection) -> bool:
            return conn.execute(_ANY_READY, (queue, now)).fetchone() is not None

        return await self._db.run(Job(claim, write=True, probe=any_ready, empty=[]))

    # --- sink -------------------------------------------------------------------------------

    async def _store(
        self, tasks: Sequence[Task[Any]], payloads: Sequence[bytes], connection: Any = None
    ) -> list[TaskId]:
        ids = [task.id for task in tasks]
        keys = [task.unique_key for task in tasks if task.unique_key is not None]
        rows = [
            (task.id, task.queue, payload, task.attempts, task.max_attempts, task.priority,
             task.run_at, task.created_at, task.last_error, metadata_json(task))
            for task, payload in zip(tasks, payloads, strict=True)
        ]  # fmt: skip
        queue, now = self.queue, self.clock()
        dependants = any(task.depends_on for task in tasks)

        def insert(conn: sqlite3.Connection) -> dict[str, TaskId]:
            try:
                if dependants:
                    _insert_with_dependencies(conn, tasks, rows, now)
                    return {}
                if not keys:
                    conn.executemany(_INSERT, rows)
                    return {}
                wanted = orjson.dumps(keys).decode()
                conn.execute(_RELEASE_KEYS, (queue, wanted, now))
                keyed = [
                    (*row, task.unique_key, task.unique_until)
                    for row, task in zip(rows, tasks, strict=True)
                ]
                conn.executemany(_INSERT_UNIQUE, keyed)
                return dict(conn.execute(_KEY_HOLDERS, (queue, wanted)).fetchall())
            except sqlite3.IntegrityError as exc:
                raise _DuplicateId(str(exc)) from exc

        try:
            holders = await self._write(insert)
        except _DuplicateId:
            taken = await self._read(partial(_first_existing, ids=ids))
            raise TaskExists(taken or "?") from None
        if holders:
            ids = answer_ids(tasks, holders)
            if all(task_id != task.id for task_id, task in zip(ids, tasks, strict=True)):
                return ids  # nothing new: nobody to wake
        self._local().doorbell.notify()
        for queue in {task.queue for task in tasks} - {self.queue}:  # a workflow's steps
            self._doorbell_of(queue).notify()
        return ids

    # --- acker ------------------------------------------------------------------------------

    async def report(self, batch: AckBatch) -> list[TaskId]:
        if not len(batch):
            return []
        refused, released = await self._write(
            partial(_apply_acks, batch=batch, now=self.clock())
        )
        local = self._local()
        if batch.retried or self.queue in released or frees_room(self.limits, batch):
            local.doorbell.notify()
        for queue in released - {self.queue}:  # a workflow's steps in other queues
            self._doorbell_of(queue).notify()
        if local.waiters:
            local.finished(batch.finished)
        return refused

    async def release(self, tasks: Sequence[Task[Any]], worker: str) -> None:
        now = self.clock()
        ids = [task.id for task in tasks]

        def release(conn: sqlite3.Connection) -> list[TaskId]:
            cancelled: list[TaskId] = []
            for task_id in ids:  # RETURNING rules out executemany
                row = conn.execute(_RELEASE, (now, task_id, worker)).fetchone()
                if row is not None and row[0] == Status.CANCELLED:
                    cancelled.append(task_id)
            if cancelled:
                _settle(conn, now, ended=cancelled)
            return cancelled

        cancelled = await self._write(release) if ids else []
        local = self._local()
        if cancelled:
            local.finished(cancelled)
        local.doorbell.notify()

    # --- workers and leases -------------------------------------------------------------------

    async def register_worker(self, worker: str) -> None:
        """Record the worker; refuse a name whose heartbeat is still fresh.

        Tasks still held under this name belong to a dead predecessor (this worker
        has claimed nothing yet): they are taken back as by :meth:`reclaim`.
        """
        queue, name, now, lease = self.queue, worker, self.clock(), self.lease_timeout
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

    async def heartbeat(self, worker: str) -> list[tuple[TaskId, str]]:
        """Record the beat and read the cancel requests for ``worker``'s tasks, in one hop."""
        queue = self.queue
        row = (queue, worker, self.clock(), os.getpid(), socket.gethostname())

        def beat(conn: sqlite3.Connection) -> list[tuple[TaskId, str]]:
            conn.execute(_HEARTBEAT, row)
            return [(r[0], r[1]) for r in conn.execute(_CANCEL_REQUESTS, (worker, queue))]

        return await self._write(beat)

    async def unregister_worker(self, worker: str) -> None:
        """Forget the worker (only this process's registration of the name)."""
        row = (self.queue, worker, os.getpid(), socket.gethostname())
        await self._write(partial(_executemany, statement=_UNREGISTER, rows=[row]))

    async def reclaim(self) -> int:
        """Take back tasks whose worker's lease expired: Pending with one more
        attempt, or Killed once attempts reach max_attempts (Cancelled if asked
        to cancel)."""
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

    async def _get(self, task_id: TaskId) -> Task[Any] | None:
        row = await self._read(partial(_select_task, task_id=task_id, queue=self.queue))
        return None if row is None else read_shown(row)

    async def _stats(self) -> dict[Status, int]:
        rows = await self._read(partial(_fetchall, statement=_STATS, params=(self.queue,)))
        return {Status(status): count for status, count in rows}

    async def _list(self, status: Status | None, limit: int, offset: int) -> list[Task[Any]]:
        params: tuple[Any, ...]
        if status is None:
            statement, params = _LIST, (self.queue, limit, offset)
        else:
            statement, params = _LIST_STATUS, (self.queue, status.value, limit, offset)
        rows = await self._read(partial(_fetchall, statement=statement, params=params))
        return [read_shown(row) for row in rows]

    async def _retry(self, task_id: TaskId) -> None:
        now, queue = self.clock(), self.queue

        def retry(conn: sqlite3.Connection) -> None:
            status = _status_of(conn, task_id, queue)
            if status not in (Status.FAILED, Status.KILLED):
                raise InvalidTransition(
                    f"only Failed or Killed tasks can be retried; {task_id} is {status}"
                )
            conn.execute(_RETRY_NOW, (now, task_id))

        await self._write(retry)

    async def _kill(self, task_id: TaskId, reason: str) -> bool:
        now, queue = self.clock(), self.queue

        def kill(conn: sqlite3.Connection) -> bool:
            if _status_of(conn, task_id, queue) in TERMINAL:
                return False
            conn.execute(_KILL, (reason, now, task_id))
            _settle(conn, now, ended=[task_id])
            return True

        return await self._write(kill)

    async def _cancel(self, task_id: TaskId, reason: str) -> Status:
        now, queue = self.clock(), self.queue

        def cancel(conn: sqlite3.Connection) -> Status:
            status = _status_of(conn, task_id, queue)
            if status in READY or status == Status.WAITING:
                conn.execute(_CANCEL_NOW, (f"cancelled: {reason}", now, task_id))
                _settle(conn, now, ended=[task_id])
                return Status.CANCELLED
            if status in ACTIVE:  # its worker cancels it: at once here, or at a heartbeat
                conn.execute(_CANCEL_LATER, (reason, task_id))
            return status

        return await self._write(cancel)

    async def _vacuum(self, older_than: float) -> int:
        cutoff, queue = self.clock() - older_than, self.queue

        def vacuum(conn: sqlite3.Connection) -> int:
            deleted: int = conn.execute(_VACUUM, (queue, cutoff)).rowcount
            if deleted:
                conn.execute(_VACUUM_EDGES)
            return deleted

        return await self._write(vacuum)

    async def _family(self, run_id: TaskId) -> list[Task[Any]]:
        params = (run_id, f"{run_id}/", f"{run_id}0")  # "0" follows "/": the id range
        rows = await self._read(partial(_fetchall, statement=_FAMILY, params=params))
        return [read_shown(row) for row in rows]

    async def has_work(self, horizon: float) -> bool:
        params = (self.queue, self.clock() + horizon)
        rows = await self._read(partial(_fetchall, statement=_HAS_WORK, params=params))
        return bool(rows[0][0])


# --- small statements run as jobs ------------------------------------------------------------


def _nothing(conn: sqlite3.Connection) -> None:
    pass


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


def _claim_limited(
    conn: sqlite3.Connection, limits: Limits, *, worker: str, queue: str, now: float, limit: int
) -> list[Row]:
    """Claim what the queue's limits allow, and take the claimed tasks' tokens."""
    stored = conn.execute(_BUCKET, (queue,)).fetchone()
    tokens, updated_at = limits.refill(stored, now)
    active = 0
    if limits.max_running is not None:
        active = conn.execute(_HELD_COUNT, (queue,)).fetchone()[0]
    allowed = limits.allowance(limit, tokens, active)
    rows: list[Row] = []
    if allowed:
        rows = conn.execute(_CLAIM, (worker, now, queue, now, allowed)).fetchall()
    if rows and limits.rate_limit is not None:  # else it refills to the same tokens later
        conn.execute(_SET_BUCKET, (queue, limits.spend(tokens, len(rows)), updated_at))
    return rows


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
    rows: list[Row] = conn.execute(_EXPIRE_ALL if lease is None else _EXPIRE_OLD, params).fetchall()
    ended = [task_id for task_id, status in rows if status in ("Killed", "Cancelled")]
    if ended:
        _settle(conn, now, ended=ended)
    return rows
