"""Limits shared by all workers: ``rate_limit=(n, per)`` and ``max_running=n``.

Both are backend options enforced by the store inside the claim, so they hold
across workers and processes. The conformance tests run on every backend in
``conftest.FACTORIES`` that declares ``Capability.LIMITS``; the last tests run
three processes under one rate limit on a SQLite file and a PostgreSQL schema,
and count their starts per second.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import rxqueue
from rxqueue import (
    Capability,
    InvalidOption,
    ManualClock,
    MemoryBackend,
    Status,
    TaskContext,
    WorkerBuilder,
)
from rxqueue.backends import _sqlite_schema
from rxqueue.backends.base import ClaimingBackend, Limits
from rxqueue.backends.sqlite import SqliteBackend
from tests.conftest import BackendKit, reachable_postgres, require
from tests.together import release_together

RUN_LIMIT = 20.0
ROOT = Path(__file__).resolve().parents[1]


async def claim(backend: Any, worker: str, limit: int) -> list[Any]:
    """Claim as a worker would (the store call under the fetcher)."""
    assert isinstance(backend, ClaimingBackend)
    return await backend._claim(worker, limit)


def sibling(backend: Any, **options: Any) -> Any:
    """Another backend on the same store (file, schema) and queue; None for memory."""
    if isinstance(backend, SqliteBackend):
        return SqliteBackend(backend.path, queue=backend.queue, clock=backend.clock, **options)
    if type(backend).__name__ == "PostgresBackend":
        return type(backend)(
            backend._server.dsn,
            schema=backend.schema,
            queue=backend.queue,
            clock=backend.clock,
            pool_max_size=2,
            **options,
        )
    return None


# --- conformance ------------------------------------------------------------------------------


async def test_max_running_caps_the_tasks_running_at_once_across_workers(kit: BackendKit) -> None:
    backend = await kit.make(max_running=2)
    require(backend, Capability.LIMITS, Capability.LIST)
    other = sibling(backend, max_running=2, poll_interval=0.002, max_poll_interval=0.01)
    if other is not None:
        kit.created.append(other)
    await backend.push_many(range(10))
    running = peak = 0

    async def handle(n: int, ctx: TaskContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.03)
        running -= 1

    workers = [
        WorkerBuilder(name).backend(on).concurrency(5).idle_horizon(0).build(handle)
        for name, on in (("w1", backend), ("w2", other or backend))
    ]
    async with asyncio.timeout(RUN_LIMIT):
        await asyncio.gather(*(worker.run_until_idle() for worker in workers))
    assert 1 <= peak <= 2  # the cap holds (under load the two may not overlap)
    assert (await backend.stats())[Status.DONE] == 10


async def test_max_running_counts_claimed_tasks_whoever_holds_them(kit: BackendKit) -> None:
    backend = await kit.make(max_running=3)
    require(backend, Capability.LIMITS, Capability.MANAGE)
    ids = await backend.push_many(range(10))
    assert len(await claim(backend, "w1", 2)) == 2
    assert len(await claim(backend, "w2", 5)) == 1  # 3 - 2 held by w1
    assert await claim(backend, "w2", 5) == []
    await backend.kill(ids[0])  # finished tasks free room
    assert len(await claim(backend, "w3", 5)) == 1


async def test_a_rate_limit_claims_at_most_n_then_refills_with_time(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock, rate_limit=(5, 1.0))
    require(backend, Capability.LIMITS)
    await backend.push_many(range(30))
    assert len(await claim(backend, "w1", 10)) == 5  # a full bucket: the burst
    assert await claim(backend, "w1", 10) == []
    assert await claim(backend, "w2", 10) == []  # one bucket for the queue
    clock.advance(0.1)
    assert await claim(backend, "w2", 10) == []  # half a token
    clock.advance(0.1)
    assert len(await claim(backend, "w2", 10)) == 1  # refilled at 5 per second
    clock.advance(0.6)
    assert len(await claim(backend, "w1", 10)) == 3
    clock.advance(0.4)
    assert len(await claim(backend, "w1", 1)) == 1  # wanted 1 of 2: one token is left
    assert len(await claim(backend, "w1", 10)) == 1
    clock.advance(60)
    assert len(await claim(backend, "w1", 10)) == 5  # the bucket holds at most n


async def test_tokens_are_spent_only_for_tasks_claimed(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock, rate_limit=(5, 1.0))
    require(backend, Capability.LIMITS)
    await backend.push_many(range(2))
    assert len(await claim(backend, "w", 10)) == 2
    await backend.push_many(range(10))
    assert len(await claim(backend, "w", 10)) == 3


async def test_rate_limit_and_max_running_together(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock, rate_limit=(5, 1.0), max_running=2)
    require(backend, Capability.LIMITS)
    await backend.push_many(range(10))
    assert len(await claim(backend, "w", 10)) == 2  # max_running first
    assert await claim(backend, "w", 10) == []


async def test_backends_on_one_store_share_the_bucket(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock, rate_limit=(4, 1.0))
    require(backend, Capability.LIMITS)
    other = sibling(backend, rate_limit=(4, 1.0))
    if other is None:
        pytest.skip(f"a {type(backend).__name__} is not shared")
    kit.created.append(other)
    await backend.push_many(range(20))
    assert len(await claim(backend, "w1", 3)) == 3
    assert len(await claim(other, "w2", 3)) == 1
    assert await claim(other, "w2", 3) == []
    clock.advance(0.5)
    assert len(await claim(other, "w2", 3)) == 2


BAD_RATES: list[Any] = [
    (0, 1.0),
    (-1, 1.0),
    (1.5, 1.0),
    (True, 1.0),
    (10, 0),
    (10, -1.0),
    (10, float("inf")),
    (10, float("nan")),
    (10, "1"),
    (10,),
    (10, 1.0, 2),
    10,
    "10/s",
]
BAD_CAPS: list[Any] = [0, -1, 1.5, True, "2"]


async def test_bad_limits_are_refused_naming_the_option(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.LIMITS)
    for rate in BAD_RATES:
        with pytest.raises(InvalidOption, match="rate_limit must be a pair"):
            await kit.make(rate_limit=rate)
    for cap in BAD_CAPS:
        with pytest.raises(InvalidOption, match="max_running must be a positive int"):
            await kit.make(max_running=cap)


def test_limits_go_through_connect_and_are_checked() -> None:
    backend = rxqueue.connect("memory://", rate_limit=[100, 1], max_running=4)
    assert backend.limits == Limits((100, 1.0), 4)  # type: ignore[attr-defined]
    assert rxqueue.connect("memory://").limits is None  # type: ignore[attr-defined]
    with pytest.raises(InvalidOption, match="rate_limit"):
        rxqueue.connect("memory://", rate_limit=(100, 0))


def test_a_custom_backend_cannot_declare_limits() -> None:
    from rxqueue import BackendBuilder, BuildError

    with pytest.raises(BuildError, match=r"cannot declare Capability\.LIMITS"):
        BackendBuilder().declare(Capability.LIMITS)
    assert Capability.LIMITS in MemoryBackend.capabilities
    assert Capability.LIMITS in SqliteBackend.capabilities


def test_the_bucket_never_runs_backwards() -> None:
    limits = Limits((10, 2.0), None)
    assert limits.refill(None, 100.0) == (10.0, 100.0)  # no state: full
    assert limits.refill((0.0, 100.0), 101.0) == (5.0, 101.0)
    assert limits.refill((9.0, 100.0), 110.0) == (10.0, 110.0)  # at most n
    assert limits.refill((3.0, 100.0), 99.0) == (3.0, 100.0)  # a clock behind: nothing added
    assert limits.allowance(4, 2.9999999999, 0) == 3  # float refills count whole tokens
    assert limits.spend(3.0, 3) == 0.0


# --- migrations ---------------------------------------------------------------------------------


async def test_a_version_3_sqlite_file_gains_the_limits_table(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    with sqlite3.connect(path, isolation_level=None) as conn:
        for step in (1, 2, 3):
            for statement in _sqlite_schema.MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 3")
    conn.close()
    clock = ManualClock()
    async with SqliteBackend(path, clock=clock, rate_limit=(2, 1.0)) as backend:
        await backend.push_many(range(5))
        assert len(await backend._claim("w", 5)) == 2
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == _sqlite_schema.SCHEMA_VERSION
        assert conn.execute("SELECT queue, tokens FROM limits").fetchall() == [("default", 0.0)]
    conn.close()


async def test_a_version_3_postgres_schema_gains_the_limits_table() -> None:
    url = await reachable_postgres()
    import asyncpg

    from rxqueue.backends import _postgres_schema as pg_schema
    from rxqueue.backends.postgres import PostgresBackend

    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(url)
    try:
        s = f'"{schema}"'
        await conn.execute(f"CREATE SCHEMA {s}")
        await conn.execute(pg_schema._VERSION_TABLE.format(s=s))
        for step in (1, 2, 3):
            for statement in pg_schema.MIGRATIONS[step]:
                await conn.execute(statement.format(s=s))
            await conn.execute(f"INSERT INTO {s}.migrations (version) VALUES ($1)", step)
        clock = ManualClock()
        backend = PostgresBackend(url, schema=schema, clock=clock, rate_limit=(2, 1.0))
        async with backend:
            await backend.push_many(range(5))
            assert len(await backend._claim("w", 5)) == 2
        versions = await conn.fetch(f"SELECT version FROM {s}.migrations ORDER BY version")
        assert [row[0] for row in versions] == list(range(1, pg_schema.SCHEMA_VERSION + 1))
        rows = await conn.fetch(f"SELECT queue, tokens FROM {s}.limits")
        assert [tuple(row) for row in rows] == [("default", 0.0)]
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


# --- three processes under one rate limit -------------------------------------------------------

RATE = 50  # starts per second
RUN_FOR = 3.0

STARTER = r"""
import asyncio, os, sys, time
import rxqueue
from rxqueue import WorkerBuilder

