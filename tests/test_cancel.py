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
    Capability,
    InvalidOption,
    InvalidTransition,
    Status,
    TaskContext,
    TaskNotFound,
    WorkerBuilder,
    events,
)
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
