"""The custom-backend page, in Python: any store becomes a backend.

A ``tasks`` table in SQLite (through aiosqlite), a fetcher that claims the
oldest due tasks through rxqueue's shared claim loop, a sink that inserts, an
acker that records outcomes, a getter (Fetch by ID, which the page lists as
missing), and a worker running ``send_email``. Run it:
``python -m examples.custom_sqlite_backend``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    args BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'Pending',  -- rxqueue's Status names
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    run_at REAL NOT NULL,
    created_at REAL NOT NULL,
    lock_by TEXT,  -- the worker that claimed it
    done_at REAL,
    last_error TEXT,
    result BLOB,
    metadata TEXT
);
CREATE INDEX IF NOT EXISTS tasks_due ON tasks (priority DESC, run_at, id)
    WHERE status IN ('Pending', 'Failed');
"""


@dataclass
class Config:
    batch_size: int = 10  # how many tasks to claim at once
    poll_interval: float = 0.1  # how long to wait when nothing is due
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
            "  SELECT id FROM tasks WHERE status IN ('Pending', 'Failed') AND run_at <= ?"
            "  ORDER BY priority DESC, run_at, id LIMIT ?)"
            f" RETURNING {_COLUMNS}",
            (worker, now, limit),
        )
        await db.commit()
    return sorted((_task(row) for row in rows), key=lambda t: (-t.priority, t.run_at, t.id))


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
                await db.execute(
                    "INSERT INTO tasks (id, queue, args, max_attempts, priority, run_at,"
                    " created_at, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (task.id, task.queue, task.args, task.max_attempts, task.priority,
                     task.run_at, task.created_at, json.dumps(dict(task.metadata))),
                )  # fmt: skip
            except sqlite3.IntegrityError:
                raise TaskExists(task.id) from None
            await db.commit()

    return save_task


# --- Task status updates ------------------------------------------------------------------


async def ack(db: aiosqlite.Connection, config: Config, task: Task[Any], outcome: Update) -> bool:
    """Record one update while the task is still ours; False if it no longer was."""
    if isinstance(outcome, Started):
        change, values = "status = 'Running'", ()
    elif isinstance(outcome, Done):
        change = "status = 'Done', lock_by = NULL, result = ?, done_at = ?"
        values: tuple[Any, ...] = (outcome.result, time.time())
    elif isinstance(outcome, Retry):
        change = "status = 'Failed', lock_by = NULL, run_at = ?, last_error = ?"
        values = (outcome.at, outcome.error)
    else:  # Killed, or Cancelled (by request): both final
        final = "Cancelled" if isinstance(outcome, Cancelled) else "Killed"
        change = f"status = '{final}', lock_by = NULL, last_error = ?, done_at = ?"
        values = (outcome.error, time.time())
    started = isinstance(outcome, Started)
    async with config.lock:
        cursor = await db.execute(
            f"UPDATE tasks SET {change}{'' if started else ', attempts = attempts + 1'}"
            " WHERE id = ? AND lock_by = ? AND attempts = ? AND status IN ('Queued', 'Running')",
            (*values, task.id, task.lock_by, task.attempts),
        )
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


async def open_backend(
    path: Path | str, config: Config | None = None, *, queue: str = "default"
) -> CustomBackend:
    """Open the database and build the backend around it."""
    db = await aiosqlite.connect(path)
    await db.executescript(SCHEMA)
    return (
        BackendBuilder.new_with_cfg(config or Config())
        .database(db)
        .fetcher(create_fetcher)
        .sink(create_sink)
        .ack(ack)
        .release(release)
        .getter(get)
        .declare(Capability.DELAY, Capability.PRIORITY, Capability.RETRY)
        .queue(queue)
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
