"""poll(), the async-iterable bridges and the wake-up doorbell."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import reactivex
from aiostream import stream as stream_ops

from rxqueue import ManualClock, Task, Wakeup, from_async_iterable, poll, to_async_iterable
from rxqueue.worker.context import WorkerContext


def context(prefetch: int = 4) -> WorkerContext:
    return WorkerContext("w", concurrency=1, prefetch=prefetch, clock=ManualClock())


async def test_poll_claims_no_more_than_free_capacity_and_enters_the_ledger() -> None:
    ctx = context(prefetch=3)
    asked: list[int] = []
    store = [Task(args=n) for n in range(10)]

    async def fetch_many(n: int) -> list[Task[Any]]:
        asked.append(n)
        taken, store[:n] = store[:n], []
        return taken

    got: list[Any] = []
    subscription = poll(fetch_many, ctx, interval=0.001).subscribe(on_next=got.append)
    for _ in range(5):
        await asyncio.sleep(0)
    subscription.dispose()
    assert asked == [3]  # then no capacity: nothing started, nothing more claimed
    assert [task.args for task in got] == [0, 1, 2]
    assert set(ctx.in_transit) == {task.id for task in got}
    assert ctx.free_capacity == 0


async def test_poll_emits_idle_markers_and_wakes_on_notify() -> None:
    ctx = context()
    doorbell = Wakeup()
    store: list[Task[Any]] = []
    calls = 0

    async def fetch_many(n: int) -> list[Task[Any]]:
        nonlocal calls
        calls += 1
        taken, store[:n] = store[:n], []
        return taken

    got: list[Any] = []
    arrived = asyncio.Event()

    def on_next(item: Any) -> None:
        got.append(item)
        if item is not None:
            arrived.set()

    # A long interval: only the doorbell can make the poller look again soon.
    subscription = poll(fetch_many, ctx, interval=30, max_interval=60, wakeup=doorbell).subscribe(
        on_next=on_next
    )
    await asyncio.sleep(0)
    assert got == [None]
    store.append(Task(args="new"))
    doorbell.notify()
    async with asyncio.timeout(5):
        await arrived.wait()
    subscription.dispose()
    assert got[0] is None and [t.args for t in got if t is not None] == ["new"]
    assert calls >= 2


async def test_poll_reports_fetch_errors_and_validates_intervals() -> None:
    async def failing(n: int) -> list[Task[Any]]:
        raise ConnectionError("down")

    errors: list[Exception] = []
    failed = asyncio.Event()

    def on_error(error: Exception) -> None:
        errors.append(error)
        failed.set()

    ctx = context()
    poll(failing, ctx).subscribe(on_error=on_error)
    async with asyncio.timeout(5):
        await failed.wait()
    assert isinstance(errors[0], ConnectionError)
    assert ctx.free_capacity == ctx.prefetch  # the failed claim gave its slots back
    with pytest.raises(ValueError, match="interval <= max_interval"):
        poll(failing, ctx, interval=1, max_interval=0.5)


async def test_async_generator_is_pulled_on_demand_and_closed_on_dispose() -> None:
    ctx = context(prefetch=2)
    pulled = 0
    closed = asyncio.Event()

    async def generate() -> AsyncIterator[Task[Any]]:
        nonlocal pulled
        try:
            while True:
                pulled += 1
                yield Task(args=pulled)
        finally:
            closed.set()

    got: list[Any] = []
    subscription = from_async_iterable(generate(), ctx).subscribe(on_next=got.append)
    for _ in range(10):
        await asyncio.sleep(0)
    assert pulled == 2 and len(got) == 2  # the worker started nothing: no more room
    subscription.dispose()
    async with asyncio.timeout(5):
        await closed.wait()


async def test_async_generator_errors_and_completion_pass_through() -> None:
    async def finite() -> AsyncIterator[int]:
        yield 1
        yield 2

    async def broken() -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("generator broke")

    done = asyncio.Event()
    got: list[Any] = []
    from_async_iterable(finite()).subscribe(on_next=got.append, on_completed=done.set)
    async with asyncio.timeout(5):
        await done.wait()
    assert got == [1, 2]
    failed: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
    from_async_iterable(broken()).subscribe(on_error=failed.set_result)
    async with asyncio.timeout(5):
        assert "generator broke" in str(await failed)


async def test_observable_as_async_iterable_and_disposal_on_break() -> None:
    disposed = asyncio.Event()

    def subscribe(observer: Any, scheduler: Any = None) -> Any:
        for n in range(5):
            observer.on_next(n)
        return reactivex.disposable.Disposable(disposed.set)

    items = []
    async with contextlib.aclosing(to_async_iterable(reactivex.create(subscribe))) as stream:
        async for item in stream:
            items.append(item)
            if item == 2:
                break
    assert items == [0, 1, 2] and disposed.is_set()
    doubled = stream_ops.map(to_async_iterable(reactivex.of(1, 2)), lambda n: n * 2)
    async with doubled.stream() as streamer:
        assert [n async for n in streamer] == [2, 4]  # aiostream operators apply
    collected = [item async for item in to_async_iterable(reactivex.of(1, 2, 3))]
    assert collected == [1, 2, 3]
    with pytest.raises(ValueError, match="bad"):
        async for _ in to_async_iterable(reactivex.throw(ValueError("bad"))):
            pass


async def test_poll_claims_again_at_half_a_batch_not_per_started_task() -> None:
    ctx = context(prefetch=4)
    asked: list[int] = []
    store = [Task(args=n) for n in range(20)]

    async def fetch_many(n: int) -> list[Task[Any]]:
        asked.append(n)
        taken, store[:n] = store[:n], []
        return taken

    held: list[Task[Any]] = []

    def on_next(task: Any) -> None:
        # The worker's part of the ledger: a task moves from in transit to buffered.
        ctx.in_transit.pop(task.id)
        ctx.buffered += 1
        held.append(task)

    async def start(count: int) -> None:
        for _ in range(count):
            held.pop(0)
            ctx.buffered -= 1
            ctx.capacity_changed()
        for _ in range(3):
            await asyncio.sleep(0)

    subscription = poll(fetch_many, ctx, interval=0.001).subscribe(on_next=on_next)
    await start(0)
    assert asked == [4]
    await start(1)
    assert asked == [4]  # one free slot: not worth a claim while tasks wait
    await start(1)
    assert asked == [4, 2]  # half a batch free: claim while two tasks still wait
    await start(4)
    assert asked == [4, 2, 4]  # ran dry: claims a full batch
    await start(3)
    assert asked == [4, 2, 4, 3]  # three free: claims three, never more than free
    subscription.dispose()
    assert ctx.free_capacity == 0 and len(held) == 4