async def main() -> None:
    url, schema, starts, name, rate, run_for = sys.argv[1:7]
    options = {"schema": schema, "pool_max_size": 4} if url.startswith("postgres") else {}
    backend = rxqueue.connect(url, rate_limit=(int(rate), 1.0), **options)
    await backend.open()
    out = os.open(starts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def handle(n: int) -> None:
        os.write(out, f"{time.time()!r}\n".encode())  # one O_APPEND write per start

    worker = WorkerBuilder(name).backend(backend).concurrency(8).build(handle)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    run = asyncio.create_task(worker.run(handle_signals=False))
    await asyncio.sleep(float(run_for))
    worker.stop()
    await run
    await backend.close()

asyncio.run(main())
"""


def run_starters(url: str, schema: str, starts: Path) -> list[float]:
    """Three worker processes on one queue under ``rate_limit=(RATE, 1.0)`` for
    ``RUN_FOR`` seconds; returns every start's time, sorted."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, url, schema, str(starts), f"w{n}", str(RATE),
             str(RUN_FOR)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(3)
    ]  # fmt: skip
    release_together(procs)
    return sorted(float(line) for line in starts.read_text().split())


# A start follows its claim by a few milliseconds (the worker's buffer, the event
# loop): windows of start times are widened by this much when bounding them.
JITTER = 0.05


