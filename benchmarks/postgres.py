"""PostgreSQL: rxqueue's backend against a hand-written asyncpg loop and its peers.

``python -m benchmarks.postgres [--quick] [--only PARTS] [--n N] [--repeat R] [--dsn DSN]``

Parts (``--only``), each beside its baseline, measured in the same invocation:

* ``e2e``: draining seeded no-op tasks with ``WorkerBuilder("w").concurrency(32)``
  at the defaults, against the hand-written loop (``benchmarks.pg_loop``, claims
  of 100), pgqueuer and procrastinate (each skipped with a note if not installed);
* ``push``: ``push_many`` against ``COPY`` and ``executemany`` into the loop's
  table (rxqueue's columns and indexes);
* ``latency``: push -> handler start, one push every 20 ms from another process
  after the worker idled, against the loop woken by LISTEN/NOTIFY;
* ``idle``: CPU and statements per second of idle worker processes (rxqueue, the
  peers) and of an event loop that only sleeps;
* ``big``: claim speed over the first tasks of a million pending, against the
  same over a small queue, for rxqueue and the loop.

The server: ``--dsn``, else ``$RXQUEUE_BENCH_DSN``, else the local test server.
Every run uses its own schema (``bench_<hex>_...``), dropped right after it;
whatever is left is dropped at the end. An unreachable server skips the suite.
Subprocess probes: ``python -m benchmarks.postgres probe ...`` (see :func:`probe`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import platform
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from benchmarks.common import (
    ROOT,
    Kind,
    Report,
    Skipped,
    Table,
    Verdict,
    code_version,
    fmt_ms,
    fmt_rate,
    fmt_ratio,
    interleave,
    median,
    noop,
    payloads,
    percentile,
    rate_table,
    ratio,
    round_ratios,
    rows_of,
    spread,
    summary_table,
)

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PARTS = ("e2e", "push", "latency", "idle", "big")
PROBE = (sys.executable, "-m", "benchmarks.postgres", "probe")
QUEUE = "bench"
CONCURRENCY = 32
SEED_CHUNK = 10_000

LOOP = "asyncpg hand-written loop (claims of 100)"
RX = f"rxqueue .concurrency({CONCURRENCY}), defaults"
PGQUEUER = f"pgqueuer QueueManager (batch 16, max_concurrent_tasks {CONCURRENCY})"
PGQUEUER_UNBOUNDED = "pgqueuer QueueManager (batch 100, concurrency unbounded)"
PROCRASTINATE = f"procrastinate worker (concurrency {CONCURRENCY})"
E2E_TARGET, PUSH_TARGET, BIG_TARGET = 0.6, 0.5, 0.8
P50_TARGET, P99_TARGET, IDLE_TARGET = 0.005, 0.020, 0.01


@dataclass(frozen=True)
class Sizes:
    n: int = 20_000  # end-to-end tasks
    push: int = 100_000
    latency_count: int = 200  # tasks pushed, one every `interval`
    interval: float = 0.02
    idle_before: float = 1.5  # the worker idles this long before the first push
    idle_seconds: float = 10.0  # idle CPU and statements over this long (a whole period
    idle_settle: float = 2.0  # of 10 s heartbeats), after this long (the poll backed off)
    big: int = 1_000_000  # pending tasks of the big queue
    big_run: int = 20_000  # tasks claimed per run, over the big queue and a small one


QUICK = Sizes(2_000, 20_000, 30, 0.02, 1.0, 2.0, 1.0, 50_000, 2_500)


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# --- schemas: one per run, all dropped at the end ---------------------------------------


class Schemas:
    """Names ``bench_<hex>_<label><n>``, unique to this invocation."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.prefix = f"bench_{secrets.token_hex(4)}"
        self.made = 0

    def new(self, label: str) -> str:
        self.made += 1
        return f"{self.prefix}_{label}{self.made}"

    def drop(self, *names: str) -> None:
        asyncio.run(admin(self.dsn, *(f'DROP SCHEMA IF EXISTS "{name}" CASCADE' for name in names)))

    def drop_all(self) -> None:
        async def run() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.dsn)
            try:
                names = await conn.fetch(
                    "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
                    f"{self.prefix}_",
                )
                for (name,) in names:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            finally:
                await conn.close()

        asyncio.run(run())


async def admin(dsn: str, *statements: str) -> list[Any]:
    """Run ``statements`` on a fresh connection; the first value of each."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [await conn.fetchval(statement) for statement in statements]
    finally:
        await conn.close()


def fresh(
    schemas: Schemas,
    label: str,
    seed: Callable[[str], Awaitable[None]],
    run: Callable[[str], Awaitable[tuple[int, float]]],
    check: Callable[[str], Awaitable[int]],
    expected: int,
) -> Callable[[], float]:
    """A measure: seed a fresh schema (untimed), run (timed inside ``run``), check
    that ``expected`` tasks ran (by the run's own count and by ``check``, a count
    in the database), drop the schema; tasks/s."""

    def measure() -> float:
        schema = schemas.new(label)
        try:
            asyncio.run(seed(schema))
            done, elapsed = asyncio.run(run(schema))
            stored = asyncio.run(check(schema))
        finally:
            schemas.drop(schema)
        if done != expected or stored != expected:
            raise RuntimeError(
                f"{label}: expected {expected} tasks done, the run counted {done}, "
                f"the database {stored}"
            )
        return done / elapsed

    return measure


# --- rxqueue ---------------------------------------------------------------------------------


def rx_backend(dsn: str, schema: str, **options: Any) -> Any:
    import rxqueue

    return rxqueue.connect(dsn, queue=QUEUE, schema=schema, **options)


def rx_worker(backend: Any, handler: Any, name: str) -> Any:
    import rxqueue

    return rxqueue.WorkerBuilder(name).backend(backend).concurrency(CONCURRENCY).build(handler)


async def rx_prepare(dsn: str, schema: str) -> None:
    """rxqueue's schema, created (migrated) by opening a backend."""
    backend = rx_backend(dsn, schema)
    await backend.open()
    await backend.close()


