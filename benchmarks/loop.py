"""The hand-written aiosqlite task loop rxqueue's SQLite backend is held against.

One connection (WAL, synchronous=NORMAL, temp_store=MEMORY), a partial index
on ready rows, and per batch of 100: one ``UPDATE ... RETURNING`` claim, an
orjson decode and a no-op handler per task, one ``executemany`` ack to Done.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from benchmarks.common import noop, payloads

BATCH = 100
QUEUE = "bench"

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    args BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'Pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    run_at REAL NOT NULL,
    created_at REAL NOT NULL,
    lock_by TEXT,
    lock_at REAL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('Pending', 'Failed');
"""

CLAIM = """
UPDATE tasks SET status = 'Queued', lock_by = ?, lock_at = ?
WHERE id IN (
    SELECT id FROM tasks
    WHERE queue = ? AND status IN ('Pending', 'Failed') AND run_at <= ?
    ORDER BY priority DESC, run_at, id LIMIT ?
)
RETURNING id, args
"""

ACK = """
UPDATE tasks SET status = 'Done', attempts = attempts + 1, done_at = ?,
    lock_by = NULL, lock_at = NULL
WHERE id = ?
"""

INSERT = "INSERT INTO tasks (id, queue, args, run_at, created_at) VALUES (?, ?, ?, ?, ?)"


async def open_db(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path)
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = NORMAL")
    await db.execute("PRAGMA temp_store = MEMORY")
    await db.executescript(SCHEMA)
    return db


def rows(items: Sequence[Any], now: float, first: int = 0) -> list[tuple[Any, ...]]:
    """Rows for INSERT: time-ordered text ids (as UUIDv7 are), orjson payloads."""
    stamp = time.time_ns()
    return [
        (f"{stamp:020x}-{first + i:015x}", QUEUE, orjson.dumps(p), now, now)
        for i, p in enumerate(items)
    ]


async def insert(db: aiosqlite.Connection, items: Sequence[Any], first: int = 0) -> None:
    await db.executemany(INSERT, rows(items, time.time(), first))
    await db.commit()


async def seed(path: Path, items: Sequence[Any], chunk: int = 10_000) -> None:
    db = await open_db(path)
    for i in range(0, len(items), chunk):
        await insert(db, items[i : i + chunk], i)
    await db.close()


async def insert_rate(path: Path, n: int, chunk: int) -> float:
    """The floor under push_many: ids, orjson and executemany in chunks; tasks/s."""
    db = await open_db(path)
    items = payloads(n)
    start = time.perf_counter()
    for first in range(0, n, chunk):
        await insert(db, items[first : first + chunk], first)
    elapsed = time.perf_counter() - start
    await db.close()
    return n / elapsed


async def run(path: Path) -> tuple[int, float]:
    """Claim, run and ack until nothing is ready: (tasks run, seconds, opening included)."""
    start = time.perf_counter()
    db = await open_db(path)
    done = 0
    while True:
        now = time.time()
        claimed = list(await db.execute_fetchall(CLAIM, ("loop", now, QUEUE, now, BATCH)))
        await db.commit()
        if not claimed:
            break
        for _, args in claimed:
            await noop(orjson.loads(args))
        finished = time.time()
        await db.executemany(ACK, [(finished, task_id) for task_id, _ in claimed])
        await db.commit()
        done += len(claimed)
    elapsed = time.perf_counter() - start
    await db.close()
    return done, elapsed
