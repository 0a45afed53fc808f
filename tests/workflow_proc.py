"""A worker process for the workflow crash test in tests/test_workflows.py.

    python tests/workflow_proc.py DB RUNS PROGRESS

Prints ``ready`` once the database is open, waits for a line on stdin, then
serves :data:`CHAIN` until idle. Every step run appends its task id to RUNS in
one unbuffered ``O_APPEND`` write (a SIGKILL loses no record of a run that
began); after PROGRESS step runs it prints ``progress``, the parent's cue to kill.
"""

from __future__ import annotations

import asyncio
import os
import sys

from rxqueue import TaskContext, WorkerBuilder, Workflow
from rxqueue.backends.sqlite import SqliteBackend

RUNS_FILE = os.environ.get("RXQUEUE_TEST_RUNS", "")
_progress = {"at": 0, "count": 0}


def _record(ctx: TaskContext) -> None:
    fd = os.open(RUNS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.task_id}\n".encode())
    finally:
        os.close(fd)
    _progress["count"] += 1
    if _progress["count"] == _progress["at"]:
        sys.stdout.write("progress\n")
        sys.stdout.flush()


async def step(value: int, ctx: TaskContext) -> int:
    _record(ctx)
    await asyncio.sleep(0.001)
    return value + 1


CHAIN = Workflow("crash").then(step).then(step).then(step).then(step).then(step)


async def main() -> None:
    db, runs, progress = sys.argv[1], sys.argv[2], int(sys.argv[3])
    global RUNS_FILE
    RUNS_FILE = runs
    _progress["at"] = progress
    async with SqliteBackend(db) as backend:
        worker = WorkerBuilder("doomed").backend(backend).concurrency(8).build(CHAIN)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
        await worker.run_until_idle()
    sys.stdout.write("done\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
