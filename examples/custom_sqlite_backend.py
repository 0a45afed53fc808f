"""The custom-backend page, in Python: any store becomes a backend.

A ``tasks`` table in SQLite (through aiosqlite), a fetcher that claims the
oldest due tasks through rxqueue's shared claim loop, a sink that inserts, an
acker that records outcomes, a getter (Fetch by ID, which the page lists as
missing), and a worker running ``send_email``. Run it:
``python -m examples.custom_sqlite_backend``.

Workflows (also missing from the page) need task dependencies in the store:
a ``task_edges`` table, and the rules of ``Capability.DEPENDENCIES`` kept by the
sink (a task with ``depends_on`` waits), the acker (a Done releases what waited
for it, a failure kills it; both in the transaction of the ack) and the fetcher
(a claimed dependant gets its dependencies' results), plus a family lister.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiosqlite

import rxqueue
from rxqueue import (
    BackendBuilder,
    Cancelled,
    Capability,
    CustomBackend,
    Demand,
    Done,
    InvalidOption,
    Killed,
    Retry,
    Started,
    Status,
    Task,
    TaskContext,
    TaskExists,
    TaskId,
    Update,
    WorkerBuilder,
)
from rxqueue.codec import DEFAULT_CODEC, Codec, encode_list

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    args BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'Pending',  -- rxqueue's Status names (Waiting: see edges)
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    run_at REAL NOT NULL,
    created_at REAL NOT NULL,
    lock_by TEXT,  -- the worker that claimed it
    done_at REAL,
    last_error TEXT,
    result BLOB,
    metadata TEXT,
    waiting INTEGER NOT NULL DEFAULT 0  -- while 'Waiting': dependencies not Done yet
);
CREATE INDEX IF NOT EXISTS tasks_due ON tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('Pending', 'Failed');
-- Task `child` waits for `parent`; its input number `position` is the parent's result.
CREATE TABLE IF NOT EXISTS task_edges (
    child TEXT NOT NULL,
    position INTEGER NOT NULL,
    parent TEXT NOT NULL,
    PRIMARY KEY (child, position)
);
CREATE INDEX IF NOT EXISTS task_edges_parent ON task_edges (parent);
"""


@dataclass
class Config:
    batch_size: int = 10  # how many tasks to claim at once
    poll_interval: float = 0.1  # how long to wait when nothing is due
    queue: str = "default"  # the fetcher claims this queue's tasks
    codec: Codec = DEFAULT_CODEC  # the backend's: a dependant's inputs are encoded with it
    # One aiosqlite connection runs one transaction at a time: the fetcher, the
    # sink and the acker take turns.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class EmailJob:
    to: str
    subject: str


async def send_email(job: EmailJob, ctx: TaskContext) -> None:
    print(f"Sending to: {job.to} ({job.subject!r}, attempt {ctx.attempt})")


# --- Rows <-> tasks ---------------------------------------------------------------------

_COLUMNS = (
    "id, queue, args, status, attempts, max_attempts, priority, run_at, created_at, "
    "lock_by, done_at, last_error, result, metadata"
)


def _task(row: Sequence[Any]) -> Task[Any]:
    return Task(
        id=row[0],
        queue=row[1],
        args=row[2],  # still encoded: the worker decodes it
        status=Status(row[3]),
        attempts=row[4],
        max_attempts=row[5],
        priority=row[6],
        run_at=row[7],
        created_at=row[8],
        lock_by=row[9],
        done_at=row[10],
        last_error=row[11],
        result=row[12],  # encoded too: backend.get() decodes it
        metadata=json.loads(row[13]) if row[13] else {},
    )


# --- Database query: claim the due tasks, highest priority first --------------------------


async def fetch_pending_tasks(
    db: aiosqlite.Connection, config: Config, worker: str, limit: int, now: float
) -> list[Task[Any]]:
    async with config.lock:
        rows = await db.execute_fetchall(
            "UPDATE tasks SET status = 'Queued', lock_by = ? WHERE id IN ("
            "  SELECT id FROM tasks WHERE queue = ? AND status IN ('Pending', 'Failed')"
            "  AND run_at <= ? ORDER BY priority DESC, run_at, id LIMIT ?)"
            f" RETURNING {_COLUMNS}",
            (worker, config.queue, now, limit),
        )
        inputs = await _inputs(db, [row[0] for row in rows])
        await db.commit()
    tasks = [_task(row) for row in rows]
    # A task that waited for others runs on their results, in its depends_on order.
    for n, task in enumerate(tasks):
        if task.id in inputs:
            tasks[n] = task.evolve(args=encode_list(config.codec, inputs[task.id]))
    return sorted(tasks, key=lambda t: (-t.priority, t.run_at, t.id))


async def _inputs(db: aiosqlite.Connection, ids: list[TaskId]) -> dict[TaskId, list[bytes | None]]:
    """Per task of ``ids`` that has dependencies: their stored results, in order."""
    rows = await db.execute_fetchall(
        "SELECT e.child, p.result FROM task_edges e LEFT JOIN tasks p ON p.id = e.parent"
        " WHERE e.child IN (SELECT value FROM json_each(?)) ORDER BY e.child, e.position",
        (json.dumps(ids),),
    )
    inputs: dict[TaskId, list[bytes | None]] = {}
    for child, result in rows:
        inputs.setdefault(child, []).append(result)
    return inputs