async def rx_seed(dsn: str, schema: str, n: int) -> None:
    """``n`` tasks pushed with ``push_many`` in chunks of 10,000, then ANALYZE."""
    backend = rx_backend(dsn, schema)
    await backend.open()
    for first in range(0, n, SEED_CHUNK):
        await backend.push_many(payloads(min(SEED_CHUNK, n - first), first))
    await backend.close()
    await admin(dsn, f'ANALYZE "{schema}".tasks')


async def rx_copy(dsn: str, template: str, schema: str) -> None:
    """A fresh rxqueue schema holding the template's tasks (same ids, payloads, times)."""
    await rx_prepare(dsn, schema)
    await admin(
        dsn,
        f'INSERT INTO "{schema}".tasks SELECT * FROM "{template}".tasks',
        f'ANALYZE "{schema}".tasks',
    )


async def rx_drain(dsn: str, schema: str) -> tuple[int, float]:
    """``run_until_idle`` at the defaults: (tasks done, seconds, opening included)."""
    start = time.perf_counter()
    backend = rx_backend(dsn, schema)
    worker = rx_worker(backend, noop, f"e2e-{secrets.token_hex(3)}")
    summary = await worker.run_until_idle()
    elapsed = time.perf_counter() - start
    await backend.close()
    return summary.done, elapsed


async def tasks_done(dsn: str, schema: str) -> int:
    """Done tasks in a ``tasks`` table (rxqueue's or the loop's)."""
    (count,) = await admin(dsn, f"SELECT count(*) FROM \"{schema}\".tasks WHERE status = 'Done'")
    return int(count)


async def rx_claim_rate(dsn: str, schema: str, tasks: int) -> float:
    """A worker at the defaults over a seeded queue: ``tasks`` / seconds from its start
    to the start of its ``tasks``-th handler (its claim speed); it stops there."""
    backend = rx_backend(dsn, schema)
    seen = 0
    reached = asyncio.Event()
    start = time.perf_counter()
    elapsed = math.nan

    async def handler(job: Any) -> None:
        nonlocal seen, elapsed
        seen += 1
        if seen == tasks:
            elapsed = time.perf_counter() - start
            reached.set()

    worker = rx_worker(backend, handler, f"big-{secrets.token_hex(3)}")
    running = asyncio.create_task(worker.run(handle_signals=False))
    waiting = asyncio.create_task(reached.wait())
    await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
    worker.stop()
    waiting.cancel()
    await running
    await backend.close()
    if seen < tasks:
        raise RuntimeError(f"the worker ran {seen} of {tasks} tasks")
    return tasks / elapsed


# --- pgqueuer ----------------------------------------------------------------------------------
# The fastest documented configuration: its QueueManager on one dedicated asyncpg
# connection (AsyncpgDriver, as its performance guide advises), batch dequeue,
# "balanced" durability (the queue table logged, as rxqueue's; its log and
# statistics tables unlogged), `pgq autovac` storage settings. Same concurrency:
# max_concurrent_tasks=32, which caps batch_size at 16 (it must be <= half of it).
# Also shown: batch_size 100 with no max_concurrent_tasks (its default: every
# dequeued job starts at once), the way its own drain benchmark runs.

PGQUEUER_BATCH = 16


def pgqueuer_settings(schema: str) -> Any:
    from pgqueuer.domain.settings import DBSettings, Durability

    return DBSettings(db_schema=schema, durability=Durability.balanced, channel=f"{schema}_ch")


def pgqueuer_queries(connection: Any, schema: str) -> Any:
    from pgqueuer.adapters.persistence import qb
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    settings = pgqueuer_settings(schema)
    return Queries(
        AsyncpgDriver(connection),
        qbe=qb.QueryBuilderEnvironment(settings),
        qbq=qb.QueryQueueBuilder(settings),
        qbs=qb.QuerySchedulerBuilder(settings),
    )


