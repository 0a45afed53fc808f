"""Memory backend throughput and per-task cost against two asyncio.Queue baselines.

* rxqueue: ``n`` no-op tasks pushed before timing; only ``run_until_idle`` is timed.
* rxqueue, one task: the same run with a single task, the fixed cost of a run
  (start, idle detection, stop), subtracted for the net per-task cost.
* floor: an ``asyncio.Queue`` pre-filled with the same payloads, consumers
  doing ``get -> handler -> task_done``: the physical limit of asyncio.
* same work: a hand-written in-memory task queue with status tracking:
  records in a dict store holding orjson payloads, claimed, decoded, run,
  and marked done with a timestamp.

``python -m benchmarks.profiling`` profiles the rxqueue run.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

import rxqueue
from benchmarks.common import (
    Report,
    Table,
    Verdict,
    fmt_ratio,
    fmt_us,
    interleave,
    median,
    noop,
    payloads,
    rate_table,
    ratio,
    round_ratios,
    rows_of,
    spread,
)

CONCURRENCY = 16
TARGET = 0.5  # rxqueue >= 0.5x the same-work baseline
PER_TASK_TARGET = 5e-6  # seconds of framework per task (issue 7)
RX, ONE = "rxqueue memory backend", "rxqueue, 1 task (fixed cost of a run)"
FLOOR, SAME = "(a) asyncio.Queue floor", "(b) same-work hand-written queue"


def worker(backend: rxqueue.Backend, prefetch: int | None = None) -> rxqueue.Worker:
    """Concurrency 16 and otherwise the defaults."""
    builder = rxqueue.WorkerBuilder("bench").backend(backend).concurrency(CONCURRENCY)
    if prefetch is not None:
        builder = builder.prefetch(prefetch)
    return builder.build(noop)


async def run_rxqueue(n: int, prefetch: int | None = None) -> float:
    """Seconds ``run_until_idle`` takes over ``n`` pushed no-op tasks."""
    backend = rxqueue.connect("memory://")
    await backend.push_many(payloads(n))
    built = worker(backend, prefetch)
    start = time.perf_counter()
    summary = await built.run_until_idle()
    elapsed = time.perf_counter() - start
    assert summary.done == n, summary
    return elapsed


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

    return await drain(queue, consume)


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

    return await drain(queue, consume)


def main(n: int = 100_000, repeat: int = 5) -> Report:
    seconds = interleave(
        {
            RX: lambda: asyncio.run(run_rxqueue(n)),
            ONE: lambda: asyncio.run(run_rxqueue(1)),
            FLOOR: lambda: asyncio.run(run_floor(n)),
            SAME: lambda: asyncio.run(run_same_work(n)),
        },
        repeat,
    )
    fixed = median(seconds[ONE])
    rates = {name: [n / s for s in runs] for name, runs in seconds.items() if name != ONE}
    table = rate_table(
        f"Memory backend: {n:,} no-op tasks, concurrency {CONCURRENCY}, median of {repeat}",
        rates,
        RX,
    )
    to_floor = ratio(rates, RX, FLOOR)
    to_same = ratio(rates, RX, SAME)
    table.notes.append(
        f"rxqueue / (a) = {fmt_ratio(to_floor)}; rxqueue / (b) = {fmt_ratio(to_same)} "
        f"(target >= {TARGET}x). Only run_until_idle is timed; tasks are pushed before."
    )
    per_task = Table(
        f"Memory backend: cost per task (elapsed / {n:,}), median of {repeat}",
        ("run", "µs per task (median)", "all runs", "net of fixed cost", "over (a)"),
    )
    floor = median(seconds[FLOOR]) / n
    for name, runs in seconds.items():
        if name == ONE:
            per_task.add(name, f"{fixed * 1e3:.2f} ms per run", "", "", "")
            continue
        each = [s / n for s in runs]
        net = fmt_us((median(runs) - fixed) / n) if name == RX else "-"
        over = "-" if name == FLOOR else fmt_us(median(each) - floor)
        per_task.add(name, fmt_us(median(each)), " / ".join(fmt_us(e) for e in each), net, over)
    per_task.notes += [
        "net: (median elapsed - median elapsed of a one-task run) / n; the one-task run is "
        "the fixed cost of a run_until_idle: start, idle detection, final flush, stop",
        "over (a): the median minus the asyncio.Queue floor's, i.e. what the framework adds",
        "profile: python -m benchmarks.profiling",
    ]
    rx_each = [s / n for s in seconds[RX]]
    per = median(rx_each)
    verdicts = [
        Verdict(
            "memory: µs per task (elapsed / n)",
            fmt_us(per),
            f"<= {fmt_us(PER_TASK_TARGET)}",
            per <= PER_TASK_TARGET,
            spread(rx_each, fmt_us),
        ),
        Verdict(
            "memory: µs per task, net of fixed cost", fmt_us((median(seconds[RX]) - fixed) / n)
        ),
        Verdict(
            "memory: asyncio.Queue floor, µs per task",
            fmt_us(floor),
            spread=spread([s / n for s in seconds[FLOOR]], fmt_us),
        ),
        Verdict(
            "memory: same-work queue, µs per task",
            fmt_us(median(seconds[SAME]) / n),
            spread=spread([s / n for s in seconds[SAME]], fmt_us),
        ),
        Verdict(
            "memory: rxqueue / asyncio.Queue floor",
            fmt_ratio(to_floor),
            spread=spread(round_ratios(rates, RX, FLOOR), fmt_ratio),
        ),
        Verdict(
            "memory: rxqueue / same-work queue",
            fmt_ratio(to_same),
            f">= {TARGET}x",
            to_same >= TARGET,
            spread(round_ratios(rates, RX, SAME), fmt_ratio),
        ),
    ]
    rows = rows_of(
        rates,
        {FLOOR: "baseline", SAME: "baseline"},
        "tasks/s",
        group=f"{n:,} no-op tasks, concurrency {CONCURRENCY}",
        ratio_to=SAME,
        notes={RX: f"target >= {TARGET}x the same-work queue"},
    )
    report = Report()
    report.publish(Report([table, per_task], verdicts, rows))
    return report
