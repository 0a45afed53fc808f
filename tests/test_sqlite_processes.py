"""SqliteBackend across processes: a crash mid-run, two workers on one file, and
a push from another process waking an idle worker.

Worker processes run ``tests/sqlite_worker_proc.py``; every handler run is
recorded (one line per run, task id) so runs can be counted afterwards. The
tests wait on the workers' own words (``ready``, ``progress``, ``done``) and on
worker events, never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rxqueue import ManualClock, Status, TaskContext, WorkerBuilder, events
from rxqueue.backends.sqlite import SqliteBackend
from rxqueue.cli import main as cli_main
from tests.sqlite_worker_proc import RUNS_ENV

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("sqlite_worker_proc.py")
ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def spawn(db: Path, name: str, runs: Path, *options: str) -> subprocess.Popen[str]:
    command = [sys.executable, str(SCRIPT), str(db), name, str(runs), *options]
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env()
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


def kill_mid_run(db: Path, runs: Path, count: int, progress: int) -> tuple[list[str], set[str]]:
    """Push ``count`` tasks, SIGKILL a worker process after ``progress`` runs; the ids
    pushed and the ids it held when it died (claimed or running)."""
    ids = asyncio.run(fill(db, count))
    proc = spawn(db, "doomed", runs, "--delay", "0.002", "--progress", str(progress))
    try:
        expect(proc, "ready")
        go(proc)
        expect(proc, "progress")
        proc.send_signal(signal.SIGKILL)
    finally:
        finish(proc)
    in_flight = held_by_the_dead(db)
    assert in_flight, "the dead worker should have held tasks"
    assert progress <= sum(run_counts(runs).values()) < count
    return ids, in_flight


def finished_once(db: Path, runs: Path, ids: list[str], in_flight: set[str]) -> None:
    """Every task is Done; only tasks in flight at the kill ran twice, none more."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall()
    assert rows == [("Done", len(ids))]
    counts = run_counts(runs)
    assert set(counts) == set(ids)
    assert {task_id for task_id, n in counts.items() if n > 1} <= in_flight
    assert all(n <= 2 for n in counts.values())


def done_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM tasks WHERE status = 'Done'").fetchone()[0])


def test_a_crashed_worker_loses_nothing(tmp_path: Path) -> None:
    db, runs = tmp_path / "tasks.db", tmp_path / "runs.txt"
    ids, in_flight = kill_mid_run(db, runs, 2000, 300)

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
    finished_once(db, runs, ids, in_flight)


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


def test_run_until_idle_takes_over_a_killed_workers_tasks(tmp_path: Path) -> None:
    """No explicit reclaim: run_until_idle takes back expired leases before deciding
    it is idle, so the dead worker's tasks run instead of being left Queued."""
    db, runs = tmp_path / "tasks.db", tmp_path / "runs.txt"
    ids, in_flight = kill_mid_run(db, runs, 1000, 100)
    left = len(ids) - done_count(db)

    async def heir() -> int:
        # A short lease, and a clock past it: the dead worker's lease has expired.
        clock = ManualClock(time.time() + 2)
        records = os.open(runs, os.O_WRONLY | os.O_APPEND)

        async def handler(job: int, ctx: TaskContext) -> None:
            os.write(records, f"{ctx.task_id}\n".encode())

        try:
            async with SqliteBackend(db, clock=clock, lease_timeout=1.0) as backend:
                worker = WorkerBuilder("heir").backend(backend).concurrency(8).build(handler)
                return (await worker.run_until_idle()).done
        finally:
            os.close(records)

    assert asyncio.run(heir()) == left
    finished_once(db, runs, ids, in_flight)


