"""SqliteBackend across processes: a crash mid-run, and two workers on one file.

Worker processes run ``tests/sqlite_worker_proc.py``; every handler run is
recorded (one line per run, task id) so runs can be counted afterwards. The
tests wait on the workers' own words (``ready``, ``progress``, ``done``), never
on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from rxqueue import ManualClock, Status, TaskContext, WorkerBuilder
from rxqueue.backends.sqlite import SqliteBackend

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("sqlite_worker_proc.py")
ROOT = Path(__file__).resolve().parents[1]


def spawn(db: Path, name: str, runs: Path, *options: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, str(SCRIPT), str(db), name, str(runs), *options]
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )


def expect(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == word, f"worker process said {line!r}, expected {word!r}"


def go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def finish(proc: subprocess.Popen[str]) -> int:
    proc.communicate(timeout=30)
    return proc.returncode


def run_counts(runs: Path) -> Counter[str]:
    return Counter(runs.read_text().split())


def held_by_the_dead(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id FROM tasks WHERE status IN ('Queued', 'Running')")
        return {task_id for (task_id,) in rows}


async def fill(db: Path, count: int) -> list[str]:
    async with SqliteBackend(db) as backend:
        return await backend.push_many(range(count))


def test_a_crashed_worker_loses_nothing(tmp_path: Path) -> None:
    db, runs = tmp_path / "tasks.db", tmp_path / "runs.txt"
    ids = asyncio.run(fill(db, 2000))
    proc = spawn(db, "doomed", runs, "--delay", "0.002", "--progress", "300")
    try:
        expect(proc, "ready")
        go(proc)
        expect(proc, "progress")
        proc.send_signal(signal.SIGKILL)
    finally:
        finish(proc)
    in_flight = held_by_the_dead(db)
    ran_before = run_counts(runs)
    assert 300 <= sum(ran_before.values()) < 2000

    async def survive() -> tuple[int, dict[Status, int]]:
        # The heir's clock is past the dead worker's 60 s lease.
        clock = ManualClock(time.time() + 61)
        records = os.open(runs, os.O_WRONLY | os.O_APPEND)

        async def handler(job: int, ctx: TaskContext) -> None:
            os.write(records, f"{ctx.task_id}\n".encode())

        try:
            async with SqliteBackend(db, clock=clock) as backend:
                reclaimed = await backend.reclaim()
                worker = WorkerBuilder("heir").backend(backend).concurrency(8).build(handler)
                await worker.run_until_idle()
                return reclaimed, await backend.stats()
        finally:
            os.close(records)

    reclaimed, stats = asyncio.run(survive())
    assert reclaimed == len(in_flight) > 0
    assert stats[Status.DONE] == 2000
    counts = run_counts(runs)
    assert set(counts) == set(ids)
    twice = {task_id for task_id, n in counts.items() if n > 1}
    assert twice <= in_flight  # only tasks in flight at the kill ran again
    assert all(n <= 2 for n in counts.values())


def test_two_processes_run_each_task_once(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    ids = asyncio.run(fill(db, 10_000))
    runs = [tmp_path / "runs-a.txt", tmp_path / "runs-b.txt"]
    procs = [spawn(db, name, path) for name, path in zip(("a", "b"), runs, strict=True)]
    try:
        for proc in procs:
            expect(proc, "ready")
        for proc in procs:
            go(proc)
        for proc in procs:
            expect(proc, "done")
    finally:
        codes = [finish(proc) for proc in procs]
    assert codes == [0, 0]
    per_process = [run_counts(path) for path in runs]
    assert all(per_process), "both processes should have run tasks"
    counts = per_process[0] + per_process[1]
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall() == [
            ("Done", 10_000)
        ]


def test_a_forgotten_backend_does_not_block_exit(tmp_path: Path) -> None:
    """The connection thread is a daemon: a program that never closes still exits."""
    program = (
        "import asyncio, sys\n"
        "from rxqueue.backends.sqlite import SqliteBackend\n"
        "backend = SqliteBackend(sys.argv[1])  # alive until the interpreter exits\n"
        "asyncio.run(backend.push('x'))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    db = tmp_path / "tasks.db"
    done = subprocess.run([sys.executable, "-c", program, str(db)], env=env, timeout=20)
    assert done.returncode == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (1,)
