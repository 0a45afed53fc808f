"""Memory backend throughput against two asyncio.Queue baselines.

* rxqueue: ``n`` no-op tasks pushed before timing; only ``run_until_idle`` is timed.
* floor: an ``asyncio.Queue`` pre-filled with the same payloads, consumers
  doing ``get -> handler -> task_done``: the physical limit of asyncio.
* same work: a hand-written in-memory task queue with status tracking:
  records in a dict store holding orjson payloads, claimed, decoded, run,
  and marked done with a timestamp.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

import rxqueue
from benchmarks.common import (
    Report,
    Verdict,
    fmt_ratio,
    interleave,
    noop,
    payloads,
    rate_table,
    ratio,
)

CONCURRENCY = 16
TARGET = 0.5  # rxqueue >= 0.5x the same-work baseline


async def run_rxqueue(n: int) -> float:
    backend = rxqueue.connect("memory://")
    await backend.push_many(payloads(n))
    worker = rxqueue.WorkerBuilder("bench").backend(backend).concurrency(CONCURRENCY).build(noop)
    start = time.perf_counter()
    summary = await worker.run_until_idle()
    elapsed = time.perf_counter() - start
    assert summary.done == n, summary
    return n / elapsed


async def drain(queue: asyncio.Queue[Any], consume: Any) -> float:
    """Run ``CONCURRENCY`` consumers until ``queue`` is drained; returns seconds."""
    start = time.perf_counter()
    consumers = [asyncio.create_task(consume()) for _ in range(CONCURRENCY)]
    await queue.join()
    elapsed = time.perf_counter() - start
    for consumer in consumers:
        consumer.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    return elapsed


async def run_floor(n: int) -> float:
    queue: asyncio.Queue[dict[str, int]] = asyncio.Queue()
    for item in payloads(n):
        queue.put_nowait(item)

    async def consume() -> None:
        while True:
            item = await queue.get()
            await noop(item)
            queue.task_done()

    return n / await drain(queue, consume)


async def run_same_work(n: int) -> float:
    store: dict[int, dict[str, Any]] = {
        i: {
            "id": i,
            "args": orjson.dumps(p),
            "status": "Pending",
            "lock_by": None,
            "lock_at": None,
            "done_at": None,
        }
        for i, p in enumerate(payloads(n))
    }
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for record in store.values():
        queue.put_nowait(record)

    async def consume() -> None:
        while True:
            record = await queue.get()
            record["status"], record["lock_by"], record["lock_at"] = "Queued", "w", time.time()
            await noop(orjson.loads(record["args"]))
            record["status"], record["lock_by"], record["done_at"] = "Done", None, time.time()
            queue.task_done()

    return n / await drain(queue, consume)


def main(n: int = 100_000, repeat: int = 3) -> Report:
    results = interleave(
        {
            "rxqueue memory backend": lambda: asyncio.run(run_rxqueue(n)),
            "(a) asyncio.Queue floor": lambda: asyncio.run(run_floor(n)),
            "(b) same-work hand-written queue": lambda: asyncio.run(run_same_work(n)),
        },
        repeat,
    )
    rx = "rxqueue memory backend"
    table = rate_table(
        f"Memory backend: {n:,} no-op tasks, concurrency {CONCURRENCY}, median of {repeat}",
        results,
        rx,
    )
    to_floor = ratio(results, rx, "(a) asyncio.Queue floor")
    to_same = ratio(results, rx, "(b) same-work hand-written queue")
    table.notes.append(
        f"rxqueue / (a) = {fmt_ratio(to_floor)}; rxqueue / (b) = {fmt_ratio(to_same)} "
        f"(target >= {TARGET}x). Only run_until_idle is timed; tasks are pushed before."
    )
    verdicts = [
        Verdict("memory: rxqueue / asyncio.Queue floor", fmt_ratio(to_floor)),
        Verdict(
            "memory: rxqueue / same-work queue",
            fmt_ratio(to_same),
            f">= {TARGET}x",
            to_same >= TARGET,
        ),
    ]
    report = Report()
    report.publish(Report([table], verdicts))
    return report
