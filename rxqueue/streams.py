"""Bridges between Observables and async iterables, and the demand-driven poller.

* :func:`poll` turns ``fetch_many(n)`` into a cold Observable that claims only
  what the worker can take, backs off while the store is empty and wakes at
  once on :meth:`Wakeup.notify`.
* :func:`from_async_iterable` runs an async generator fetcher as an Observable,
  pulling the next item only when the worker has room, and closing the
  generator when the subscription is disposed.
* :func:`to_async_iterable` gives an Observable an ``async for`` face
  (a plain async generator, so aiostream operators apply to it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from rxqueue.task import Task
from rxqueue.worker.context import WorkerContext

T = TypeVar("T")
FetchMany = Callable[[int], Awaitable[Sequence[Task[Any]]]]


class Wakeup:
    """A broadcast doorbell: :meth:`notify` wakes every current :meth:`wait`.

    Backends ring it when a task is pushed in this process, so an idle poller
    claims it without waiting out its interval.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if notified."""
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
                return True
        return False


def poll(
    fetch_many: FetchMany,
    ctx: WorkerContext,
    *,
    interval: float = 0.05,
    max_interval: float = 1.0,
    batch_size: int | None = None,
    wakeup: Wakeup | None = None,
) -> Observable[Task[Any] | None]:
    """A cold Observable that claims tasks with ``fetch_many(n)`` as demand allows.

    ``n`` never exceeds the worker's free capacity (nor ``batch_size``). An empty
    claim emits ``None`` (idle) and sleeps ``interval``, doubling up to
    ``max_interval`` while the store stays empty; ``wakeup.notify()`` cuts the
    sleep short. Disposal never interrupts a claim in progress: its tasks land
    in the worker's ledger, from which the worker releases them.
    """
    if interval <= 0 or max_interval < interval:
        raise ValueError(
            f"poll needs 0 < interval <= max_interval; got {interval=}, {max_interval=}"
        )
    doorbell = wakeup or Wakeup()
    limit = batch_size or max(1, ctx.prefetch)
    # Claim again once half a batch is free: the next claim runs in the store
    # while the worker still has tasks to start, instead of after it ran dry.
    low_water = max(1, limit // 2)

    def subscribe(
        observer: abc.ObserverBase[Task[Any] | None], _: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        disposed = False

        async def run() -> None:
            delay = interval
            while not disposed:
                if ctx.free_capacity < low_water:
                    await ctx.wait_for_capacity(low_water)
                wanted = ctx.reserve(limit)
                if wanted == 0:
                    continue
                try:
                    tasks = await fetch_many(wanted)
                except BaseException:
                    ctx.claimed(wanted, ())
                    raise
                ctx.claimed(wanted, tasks)
                if disposed:
                    return  # the ledger holds them; the worker releases them
                if tasks:
                    delay = interval
                    on_next = observer.on_next
                    for task in tasks:
                        on_next(task)
                    continue
                observer.on_next(None)
                notified = await doorbell.wait(delay)
                delay = interval if notified else min(max_interval, delay * 2)

        def done(future: asyncio.Future[None]) -> None:
            if future.cancelled() or disposed:
                return
            error = future.exception()
            if isinstance(error, Exception):
                observer.on_error(error)

        runner = asyncio.get_running_loop().create_task(run())
        runner.add_done_callback(done)

        def dispose() -> None:
            # Wake the loop wherever it waits; it sees `disposed` and ends. A claim
            # in progress is never interrupted (its tasks must reach the ledger).
            nonlocal disposed
            disposed = True
            ctx.wake()
            doorbell.notify()

        return Disposable(dispose)

    return reactivex.create(subscribe)


def from_async_iterable(
    source: AsyncIterable[T], ctx: WorkerContext | None = None, *, grace: float = 5.0
) -> Observable[T]:
    """Run an async iterable as a cold Observable.

    With a ``ctx``, the next item is pulled only while the worker has free
    capacity, and each task pulled is entered in the worker's ledger. Disposal
    lets a pull in progress finish (up to ``grace`` seconds) so that a task the
    generator already claimed reaches the ledger instead of vanishing; then the
    generator is closed. An exception in the generator becomes ``on_error``;
    exhausting it becomes ``on_completed``.
    """

    def subscribe(
        observer: abc.ObserverBase[T], _: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        iterator = aiter(source)
        disposed = False
        pulling = False

        async def pull() -> T:
            nonlocal pulling
            if ctx is None:
                return await anext(iterator)
            while ctx.free_capacity <= 0:
                await ctx.wait_for_capacity()
            reserved = ctx.reserve(1)
            pulling = True
            try:
                item = await anext(iterator)
            except BaseException:
                ctx.claimed(reserved, ())
                raise
            finally:
                pulling = False
            ctx.claimed(reserved, (item,) if isinstance(item, Task) else ())
            return item

        async def pump() -> None:
            try:
                while not disposed:
                    try:
                        item = await pull()
                    except StopAsyncIteration:
                        observer.on_completed()
                        return
                    if not disposed:
                        observer.on_next(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not disposed:
                    observer.on_error(exc)
            finally:
                closer = getattr(iterator, "aclose", None)
                if closer is not None:
                    with contextlib.suppress(Exception):
                        await closer()

        loop = asyncio.get_running_loop()
        runner = loop.create_task(pump())

        def dispose() -> None:
            nonlocal disposed
            disposed = True
            if pulling:
                loop.call_later(grace, runner.cancel)
            else:
                runner.cancel()

        return Disposable(dispose)

    return reactivex.create(subscribe)


def to_async_iterable(observable: Observable[T], *, maxsize: int = 0) -> ObservableIterator[T]:
    """``observable`` as an async iterator: ``async for item in to_async_iterable(obs)``.

    Subscribes at once, so nothing emitted after this call is missed. Close it
    (``await it.aclose()``, or ``contextlib.aclosing``) to dispose the
    subscription. aiostream operators take it as is
    (``aiostream.stream.map(to_async_iterable(obs), f)``). ``maxsize`` bounds
    the hand-over queue (0: unbounded); when full, the oldest item is dropped,
    so use it only for observation streams such as worker events, never tasks.
    """
    return ObservableIterator(observable, maxsize)


class ObservableIterator(AsyncIterator[T]):
    """The iterator :func:`to_async_iterable` returns."""

    def __init__(self, observable: Observable[T], maxsize: int) -> None:
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize)
        self._maxsize = maxsize
        self._closed = False
        self._subscription = observable.subscribe(
            on_next=lambda item: self._put(0, item),
            on_error=lambda error: self._put(1, error),
            on_completed=lambda: self._put(2, None),
        )

    def _put(self, kind: int, value: Any) -> None:
        if self._maxsize and self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait((kind, value))

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        kind, value = await self._queue.get()
        if kind == 0:
            return value  # type: ignore[no-any-return]
        self.close()
        if kind == 1:
            raise value
        raise StopAsyncIteration

    def close(self) -> None:
        self._closed = True
        self._subscription.dispose()

    async def aclose(self) -> None:
        self.close()
