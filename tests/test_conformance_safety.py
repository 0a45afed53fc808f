"""Conformance, part two: bad input is refused before anything is stored, a task
is never Done without its handler's work, and nothing claimed is ever stranded.

Every test runs on every backend in ``conftest.FACTORIES`` (memory, SQLite,
the custom example, PostgreSQL when the server is there).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import reactivex.operators as rx_ops
from hypothesis import HealthCheck, given, settings

from rxqueue import (
    BackendClosed,
    Capability,
    InvalidOption,
    InvalidTransition,
    ManualClock,
    Status,
    Task,
    TaskExists,
    WorkerBuilder,
    events,
    layers,
    ops,
)
from rxqueue.backoff import constant
from tests.conftest import BackendKit, require
from tests.test_task import BAD_OPTIONS

RUN_LIMIT = 20.0


@dataclass
class Job:
    n: int


async def run_idle(worker: Any) -> Any:
    async with asyncio.timeout(RUN_LIMIT):
        return await worker.run_until_idle()


# --- bad input is refused before anything is stored ---------------------------------------


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(options=BAD_OPTIONS)
async def test_a_bad_option_stores_nothing_and_the_queue_goes_on(
    kit: BackendKit, options: dict[str, Any]
) -> None:
    backend = await kit.make()
    [name] = options
    with pytest.raises(InvalidOption, match=name):
        await backend.push(Job(0), **options)
    if name != "task_id":
        with pytest.raises(InvalidOption, match=name):
            await backend.push_many([Job(1), Job(2)], **options)
    await backend.push(Job(3))
    seen: list[int] = []

    async def handle(job: Job) -> None:
        seen.append(job.n)

    summary = await run_idle(WorkerBuilder("w").backend(backend).build(handle))
    assert (seen, summary.done) == ([3], 1)


async def test_a_task_built_for_another_queue_is_stored_in_this_one(kit: BackendKit) -> None:
    backend = await kit.make(queue="emails")
    task_id = await backend.send(Task(args={"n": 1}, queue="elsewhere"))
    [other] = await backend.send_many([Task(args={"n": 2}, queue="elsewhere")])
    ran: list[str] = []

    async def handle(job: Any, ctx: Any) -> None:
        ran.append(ctx.queue)

    await run_idle(WorkerBuilder("w").backend(backend).build(handle))
    assert ran == ["emails", "emails"]
    if Capability.GET in backend.capabilities:
        for stored in (task_id, other):
            task = await backend.get(stored)
            assert task is not None and task.queue == "emails"


async def test_a_duplicate_id_raises_task_exists_and_keeps_the_first(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.GET)
    await backend.push(Job(1), task_id="invoice-42")
    with pytest.raises(TaskExists, match="invoice-42"):
        await backend.push(Job(2), task_id="invoice-42")
    task = await backend.get("invoice-42")
    assert task is not None and task.args == {"n": 1}


async def test_retrying_an_unfinished_task_is_an_invalid_transition(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.MANAGE)
    task_id = await backend.push(Job(1))
    with pytest.raises(InvalidTransition, match="only Failed or Killed"):
        await backend.retry(task_id)


async def test_status_filters_take_names_and_refuse_unknown_ones(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.LIST)
    ids = await backend.push_many([Job(1), Job(2)])
    assert [t.id for t in await backend.list(status="Pending")] == ids
    assert [t.id for t in await backend.list(status="pending")] == ids
    with pytest.raises(InvalidOption, match="status must be one of"):
        await backend.list(status="Bogus")
    with pytest.raises(InvalidOption, match="limit"):
        await backend.list(limit=-1)


async def test_metadata_and_results_follow_the_same_rules_everywhere(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.GET)
    task_id = await backend.push(Job(1), metadata={"trace": ("a", 1)})

    async def handle(job: Job) -> Any:
        return {"sent": (job.n, "ok")}

    await run_idle(WorkerBuilder("w").backend(backend).build(handle))
    task = await backend.get(task_id)
    assert task is not None
    # Stored as JSON on every backend, so tuples come back as lists, everywhere.
    assert task.metadata == {"trace": ["a", 1]}
    assert task.result == {"sent": [1, "ok"]}


@pytest.mark.parametrize("result", [math.nan, math.inf, object()], ids=["nan", "inf", "object"])
async def test_a_result_the_codec_cannot_store_fails_the_attempt(
    kit: BackendKit, result: Any
) -> None:
    backend = await kit.make()
    task_id = await backend.push(Job(1))

    async def handle(job: Job) -> Any:
        return result

    summary = await run_idle(WorkerBuilder("w").backend(backend).build(handle))
    assert (summary.done, summary.killed) == (0, 1)
    if Capability.GET in backend.capabilities:
        task = await backend.get(task_id)
        assert task is not None and task.status is Status.KILLED
        assert task.last_error is not None and "result cannot be stored" in task.last_error


# --- nothing claimed is ever stranded ----------------------------------------------------


async def test_a_filter_in_the_pipe_releases_what_it_drops(kit: BackendKit) -> None:
    backend = await kit.make()
    await backend.push_many([Job(n) for n in range(12)])
    offered: Counter[str] = Counter()

    def second_offer(item: Any) -> bool:
        # Drops every task the first time it is offered: a dropped claim must go
        # back to the store (and come round again), not stall the worker.
        if not isinstance(item, Task):
            return True
        offered[item.id] += 1
        return offered[item.id] > 1

    seen: Counter[int] = Counter()

    async def handle(job: Job) -> None:
        seen[job.n] += 1

    piped = backend.pipe(rx_ops.filter(second_offer))
    summary = await run_idle(WorkerBuilder("w").backend(piped).concurrency(2).build(handle))
    assert seen == Counter(range(12))
    assert summary.done == 12 and summary.released >= 12


async def test_an_error_inside_the_pipe_releases_what_operators_held(kit: BackendKit) -> None:
    backend = await kit.make()
    await backend.push_many([Job(n) for n in range(20)])
    failures = 0

    def fail_once(item: Any) -> Any:
        nonlocal failures
        if isinstance(item, Task) and failures == 0:
            failures += 1
            raise ConnectionError("the store blinked")
        return item

    seen: Counter[int] = Counter()

    async def handle(job: Job) -> None:
        seen[job.n] += 1

    piped = backend.pipe(
        ops.throttle(2_000), rx_ops.map(fail_once), ops.retry(5, backoff=constant(0))
    )
    await run_idle(WorkerBuilder("w").backend(piped).prefetch(8).build(handle))
    assert seen == Counter(range(20))


async def test_a_task_killed_while_claimed_never_runs(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.MANAGE, Capability.GET)
    _, second = await backend.push_many([Job(1), Job(2)])
    started, proceed = asyncio.Event(), asyncio.Event()
    ran: list[int] = []

    async def handle(job: Job) -> None:
        ran.append(job.n)
        started.set()
        await proceed.wait()

    worker = WorkerBuilder("w").backend(backend).prefetch(2).build(handle)
    running = asyncio.create_task(run_idle(worker))
    async with asyncio.timeout(RUN_LIMIT):
        await started.wait()
    claimed = await backend.get(second)  # one claim of two: it waits in the worker's buffer
    assert claimed is not None and claimed.status is Status.QUEUED
    await backend.kill(second, "not wanted")
    proceed.set()
    await running
    assert ran == [1]
    task = await backend.get(second)
    assert task is not None and (task.status, task.last_error) == (Status.KILLED, "not wanted")


async def test_closing_the_backend_stops_its_worker_and_hands_back_claims(
    kit: BackendKit,
) -> None:
    backend = await kit.make()
    await backend.push_many([Job(n) for n in range(6)])
    started = asyncio.Event()

    async def handle(job: Job) -> None:
        started.set()
        await asyncio.sleep(0.05)

    worker = WorkerBuilder("w").backend(backend).prefetch(4).build(handle)
    running = asyncio.create_task(worker.run(handle_signals=False))
    async with asyncio.timeout(RUN_LIMIT):
        await started.wait()
        await backend.close()
        summary = await running
    assert not worker.is_running
    assert summary.done >= 1 and summary.lost == 0
    with pytest.raises(BackendClosed):
        await backend.push(Job(99))


@pytest.mark.parametrize("error", [asyncio.CancelledError, GeneratorExit])
async def test_a_handler_raising_cancellation_of_its_own_fails_only_its_task(
    kit: BackendKit, error: type[BaseException]
) -> None:
    backend = await kit.make()
    await backend.push_many([Job(n) for n in range(3)], max_attempts=1)
    seen: list[int] = []

    async def handle(job: Job) -> None:
        seen.append(job.n)
        if job.n == 0:
            raise error()

    worker = WorkerBuilder("w").backend(backend).build(handle)
    summary = await run_idle(worker)  # concurrency 1: a lost consumer would hang here
    assert sorted(seen) == [0, 1, 2]
    assert (summary.done, summary.killed) == (2, 1)


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
async def test_an_interrupt_from_a_handler_stops_gracefully_and_leaves_nothing_claimed(
    kit: BackendKit, error: type[BaseException]
) -> None:
    backend = await kit.make()
    require(backend, Capability.LIST)
    await backend.push_many([Job(n) for n in range(4)])

    async def handle(job: Job) -> None:
        if job.n == 1:
            raise error()

    worker = WorkerBuilder("w").backend(backend).prefetch(3).build(handle)
    with pytest.raises(error):
        async with asyncio.timeout(RUN_LIMIT):
            await worker.run(handle_signals=False)
    assert not worker.is_running
    stats = await backend.stats()
    assert stats[Status.QUEUED] == stats[Status.RUNNING] == 0
    assert stats[Status.DONE] >= 1 and sum(stats.values()) == 4


async def test_a_late_outcome_after_a_lost_lease_is_reported(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock, lease_timeout=30)
    require(backend, Capability.LEASES)
    await backend.push(Job(1))
    started, proceed = asyncio.Event(), asyncio.Event()

    async def handle(job: Job) -> None:
        started.set()
        await proceed.wait()

    worker = WorkerBuilder("w").backend(backend).build(handle)
    lost: list[events.LeaseLost] = []
    worker.events.subscribe(
        on_next=lambda e: lost.append(e) if isinstance(e, events.LeaseLost) else None
    )
    marked = asyncio.Event()
    report = backend.report

    async def spying_report(batch: Any) -> Any:
        refused = await report(batch)
        if batch.started:
            marked.set()
        return refused

    backend.report = spying_report  # type: ignore[method-assign]
    running = asyncio.create_task(run_idle(worker))
    async with asyncio.timeout(RUN_LIMIT):
        await started.wait()
        await marked.wait()  # its Running mark is written: the row is not mid-update
    # As if the handler blocked the loop past the lease: no heartbeat, reclaimed.
    clock.advance(31)
    assert await backend.reclaim() == 1
    await backend.heartbeat("w")  # the loop unblocks: the worker's heartbeat resumes
    proceed.set()
    summary = await running
    # The late outcome is refused, said and counted; its second run, here, is recorded.
    assert (summary.lost, summary.done) == (1, 1)
    assert [event.finished for event in lost if event.finished] == [True]


async def test_layers_apply_to_batch_handlers(kit: BackendKit) -> None:
    backend = await kit.make()
    await backend.push_many([Job(n) for n in range(4)])
    calls = 0

    async def handle(jobs: list[Job]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)  # the timeout layer cuts this first call short

    worker = (
        WorkerBuilder("w")
        .backend(backend.pipe(ops.batch(4, 0.01)))
        .layer(layers.retry(backoff=constant(0)))
        .layer(layers.timeout(0.05))
        .build(handle)
    )
    summary = await run_idle(worker)
    assert summary.retried >= 1 and summary.done == 4
