"""One behaviour, every backend: the contract the memory backend defines.

Each test runs on every backend in ``conftest.FACTORIES``; a backend that does
not declare a capability is skipped with the reason, never silently passed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxqueue import (
    Abort,
    Capability,
    CodecError,
    ManualClock,
    RetryAfter,
    Status,
    TaskContext,
    TaskNotFound,
    WorkerBuilder,
    WorkerError,
    layers,
)
from rxqueue.acks import AckBatch
from rxqueue.backoff import constant
from rxqueue.worker.context import WorkerContext
from tests.conftest import BackendKit, require

RUN_LIMIT = 20.0  # seconds: a hung worker fails the test instead of the suite


@dataclass
class Job:
    n: int


async def run_idle(builder: WorkerBuilder, handler: Any) -> Any:
    return await run_idle_worker(builder.build(handler))


async def run_idle_worker(worker: Any) -> Any:
    async with asyncio.timeout(RUN_LIMIT):
        return await worker.run_until_idle()


# --- sink and inspection ---------------------------------------------------------------


async def test_push_then_get_returns_pending_task_with_decoded_args(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.GET)
    task_id = await backend.push(Job(7), priority=3, metadata={"trace": "t-1"})
    task = await backend.get(task_id)
    assert task is not None
    assert (task.id, task.status, task.attempts, task.priority) == (task_id, Status.PENDING, 0, 3)
    assert task.args == {"n": 7}
    assert task.metadata == {"trace": "t-1"}
    assert await backend.get("no-such-id") is None


async def test_push_many_returns_unique_sortable_ids_in_order(kit: BackendKit) -> None:
    backend = await kit.make()
    ids = await backend.push_many([Job(n) for n in range(50)])
    assert len(set(ids)) == 50
    assert ids == sorted(ids)
    assert await backend.push_many([]) == []


async def test_unencodable_payload_raises_at_push_and_stores_nothing(kit: BackendKit) -> None:
    backend = await kit.make()
    with pytest.raises(CodecError, match="cannot encode payload of type object"):
        await backend.push_many([Job(1), object()])
    seen: list[int] = []

    async def handle(job: Job) -> None:
        seen.append(job.n)

    await run_idle(WorkerBuilder("w").backend(backend), handle)
    assert seen == []


async def test_list_and_stats(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.LIST)
    ids = await backend.push_many([Job(n) for n in range(5)])
    stats = await backend.stats()
    assert stats[Status.PENDING] == 5 and sum(stats.values()) == 5
    listed = await backend.list(status=Status.PENDING, limit=2, offset=1)
    assert [task.id for task in listed] == ids[1:3]
    assert await backend.list(status=Status.DONE) == []


# --- the worker over the backend ---------------------------------------------------------


async def test_worker_runs_each_task_once_and_records_done(kit: BackendKit) -> None:
    backend = await kit.make()
    ids = await backend.push_many([Job(n) for n in range(40)])
    seen: Counter[int] = Counter()

    async def handle(job: Job, ctx: TaskContext) -> int:
        assert isinstance(job, Job)
        seen[job.n] += 1
        return job.n * 2

    summary = await run_idle(WorkerBuilder("w").backend(backend).concurrency(4), handle)
    assert seen == Counter(range(40))
    assert (summary.done, summary.failed) == (40, 0)
    if Capability.GET in backend.capabilities:
        task = await backend.get(ids[3])
        assert task is not None and task.status is Status.DONE
        assert (task.result, task.attempts, task.lock_by) == (6, 1, None)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    count=st.integers(0, 40),
    concurrency=st.integers(1, 6),
    prefetch=st.integers(1, 8),
    slow=st.sets(st.integers(0, 39), max_size=6),
)
async def test_every_task_reaches_exactly_one_outcome(
    kit: BackendKit, count: int, concurrency: int, prefetch: int, slow: set[int]
) -> None:
    """No task lost, none run twice, and never more claimed-but-unstarted than prefetch."""
    backend = await kit.make()
    await backend.push_many([Job(n) for n in range(count)])
    seen: Counter[int] = Counter()
    worst_unstarted = 0

    async def handle(job: Job, ctx: TaskContext) -> None:
        nonlocal worst_unstarted
        worker = ctx.worker
        worst_unstarted = max(worst_unstarted, worker.buffered + len(worker.in_transit))
        if job.n in slow:
            await asyncio.sleep(0)
        seen[job.n] += 1

    builder = WorkerBuilder("w").backend(backend).concurrency(concurrency).prefetch(prefetch)
    summary = await run_idle(builder, handle)
    assert seen == Counter(range(count))
    assert summary.done == count
    assert worst_unstarted <= prefetch


async def test_higher_priority_runs_first_then_fifo(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.PRIORITY)
    for n, priority in [(1, 0), (2, 5), (3, 0), (4, 9), (5, 5)]:
        await backend.push(Job(n), priority=priority)
    order: list[int] = []

    async def handle(job: Job) -> None:
        order.append(job.n)

    await run_idle(WorkerBuilder("w").backend(backend).prefetch(1), handle)
    assert order == [4, 2, 5, 1, 3]


async def test_delayed_task_waits_for_its_time(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock)
    require(backend, Capability.DELAY, Capability.GET)
    later = await backend.push(Job(1), delay=30)
    now = await backend.push(Job(2))
    ran: list[int] = []

    async def handle(job: Job) -> None:
        ran.append(job.n)

    builder = WorkerBuilder("w").backend(backend).idle_horizon(0)
    await run_idle(builder, handle)
    assert ran == [2]
    task = await backend.get(later)
    assert task is not None and task.status is Status.PENDING
    clock.advance(31)
    await run_idle(WorkerBuilder("w2").backend(backend).idle_horizon(0), handle)
    assert ran == [2, 1]
    assert (await backend.get(now)) is not None


# --- failures and retries ------------------------------------------------------------


async def test_failed_attempt_is_stored_with_backoff_then_retried(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock)
    require(backend, Capability.RETRY, Capability.GET)
    task_id = await backend.push(Job(1), max_attempts=5)
    attempts: list[int] = []

    async def handle(job: Job, ctx: TaskContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("smtp down")
        return "sent"

    builder = WorkerBuilder("w").backend(backend).layer(layers.retry(backoff=constant(10)))
    summary = await run_idle(builder.idle_horizon(0), handle)
    assert (summary.retried, summary.done) == (1, 0)
    task = await backend.get(task_id)
    assert task is not None
    assert (task.status, task.attempts) == (Status.FAILED, 1)
    assert task.run_at == pytest.approx(clock() + 10)
    assert task.last_error == "ConnectionError: smtp down"

    clock.advance(10)
    summary = await run_idle(WorkerBuilder("w2").backend(backend).idle_horizon(0), handle)
    assert summary.done == 1 and attempts == [1, 2]
    done = await backend.wait_for(task_id, timeout=5)
    assert (done.status, done.attempts, done.result) == (Status.DONE, 2, "sent")


async def test_attempts_exhausted_kills_the_task(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.RETRY, Capability.GET)
    task_id = await backend.push(Job(1), max_attempts=3)

    async def handle(job: Job) -> None:
        raise ValueError("always")

    builder = WorkerBuilder("w").backend(backend).layer(layers.retry(backoff=constant(0)))
    summary = await run_idle(builder, handle)
    assert (summary.retried, summary.killed) == (2, 1)
    task = await backend.get(task_id)
    assert task is not None
    assert (task.status, task.attempts) == (Status.KILLED, 3)
    assert task.last_error == "ValueError: always (attempt 3 of 3)"


async def test_abort_kills_at_once_and_retry_after_sets_the_delay(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock)
    require(backend, Capability.GET)
    aborted = await backend.push(Job(1), max_attempts=5)
    delayed = await backend.push(Job(2), max_attempts=5)

    async def handle(job: Job) -> None:
        if job.n == 1:
            raise Abort("bad address")
        raise RetryAfter(42, "rate limited")

    await run_idle(WorkerBuilder("w").backend(backend).idle_horizon(0), handle)
    task = await backend.get(aborted)
    assert task is not None and (task.status, task.last_error) == (
        Status.KILLED,
        "Abort: bad address",
    )
    task = await backend.get(delayed)
    assert task is not None and task.status is Status.FAILED
    assert task.run_at == pytest.approx(clock() + 42)


async def test_bad_payload_kills_that_task_and_the_worker_goes_on(kit: BackendKit) -> None:
    backend = await kit.make()
    good = await backend.push_many([{"n": 1}, {"n": 2}])
    bad = await backend.push({"n": "not a number", "extra": True})
    seen: list[int] = []

    async def handle(job: Job) -> None:
        seen.append(job.n)

    summary = await run_idle(WorkerBuilder("w").backend(backend), handle)
    assert sorted(seen) == [1, 2] and summary.killed == 1
    if Capability.GET in backend.capabilities:
        task = await backend.get(bad)
        assert task is not None and task.status is Status.KILLED
        assert task.last_error is not None and task.last_error.startswith("CodecError")
        for task_id in good:
            task = await backend.get(task_id)
            assert task is not None and task.status is Status.DONE


# --- waiting and managing ---------------------------------------------------------------


async def test_wait_for_returns_the_finished_task(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.GET)
    task_id = await backend.push(Job(3))

    async def handle(job: Job) -> int:
        return job.n + 1

    waiter = asyncio.create_task(backend.wait_for(task_id, timeout=RUN_LIMIT))
    await run_idle(WorkerBuilder("w").backend(backend), handle)
    finished = await waiter
    assert (finished.status, finished.result) == (Status.DONE, 4)
    with pytest.raises(TaskNotFound):
        await backend.wait_for("missing", timeout=1)
    other = await backend.push(Job(4))
    with pytest.raises(TimeoutError):
        await backend.wait_for(other, timeout=0.05)


async def test_retry_kill_and_vacuum(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock)
    require(backend, Capability.MANAGE, Capability.GET, Capability.LIST)
    doomed = await backend.push(Job(1))
    await backend.kill(doomed, "no longer wanted")
    task = await backend.get(doomed)
    assert task is not None and (task.status, task.last_error) == (
        Status.KILLED,
        "no longer wanted",
    )
    ran: list[int] = []

    async def handle(job: Job) -> None:
        ran.append(job.n)

    await run_idle(WorkerBuilder("w").backend(backend), handle)
    assert ran == []
    await backend.retry(doomed)
    task = await backend.get(doomed)
    assert task is not None and task.status is Status.PENDING
    await run_idle(WorkerBuilder("w2").backend(backend), handle)
    assert ran == [1]
    with pytest.raises(ValueError, match="only Failed or Killed"):
        await backend.retry(doomed)
    clock.advance(100)
    assert await backend.vacuum(older_than=200) == 0
    assert await backend.vacuum(older_than=50) == 1
    assert await backend.get(doomed) is None


async def test_has_work_sees_ready_and_soon_due_tasks(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock)
    require(backend, Capability.HAS_WORK)
    assert await backend.has_work(60) is False
    await backend.push(Job(1), delay=100)
    assert await backend.has_work(60) is False
    assert await backend.has_work(100) is True
    await backend.push(Job(2))
    assert await backend.has_work(0) is True


# --- stopping, leases -----------------------------------------------------------------------


async def test_stop_releases_unstarted_tasks_and_finishes_running_ones(kit: BackendKit) -> None:
    backend = await kit.make()
    await backend.push_many([Job(n) for n in range(6)])
    started = asyncio.Event()
    proceed = asyncio.Event()
    seen: Counter[int] = Counter()

    async def handle(job: Job) -> None:
        seen[job.n] += 1
        if job.n == 0:
            started.set()
            await proceed.wait()

    worker = WorkerBuilder("w").backend(backend).prefetch(4).build(handle)
    running = asyncio.create_task(worker.run(handle_signals=False))
    async with asyncio.timeout(RUN_LIMIT):
        await started.wait()
        worker.stop()
        await asyncio.sleep(0)  # the stop is under way while the handler still runs
        proceed.set()
        summary = await running
    assert summary.done == 1 and summary.released >= 1
    if Capability.LIST in backend.capabilities:
        stats = await backend.stats()
        assert (stats[Status.DONE], stats[Status.PENDING]) == (1, 5)
    await run_idle(WorkerBuilder("w2").backend(backend), handle)
    assert seen == Counter(range(6))


async def test_tasks_of_a_dead_worker_are_reclaimed(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock, lease_timeout=60)
    require(backend, Capability.LEASES, Capability.GET)
    ids = await backend.push_many([Job(n) for n in range(3)])
    # A worker claims the tasks, then dies: it never acks and never heartbeats again.
    dead = WorkerContext("dead", concurrency=1, prefetch=3, clock=clock)
    await backend.register_worker(dead.name)
    claimed: list[Any] = []
    got_all = asyncio.Event()

    def on_next(item: Any) -> None:
        if item is not None:
            claimed.append(item)
            if len(claimed) == 3:
                got_all.set()

    subscription = backend.fetcher(dead).subscribe(on_next=on_next)
    async with asyncio.timeout(RUN_LIMIT):
        await got_all.wait()
    subscription.dispose()
    assert await backend.reclaim() == 0  # the lease is still fresh
    clock.advance(61)
    assert await backend.reclaim() == 3
    task = await backend.get(ids[0])
    assert task is not None and (task.status, task.attempts, task.lock_by) == (
        Status.PENDING,
        1,
        None,
    )
    assert task.last_error is not None and "dead" in task.last_error
    ran: list[int] = []

    async def handle(job: Job) -> None:
        ran.append(job.n)

    await run_idle(WorkerBuilder("alive").backend(backend), handle)
    assert sorted(ran) == [0, 1, 2]


async def test_a_live_worker_name_is_not_reused(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.LEASES)
    await backend.register_worker("twin")
    with pytest.raises(WorkerError, match="twin"):
        await backend.register_worker("twin")
    refused = WorkerBuilder("twin").backend(backend).build(lambda job: None)
    with pytest.raises(WorkerError, match="twin"):
        await refused.run_until_idle()
    assert not refused.is_running
    await backend.unregister_worker("twin")
    await backend.register_worker("twin")
    await backend.unregister_worker("twin")
    # A worker refused at start can run once the name is free.
    summary = await run_idle_worker(refused)
    assert summary.done == 0


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    count=st.integers(1, 30),
    stop_after=st.integers(0, 30),
    concurrency=st.integers(1, 4),
    prefetch=st.integers(1, 6),
)
async def test_stopping_at_any_point_loses_nothing_and_repeats_nothing(
    kit: BackendKit, count: int, stop_after: int, concurrency: int, prefetch: int
) -> None:
    stop_after = min(stop_after, count)  # the last task stops it at the latest
    backend = await kit.make()
    await backend.push_many([Job(n) for n in range(count)])
    seen: Counter[int] = Counter()
    first = WorkerBuilder("first").backend(backend).concurrency(concurrency).prefetch(prefetch)

    async def handle(job: Job) -> None:
        seen[job.n] += 1
        await asyncio.sleep(0)
        if sum(seen.values()) >= stop_after:
            worker.stop()

    worker = first.build(handle)
    async with asyncio.timeout(RUN_LIMIT):
        await worker.run(handle_signals=False)
    if Capability.LIST in backend.capabilities:
        stats = await backend.stats()
        assert stats[Status.QUEUED] == stats[Status.RUNNING] == 0  # nothing left claimed
        assert stats[Status.DONE] == sum(seen.values())
    await run_idle(WorkerBuilder("second").backend(backend), handle)
    assert seen == Counter(range(count))


async def test_a_running_task_shows_as_running_in_the_store(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.GET)
    task_id = await backend.push(Job(1))
    started, proceed, marked = asyncio.Event(), asyncio.Event(), asyncio.Event()
    report = backend.report

    async def spying_report(batch: AckBatch) -> Any:
        refused = await report(batch)
        if batch.started:
            marked.set()
        return refused

    backend.report = spying_report  # type: ignore[method-assign]

    async def handle(job: Job) -> None:
        started.set()
        await proceed.wait()

    worker = WorkerBuilder("w").backend(backend).build(handle)
    running = asyncio.create_task(worker.run_until_idle())
    async with asyncio.timeout(RUN_LIMIT):
        await started.wait()
        await marked.wait()  # flushed within the ack interval, with nothing else finishing
        task = await backend.get(task_id)
        assert task is not None and (task.status, task.lock_by) == (Status.RUNNING, "w")
        proceed.set()
        await running
    done = await backend.get(task_id)
    assert done is not None and done.status is Status.DONE
