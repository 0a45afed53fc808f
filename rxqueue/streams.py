"""Bridges between Observables and async iterables, and the one claim loop.

* :func:`poll` is the claim loop every backend shares: it turns
  ``fetch_many(n)`` into a cold Observable that claims only what the worker
  can take, enters every claim in the worker's ledger, and between empty
  claims waits on a pluggable :class:`Doorbell` (an in-process
  :class:`Wakeup`, a cross-process socket, LISTEN/NOTIFY, a blocking pop).
* :func:`track` wraps an operator of ``backend.pipe`` so that a task it
  drops, or holds when it is disposed, goes back to the store at once.
* :func:`from_async_iterable` runs an async generator fetcher as an Observable,
  pulling the next item only when the worker has room, and closing the
  generator when the subscription is disposed.
* :func:`to_async_iterable` gives an Observable an ``async for`` face
  (a plain async generator, so aiostream operators apply to it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from rxqueue.demand import Demand
from rxqueue.task import Task

T = TypeVar("T")
FetchMany = Callable[[int], Awaitable[Sequence[Task[Any]]]]


class Doorbell(Protocol):
    """What the claim loop waits on between empty claims."""

    def notify(self) -> None:
        """Wake every current :meth:`wait` (and, for cross-process bells, other processes)."""

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if rung."""