async def pgqueuer_seed(dsn: str, schema: str, n: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        queries = pgqueuer_queries(conn, schema)
        await queries.install()
        await queries.optimize_autovacuum()
        for first in range(0, n, SEED_CHUNK):
            count = min(SEED_CHUNK, n - first)
            await queries.enqueue(
                ["noop"] * count,
                [orjson.dumps(p) for p in payloads(count, first)],
                [0] * count,
            )
        await conn.execute(f'ANALYZE "{schema}".pgqueuer')
    finally:
        await conn.close()


async def pgqueuer_drain(
    dsn: str, schema: str, batch: int, max_tasks: int | None
) -> tuple[int, float]:
    import asyncpg
    from pgqueuer.domain.types import Channel, QueueExecutionMode
    from pgqueuer.qm import QueueManager

    done = 0
    start = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    queries = pgqueuer_queries(conn, schema)
    manager = QueueManager(queries, channel=Channel(f"{schema}_ch"))

    @manager.entrypoint("noop")
    async def handler(job: Any) -> None:
        nonlocal done
        await noop(orjson.loads(job.payload))
        done += 1

    await manager.run(
        batch_size=batch, mode=QueueExecutionMode.drain, max_concurrent_tasks=max_tasks
    )
    elapsed = time.perf_counter() - start
    await conn.close()
    return done, elapsed


async def pgqueuer_done(dsn: str, schema: str) -> int:
    """Jobs pgqueuer logged as successful (it deletes them from its queue table)."""
    (count,) = await admin(
        dsn, f"SELECT count(*) FROM \"{schema}\".pgqueuer_log WHERE status = 'successful'"
    )
    return int(count)


async def pgqueuer_idle(dsn: str, schema: str) -> Any:
    import asyncpg
    from pgqueuer.domain.types import Channel
    from pgqueuer.qm import QueueManager

    conn = await asyncpg.connect(dsn)
    manager = QueueManager(pgqueuer_queries(conn, schema), channel=Channel(f"{schema}_ch"))
    manager.entrypoint("noop")(noop)
    running = asyncio.create_task(
        manager.run(batch_size=PGQUEUER_BATCH, max_concurrent_tasks=CONCURRENCY)
    )

    async def stop() -> None:
        manager.shutdown.set()
        await running
        await conn.close()

    return stop


# --- procrastinate -----------------------------------------------------------------------------
# Its worker with concurrency 32 (its documented way to run many async jobs at
# once), LISTEN/NOTIFY on (the default), jobs kept (delete_jobs="never", the
# default: deleting costs as much), a psycopg pool as large as the concurrency.

PROCRASTINATE_POOL = CONCURRENCY


def procrastinate_app(dsn: str, schema: str) -> tuple[Any, Any, list[int]]:
    """The app, its no-op task, and a one-cell list counting the task's runs."""
    import procrastinate

    connector = procrastinate.PsycopgConnector(
        conninfo=dsn,
        kwargs={"options": f"-c search_path={schema}"},
        min_size=1,
        max_size=PROCRASTINATE_POOL,
    )
    app = procrastinate.App(connector=connector)
    runs = [0]

    @app.task(name="noop", queue=QUEUE)
    async def task(**payload: Any) -> None:
        await noop(payload)
        runs[0] += 1

    return app, task, runs


async def procrastinate_seed(dsn: str, schema: str, n: int) -> None:
    await admin(dsn, f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    app, task, _ = procrastinate_app(dsn, schema)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for first in range(0, n, SEED_CHUNK):
            await task.batch_defer_async(*payloads(min(SEED_CHUNK, n - first), first))
    await admin(dsn, f'ANALYZE "{schema}".procrastinate_jobs')


async def procrastinate_drain(dsn: str, schema: str) -> tuple[int, float]:
    start = time.perf_counter()
    app, _, runs = procrastinate_app(dsn, schema)
    async with app.open_async():
        await app.run_worker_async(
            queues=[QUEUE], concurrency=CONCURRENCY, wait=False, install_signal_handlers=False
        )
    return runs[0], time.perf_counter() - start


async def procrastinate_done(dsn: str, schema: str) -> int:
    (count,) = await admin(
        dsn,
        f"SELECT count(*) FROM \"{schema}\".procrastinate_jobs WHERE status = 'succeeded'",
    )
    return int(count)


async def procrastinate_idle(dsn: str, schema: str) -> Any:
    app, _, _ = procrastinate_app(dsn, schema)
    await app.open_async()
    running = asyncio.create_task(
        app.run_worker_async(
            queues=[QUEUE], concurrency=CONCURRENCY, wait=True, install_signal_handlers=False
        )
    )

    async def stop() -> None:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await app.close_async()

    return stop


PEERS = {PGQUEUER: "pgqueuer", PGQUEUER_UNBOUNDED: "pgqueuer", PROCRASTINATE: "procrastinate"}


def missing_peers() -> list[str]:
    return [module for module in dict.fromkeys(PEERS.values()) if not available(module)]


def skipped_peers() -> list[Skipped]:
    missing = missing_peers()
    return [
        Skipped(name, "not installed (pip install -e '.[bench]')")
        for name, module in PEERS.items()
        if module in missing
    ]


# --- 1. end to end -----------------------------------------------------------------------------


def throughput(dsn: str, schemas: Schemas, sizes: Sizes, repeat: int) -> Report:
    from benchmarks import pg_loop

    n = sizes.n
    template = schemas.new("template")
    asyncio.run(rx_seed(dsn, template, n))
    runs = {
        LOOP: fresh(
            schemas,
            "loop",
            lambda s: pg_loop.seed(dsn, s, n),
            lambda s: pg_loop.run(dsn, s),
            lambda s: tasks_done(dsn, s),
            n,
        ),
        RX: fresh(
            schemas,
            "rx",
            lambda s: rx_copy(dsn, template, s),
            lambda s: rx_drain(dsn, s),
            lambda s: tasks_done(dsn, s),
            n,
        ),
    }
    if available("pgqueuer"):
        for name, batch, max_tasks in (
            (PGQUEUER, PGQUEUER_BATCH, CONCURRENCY),
            (PGQUEUER_UNBOUNDED, 100, None),
        ):
            runs[name] = fresh(
                schemas,
                "pgq",
                lambda s: pgqueuer_seed(dsn, s, n),
                lambda s, b=batch, m=max_tasks: pgqueuer_drain(dsn, s, b, m),
                lambda s: pgqueuer_done(dsn, s),
                n,
            )
    if available("procrastinate"):
        runs[PROCRASTINATE] = fresh(
            schemas,
            "proc",
            lambda s: procrastinate_seed(dsn, s, n),
            lambda s: procrastinate_drain(dsn, s),
            lambda s: procrastinate_done(dsn, s),
            n,
        )
    try:
        results = interleave(runs, repeat)
    finally:
        schemas.drop(template)
    table = rate_table(
        f"PostgreSQL end to end: {n:,} no-op tasks, concurrency {CONCURRENCY}, median of {repeat}",
        results,
        LOOP,
        label="loop",
        per_reference=True,
    )
    table.notes += [
        "claim + run + ack of tasks already in the database (seeded, then ANALYZE), "
        "connecting included; every run in a fresh schema; every task counted twice: "
        "by the run and in the database afterwards",
        "loop: one connection, per batch of 100 one UPDATE ... WHERE id = ANY(ARRAY(SELECT "
        "... FOR UPDATE SKIP LOCKED LIMIT 100)) RETURNING, orjson decode + no-op, one ack "
        "UPDATE by id array",
        "rxqueue: run_until_idle (its idle detection included), defaults: claims start at "
        "the concurrency and double while handlers outpace them, up to 256",
        f"pgqueuer: one dedicated asyncpg connection, drain mode, 'balanced' durability "
        f"(queue table logged), pgq autovac settings; batch_size {PGQUEUER_BATCH} is the "
        f"largest its check allows with max_concurrent_tasks {CONCURRENCY} (<= half); "
        "unbounded: batch_size 100 and no max_concurrent_tasks, every dequeued job "
        "started at once (not the same concurrency: shown for reference)",
        f"procrastinate: run_worker_async(concurrency={CONCURRENCY}, wait=False), "
        f"LISTEN/NOTIFY, a psycopg pool of up to {PROCRASTINATE_POOL}; it claims one job "
        "per statement",
    ]
    for module in missing_peers():
        table.notes.append(f"{module} is not installed: skipped (pip install {module})")
    verdicts: list[Verdict] = []
    r = ratio(results, RX, LOOP)
    verdicts.append(
        Verdict(
            f"postgres e2e: {RX} / loop",
            fmt_ratio(r),
            f">= {E2E_TARGET}x",
            r >= E2E_TARGET,
            spread(round_ratios(results, RX, LOOP), fmt_ratio),
        )
    )
    for peer in PEERS:
        if peer in results:
            r = ratio(results, RX, peer)
            verdicts.append(
                Verdict(
                    f"postgres e2e: rxqueue / {peer}",
                    fmt_ratio(r),
                    "> 1x (ahead)",
                    r > 1,
                    spread(round_ratios(results, RX, peer), fmt_ratio),
                )
            )
    for name, values in results.items():
        verdicts.append(
            Verdict(
                f"postgres e2e: {name}, tasks/s",
                fmt_rate(median(values)),
                spread=spread(values, fmt_rate),
            )
        )
    rows = rows_of(
        results,
        {LOOP: "baseline", **{peer: "peer" for peer in PEERS}},
        "tasks/s",
        group=f"end to end, {n:,} no-op tasks",
        ratio_to=LOOP,
        notes={
            RX: f"target >= {E2E_TARGET}x the loop",
            PGQUEUER_UNBOUNDED: "not the same concurrency: for reference",
        },
    )
    return Report([table], verdicts, rows, skipped_peers())


# --- 2. push ---------------------------------------------------------------------------------


async def rx_push_many_rate(dsn: str, schema: str, n: int, chunk: int) -> float:
    backend = rx_backend(dsn, schema)
    await backend.open()  # the pool and the schema, as a running application has them
    items = payloads(n)
    start = time.perf_counter()
    for first in range(0, n, chunk):
        await backend.push_many(items[first : first + chunk])
    elapsed = time.perf_counter() - start
    await backend.close()
    (count,) = await admin(dsn, f'SELECT count(*) FROM "{schema}".tasks')
    if count != n:
        raise RuntimeError(f"push_many stored {count} of {n} tasks")
    return n / elapsed


def push(dsn: str, schemas: Schemas, sizes: Sizes, repeat: int) -> Report:
    from benchmarks import pg_loop

    n = sizes.push
    one_call = f"push_many, one call of {n:,}"
    chunked = "push_many in chunks of 10,000"
    copy = "floor: asyncpg COPY (copy_records_to_table), one call"
    many = "floor: asyncpg executemany, one call"

    def in_schema(label: str, run: Callable[[str], Awaitable[float]]) -> Callable[[], float]:
        def measure() -> float:
            schema = schemas.new(label)
            try:
                return asyncio.run(run(schema))
            finally:
                schemas.drop(schema)

        return measure

    results = interleave(
        {
            one_call: in_schema("push", lambda s: rx_push_many_rate(dsn, s, n, n)),
            chunked: in_schema("push", lambda s: rx_push_many_rate(dsn, s, n, SEED_CHUNK)),
            copy: in_schema("copy", lambda s: pg_loop.copy_rate(dsn, s, n)),
            many: in_schema("many", lambda s: pg_loop.executemany_rate(dsn, s, n)),
        },
        repeat,
    )
    table = rate_table(
        f"PostgreSQL push: {n:,} tasks, median of {repeat}",
        results,
        one_call,
        label="push_many",
    )
    table.notes += [
        "floors: the loop's table (rxqueue's columns and indexes), time-ordered ids and orjson "
        "payloads made inside the timing; push_many makes its ids, tasks and payloads too",
        "push_many: one INSERT ... SELECT FROM unnest($2::text[], ...) with a NOTIFY, in "
        "its own transaction; the pool already open",
    ]
    verdicts: list[Verdict] = []
    for floor in (copy, many):
        r = ratio(results, one_call, floor)
        verdicts.append(
            Verdict(
                f"postgres push: push_many / {floor.removeprefix('floor: ')}",
                fmt_ratio(r),
                f">= {PUSH_TARGET}x",
                r >= PUSH_TARGET,
                spread(round_ratios(results, one_call, floor), fmt_ratio),
            )
        )
    for name, values in results.items():
        verdicts.append(
            Verdict(
                f"postgres push: {name}, tasks/s",
                fmt_rate(median(values)),
                spread=spread(values, fmt_rate),
            )
        )
    rows = rows_of(
        results,
        {copy: "baseline", many: "baseline"},
        "tasks/s",
        group=f"push, {n:,} tasks",
        ratio_to=copy,
        notes={one_call: f"target >= {PUSH_TARGET}x COPY and executemany"},
    )
    return Report([table], verdicts, rows)


# --- 3. latency ------------------------------------------------------------------------------


async def push_periodically(
    push_one: Callable[[dict[str, float]], Awaitable[Any]], count: int, interval: float
) -> None:
    """``count`` pushes carrying their push time, one every ``interval`` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        await push_one({"t": time.time()})
        await asyncio.sleep(max(0.0, start + (i + 1) * interval - loop.time()))


async def run_pusher(kind: str, dsn: str, schema: str, count: int, interval: float) -> None:
    """The pushing process: connected before its first push, as a web process is."""
    if kind == "rxqueue":
        backend = rx_backend(dsn, schema)
        await backend.open()
        await push_periodically(backend.push, count, interval)
        await backend.close()
        return
    from benchmarks import pg_loop

    conn = await pg_loop.connect(dsn)
    try:
        await push_periodically(lambda p: pg_loop.push_one(conn, schema, p), count, interval)
    finally:
        await conn.close()


async def latency_run(
    kind: str, dsn: str, schema: str, count: int, interval: float, idle_before: float
) -> list[float]:
    """Push -> handler start (seconds) of ``count`` tasks pushed by a subprocess to a
    worker here that idled ``idle_before`` seconds first."""
    from benchmarks import pg_loop

    samples: list[float] = []
    all_seen = asyncio.Event()

    async def handler(job: dict[str, float]) -> None:
        samples.append(time.time() - job["t"])
        if len(samples) >= count:
            all_seen.set()

    if kind == "rxqueue":
        await rx_prepare(dsn, schema)
        backend = rx_backend(dsn, schema)
        worker = rx_worker(backend, handler, "latency")
        running = asyncio.create_task(worker.run(handle_signals=False))
    else:
        conn = await pg_loop.connect(dsn)
        await pg_loop.create(conn, schema)
        await conn.close()
        running = asyncio.create_task(pg_loop.listen_and_run(dsn, schema, handler))
    try:
        await asyncio.sleep(idle_before)  # up, idle, and its poll backed off
        args = ["pusher", kind, dsn, schema, str(count), str(interval)]
        child = await asyncio.create_subprocess_exec(*PROBE, *args, cwd=ROOT)
        await child.wait()
        try:
            async with asyncio.timeout(10):
                await all_seen.wait()
        except TimeoutError:
            print(f"latency ({kind}): only {len(samples)} of {count} seen", file=sys.stderr)
    finally:
        if kind == "rxqueue":
            worker.stop()
            await running
            await backend.close()
        else:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    return samples


LATENCY_FLOOR = "floor: the loop woken by LISTEN/NOTIFY"
LATENCY_RUNS = {
    f"rxqueue worker at the defaults (concurrency {CONCURRENCY})": "rxqueue",
    LATENCY_FLOOR: "loop",
}


def latency(dsn: str, schemas: Schemas, sizes: Sizes, repeat: int) -> Report:
    runs: dict[str, list[list[float]]] = {name: [] for name in LATENCY_RUNS}
    for _ in range(repeat):
        for name, kind in LATENCY_RUNS.items():
            schema = schemas.new("lat")
            try:
                runs[name].append(
                    asyncio.run(
                        latency_run(
                            kind, dsn, schema, sizes.latency_count, sizes.interval,
                            sizes.idle_before,
                        )
                    )
                )  # fmt: skip
            finally:
                schemas.drop(schema)
    from benchmarks.sqlite import latency_rows

    rows = latency_rows(
        "PostgreSQL",
        runs,
        {LATENCY_FLOOR: "baseline"},
        ratio_to=LATENCY_FLOOR,
        complete=sizes.latency_count,
    )
    table = Table(
        f"PostgreSQL latency, push -> handler start: worker idle {sizes.idle_before:g} s, then "
        f"{sizes.latency_count} pushes from another process, one every "
        f"{sizes.interval * 1000:g} ms; median of {repeat}",
        ("worker", "p50", "p50 per run", "p99", "p99 per run", "max", "tasks seen"),
    )
    verdicts: list[Verdict] = []
    for name, samples in runs.items():
        p50s = [percentile(s, 50) for s in samples]
        p99s = [percentile(s, 99) for s in samples]
        p50, p99 = median(p50s), median(p99s)
        worst = max((max(s) for s in samples if s), default=math.nan)
        table.add(
            name,
            fmt_ms(p50),
            " / ".join(fmt_ms(v) for v in p50s),
            fmt_ms(p99),
            " / ".join(fmt_ms(v) for v in p99s),
            fmt_ms(worst),
            f"{' / '.join(str(len(s)) for s in samples)} of {sizes.latency_count}",
        )
        complete = all(len(s) == sizes.latency_count for s in samples)
        rx = LATENCY_RUNS[name] == "rxqueue"
        verdicts.append(
            Verdict(
                f"postgres latency: {name}",
                f"p50 {fmt_ms(p50)}, p99 {fmt_ms(p99)}",
                f"p50 < {fmt_ms(P50_TARGET)}, p99 < {fmt_ms(P99_TARGET)}" if rx else "",
                (complete and p50 < P50_TARGET and p99 < P99_TARGET) if rx else None,
                f"p50 {spread(p50s, fmt_ms)}; p99 {spread(p99s, fmt_ms)}",
            )
        )
    table.notes += [
        "each payload carries time.time() taken just before its push; the handler records "
        "time.time() - that on entry; p50 / p99: medians over runs of each run's percentile",
        "the pushing subprocess connects before its first push; rxqueue: push() (an INSERT "
        "and pg_notify in one transaction); floor: the same INSERT + pg_notify by hand, "
        "its worker LISTENs on a dedicated connection and claims on each notification",
    ]
    return Report([table], verdicts, rows)


# --- 4. idle -------------------------------------------------------------------------------------

# Frontend messages that run a statement: Query (simple protocol) and Execute
# (extended protocol: asyncpg's and psycopg's prepared statements).
STATEMENT_MESSAGES = (ord("Q"), ord("E"))
UNTYPED_CODES = (80877103, 80877104, 80877102)  # SSLRequest, GSSENCRequest, CancelRequest


class CountingProxy:
    """A TCP proxy in front of the server that counts the statements its clients
    send (by wire-protocol message type), so that a process's statements are
    counted exactly, whatever else runs on the server."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.messages: Counter[int] = Counter()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def statements(self) -> int:
        return sum(self.messages[kind] for kind in STATEMENT_MESSAGES)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, count=True)),
            asyncio.create_task(self._pump(up_reader, writer, count=False)),
        ]
        self.tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
            self.tasks.discard(pump)
        for w in (writer, up_writer):
            w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        buffer, typed = b"", False
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            if not count:
                continue
            buffer += data
            while True:
                if not typed:  # startup-phase messages: length, code
                    if len(buffer) < 8:
                        break
                    length = int.from_bytes(buffer[:4], "big")
                    if len(buffer) < length:
                        break
                    code = int.from_bytes(buffer[4:8], "big")
                    typed = code not in UNTYPED_CODES
                    buffer = buffer[length:]
                else:  # type byte, then length (itself included)
                    if len(buffer) < 5:
                        break
                    length = int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < 1 + length:
                        break
                    self.messages[buffer[0]] += 1
                    buffer = buffer[1 + length :]