def test_cli_burst_takes_over_a_killed_workers_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db, runs = tmp_path / "tasks.db", tmp_path / "runs.txt"
    ids, in_flight = kill_mid_run(db, runs, 1000, 100)
    left = len(ids) - done_count(db)
    with sqlite3.connect(db) as conn:  # the worker died two minutes ago (lease: 60 s)
        conn.execute("UPDATE workers SET last_seen = last_seen - 120")
        conn.execute("UPDATE tasks SET lock_at = lock_at - 120 WHERE lock_by IS NOT NULL")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv(RUNS_ENV, str(runs))
    capsys.readouterr()
    handler = "tests.sqlite_worker_proc:record_run"
    code = cli_main(["worker", f"sqlite:///{db}", handler, "--burst", "--concurrency", "8"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.startswith(f"done {left}, retried 0, killed 0")
    finished_once(db, runs, ids, in_flight)


PUSHER = """\
import asyncio, sys
from rxqueue.backends.sqlite import SqliteBackend

async def main():
    async with SqliteBackend(sys.argv[1]) as backend:
        print(await backend.push("from afar"), flush=True)

asyncio.run(main())
"""


async def test_a_push_from_another_process_wakes_an_idle_worker_at_once(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    loop = asyncio.get_running_loop()
    idle = asyncio.Event()
    succeeded: dict[str, float] = {}
    handled = asyncio.Event()

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.Idle):
            idle.set()
        elif isinstance(event, events.Succeeded):
            succeeded[event.task_id] = loop.time()
            handled.set()

    async def handler(job: str) -> str:
        return job

    # It polls every 5 s: within 1 s of the push, only the doorbell can wake it.
    async with SqliteBackend(db, poll_interval=5, max_poll_interval=5) as backend:
        worker = WorkerBuilder("near").backend(backend).build(handler)
        worker.events.subscribe(on_next=on_event)
        run = asyncio.create_task(worker.run(handle_signals=False))
        try:
            await asyncio.wait_for(idle.wait(), 10)
            await asyncio.sleep(1.1)  # idle for over a second, waiting on its doorbell
            pusher = await asyncio.create_subprocess_exec(
                sys.executable, "-c", PUSHER, str(db), stdout=subprocess.PIPE, env=child_env()
            )
            assert pusher.stdout is not None
            line = await asyncio.wait_for(pusher.stdout.readline(), 30)
            pushed_at = loop.time()
            task_id = line.decode().strip()
            assert task_id, "the pushing process printed no task id"
            await asyncio.wait_for(handled.wait(), 1.0)
            assert list(succeeded) == [task_id]
            assert succeeded[task_id] - pushed_at < 1.0
            assert await asyncio.wait_for(pusher.wait(), 30) == 0
        finally:
            worker.stop()
            await run
        done = await backend.get(task_id)
        assert done and done.status is Status.DONE and done.result == "from afar"


# A worker in its own process (concurrency 1, heartbeat from argv) for cancel tests:
# "long" sleeps a minute, anything else returns; it says when a run starts or ends.
# It works until its stdin closes. Also usable on any URL (rxqueue.connect), with
# more backend options as JSON in argv[3].
CANCELLABLE = """\
import asyncio, json, sys
import rxqueue
from rxqueue import TaskContext, WorkerBuilder

def say(*words):
    print(*words, flush=True)

async def main():
    url, heartbeat, options = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
    async with rxqueue.connect(url, heartbeat_interval=heartbeat, **options) as backend:
        async def handle(job, ctx: TaskContext):
            say("started", ctx.task_id)
            if job == "long":
                await asyncio.sleep(60)
            say("ran", ctx.task_id)

        worker = WorkerBuilder("far").backend(backend).concurrency(1).build(handle)
        run = asyncio.create_task(worker.run(handle_signals=False))
        say("ready")
        await asyncio.to_thread(sys.stdin.readline)
        worker.stop()
        summary = await run
        say("summary", summary.done, summary.cancelled, summary.retried, summary.killed)

asyncio.run(main())
"""


async def cancel_across_processes(
    url: str, backend: Any, cancels: int, heartbeat: float, *, jitter: bool = False, **options: Any
) -> list[float]:
    """Run CANCELLABLE on ``url``; ``cancels`` times: push a long task, cancel it from
    here once it runs there, and time until the store shows it Cancelled; then check
    the worker's next task runs. The latencies, in seconds.

    Each round starts just after the heartbeat that carried the previous request, so
    a cancel waits about a whole interval; ``jitter`` waits a random part of one
    before cancelling, for latencies at random phases of the heartbeat.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CANCELLABLE, url, str(heartbeat), json.dumps(options),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(),
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    stdout = proc.stdout

    async def hear() -> list[str]:
        line = await asyncio.wait_for(stdout.readline(), 30)
        assert line, "the worker process ended early"
        return line.decode().split()

    latencies: list[float] = []
    try:
        assert await hear() == ["ready"]
        for n in range(cancels):
            task_id = await backend.push("long")
            assert await hear() == ["started", task_id]
            if jitter:
                await asyncio.sleep(random.uniform(0, heartbeat))
            began = time.perf_counter()
            assert await backend.cancel(task_id, f"no. {n}") in (Status.QUEUED, Status.RUNNING)
            async with asyncio.timeout(heartbeat + 10):
                while True:  # polled often: wait_for backs off
                    task = await backend.get(task_id)
                    if task.status is Status.CANCELLED:
                        break
                    await asyncio.sleep(0.002)
            latencies.append(time.perf_counter() - began)
            assert (task.attempts, task.last_error) == (1, f"cancelled: no. {n}")
            assert task.lock_by is None
            after = await backend.push("next")  # the worker's one consumer goes on
            assert await hear() == ["started", after]
            assert await hear() == ["ran", after]
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        assert await hear() == ["summary", str(cancels), str(cancels), "0", "0"]
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stats = await backend.stats()
    assert (stats[Status.CANCELLED], stats[Status.DONE]) == (cancels, cancels)
    return latencies


async def test_a_task_running_in_another_process_is_cancelled_within_a_heartbeat(
    tmp_path: Path,
) -> None:
    db = tmp_path / "tasks.db"
    async with SqliteBackend(db) as backend:
        latencies = await cancel_across_processes(f"sqlite:///{db}", backend, 3, 0.2)
    # The request waits for the worker's next heartbeat (0.2 s), then one ack.
    assert max(latencies) < 0.2 + 0.8, latencies