class Wakeup:
    """An in-process doorbell: :meth:`notify` wakes every current :meth:`wait`.

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


# Claims start at this size and double while the worker keeps draining them,
# up to the worker's prefetch: a slow queue claims little, a busy one a lot.
_FIRST_CLAIM = 8


def poll(
    fetch_many: FetchMany,
    demand: Demand,
    *,
    interval: float = 0.05,
    max_interval: float = 1.0,
    batch_size: int | None = None,
    wakeup: Doorbell | None = None,
) -> Observable[Task[Any] | None]:
    """The claim loop: a cold Observable that claims with ``fetch_many(n)`` as demand allows.

    ``n`` never exceeds the worker's free capacity (nor ``batch_size``). An empty
    claim emits ``None`` (idle) and waits on ``wakeup`` for ``interval``,
    doubling up to ``max_interval`` while the store stays empty; a ring cuts
    the wait short. Disposal never interrupts a claim in progress: tasks it
    returns after disposal are :meth:`~rxqueue.demand.Demand.dropped`, so they
    go back to the store at once.
    """
    if interval <= 0 or max_interval < interval:
        raise ValueError(
            f"poll needs 0 < interval <= max_interval; got {interval=}, {max_interval=}"
        )
    doorbell: Doorbell = wakeup or Wakeup()

    def subscribe(
        observer: abc.ObserverBase[Task[Any] | None], _: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        disposed = False

        async def run() -> None:
            delay = interval
            while not disposed:
                # The claim size may adapt; claim again once half of it is free, so
                # the next claim runs in the store while the worker still has tasks
                # to start, instead of after it ran dry.
                limit = min(batch_size, demand.claim_size) if batch_size else demand.claim_size
                low_water = max(1, limit // 2)
                if demand.free_capacity < low_water:
                    await demand.wait_for_capacity(low_water)
                    if disposed:
                        return
                wanted = demand.reserve(limit)
                if wanted == 0:
                    continue
                try:
                    tasks = await fetch_many(wanted)
                except BaseException:
                    demand.claimed(wanted, ())
                    raise
                demand.claimed(wanted, tasks)
                if disposed:
                    demand.dropped(tasks)  # nobody downstream will take them
                    return
                if tasks:
                    delay = interval
                    on_next = observer.on_next
                    for index, task in enumerate(tasks):
                        if disposed:  # an error downstream ended the subscription
                            demand.dropped(tasks[index:])
                            return
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
            demand.wake()
            doorbell.notify()

        return Disposable(dispose)

    return reactivex.create(subscribe)


# --- operators in a backend's pipe ------------------------------------------------------


def _tasks(item: Any) -> Iterator[Task[Any]]:
    if isinstance(item, Task):
        yield item
    elif isinstance(item, list | tuple):
        for element in item:
            if isinstance(element, Task):
                yield element


Operator = Callable[[Observable[Any]], Observable[Any]]


def track(operator: Operator, demand: Demand) -> Operator:
    """``operator``, watched so that no claimed task is stranded inside it.

    Tasks that went in and have not come out when the operator's subscription
    is disposed (``ops.retry`` resubscribing, the worker stopping) are dropped
    to the ledger, which releases them. An operator not marked
    :func:`rxqueue.ops.queue_safe` (``reactivex.operators.filter``, ``take``,
    ...) must pass each task on at once: a task it did not emit before
    ``on_next`` returned is taken as dropped and released at once.
    """
    synchronous = not getattr(operator, "queue_safe", False)

    def tracked(source: Observable[Any]) -> Observable[Any]:
        def subscribe(
            observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            inside: dict[str, Task[Any]] = {}

            def feed(inner: abc.ObserverBase[Any], at: abc.SchedulerBase | None = None) -> Any:
                def on_next(item: Any) -> None:
                    entered = list(_tasks(item))
                    for task in entered:
                        inside[task.id] = task
                    inner.on_next(item)
                    if synchronous and entered:
                        lost = [task for task in entered if inside.pop(task.id, None)]
                        if lost:
                            demand.dropped(lost)

                return source.subscribe(
                    on_next, inner.on_error, inner.on_completed, scheduler=at
                )

            def on_next_out(item: Any) -> None:
                for task in _tasks(item):
                    inside.pop(task.id, None)
                observer.on_next(item)

            subscription = operator(reactivex.create(feed)).subscribe(
                on_next_out, observer.on_error, observer.on_completed, scheduler=scheduler
            )

            def dispose() -> None:
                subscription.dispose()
                if inside:
                    held = list(inside.values())
                    inside.clear()
                    demand.dropped(held)

            return Disposable(dispose)

        return reactivex.create(subscribe)

    return tracked


# --- async iterables --------------------------------------------------------------------


def from_async_iterable(
    source: AsyncIterable[T] | Callable[[], AsyncIterable[T]],
    demand: Demand | None = None,
    *,
    grace: float = 5.0,
) -> Observable[T]:
    """Run an async iterable as a cold Observable.

    ``source`` is an async iterable, or a function that makes one: with a
    function, every subscription (``ops.retry`` resubscribes after an error)
    gets a fresh iterator; an async generator object can be iterated once,
    so subscribing to it twice raises a clear error instead of completing
    with nothing. With a ``demand``, the next item is pulled only while the
    worker has free capacity, and each task pulled is entered in the ledger.
    Disposal lets a pull in progress finish (up to ``grace`` seconds), so a
    task the generator already claimed is released instead of vanishing;
    then the generator is closed. An exception in the generator becomes
    ``on_error``; exhausting it becomes ``on_completed``.
    """
    subscriptions = 0

    def subscribe(
        observer: abc.ObserverBase[T], _: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        nonlocal subscriptions
        subscriptions += 1
        if isinstance(source, AsyncIterable):
            if subscriptions > 1 and isinstance(source, AsyncIterator):
                observer.on_error(
                    RuntimeError(
                        "this fetcher is an async generator that was already iterated; "
                        "an Observable may be subscribed again (ops.retry does), so make "
                        "the fetcher return a new generator each time, or pass a "
                        "function that makes one"
                    )
                )
                return Disposable()
            iterator = aiter(source)
        else:
            iterator = aiter(source())
        disposed = False
        pulling = False

        async def pull() -> T:
            nonlocal pulling
            if demand is None:
                return await anext(iterator)
            while demand.free_capacity <= 0:
                await demand.wait_for_capacity()
            reserved = demand.reserve(1)
            pulling = True
            try:
                item = await anext(iterator)
            except BaseException:
                demand.claimed(reserved, ())
                raise
            finally:
                pulling = False
            claimed = (item,) if isinstance(item, Task) else ()
            demand.claimed(reserved, claimed)
            if disposed:
                demand.dropped(claimed)
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
