"""A worker process for tests/test_sqlite_processes.py.

    python tests/sqlite_worker_proc.py DB NAME RUNS [--delay SECONDS] [--progress N]

Prints ``ready`` once the database is open, waits for a line on stdin (so that
several processes start together), then works until idle and prints ``done``.
Every handler run appends the task id to the file RUNS in one unbuffered
``O_APPEND`` write, so a SIGKILL loses no record of a run that began. After
``N`` runs it prints ``progress`` (the parent's cue to kill it mid-run).

:func:`record_run` is a handler for ``rxqueue worker ... tests.sqlite_worker_proc:record_run``:
it records each run the same way, in the file named by ``$RXQUEUE_TEST_RUNS``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from rxqueue import TaskContext, WorkerBuilder
from rxqueue.backends.sqlite import SqliteBackend

RUNS_ENV = "RXQUEUE_TEST_RUNS"


def record(runs: int, task_id: str) -> None:
    """One unbuffered O_APPEND write per run: a SIGKILL loses no record of a run that began."""
    os.write(runs, f"{task_id}\n".encode())


async def record_run(job: object, ctx: TaskContext) -> None:
    runs = os.open(os.environ[RUNS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        record(runs, ctx.task_id)
    finally:
        os.close(runs)


def say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("name")
    parser.add_argument("runs")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--progress", type=int, default=0)
    args = parser.parse_args()
    runs = os.open(args.runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    count = 0

    async def handler(job: object, ctx: TaskContext) -> None:
        nonlocal count
        record(runs, ctx.task_id)
        count += 1
        if count == args.progress:
            say("progress")
        await asyncio.sleep(args.delay)

    async with SqliteBackend(args.db) as backend:
        await backend.stats()  # opens the file
        say("ready")
        await asyncio.to_thread(sys.stdin.readline)
        worker = WorkerBuilder(args.name).backend(backend).concurrency(8).build(handler)
        await worker.run_until_idle()
    say("done")


if __name__ == "__main__":
    asyncio.run(main())
