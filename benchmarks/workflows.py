"""Workflows (issue 9): workflow steps per second beside plain tasks per second.

Per backend (SQLite, then PostgreSQL), three measures interleaved over the
repeats, each on a fresh database (a new file / a new schema), everything pushed
first and only ``run_until_idle`` timed, one worker at the same concurrency:

* **plain** (the baseline): ``n`` no-op tasks stored by ``push_many``;
* **chains**: ``n / 10`` runs of ``Workflow("chain").then(step)`` x 10, each
  pushed by ``flow.push``; every step counts, and so does each run's own record
  (the task ``<run id>`` that depends on the last step): 11 tasks per run;
* **fan-out**: one run of ``Workflow("fan").then(make_list).filter_map(noop)
  .collect()`` with ``make_list`` returning ``n`` items: the producer (whose
  Done stores the ``n`` item tasks), the ``n`` items, the collect (which gets
  their ``n`` results) and the run record, ``n + 3`` tasks.

The goal (issue 9): workflow steps per second at least half of plain tasks per
second, in the same run. On PostgreSQL the tables are ANALYZEd after the push
(untimed), as the postgres scenario does after seeding. A backend that is not
reachable or does not declare ``Capability.DEPENDENCIES`` is skipped with the
reason.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import rxqueue
from benchmarks.common import (
    Measure,
    Report,
    Skipped,
    Verdict,
    fmt_rate,
    fmt_ratio,
    interleave,
    median,
    noop,
    payloads,
    rate_table,
    ratio,
    round_ratios,
    rows_of,
    spread,
    sqlite_url,
    temp_dir,
)
from benchmarks.scenarios import Settings
from rxqueue import Capability, Status, Workflow

GOAL = 0.5  # workflow steps/s >= 0.5 x plain tasks/s
CHAIN_STEPS = 10
QUEUE = "bench"
SQLITE_CONCURRENCY = 16  # as the sqlite scenario's rxqueue .concurrency(16) row
POSTGRES_CONCURRENCY = 32  # as the postgres scenario's e2e row
PUSH_AT_ONCE = 50  # chain runs pushed concurrently (untimed)
ANALYZED = (
    "PostgreSQL: tasks and task_edges are ANALYZEd after the push (untimed), as the postgres "
    "scenario does; without it the claim plans its inputs subquery on an empty table's "
    "statistics (a sequential scan of tasks per claimed step) and chains run ~10x slower"
)


@dataclass(frozen=True)
class Sizes:
    plain: int = 10_000  # plain no-op tasks
    chains: int = 1_000  # runs of a 10-step chain (11 tasks each)
    fanout: int = 10_000  # items of the fan-out


def sizes_for(n: int) -> Sizes:
    """``--size n``: n plain tasks, n / 10 chains (n steps), a fan-out of n."""
    return Sizes(n, max(1, n // CHAIN_STEPS), n)


async def step(value: int) -> int:
    return value + 1


async def make_list(n: int) -> list[int]:
    return list(range(n))


async def item(value: int) -> int:
    return value


CHAIN = Workflow("chain")
for _ in range(CHAIN_STEPS):
    CHAIN = CHAIN.then(step)
FAN = Workflow("fan").then(make_list).filter_map(item).collect()


def names(sizes: Sizes) -> tuple[str, str, str]:
    return (
        f"plain tasks ({sizes.plain:,} no-op, push_many)",
        f"workflow steps: {sizes.chains:,} chains of {CHAIN_STEPS} steps "
        f"({sizes.chains * (CHAIN_STEPS + 1):,} tasks incl. run records)",
        f"workflow steps: fan-out of {sizes.fanout:,} + collect ({sizes.fanout + 3:,} tasks)",
    )


async def nothing() -> None:
    pass


@dataclass(frozen=True)
class Store:
    """A fresh store: ``connect()`` opens a backend on it; ``seeded()`` runs once the
    tasks are pushed, before the timed run (PostgreSQL: ANALYZE, as the postgres
    scenario does after seeding, so that plans see the tables as they are)."""

    connect: Callable[[], rxqueue.Backend]
    seeded: Callable[[], Awaitable[object]] = nothing


async def drain(backend: rxqueue.Backend, handler: Any, concurrency: int, expected: int) -> float:
    """Tasks/s of one worker's ``run_until_idle``; checks that ``expected`` tasks ran
    and that the store holds every one Done."""
    worker = rxqueue.WorkerBuilder("bench").backend(backend).concurrency(concurrency)
    start = time.perf_counter()
    summary = await worker.build(handler).run_until_idle()
    elapsed = time.perf_counter() - start
    stats = await backend.stats()
    if summary.done != expected or stats[Status.DONE] != expected:
        raise RuntimeError(
            f"expected {expected} tasks done, the worker counted {summary.done}, "
            f"the store holds {dict((s.value, n) for s, n in stats.items() if n)}"
        )
    return expected / elapsed


async def run_plain(store: Store, n: int, concurrency: int) -> float:
    backend = store.connect()
    try:
        for first in range(0, n, 10_000):
            await backend.push_many(payloads(min(10_000, n - first), first))
        await store.seeded()
        return await drain(backend, noop, concurrency, n)
    finally:
        await backend.close()


async def run_chains(store: Store, runs: int, concurrency: int) -> float:
    backend = store.connect()
    try:
        for first in range(0, runs, PUSH_AT_ONCE):
            count = min(PUSH_AT_ONCE, runs - first)
            await asyncio.gather(*(CHAIN.push(backend, first + i) for i in range(count)))
        await store.seeded()
        return await drain(backend, CHAIN, concurrency, runs * (CHAIN_STEPS + 1))
    finally:
        await backend.close()


async def run_fanout(store: Store, items: int, concurrency: int) -> float:
    backend = store.connect()
    try:
        run_id = await FAN.push(backend, items)
        await store.seeded()
        rate = await drain(backend, FAN, concurrency, items + 3)
        run = await backend.get(run_id)
        if run.status is not Status.DONE or len(run.result) != items:
            raise RuntimeError(f"fan-out run ended {run.status}, result of {len(run.result)}")
        return rate
    finally:
        await backend.close()


def measures(
    fresh: Callable[[Callable[[Store], Awaitable[float]]], float],
    sizes: Sizes,
    concurrency: int,
) -> dict[str, Measure]:
    """The three measures, each on a fresh store made by ``fresh``."""
    plain, chains, fan = names(sizes)
    return {
        plain: lambda: fresh(lambda c: run_plain(c, sizes.plain, concurrency)),
        chains: lambda: fresh(lambda c: run_chains(c, sizes.chains, concurrency)),
        fan: lambda: fresh(lambda c: run_fanout(c, sizes.fanout, concurrency)),
    }


def sqlite_fresh(run: Callable[[Store], Awaitable[float]]) -> float:
    with temp_dir("workflows") as directory:
        url = sqlite_url(directory / "tasks.db")
        return asyncio.run(run(Store(lambda: rxqueue.connect(url, queue=QUEUE))))


def postgres_unavailable(dsn: str) -> str | None:
    from benchmarks import postgres

    reason = postgres.unavailable(dsn)
    if reason is not None:
        return reason
    from rxqueue.backends.postgres import PostgresBackend

    if Capability.DEPENDENCIES not in PostgresBackend.capabilities:
        return "PostgresBackend does not declare Capability.DEPENDENCIES yet (no workflows)"
    return None


def compare(
    label: str, results: dict[str, list[float]], sizes: Sizes, concurrency: int, repeat: int,
    extra: tuple[str, ...] = (),
) -> Report:  # fmt: skip
    plain, chains, fan = names(sizes)
    group = f"{label}, .concurrency({concurrency})"
    table = rate_table(
        f"Workflows on {label}: steps/s beside plain tasks/s, .concurrency({concurrency}), "
        f"median of {repeat}",
        results,
        plain,
        label="plain",
        per_reference=True,
    )
    verdicts: list[Verdict] = []
    notes: dict[str, str] = {}
    for name, short in ((chains, "10-step chains"), (fan, f"fan-out of {sizes.fanout:,}")):
        r = ratio(results, name, plain)
        notes[name] = f"{fmt_ratio(r)} plain (goal >= {GOAL}x)"
        verdicts.append(
            Verdict(
                f"workflows {label}: {short} steps/s / plain tasks/s",
                f"{fmt_ratio(r)} ({fmt_rate(median(results[name]))} steps/s)",
                f">= {GOAL}x",
                r >= GOAL,
                spread(round_ratios(results, name, plain), fmt_ratio),
            )
        )
    table.notes += [
        "only run_until_idle is timed (everything pushed first), one worker, fresh store "
        "per run, runs interleaved",
        "steps/s counts every stored task a workflow runs: its steps, a fan-out's items, "
        "the collect and each run's own record",
        "a step becomes ready inside the timed run (its parent's Done releases it: a "
        "status change and a ready-index entry), where a plain task became ready at "
        "its push, before the timing starts",
        *extra,
    ]
    rows = rows_of(
        results, {plain: "baseline"}, "tasks/s", group=group, ratio_to=plain, notes=notes
    )
    report = Report()
    report.publish(Report([table], verdicts, rows))
    return report


def run(settings: Settings) -> Report:
    """The ``workflows`` scenario: ``--size`` plain tasks, a tenth of it in chains,
    a fan-out of as many items."""
    assert settings.size is not None
    return main(sizes_for(settings.size), settings.repeat)


def main(sizes: Sizes = Sizes(), repeat: int = 3, dsn: str | None = None) -> Report:
    report = Report()
    results = interleave(measures(sqlite_fresh, sizes, SQLITE_CONCURRENCY), repeat)
    report.extend(compare("SQLite", results, sizes, SQLITE_CONCURRENCY, repeat))

    from benchmarks import postgres

    dsn = dsn or os.environ.get("RXQUEUE_BENCH_DSN", postgres.DEFAULT_DSN)
    reason = postgres_unavailable(dsn)
    if reason is not None:
        print(f"note: PostgreSQL skipped: {reason}\n", flush=True)
        report.skipped.append(Skipped("PostgreSQL workflows", reason))
        return report
    schemas = postgres.Schemas(dsn)

    def pg_fresh(run: Callable[[Store], Awaitable[float]]) -> float:
        schema = schemas.new("wf")
        try:
            store = Store(
                lambda: rxqueue.connect(dsn, queue=QUEUE, schema=schema),
                lambda: postgres.admin(
                    dsn, f'ANALYZE "{schema}".tasks', f'ANALYZE "{schema}".task_edges'
                ),
            )
            return asyncio.run(run(store))
        finally:
            schemas.drop(schema)

    try:
        results = interleave(measures(pg_fresh, sizes, POSTGRES_CONCURRENCY), repeat)
    finally:
        schemas.drop_all()
    report.extend(compare("PostgreSQL", results, sizes, POSTGRES_CONCURRENCY, repeat, (ANALYZED,)))
    return report
