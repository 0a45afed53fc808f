"""The hand-written asyncpg task loop rxqueue's PostgreSQL backend is held against.

A table with rxqueue's columns and indexes (its ``tasks`` table as of schema
version 2: primary key, partial index on ready rows, held, finished, created
and unique-key indexes), one connection, and per batch of 100: one claim

    UPDATE ... WHERE id = ANY(ARRAY(SELECT ... FOR UPDATE SKIP LOCKED LIMIT 100))
    RETURNING id, args

an orjson decode and a no-op handler per task, one ack by id array. Also the
floors under ``push_many`` (``COPY`` and ``executemany``) and under push-to-start
latency (``LISTEN`` + an insert that notifies in its transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import orjson

from benchmarks.common import noop, payloads

BATCH = 100
QUEUE = "bench"

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.tasks (
    id           text             PRIMARY KEY,
    queue        text             NOT NULL,
    args         bytea,
    status       text             NOT NULL DEFAULT 'Pending',
    attempts     integer          NOT NULL DEFAULT 0,
    max_attempts integer          NOT NULL DEFAULT 3,
    priority     integer          NOT NULL DEFAULT 0,
    run_at       double precision NOT NULL,
    created_at   double precision NOT NULL,
    lock_by      text,
    lock_at      double precision,
    done_at      double precision,
    last_error   text,
    result       bytea,
    metadata     jsonb,
    unique_key   text,
    unique_until double precision
);
CREATE INDEX IF NOT EXISTS tasks_ready ON {s}.tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('Pending', 'Failed');
CREATE INDEX IF NOT EXISTS tasks_held ON {s}.tasks (queue, lock_by)
    WHERE status IN ('Queued', 'Running');
CREATE INDEX IF NOT EXISTS tasks_finished ON {s}.tasks (queue, done_at)
    WHERE status IN ('Done', 'Killed');
CREATE INDEX IF NOT EXISTS tasks_created ON {s}.tasks (queue, created_at, id);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_unique ON {s}.tasks (queue, unique_key)
    WHERE unique_key IS NOT NULL;
"""

CLAIM = """
UPDATE {s}.tasks SET status = 'Queued', lock_by = $1, lock_at = $2
WHERE id = ANY(ARRAY(
    SELECT id FROM {s}.tasks
    WHERE queue = $3 AND status IN ('Pending', 'Failed') AND run_at <= $2
    ORDER BY priority DESC, run_at, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
))
RETURNING id, args
"""

ACK = """
UPDATE {s}.tasks SET status = 'Done', attempts = attempts + 1, done_at = $2,
    lock_by = NULL, lock_at = NULL
WHERE id = ANY($1::text[])
"""

INSERT = "INSERT INTO {s}.tasks (id, queue, args, run_at, created_at) VALUES ($1, $2, $3, $4, $5)"
COLUMNS = ("id", "queue", "args", "run_at", "created_at")

# One task, and a NOTIFY in the same transaction (as rxqueue's push does).
NOTIFYING_INSERT = """
WITH inserted AS (
    INSERT INTO {s}.tasks (id, queue, args, run_at, created_at) VALUES ($1, $2, $3, $4, $4)
    RETURNING 1
)
SELECT pg_notify($5, '')
"""


def sql(template: str, schema: str) -> str:
    return template.replace("{s}", f'"{schema}"')


async def connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


async def create(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute(sql(SCHEMA, schema))


def rows(items: Sequence[Any], now: float, first: int = 0) -> list[tuple[Any, ...]]:
    """Rows for INSERT / COPY: time-ordered text ids (as rxqueue's UUIDv7 are, so
    that new ids land at the right edge of the primary key), orjson payloads."""
    stamp = time.time_ns()
    return [
        (f"{stamp:020x}-{first + i:015x}", QUEUE, orjson.dumps(p), now, now)
        for i, p in enumerate(items)
    ]


async def seed(dsn: str, schema: str, n: int, chunk: int = 10_000) -> None:
    conn = await connect(dsn)
    try:
        await create(conn, schema)
        for first in range(0, n, chunk):
            records = rows(payloads(min(chunk, n - first), first), time.time(), first)
            await conn.copy_records_to_table(
                "tasks", schema_name=schema, columns=COLUMNS, records=records
            )
        await conn.execute(f'ANALYZE "{schema}".tasks')
    finally:
        await conn.close()


async def run(dsn: str, schema: str, limit: int | None = None) -> tuple[int, float]:
    """Claim, run and ack until nothing is ready (or ``limit`` tasks ran):
    (tasks run, seconds, connecting included)."""
    start = time.perf_counter()
    conn = await connect(dsn)
    claim, ack = sql(CLAIM, schema), sql(ACK, schema)
    done = 0
    while limit is None or done < limit:
        size = BATCH if limit is None else min(BATCH, limit - done)
        claimed = await conn.fetch(claim, "loop", time.time(), QUEUE, size)
        if not claimed:
            break
        for row in claimed:
            await noop(orjson.loads(row[1]))
        await conn.execute(ack, [row[0] for row in claimed], time.time())
        done += len(claimed)
    elapsed = time.perf_counter() - start
    await conn.close()
    return done, elapsed


async def listen_and_run(
    dsn: str, schema: str, handler: Callable[[Any], Awaitable[None]], poll: float = 1.0
) -> None:
    """The loop as a long-running worker: ``LISTEN`` on the schema's channel and, on
    each notification (or every ``poll`` seconds), claim and run until nothing is
    ready. Runs until cancelled."""
    listener, conn = await connect(dsn), await connect(dsn)
    rung = asyncio.Event()
    claim, ack = sql(CLAIM, schema), sql(ACK, schema)
    try:
        await listener.add_listener(schema, lambda *_: rung.set())
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await rung.wait()
            rung.clear()
            while claimed := await conn.fetch(claim, "loop", time.time(), QUEUE, BATCH):
                for row in claimed:
                    await handler(orjson.loads(row[1]))
                await conn.execute(ack, [row[0] for row in claimed], time.time())
    finally:
        await asyncio.shield(asyncio.gather(listener.close(), conn.close()))


async def copy_rate(dsn: str, schema: str, n: int) -> float:
    """The floor under push_many: ids, orjson and one COPY of ``n`` rows; tasks/s."""
    conn = await connect(dsn)
    try:
        await create(conn, schema)
        items = payloads(n)
        start = time.perf_counter()
        await conn.copy_records_to_table(
            "tasks", schema_name=schema, columns=COLUMNS, records=rows(items, time.time())
        )
        elapsed = time.perf_counter() - start
    finally:
        await conn.close()
    return n / elapsed


async def executemany_rate(dsn: str, schema: str, n: int) -> float:
    """ids, orjson and one ``executemany`` of ``n`` rows (one transaction); tasks/s."""
    conn = await connect(dsn)
    try:
        await create(conn, schema)
        items = payloads(n)
        start = time.perf_counter()
        await conn.executemany(sql(INSERT, schema), rows(items, time.time()))
        elapsed = time.perf_counter() - start
    finally:
        await conn.close()
    return n / elapsed


async def push_one(conn: asyncpg.Connection, schema: str, payload: Any) -> None:
    """Insert one task and NOTIFY the schema's channel in the same transaction."""
    now = time.time()
    statement = sql(NOTIFYING_INSERT, schema)
    task_id = f"{time.time_ns():020x}-{0:015x}"
    await conn.execute(statement, task_id, QUEUE, orjson.dumps(payload), now, schema)