# --- Fetcher: rxqueue's claim loop, sized by the worker's demand -------------------------


def create_fetcher(db: aiosqlite.Connection, config: Config, worker: Demand) -> Any:
    async def fetch_many(limit: int) -> list[Task[Any]]:
        return await fetch_pending_tasks(db, config, worker.name, limit, worker.clock())

    # Claims at most what the worker can take, keeps the ledger (nothing claimed is
    # stranded when the worker stops), and waits poll_interval while nothing is due.
    return rxqueue.poll(
        fetch_many,
        worker,
        batch_size=config.batch_size,
        interval=config.poll_interval,
        max_interval=config.poll_interval,
    )


# --- Sink and database insert ----------------------------------------------------------


def create_sink(db: aiosqlite.Connection, config: Config) -> Any:
    async def save_task(task: Task[Any]) -> None:
        async with config.lock:
            try:
                await insert_task(db, task)
            except BaseException:
                await db.rollback()  # the connection is shared: leave no half-written task
                raise
            await db.commit()

    return save_task


async def insert_task(db: aiosqlite.Connection, task: Task[Any]) -> None:
    """Insert one task; one with ``depends_on`` waits for those not Done yet (all
    Done: it is ready at once; one Killed or Cancelled: it is Killed at once)."""
    try:
        await db.execute(
            "INSERT INTO tasks (id, queue, args, status, max_attempts, priority, run_at,"
            " created_at, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (task.id, task.queue, task.args, "Waiting" if task.depends_on else "Pending",
             task.max_attempts, task.priority, task.run_at, task.created_at,
             json.dumps(dict(task.metadata))),
        )  # fmt: skip
    except sqlite3.IntegrityError:
        raise TaskExists(task.id) from None
    if not task.depends_on:
        return
    await db.executemany(
        "INSERT INTO task_edges (child, position, parent) VALUES (?, ?, ?)",
        [(task.id, position, parent) for position, parent in enumerate(task.depends_on)],
    )
    rows = await db.execute_fetchall(
        "SELECT id, status, done_at, last_error FROM tasks"
        " WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(task.depends_on),),
    )
    parents = {row[0]: row for row in rows}
    for parent in task.depends_on:
        if parent not in parents:
            raise InvalidOption(
                f"task {task.id!r} depends on {parent!r}, which is not stored: push "
                "the tasks it depends on first, or in the same call"
            )
    failed = [parents[p] for p in task.depends_on if parents[p][1] in ("Killed", "Cancelled")]
    if failed:
        await kill_dependants(db, *failed[0])
        return
    waiting = sum(1 for parent in task.depends_on if parents[parent][1] != "Done")
    if waiting:
        await db.execute("UPDATE tasks SET waiting = ? WHERE id = ?", (waiting, task.id))
    else:  # run_at stays: its delay counts from now, and it was created just now
        await db.execute("UPDATE tasks SET status = 'Pending' WHERE id = ?", (task.id,))


# --- Dependencies: what a finished task does to the tasks that wait for it ----------------


async def release_dependants(db: aiosqlite.Connection, parent: TaskId, done_at: float) -> None:
    """``parent`` is Done: count down what waits for it; release those at zero (their
    delay counts from now)."""
    waiting_for_it = "status = 'Waiting' AND id IN (SELECT child FROM task_edges WHERE parent = ?)"
    await db.execute(f"UPDATE tasks SET waiting = waiting - 1 WHERE {waiting_for_it}", (parent,))
    await db.execute(
        "UPDATE tasks SET status = 'Pending', run_at = ? + (run_at - created_at)"
        f" WHERE waiting = 0 AND {waiting_for_it}",
        (done_at, parent),
    )


async def kill_dependants(
    db: aiosqlite.Connection, parent: TaskId, status: str, done_at: float, error: str | None
) -> None:
    """``parent`` ended Killed or Cancelled: what waits for it, and what waits for
    that, ends Killed, naming the first task that failed."""
    reason = rxqueue.dependency_failed(parent, status, error)
    await db.execute(
        "WITH RECURSIVE doomed(id) AS ("
        "  SELECT child FROM task_edges WHERE parent = ?"
        "  UNION SELECT e.child FROM task_edges e JOIN doomed d ON e.parent = d.id)"
        " UPDATE tasks SET status = 'Killed', waiting = 0, done_at = ?, last_error = ?"
        " WHERE status = 'Waiting' AND id IN doomed",
        (parent, done_at, reason),
    )


