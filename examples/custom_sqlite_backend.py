"""The custom-backend page, in Python: any store becomes a backend.

A ``tasks`` table in SQLite (through aiosqlite), a fetcher that claims the
oldest pending task, a sink that inserts, an acker that records outcomes,
and a worker running ``send_email``. Run it: ``python -m examples.custom_sqlite_backend``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from rxqueue import (
    BackendBuilder,
    CustomBackend,
    Done,
    Outcome,
    Retry,
    Status,
    Task,
    TaskContext,
    WorkerBuilder,
    WorkerContext,
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
    poll_interval: float = 0.1  # how long to wait when nothing is pending


@dataclass
class EmailJob:
    to: str
    subject: str


async def send_email(job: EmailJob, ctx: TaskContext) -> None:
    print(f"Sending to: {job.to} ({job.subject!r}, attempt {ctx.attempt})")


# --- Database query: claim the oldest pending tasks -------------------------------------


async def fetch_pending_tasks(db: aiosqlite.Connection, limit: int, now: float) -> list[Task[Any]]:
    cursor = await db.execute(
        "UPDATE tasks SET status = 'processing' WHERE id IN ("
        "  SELECT id FROM tasks WHERE status = 'pending' AND run_at <= ?"
        "  ORDER BY created_at, id LIMIT ?)"
        " RETURNING id, queue, args, attempts, max_attempts, run_at, created_at",
        (now, limit),
    )
    rows = await cursor.fetchall()
    await db.commit()
    return sorted(
        (
            Task(
                id=row[0],
                queue=row[1],
                args=row[2],  # still encoded: the worker decodes it
                status=Status.QUEUED,
                attempts=row[3],
                max_attempts=row[4],
                run_at=row[5],
                created_at=row[6],
            )
            for row in rows
        ),
        key=lambda task: (task.created_at, task.id),
    )


# --- Fetcher: an async generator, like the page's stream::unfold --------------------


def create_fetcher(
    db: aiosqlite.Connection, config: Config, worker: WorkerContext
) -> AsyncIterator[Task[Any] | None]:
    async def fetch() -> AsyncIterator[Task[Any] | None]:
        while True:
            wanted = min(config.batch_size, max(1, worker.free_capacity))
            tasks = await fetch_pending_tasks(db, wanted, worker.clock())
            worker.claimed(0, tasks)  # in the worker's ledger: released if it stops now
            if not tasks:
                yield None  # nothing right now
                await asyncio.sleep(config.poll_interval)  # don't hammer the database
            for task in tasks:
                yield task

    return fetch()


# --- Sink and database insert ----------------------------------------------------------


def create_sink(db: aiosqlite.Connection, config: Config) -> Any:
    async def save_task(task: Task[Any]) -> None:
        await db.execute(
            "INSERT INTO tasks (id, queue, args, max_attempts, run_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (task.id, task.queue, task.args, task.max_attempts, task.run_at, task.created_at),
        )
        await db.commit()

    return save_task


# --- Task status updates ------------------------------------------------------------------


async def ack(db: aiosqlite.Connection, config: Config, task: Task[Any], outcome: Outcome) -> None:
    if isinstance(outcome, Done):
        status, run_at, error = "done", task.run_at, None
    elif isinstance(outcome, Retry):
        status, run_at, error = "pending", outcome.at, outcome.error
    else:
        status, run_at, error = "killed", task.run_at, outcome.error
    await db.execute(
        "UPDATE tasks SET status = ?, run_at = ?, last_error = ?, attempts = attempts + 1"
        " WHERE id = ?",
        (status, run_at, error, task.id),
    )
    await db.commit()


async def release(db: aiosqlite.Connection, config: Config, tasks: Any) -> None:
    await db.executemany(
        "UPDATE tasks SET status = 'pending' WHERE id = ? AND status = 'processing'",
        [(task.id,) for task in tasks],
    )
    await db.commit()


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
        .build()
    )


async def main(path: Path) -> None:
    backend = await open_backend(path)
    for n in range(3):
        await backend.push(EmailJob(to=f"user{n}@example.com", subject="hi"))
    worker = WorkerBuilder("email-worker").backend(backend).build(send_email)
    summary = await worker.run_until_idle()
    print(f"done: {summary.done}, failed: {summary.failed}")
    await backend.db.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(folder) / "tasks.db"))