def via(dsn: str, port: int) -> str:
    """``dsn`` through the proxy on ``port`` (no TLS, so that it can read the messages)."""
    parts = urlsplit(dsn)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    query = "&".join(filter(None, [parts.query, "sslmode=disable"]))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


async def idle_probe(mode: str, dsn: str, schema: str, settle: float, seconds: float) -> None:
    """Run an idle worker (or only an event loop) here; print ``measuring`` when the
    window opens and one JSON line (cpu, wall) when it closes."""
    stop: Callable[[], Awaitable[None]] | None = None
    if mode == "rxqueue":
        backend = rx_backend(dsn, schema)
        worker = rx_worker(backend, noop, "idle")
        running = asyncio.create_task(worker.run(handle_signals=False))

        async def stop_rx() -> None:
            worker.stop()
            await running
            await backend.close()

        stop = stop_rx
    elif mode == "pgqueuer":
        stop = await pgqueuer_idle(dsn, schema)
    elif mode == "procrastinate":
        stop = await procrastinate_idle(dsn, schema)
    await asyncio.sleep(settle)
    print("measuring", flush=True)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(json.dumps({"cpu": cpu, "wall": wall}), flush=True)
    if stop is not None:
        await stop()


IDLE_MODES = {
    f"rxqueue worker at the defaults (concurrency {CONCURRENCY})": "rxqueue",
    PGQUEUER.replace("batch 16, ", ""): "pgqueuer",
    PROCRASTINATE: "procrastinate",
    "floor: an asyncio loop that only sleeps": "asyncio",
}


