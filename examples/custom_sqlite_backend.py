"""The custom-backend page, in Python: any store becomes a backend.

A ``tasks`` table in SQLite (through aiosqlite), a fetcher that claims the
oldest due tasks through rxqueue's shared claim loop, a sink that inserts, an
acker that records outcomes, a getter (Fetch by ID, which the page lists as
missing), and a worker running ``send_email``. Run it:
``python -m examples.custom_sqlite_backend``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

import rxqueue
from rxqueue import (
    BackendBuilder,
    Capability,
    CustomBackend,
    Demand,
    Done,
    Outcome,
    Retry,
    Status,
    Task,
    TaskContext,
    TaskId,
    WorkerBuilder,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    args BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at REAL NOT NULL,
    created_at REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS tasks_pending ON tasks (created_at) WHERE status = 'pending';
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

_STATUSES = {"pending": Status.PENDING, "processing": Status.QUEUED, "done": Status.DONE,
             "killed": Status.KILLED}  # fmt: skip
_COLUMNS = "id, queue, args, status, attempts, max_attempts, run_at, created_at, last_error"


def _task(row: Sequence[Any]) -> Task[Any]:
    return Task(
        id=row[0],
        queue=row[1],
        args=row[2],  # still encoded: the worker decodes it
        status=_STATUSES.get(row[3], Status.PENDING),
        attempts=row[4],
        max_attempts=row[5],
        run_at=row[6],
        created_at=row[7],
        last_error=row[8],
    )


# --- Database query: claim the oldest due tasks --------------------------------------------


async def fetch_pending_tasks(
    db: aiosqlite.Connection, config: Config, limit: int, now: float
) -> list[Task[Any]]:
    async with config.lock:
        rows = await db.execute_fetchall(
            "UPDATE tasks SET status = 'processing' WHERE id IN ("
            "  SELECT id FROM tasks WHERE status = 'pending' AND run_at <= ?"
            "  ORDER BY created_at, id LIMIT ?)"
            f" RETURNING {_COLUMNS}",
            (now, limit),
        )
        await db.commit()
    return sorted((_task(row) for row in rows), key=lambda task: (task.created_at, task.id))


# --- Fetcher: rxqueue's claim loop, sized by the worker's demand -------------------------


def create_fetcher(db: aiosqlite.Connection, config: Config, worker: Demand) -> Any:
    async def fetch_many(limit: int) -> list[Task[Any]]:
        return await fetch_pending_tasks(db, config, limit, worker.clock())

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
            await db.execute(
                "INSERT INTO tasks (id, queue, args, max_attempts, run_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (task.id, task.queue, task.args, task.max_attempts, task.run_at, task.created_at),
            )
            await db.commit()

    return save_task


# --- Task status updates ------------------------------------------------------------------


async def ack(db: aiosqlite.Connection, config: Config, task: Task[Any], outcome: Outcome) -> bool:
    if isinstance(outcome, Done):
        status, run_at, error = "done", task.run_at, None
    elif isinstance(outcome, Retry):
        status, run_at, error = "pending", outcome.at, outcome.error
    else:
        status, run_at, error = "killed", task.run_at, outcome.error
    async with config.lock:
        cursor = await db.execute(
            "UPDATE tasks SET status = ?, run_at = ?, last_error = ?, attempts = attempts + 1"
            " WHERE id = ? AND status = 'processing'",
            (status, run_at, error, task.id),
        )
        await db.commit()
    return cursor.rowcount == 1  # False: no longer ours (it was released or killed)


async def release(db: aiosqlite.Connection, config: Config, tasks: Any) -> None:
    async with config.lock:
        await db.executemany(
            "UPDATE tasks SET status = 'pending' WHERE id = ? AND status = 'processing'",
            [(task.id,) for task in tasks],
        )
        await db.commit()


# --- Fetch by ID ---------------------------------------------------------------------------


async def get(db: aiosqlite.Connection, config: Config, task_id: TaskId) -> Task[Any] | None:
    async with config.lock:
        rows = await db.execute_fetchall(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,))
    return _task(rows[0]) if rows else None


async def open_backend(path: Path | str, config: Config | None = None) -> CustomBackend:
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
        .declare(Capability.DELAY, Capability.RETRY)  # the claim honours run_at
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
