"""Cancellation, on every backend that declares ``Capability.CANCEL``.

A waiting task ends Cancelled at once; a claimed or running one is cancelled
in the worker that holds it (its handler sees CancelledError, ``ctx.cancelled``
turns true) and the worker goes on; a cancelled task is never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import pytest

from rxqueue import (
    Cancelled,
    Capability,
    InvalidOption,
    InvalidTransition,
    ManualClock,
    Status,
    TaskContext,
    TaskNotFound,
    WorkerBuilder,
    events,
)
from rxqueue.acks import AckBatch
from rxqueue.backends.base import ClaimingBackend
from tests.conftest import BackendKit, require

RUN_LIMIT = 20.0


@dataclass
class Job:
    n: int


async def test_a_waiting_task_is_cancelled_at_once_and_never_runs(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.CANCEL, Capability.GET)
    now_id, later_id = await backend.push_many([Job(1), Job(2)])
    await backend.push(Job(3))
    assert await backend.cancel(now_id, "not needed") is Status.CANCELLED
    assert await backend.cancel(later_id) is Status.CANCELLED
    ran: list[int] = []

    async def handle(job: Job) -> None:
        ran.append(job.n)

    async with asyncio.timeout(RUN_LIMIT):
        summary = await WorkerBuilder("w").backend(backend).build(handle).run_until_idle()
    assert ran == [3] and summary.done == 1
    task = await backend.get(now_id)
    assert task is not None and (task.status, task.last_error) == (
        Status.CANCELLED,
        "cancelled: not needed",
    )
    async with asyncio.timeout(RUN_LIMIT):
        waited = await backend.wait_for(later_id)  # a cancelled task is finished
    assert waited.status is Status.CANCELLED


async def test_a_running_task_is_cancelled_in_its_worker_which_goes_on(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.CANCEL, Capability.GET)
    slow = await backend.push(Job(0))
    await backend.push_many([Job(1), Job(2)])
    started = asyncio.Event()
    saw: dict[str, Any] = {}
    ran: list[int] = []

    async def handle(job: Job, ctx: TaskContext) -> None:
        if job.n == 0:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                saw["cancelled"] = ctx.cancelled
                raise
        ran.append(job.n)

    worker = WorkerBuilder("w").backend(backend).build(handle)  # concurrency 1
    seen: list[events.Event] = []
    worker.events.subscribe(on_next=seen.append)
    running = asyncio.create_task(worker.run_until_idle())
    async with asyncio.timeout(RUN_LIMIT):
        await started.wait()
        assert await backend.cancel(slow, "user asked") in (Status.QUEUED, Status.RUNNING)
        summary = await running
    assert saw == {"cancelled": True}
    assert ran == [1, 2] and (summary.done, summary.cancelled, summary.failed) == (2, 1, 0)
    task = await backend.get(slow)
    assert task is not None and (task.status, task.last_error) == (
        Status.CANCELLED,
        "cancelled: user asked",
    )
    assert [e.reason for e in seen if isinstance(e, events.Cancelled)] == ["user asked"]


async def test_a_claimed_task_not_yet_started_ends_cancelled_without_running(
    kit: BackendKit,
) -> None:
    backend = await kit.make()
    require(backend, Capability.CANCEL, Capability.GET)
    _, second = await backend.push_many([Job(1), Job(2)])
    started, proceed = asyncio.Event(), asyncio.Event()
    ran: list[int] = []

    async def handle(job: Job) -> None:
        ran.append(job.n)
        started.set()
        await proceed.wait()

    worker = WorkerBuilder("w").backend(backend).prefetch(2).build(handle)
    running = asyncio.create_task(worker.run_until_idle())
    async with asyncio.timeout(RUN_LIMIT):
        await started.wait()
        assert await backend.cancel(second, "changed my mind") is Status.QUEUED
        proceed.set()
        summary = await running
    assert ran == [1] and (summary.done, summary.cancelled) == (1, 1)
    task = await backend.get(second)
    assert task is not None and task.status is Status.CANCELLED


async def test_a_handler_that_swallows_the_cancel_still_ends_cancelled(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.CANCEL, Capability.GET)
    task_id = await backend.push(Job(0))
    started = asyncio.Event()

    async def handle(job: Job, ctx: TaskContext) -> str:
        started.set()
        while not ctx.cancelled:  # polls instead of awaiting something cancellable
            with contextlib.suppress(asyncio.CancelledError):  # swallowed: the request stands
                await asyncio.sleep(0.005)
        return "stopped early"

    running = asyncio.create_task(
        WorkerBuilder("w").backend(backend).build(handle).run_until_idle()
    )
    async with asyncio.timeout(RUN_LIMIT):
        await started.wait()
        await backend.cancel(task_id)
        summary = await running
    assert summary.cancelled == 1
    task = await backend.get(task_id)
    assert task is not None and task.status is Status.CANCELLED


async def test_cancel_refuses_nonsense_and_leaves_finished_tasks_alone(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.CANCEL, Capability.GET, Capability.MANAGE)
    task_id = await backend.push(Job(1))
    with pytest.raises(TaskNotFound):
        await backend.cancel("no-such-task")
    with pytest.raises(InvalidOption, match="reason"):
        await backend.cancel(task_id, "")

    async def handle(job: Job) -> None:
        pass

    async with asyncio.timeout(RUN_LIMIT):
        await WorkerBuilder("w").backend(backend).build(handle).run_until_idle()
    assert await backend.cancel(task_id) is Status.DONE  # finished: left as it is
    cancelled = await backend.push(Job(2))
    await backend.cancel(cancelled)
    with pytest.raises(InvalidTransition):
        await backend.retry(cancelled)  # cancelled means never retried


async def test_a_backend_without_the_capability_says_so(kit: BackendKit) -> None:
    backend = await kit.make()
    if Capability.CANCEL in backend.capabilities:
        pytest.skip(f"{type(backend).__name__} declares cancel")
    from rxqueue import UnsupportedOperation

    with pytest.raises(UnsupportedOperation, match="cancel"):
        await backend.cancel("x")


async def test_a_task_asked_to_cancel_is_never_retried_even_if_its_attempt_fails(
    kit: BackendKit,
) -> None:
    backend = await kit.make()
    require(backend, Capability.CANCEL, Capability.GET)
    task_id = await backend.push(Job(0))
    started, proceed = asyncio.Event(), asyncio.Event()

    async def handle(job: Job) -> None:
        started.set()
        await asyncio.shield(proceed.wait())  # the in-process cancel cannot reach it...
        raise ConnectionError("...and it fails on its own")

    worker = WorkerBuilder("w").backend(backend).build(handle)
    running = asyncio.create_task(worker.run_until_idle())
    async with asyncio.timeout(RUN_LIMIT):
        await started.wait()
        # As a request from another process before its next heartbeat: only the store knows.
        await backend._cancel(task_id, "stop it")
        proceed.set()
        summary = await running
    task = await backend.get(task_id)
    assert task is not None and (task.status, task.last_error) == (
        Status.CANCELLED,
        "cancelled: stop it",
    )
    assert summary.failed == 1  # the worker saw a failure; the store made it final


async def test_a_task_asked_to_cancel_ends_cancelled_when_its_claim_ends(
    kit: BackendKit,
) -> None:
    """Released, reclaimed, or left by a dead predecessor: Cancelled with the reason,
    no attempt counted, never Pending again; the heartbeat carries only its worker's
    requests; a Cancelled outcome applies to the same claim only."""
    clock = ManualClock()
    backend = await kit.make(clock=clock, lease_timeout=30)
    require(backend, Capability.CANCEL, Capability.LEASES, Capability.GET, Capability.MANAGE)
    assert isinstance(backend, ClaimingBackend)
    ids = await backend.push_many(["a", "b", "c", "d", "e"], max_attempts=1)
    await backend.register_worker("w1")
    await backend.register_worker("w2")
    w1 = await backend._claim("w1", 3)
    w2 = await backend._claim("w2", 2)
    for task in (*w1, *w2):
        assert await backend.cancel(task.id, f"stop {task.id}") is Status.QUEUED
    assert sorted(await backend.heartbeat("w1")) == sorted((t.id, f"stop {t.id}") for t in w1)
    assert list(await backend.heartbeat("nobody")) == []
    await backend.release(w1[:1], "w2")  # not w2's: nothing happens
    assert {t.status for i in ids if (t := await backend.get(i))} == {Status.QUEUED}
    await backend.release(w1[:1], "w1")
    stale = w1[1].evolve(attempts=w1[1].attempts + 1)
    refused = await backend.report(AckBatch("w1", cancelled=[(stale, Cancelled("x"))]))
    assert list(refused) == [stale.id]
    assert list(await backend.report(AckBatch("w1", cancelled=[(w1[1], Cancelled("stop"))]))) == []
    clock.advance(31)  # w1 stops heartbeating; w2 dies and comes back
    await backend.heartbeat("w1")
    await backend.register_worker("w2")
    clock.advance(31)
    assert await backend.reclaim() == 1  # w1[2]
    got = {i: t for i in ids if (t := await backend.get(i))}
    assert {t.status for t in got.values()} == {Status.CANCELLED}
    assert [got[t.id].attempts for t in (*w1, *w2)] == [0, 1, 0, 0, 0]
    assert all(got[i].last_error == f"cancelled: stop {i}" for i in ids if i != w1[1].id)
    assert got[w1[1].id].last_error == "cancelled: stop"
    assert all(t.lock_by is None and t.done_at is not None for t in got.values())
    clock.advance(1)
    assert await backend.vacuum() == 5