@dataclass
class IdleFigure:
    cpu_share: float
    statements_per_s: float
    statements: Counter[str]


async def idle_round(dsn: str, schemas: dict[str, str], sizes: Sizes) -> dict[str, IdleFigure]:
    """One process per mode, side by side (idle processes hardly compete), each
    through its own counting proxy; counts taken at the probe's window marks."""
    host = urlsplit(dsn).hostname or "127.0.0.1"
    port = urlsplit(dsn).port or 5432

    async def one(mode: str) -> IdleFigure:
        proxy = CountingProxy(host, port)
        local = await proxy.start()
        args = ["idle", mode, via(dsn, local), schemas.get(mode, "-"),
                str(sizes.idle_settle), str(sizes.idle_seconds)]  # fmt: skip
        child = await asyncio.create_subprocess_exec(
            *PROBE, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        assert child.stdout is not None
        try:
            async with asyncio.timeout(sizes.idle_settle + sizes.idle_seconds + 60):
                while (line := await child.stdout.readline()) and line.strip() != b"measuring":
                    pass
                before = Counter(proxy.messages)
                figures = json.loads(await child.stdout.readline())
                during = Counter(proxy.messages)
                during.subtract(before)
                await child.wait()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
            await proxy.close()
        if child.returncode != 0:
            raise RuntimeError(f"idle probe {mode!r} failed ({child.returncode})")
        count = sum(during[kind] for kind in STATEMENT_MESSAGES)
        return IdleFigure(
            figures["cpu"] / figures["wall"],
            count / figures["wall"],
            Counter({chr(kind): n for kind, n in during.items() if n}),
        )

    modes = [m for m in IDLE_MODES.values() if m in ("rxqueue", "asyncio") or m in schemas]
    figures = await asyncio.gather(*(one(mode) for mode in modes))
    return dict(zip(modes, figures, strict=True))


def idle(dsn: str, schemas: Schemas, sizes: Sizes, repeat: int) -> Report:
    by_mode: dict[str, list[IdleFigure]] = {mode: [] for mode in IDLE_MODES.values()}
    commits: list[float] = []
    for _ in range(repeat):
        made = {"rxqueue": schemas.new("idle")}
        asyncio.run(rx_prepare(dsn, made["rxqueue"]))
        if available("pgqueuer"):
            made["pgqueuer"] = schemas.new("idlepgq")
            asyncio.run(pgqueuer_seed(dsn, made["pgqueuer"], 0))
        if available("procrastinate"):
            made["procrastinate"] = schemas.new("idleproc")
            asyncio.run(procrastinate_seed(dsn, made["procrastinate"], 0))
        try:
            (first,) = asyncio.run(admin(dsn, XACT_COMMIT))
            began = time.perf_counter()
            for mode, figure in asyncio.run(idle_round(dsn, made, sizes)).items():
                by_mode[mode].append(figure)
            (last,) = asyncio.run(admin(dsn, XACT_COMMIT))
            commits.append((last - first) / (time.perf_counter() - began))
        finally:
            schemas.drop(*made.values())
    table = Table(
        f"PostgreSQL idle worker: its own process, over {sizes.idle_seconds:g} s of "
        f"idleness (after {sizes.idle_settle:g} s), median of {repeat}",
        ("process", "% of one core", "all runs", "statements/s", "all runs",
         "messages in the window (last run)"),
    )  # fmt: skip
    verdicts: list[Verdict] = []
    pct = "{:.3%}".format
    rate = "{:.2f}".format
    for name, mode in IDLE_MODES.items():
        figures = by_mode[mode]
        if not figures:
            table.add(name, "not installed", "", "", "", "")
            continue
        shares = [f.cpu_share for f in figures]
        counts = [f.statements_per_s for f in figures]
        last = figures[-1].statements
        table.add(
            name,
            pct(median(shares)),
            " / ".join(pct(v) for v in shares),
            rate(median(counts)) if mode != "asyncio" else "-",
            " / ".join(rate(v) for v in counts) if mode != "asyncio" else "-",
            ", ".join(f"{kind} x{n}" for kind, n in sorted(last.items())) or "-",
        )
        if mode == "rxqueue":
            verdicts.append(
                Verdict(
                    f"postgres idle CPU: {name}",
                    f"{pct(median(shares))} of a core",
                    f"< {IDLE_TARGET:.0%}",
                    median(shares) < IDLE_TARGET,
                    spread(shares, pct),
                )
            )
        if mode != "asyncio":
            verdicts.append(
                Verdict(
                    f"postgres idle statements/s: {name}",
                    rate(median(counts)),
                    spread=spread(counts, rate),
                )
            )
    table.notes += [
        "CPU: time.process_time() (user + system, all threads) / wall time, inside the probe",
        "statements: counted on the wire by a proxy in front of the server, one per process "
        "(Query and Execute messages: Q = simple query, E = execute of a prepared statement, "
        "P = parse, B = bind, S = sync); pg_stat_statements is not loaded on this server "
        "(shared_preload_libraries is empty), and pg_stat_database.xact_commit counts every "
        "client of the database",
        "for reference, xact_commit of the whole database rose by "
        + " / ".join(f"{c:.1f}/s" for c in commits)
        + " during the rounds (these probes and anything else using it)",
        "rxqueue: a 1 s poll once backed off, LISTEN on a dedicated connection, a heartbeat "
        "every 10 s; pgqueuer: continuous mode; procrastinate: wait=True",
    ]
    kinds: dict[str, Kind] = {"rxqueue": "rxqueue", "pgqueuer": "peer", "procrastinate": "peer"}
    measured = {name: by_mode[mode] for name, mode in IDLE_MODES.items() if by_mode[mode]}
    rows = rows_of(
        {f"PostgreSQL {name}": [f.cpu_share * 100 for f in figures]
         for name, figures in measured.items()},
        {f"PostgreSQL {name}": kinds.get(IDLE_MODES[name], "baseline") for name in measured},
        "% of one core",
        group="idle CPU",
        higher_is_better=False,
        notes={f"PostgreSQL {name}": f"target < {IDLE_TARGET:.0%}"
               for name in measured if IDLE_MODES[name] == "rxqueue"},
    ) + rows_of(
        {f"PostgreSQL {name}": [f.statements_per_s for f in figures]
         for name, figures in measured.items() if IDLE_MODES[name] != "asyncio"},
        {f"PostgreSQL {name}": kinds.get(IDLE_MODES[name], "baseline") for name in measured},
        "statements/s",
        group="idle PostgreSQL statements",
        higher_is_better=False,
    )  # fmt: skip
    return Report([table], verdicts, rows, skipped_peers())


XACT_COMMIT = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"


# --- 5. a million pending --------------------------------------------------------------------


def big(dsn: str, schemas: Schemas, sizes: Sizes, repeat: int) -> Report:
    """Claim speed over the first ``big_run`` tasks of a big queue and of a small one
    (``big_run`` tasks), for rxqueue and for the loop; after each run the tasks it
    finished are made Pending again and the table vacuumed, so every run of a queue
    starts from the same rows."""
    from benchmarks import pg_loop

    run_n = sizes.big_run
    small_rx, big_rx = schemas.new("smallrx"), schemas.new("bigrx")
    small_loop, big_loop = schemas.new("smallloop"), schemas.new("bigloop")
    started = time.perf_counter()
    asyncio.run(rx_seed(dsn, small_rx, run_n))
    asyncio.run(rx_seed(dsn, big_rx, sizes.big))
    asyncio.run(pg_loop.seed(dsn, small_loop, run_n))
    asyncio.run(pg_loop.seed(dsn, big_loop, sizes.big))
    seeding = time.perf_counter() - started

    def reset(schema: str) -> None:
        asyncio.run(
            admin(
                dsn,
                f"UPDATE \"{schema}\".tasks SET status = 'Pending', attempts = 0, "
                "lock_by = NULL, lock_at = NULL, done_at = NULL WHERE status <> 'Pending'",
                f'VACUUM ANALYZE "{schema}".tasks',
            )
        )

    def rx_measure(schema: str) -> Callable[[], float]:
        def measure() -> float:
            try:
                return asyncio.run(rx_claim_rate(dsn, schema, run_n))
            finally:
                reset(schema)

        return measure

    def loop_measure(schema: str) -> Callable[[], float]:
        def measure() -> float:
            try:
                done, elapsed = asyncio.run(pg_loop.run(dsn, schema, limit=run_n))
            finally:
                reset(schema)
            if done != run_n:
                raise RuntimeError(f"the loop ran {done} of {run_n} tasks")
            return done / elapsed

        return measure

    rx_small, rx_big = f"rxqueue, {run_n:,} pending", f"rxqueue, {sizes.big:,} pending"
    loop_small, loop_big = f"loop, {run_n:,} pending", f"loop, {sizes.big:,} pending"
    try:
        results = interleave(
            {
                rx_small: rx_measure(small_rx),
                rx_big: rx_measure(big_rx),
                loop_small: loop_measure(small_loop),
                loop_big: loop_measure(big_loop),
            },
            repeat,
        )
    finally:
        schemas.drop(small_rx, big_rx, small_loop, big_loop)
    table = rate_table(
        f"PostgreSQL claim speed over the first {run_n:,} tasks: {sizes.big:,} pending "
        f"against {run_n:,}, median of {repeat}",
        results,
        rx_small,
        label=rx_small,
        per_reference=True,
    )
    table.notes += [
        f"rxqueue: a worker at the defaults (concurrency {CONCURRENCY}), timed from its "
        f"start to the start of its {run_n:,}th handler; loop: claims of 100 until "
        f"{run_n:,} ran",
        f"queues seeded once (rxqueue: push_many in chunks of 10,000; loop: COPY) in "
        f"{seeding:.0f} s, then ANALYZE; after each run its tasks are made Pending again "
        "and the table VACUUM ANALYZEd (autovacuum is off on this server)",
    ]
    verdicts: list[Verdict] = []
    for small, large, target in ((rx_small, rx_big, BIG_TARGET), (loop_small, loop_big, None)):
        r = ratio(results, large, small)
        verdicts.append(
            Verdict(
                f"postgres claim speed: {large} / {small}",
                fmt_ratio(r),
                f">= {target}x (within 20%)" if target else "",
                r >= target if target else None,
                spread(round_ratios(results, large, small), fmt_ratio),
            )
        )
    for name, values in results.items():
        verdicts.append(
            Verdict(
                f"postgres claim speed: {name}, tasks/s",
                fmt_rate(median(values)),
                spread=spread(values, fmt_rate),
            )
        )
    rows = rows_of(
        {rx_small: results[rx_small], rx_big: results[rx_big]},
        {},
        "tasks/s",
        group=f"claim speed over the first {run_n:,} tasks",
        ratio_to=rx_small,
        notes={rx_big: f"target >= {BIG_TARGET}x with {run_n:,} pending"},
    ) + rows_of(
        {loop_small: results[loop_small], loop_big: results[loop_big]},
        {loop_small: "baseline", loop_big: "baseline"},
        "tasks/s",
        group=f"claim speed over the first {run_n:,} tasks",
        ratio_to=loop_small,
    )
    return Report([table], verdicts, rows)


# --- the suite -----------------------------------------------------------------------------------


def unavailable(dsn: str) -> str | None:
    """Why the suite cannot run (asyncpg or rxqueue's backend missing, the server
    unreachable), or None."""
    for module in ("asyncpg", "rxqueue.backends.postgres"):
        if not available(module):
            return f"{module} is not installed (pip install 'rxqueue[postgres]')"

    async def ping() -> None:
        async with asyncio.timeout(10):
            await admin(dsn, "SELECT 1")

    try:
        asyncio.run(ping())
    except Exception as exc:
        return f"PostgreSQL at {urlsplit(dsn).netloc.rpartition('@')[2]} is unreachable ({exc})"
    return None


STEPS: dict[str, Callable[[str, Schemas, Sizes, int], Report]] = {
    "e2e": throughput,
    "push": push,
    "latency": latency,
    "idle": idle,
    "big": big,
}


def main(
    only: Collection[str] = PARTS, sizes: Sizes = Sizes(), repeat: int = 3, dsn: str | None = None
) -> Report:
    """The PostgreSQL suite: print each part's table as it completes; the report."""
    dsn = dsn or os.environ.get("RXQUEUE_BENCH_DSN", DEFAULT_DSN)
    report = Report()
    reason = unavailable(dsn)
    if reason is not None:
        print(f"note: PostgreSQL suite skipped: {reason}\n", flush=True)
        table = Table("PostgreSQL", ("status",), [(f"skipped: {reason}",)])
        report.publish(
            Report([table], skipped=[Skipped(f"PostgreSQL ({', '.join(only)})", reason)])
        )
        return report
    for module in missing_peers():
        print(f"note: {module} is not installed: its rows are skipped\n", flush=True)
    schemas = Schemas(dsn)
    try:
        for part, step in STEPS.items():
            if part in only:
                report.publish(step(dsn, schemas, sizes, repeat))
    finally:
        schemas.drop_all()
    return report


def probe(argv: Sequence[str]) -> None:
    """Subprocess work: ``pusher KIND DSN SCHEMA COUNT INTERVAL`` (KIND: rxqueue or
    loop) and ``idle MODE DSN SCHEMA SETTLE SECONDS`` (MODE: rxqueue, pgqueuer,
    procrastinate or asyncio)."""
    match list(argv):
        case ["pusher", ("rxqueue" | "loop") as kind, dsn, schema, count, interval]:
            asyncio.run(run_pusher(kind, dsn, schema, int(count), float(interval)))
        case ["idle", mode, dsn, schema, settle, seconds] if mode in IDLE_MODES.values():
            asyncio.run(idle_probe(mode, dsn, schema, float(settle), float(seconds)))
        case _:
            sys.exit(probe.__doc__)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postgres", description=__doc__)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {PARTS}")
    parser.add_argument("--n", type=int, help="tasks per end-to-end run (default 20,000)")
    parser.add_argument("--repeat", type=int, help="runs per measurement (default 3; quick 1)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (~1 min)")
    parser.add_argument("--dsn", help=f"server (default $RXQUEUE_BENCH_DSN or {DEFAULT_DSN})")
    args = parser.parse_args(argv)
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(args.only) - set(PARTS)
    if unknown:
        parser.error(f"unknown --only parts: {', '.join(sorted(unknown))}")
    return args


def cli(argv: Sequence[str]) -> None:
    if argv[:1] == ["probe"]:
        probe(argv[1:])
        return
    args = parse(argv)
    # SIGTERM ends the run like Ctrl-C: the finally blocks drop this run's schemas.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = QUICK if args.quick else Sizes()
    if args.n:
        sizes = dataclasses.replace(sizes, n=args.n)
    repeat = args.repeat or (1 if args.quick else 3)
    print(
        f"# rxqueue PostgreSQL benchmarks (rxqueue {code_version()}, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} cores)\n",
        flush=True,
    )
    report = main(args.only, sizes, repeat, args.dsn)
    print(summary_table(report.verdicts).render())


if __name__ == "__main__":
    # Run the imported module, not __main__: one copy of every definition, and
    # procrastinate's App is not "instantiated in the main module" (it warns).
    from benchmarks import postgres

    postgres.cli(sys.argv[1:])