async def spawn(db: aiosqlite.Connection, tasks: Sequence[Task[Any]], join: TaskId | None) -> None:
    """A Done's fan-out: store ``tasks``; the Waiting task ``join`` waits for them too."""
    for task in tasks:
        await insert_task(db, task)
    if join is None:
        return
    cursor = await db.execute(
        "UPDATE tasks SET waiting = waiting + ? WHERE id = ? AND status = 'Waiting'",
        (len(tasks), join),
    )
    if cursor.rowcount == 1:
        cursor = await db.execute(
            "SELECT COALESCE(MAX(position) + 1, 0) FROM task_edges WHERE child = ?", (join,)
        )
        (first,) = await cursor.fetchone() or (0,)
        await db.executemany(
            "INSERT INTO task_edges (child, position, parent) VALUES (?, ?, ?)",
            [(join, first + n, task.id) for n, task in enumerate(tasks)],
        )


# --- Task status updates ------------------------------------------------------------------


async def ack(db: aiosqlite.Connection, config: Config, task: Task[Any], outcome: Update) -> bool:
    """Record one update while the task is still ours; False if it no longer was.

    A Done, Killed or Cancelled also settles the tasks that wait for this one, and
    a Done stores the tasks it spawns, all in the same transaction."""
    ended = task.done_at or time.time()  # for a final outcome: when, by the backend's clock
    values: tuple[Any, ...] = ()
    if isinstance(outcome, Started):
        change = "status = 'Running'"
    elif isinstance(outcome, Done):
        change = "status = 'Done', lock_by = NULL, result = ?, done_at = ?"
        values = (outcome.result, ended)
    elif isinstance(outcome, Retry):
        change = "status = 'Failed', lock_by = NULL, run_at = ?, last_error = ?"
        values = (outcome.at, outcome.error)
    else:  # Killed, or Cancelled (by request): both final
        final = "Cancelled" if isinstance(outcome, Cancelled) else "Killed"
        change = f"status = '{final}', lock_by = NULL, last_error = ?, done_at = ?"
        values = (outcome.error, ended)
    started = isinstance(outcome, Started)
    async with config.lock:
        try:
            cursor = await db.execute(
                f"UPDATE tasks SET {change}{'' if started else ', attempts = attempts + 1'}"
                " WHERE id = ? AND lock_by = ? AND attempts = ?"
                " AND status IN ('Queued', 'Running')",
                (*values, task.id, task.lock_by, task.attempts),
            )
            if cursor.rowcount == 1:  # still ours: recorded, so it counts for its dependants
                if isinstance(outcome, Done):
                    await spawn(db, outcome.spawn, outcome.join)
                    await release_dependants(db, task.id, ended)
                elif isinstance(outcome, Killed | Cancelled):
                    await kill_dependants(db, task.id, final, ended, outcome.error)
        except BaseException:
            await db.rollback()
            raise
        await db.commit()
    return cursor.rowcount == 1


async def release(db: aiosqlite.Connection, config: Config, tasks: Any) -> None:
    async with config.lock:
        await db.executemany(
            "UPDATE tasks SET status = 'Pending', lock_by = NULL"
            " WHERE id = ? AND lock_by = ? AND status = 'Queued'",
            [(task.id, task.lock_by) for task in tasks],
        )
        await db.commit()


# --- Fetch by ID ---------------------------------------------------------------------------


async def get(db: aiosqlite.Connection, config: Config, task_id: TaskId) -> Task[Any] | None:
    async with config.lock:
        rows = await db.execute_fetchall(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,))
    return _task(rows[0]) if rows else None


# --- A workflow run and its steps -----------------------------------------------------------


async def family(db: aiosqlite.Connection, config: Config, run_id: TaskId) -> list[Task[Any]]:
    async with config.lock:
        rows = await db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM tasks WHERE id = ? OR substr(id, 1, ?) = ?"
            " ORDER BY created_at, id",
            (run_id, len(run_id) + 1, f"{run_id}/"),
        )
    return [_task(row) for row in rows]


async def open_backend(
    path: Path | str, config: Config | None = None, *, queue: str | None = None
) -> CustomBackend:
    """Open the database and build the backend around it (for ``queue``, if given,
    instead of the config's)."""
    config = config or Config()
    if queue is not None:
        config = replace(config, queue=queue)
    db = await aiosqlite.connect(path)
    await db.executescript(SCHEMA)
    return (
        BackendBuilder.new_with_cfg(config)
        .database(db)
        .fetcher(create_fetcher)
        .sink(create_sink)
        .ack(ack)
        .release(release)
        .getter(get)
        .family(family)
        .declare(Capability.DELAY, Capability.PRIORITY, Capability.RETRY)
        .declare(Capability.DEPENDENCIES)
        .queue(config.queue)
        .codec(config.codec)
        .build()
    )


async def main(path: Path) -> None:
    backend = await open_backend(path)
    ids = [await backend.push(EmailJob(to=f"user{n}@example.com", subject="hi")) for n in range(3)]
    worker = WorkerBuilder("email-worker").backend(backend).build(send_email)
    summary = await worker.run_until_idle()
    print(f"done: {summary.done}, failed: {summary.failed}")
    finished = await backend.get(ids[0])
    print(f"fetched by id: {finished.id if finished else None} is {finished and finished.status}")
    await backend.db.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(folder) / "tasks.db"))