def check_starts(times: list[float]) -> None:
    """The documented bound: a window of ``w`` seconds holds at most ``RATE`` (the
    full bucket's burst) + ``RATE * w`` starts; and the limit is used, not starved."""
    assert len(times) >= RATE * RUN_FOR * 0.6, f"only {len(times)} starts in {RUN_FOR}s"
    for index, start in enumerate(times):
        in_window = sum(1 for t in times[index:] if t < start + 1.0)
        assert in_window <= RATE + RATE * (1.0 + JITTER), (start - times[0], in_window)
    span = times[-1] - times[0]
    assert len(times) <= RATE + RATE * (span + JITTER)
    # After the first second, the bucket's burst is spent: each later whole second
    # holds about RATE starts (what tokens it refilled, plus what was left over).
    first = times[0]
    per_second = [
        sum(1 for t in times if first + k <= t < first + k + 1) for k in range(int(RUN_FOR))
    ]
    print(f"starts per second from the first: {per_second}; total {len(times)} in {span:.2f}s")


@pytest.mark.slow
def test_three_processes_share_a_rate_limit_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "limits.db"
    with sqlite3.connect(path) as conn:  # an empty file; the first opener creates the schema
        pass
    conn.close()

    async def fill() -> None:
        async with SqliteBackend(path) as backend:
            await backend.push_many(range(1000))

    asyncio.run(fill())
    check_starts(run_starters(f"sqlite:///{path}", "", tmp_path / "starts"))


@pytest.mark.slow
async def test_three_processes_share_a_rate_limit_on_postgres(tmp_path: Path) -> None:
    url = await reachable_postgres()
    import asyncpg

    from rxqueue.backends.postgres import PostgresBackend

    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        async with PostgresBackend(url, schema=schema) as backend:
            await backend.push_many(range(1000))
        times = await asyncio.to_thread(run_starters, url, schema, tmp_path / "starts")
        check_starts(times)
    finally:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
