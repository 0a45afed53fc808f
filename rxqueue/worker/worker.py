"""The worker: one long-lived fetcher subscription, N consumer coroutines.

Rx carries the stream, asyncio carries the jobs. The fetcher's observer puts
tasks (or batches from ``ops.batch``) into a local buffer; a fixed pool of
consumers drains it through the composed handler pipeline; outcomes go to
the acker in batches. Per task there is no subscription, no created asyncio
task and no store round trip of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from reactivex import Observable
from reactivex.abc import DisposableBase
from reactivex.disposable import Disposable
from reactivex.scheduler.eventloop import AsyncIOScheduler
from reactivex.subject import Subject

from rxqueue.backends.base import Backend
from rxqueue.backoff import constant
from rxqueue.errors import BackendError, CodecError, WorkerError
from rxqueue.streams import ObservableIterator, to_async_iterable
from rxqueue.task import Done, Outcome, Retry, Started, Task, Update
from rxqueue.worker import events as ev
from rxqueue.worker.context import TaskContext, WorkerContext
from rxqueue.worker.handler import HandlerSpec
from rxqueue.worker.layers import Layer, Next, compose, describe, failure_outcome

Item = Task[Any] | list[Task[Any]]
_R = TypeVar("_R")


@types.coroutine
def _drive(coro: Coroutine[Any, Any, _R], pending: Any) -> Generator[Any, None, _R]:
    """Finish a coroutine that was started with ``send(None)`` and yielded ``pending``.

    Equivalent to awaiting it from that point: results, exceptions and
    cancellation pass through unchanged.
    """
    while True:
        try:
            yield pending
        except BaseException as exc:
            step: Callable[[Any], Any] = coro.throw
            value: Any = exc
        else:
            step, value = coro.send, None
        try:
            pending = step(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    """How a worker runs; ``WorkerBuilder`` fills it in and checks it."""

    concurrency: int = 1
    prefetch: int = 1  # the most claimed-but-unstarted tasks held
    shutdown_timeout: float = 30.0
    heartbeat_interval: float = 10.0
    ack_batch: int = 256  # flush outcomes every this many tasks...
    ack_interval: float = 0.005  # ...or this many seconds
    idle_horizon: float = 60.0  # run_until_idle waits for tasks due this soon


_DONE = Done()  # shared by every handler that returns None


def _interrupted(task: Task[Any], now: float) -> Outcome:
    """An attempt cut short by a stop past the shutdown timeout: it counts, and the
    task runs again at once unless that was its last attempt."""
    return failure_outcome(task, WorkerStopped(), now=now, backoff=_AT_ONCE)


class WorkerStopped(Exception):
    """The worker stopped during the attempt."""

    def __str__(self) -> str:
        return "the worker stopped during the attempt"


_AT_ONCE = constant(0.0)


def stop_on_signals(
    loop: asyncio.AbstractEventLoop, stop: Callable[[], None]
) -> Callable[[], None]:
    """Call ``stop`` on SIGINT or SIGTERM (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass

    def undo() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return undo


def _nothing() -> None:
    pass


class Worker:
    """Runs a handler over a backend's fetcher. Build one with ``WorkerBuilder``."""

    def __init__(
        self,
        name: str,
        backend: Backend,
        handler: HandlerSpec,
        settings: WorkerSettings,
        *,
        layers: Sequence[Layer] = (),
        data: dict[type, Any] | None = None,
    ) -> None:
        self.name = name
        self.backend = backend
        self.handler = handler
        self.settings = settings
        self.clock = backend.clock
        self._data = dict(data or {})
        self._pipeline: Next = compose(layers, self._invoke)
        self._events: Subject[ev.Event] = Subject()
        self._running = False
        self._stop_requested: asyncio.Event | None = None

    # --- public face -------------------------------------------------------------------

    @property
    def events(self) -> Observable[ev.Event]:
        """Hot Observable of :mod:`rxqueue.worker.events` records."""
        return self._events

    def iter_events(self, *, maxsize: int = 10_000) -> ObservableIterator[ev.Event]:
        """The events as an async iterator: ``async for event in worker.iter_events()``.

        Subscribes at once, so no event after this call is missed; holds at most
        ``maxsize`` unread events (the oldest are dropped first).
        """
        return to_async_iterable(self._events, maxsize=maxsize)

    @property
    def is_running(self) -> bool:
        return self._running

    def stop(self) -> None:
        """Ask a running worker to stop: no new claims; running handlers may finish."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def run(self, *, handle_signals: bool = True) -> ev.RunSummary:
        """Run until :meth:`stop`, SIGINT/SIGTERM, or the fetcher completes."""
        return await _Run(self, until_idle=False, handle_signals=handle_signals).execute()

    async def run_until_idle(self) -> ev.RunSummary:
        """Run until nothing is ready, in flight, or due within ``idle_horizon`` seconds."""
        return await _Run(self, until_idle=True, handle_signals=False).execute()

    def __repr__(self) -> str:
        return f"Worker({self.name!r}, backend={self.backend!r})"

    # --- the innermost call ------------------------------------------------------------

    async def _invoke(self, task: Task[Any], ctx: TaskContext) -> Outcome:
        args = self.handler.decode(task)
        result = await self.handler.call(args, ctx)
        return _DONE if result is None else Done(result)

    def _emit(self, event: ev.Event) -> None:
        self._events.on_next(event)

    @property
    def _observed(self) -> bool:
        return bool(self._events.observers)


class _Run:
    """The state of one ``run``; a fresh one per call keeps runs independent."""

    def __init__(self, worker: Worker, *, until_idle: bool, handle_signals: bool) -> None:
        self.worker = worker
        self.until_idle = until_idle
        self.handle_signals = handle_signals
        self.buffer: deque[Item] = deque()
        self.idle_consumers: deque[asyncio.Future[None]] = deque()
        self.runnable = 0  # consumers awake and not suspended in a handler
        self.in_flight = 0
        self.all_idle: asyncio.Event | None = None  # made when a stop waits for handlers
        self.stop = asyncio.Event()
        self.fetcher_done = False
        self.fetcher_error: BaseException | None = None
        self.idle_marker = False
        self.idle_check: asyncio.Task[None] | None = None
        self.updates: list[tuple[Task[Any], Update]] = []
        self.started: dict[str, tuple[Task[Any], float]] = {}
        self.flush_now = asyncio.Event()
        self.flush_timer: asyncio.TimerHandle | None = None
        self.done = self.failed = self.retried = self.killed = self.released = 0
        self.ctx = WorkerContext(
            worker.name,
            concurrency=worker.settings.concurrency,
            prefetch=worker.settings.prefetch,
            clock=worker.clock,
            data=worker._data,
        )

    # --- lifecycle ----------------------------------------------------------------

    async def execute(self) -> ev.RunSummary:
        worker, ctx = self.worker, self.ctx
        if worker._running:
            raise WorkerError(f"worker {worker.name!r} is already running")
        worker._running = True
        worker._stop_requested = self.stop
        loop = asyncio.get_running_loop()
        began = loop.time()
        await worker.backend.register_worker(ctx)
        if worker._observed:
            worker._emit(ev.Started(worker.name, worker.clock()))
        consumers = [loop.create_task(self._consume()) for _ in range(worker.settings.concurrency)]
        helpers = [loop.create_task(self._ack_loop()), loop.create_task(self._heartbeat_loop())]
        undo_signals = stop_on_signals(loop, self.stop.set) if self.handle_signals else _nothing
        subscription: DisposableBase = Disposable()
        try:
            subscription = worker.backend.fetcher(ctx).subscribe(
                on_next=self._on_next,
                on_error=self._on_error,
                on_completed=self._on_completed,
                scheduler=AsyncIOScheduler(loop),
            )
            await self.stop.wait()
        finally:
            undo_signals()
            ctx.stopping = True
            subscription.dispose()
            await self._shutdown(consumers)
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._flush()
            with contextlib.suppress(Exception):
                await worker.backend.unregister_worker(ctx)
            worker._running = False
            worker._stop_requested = None
        summary = ev.RunSummary(
            done=self.done,
            failed=self.failed,
            retried=self.retried,
            killed=self.killed,
            elapsed=loop.time() - began,
            released=self.released,
        )
        if worker._observed:
            worker._emit(ev.Stopped(worker.name, worker.clock(), summary))
        if self.fetcher_error is not None:
            raise WorkerError(
                f"worker {worker.name!r} stopped: its fetcher failed with "
                f"{describe(self.fetcher_error)}. Pipe the backend through ops.retry(...) "
                "to resubscribe after errors."
            ) from self.fetcher_error
        return summary

    async def _shutdown(self, consumers: list[asyncio.Task[None]]) -> None:
        ctx = self.ctx
        # Claims in progress finish into the ledger; then unstarted tasks go back at once.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.worker.settings.shutdown_timeout):
                await ctx.wait_fetches_done()
        unstarted: list[Task[Any]] = list(ctx.in_transit.values())
        ctx.in_transit.clear()
        while self.buffer:
            item = self.buffer.popleft()
            unstarted.extend(item if isinstance(item, list) else (item,))
        ctx.buffered = 0
        if unstarted:
            await self._flush()
            try:
                await self.worker.backend.release(unstarted, ctx)
                self.released += len(unstarted)
            except Exception as exc:  # leases bring them back; never lose the stop
                self._report_ack_error(exc, len(unstarted))
        if self.in_flight:
            self.all_idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.worker.settings.shutdown_timeout):
                    await self.all_idle.wait()
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)

    # --- the fetcher's observer ---------------------------------------------------------

    def _on_next(self, item: Item | None) -> None:
        if item is None:
            self.idle_marker = True
            if self.worker._observed:
                self.worker._emit(ev.Idle(self.worker.name, self.worker.clock()))
            self._maybe_idle()
            return
        in_transit = self.ctx.in_transit
        if isinstance(item, list):
            if not item:
                return
            for task in item:
                in_transit.pop(task.id, None)
            self.ctx.buffered += len(item)
        else:
            in_transit.pop(item.id, None)
            self.ctx.buffered += 1
        self.idle_marker = False
        self.buffer.append(item)
        if self.runnable <= 0 and not self.ctx.stopping:
            self._wake_consumer()

    def _on_error(self, error: Exception) -> None:
        self.fetcher_error = error
        if self.worker._observed:
            self.worker._emit(ev.FetcherError(self.worker.name, describe(error)))
        self.stop.set()

    def _on_completed(self) -> None:
        self.fetcher_done = True
        self._maybe_idle()

    # --- consumers ------------------------------------------------------------------
    #
    # Exactly one consumer is kept runnable while the buffer holds items; another
    # is woken only when a running handler actually suspends (seen by starting its
    # coroutine eagerly). A fast handler thus drains a whole batch in one consumer
    # with no wake-ups, and slow ones fan out to `concurrency` consumers.

    def _wake_consumer(self) -> None:
        idle = self.idle_consumers
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                self.runnable += 1
                waiter.set_result(None)
                return

    async def _consume(self) -> None:
        # The single-task path is written out here, not split into helper
        # coroutines: each extra frame costs ~0.3 us on a ~7 us per-task budget.
        buffer, ctx, worker = self.buffer, self.ctx, self.worker
        loop, clock, pipeline, started = (
            asyncio.get_running_loop(),
            worker.clock,
            worker._pipeline,
            self.started,
        )
        self.runnable += 1
        while True:
            if not buffer or ctx.stopping:  # once stopping, unstarted tasks go back
                self.runnable -= 1
                waiter = loop.create_future()
                self.idle_consumers.append(waiter)
                await waiter
                continue
            item = buffer.popleft()
            self.in_flight += 1
            try:
                if isinstance(item, list):
                    ctx.buffered -= len(item)
                    ctx.capacity_changed()
                    await self._run_batch(item)
                    continue
                ctx.buffered -= 1
                ctx.capacity_changed()
                started_at = clock()
                started[item.id] = (item, started_at)
                try:
                    step = pipeline(item, TaskContext(item, ctx))
                    if type(step) is types.CoroutineType:
                        try:
                            pending = step.send(None)
                        except StopIteration as stop:
                            outcome: Outcome = stop.value
                        else:
                            outcome = await self._suspended(step, pending)
                    else:
                        outcome = await step
                except asyncio.CancelledError:
                    # Stopping past the shutdown timeout: the attempt ends here.
                    self._record(item, _interrupted(item, clock()), started_at)
                    raise
                except Exception as error:
                    outcome = failure_outcome(item, error, now=clock())
                self._record(item, outcome, started_at)
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    if self.all_idle is not None:
                        self.all_idle.set()
                    if not buffer:
                        self._maybe_idle()

    async def _suspended(self, coro: Coroutine[Any, Any, _R], pending: Any) -> _R:
        """Finish a handler that suspended; meanwhile another consumer may take over."""
        self.runnable -= 1
        if self.buffer and self.runnable <= 0:
            self._wake_consumer()
        self._flush_soon()  # a slow task shows as Running even if nothing else finishes
        try:
            return await _drive(coro, pending)
        finally:
            self.runnable += 1

    async def _attempt(self, step: Awaitable[_R]) -> _R:
        """Run ``step`` to its end, eagerly; see :meth:`_suspended`."""
        if not isinstance(step, types.CoroutineType):
            return await step
        coro: Coroutine[Any, Any, _R] = step
        try:
            pending = coro.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        return await self._suspended(coro, pending)

    async def _run_batch(self, tasks: list[Task[Any]]) -> None:
        worker, spec = self.worker, self.worker.handler
        started_at = worker.clock()
        good: list[Task[Any]] = []
        payloads: list[Any] = []
        for task in tasks:
            try:
                payloads.append(spec.decode(task, spec.convert_item))
                good.append(task)
            except CodecError as error:
                self._record(task, failure_outcome(task, error, now=started_at), started_at)
        if not good:
            return
        for task in good:
            self.started[task.id] = (task, started_at)
        try:
            result = await self._attempt(spec.call(payloads, TaskContext(good[0], self.ctx)))
        except asyncio.CancelledError:
            for task in good:
                self._record(task, _interrupted(task, worker.clock()), started_at)
            raise
        except Exception as error:
            now = worker.clock()
            for task in good:
                self._record(task, failure_outcome(task, error, now=now), started_at)
            return
        for task in good:
            self._record(task, Done(result), started_at)

    def _record(self, task: Task[Any], outcome: Outcome, started_at: float) -> None:
        self.started.pop(task.id, None)
        self.updates.append((task, outcome))
        if type(outcome) is Done:
            self.done += 1
        elif type(outcome) is Retry:
            self.failed += 1
            self.retried += 1
        else:
            self.failed += 1
            self.killed += 1
        if len(self.updates) >= self.worker.settings.ack_batch:
            self.flush_now.set()
        else:
            self._flush_soon()
        if self.worker._observed:
            self._emit_outcome(task, outcome, started_at)

    def _flush_soon(self) -> None:
        """Flush within ``ack_interval``: one timer per flush, not per task."""
        if self.flush_timer is None:
            self.flush_timer = asyncio.get_running_loop().call_later(
                self.worker.settings.ack_interval, self.flush_now.set
            )

    def _emit_outcome(self, task: Task[Any], outcome: Outcome, started_at: float) -> None:
        worker, name, attempt = self.worker, self.worker.name, task.attempts + 1
        now = worker.clock()
        if isinstance(outcome, Done):
            enqueued = max(task.created_at, task.run_at)
            worker._emit(ev.Succeeded(name, task.id, attempt, enqueued, started_at, now))
            return
        worker._emit(ev.Failed(name, task.id, attempt, outcome.error, started_at, now))
        if isinstance(outcome, Retry):
            worker._emit(ev.Retrying(name, task.id, attempt, outcome.at, outcome.error))
        else:
            worker._emit(ev.Killed(name, task.id, attempt, outcome.error))

    # --- acker ---------------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        while True:
            await self.flush_now.wait()
            await self._flush()

    async def _flush(self) -> None:
        self.flush_now.clear()
        if self.flush_timer is not None:
            self.flush_timer.cancel()
            self.flush_timer = None
        batch = self.updates
        if self.started:
            # Tasks still running at flush time are marked Running, once.
            batch = [(task, Started(at)) for task, at in self.started.values()] + batch
            self.started.clear()
        if not batch:
            return
        self.updates = []
        for attempt in range(3):
            try:
                await self.worker.backend.report(batch, self.ctx)
                return
            except Exception as exc:
                if attempt == 2 or not isinstance(exc, BackendError):
                    self._report_ack_error(exc, len(batch))
                    return
                await asyncio.sleep(0.05 * 2**attempt)

    def _report_ack_error(self, error: BaseException, count: int) -> None:
        if self.worker._observed:
            self.worker._emit(ev.AckError(self.worker.name, describe(error), count))

    async def _heartbeat_loop(self) -> None:
        backend, ctx = self.worker.backend, self.ctx
        while True:
            await asyncio.sleep(self.worker.settings.heartbeat_interval)
            try:
                await backend.heartbeat(ctx)
                await backend.reclaim()
            except Exception as exc:  # a missed beat is survivable; the lease is long
                self._report_ack_error(exc, 0)

    # --- idleness ----------------------------------------------------------------------

    def _maybe_idle(self) -> None:
        if self.buffer or self.in_flight or self.ctx.in_transit:
            return
        if self.fetcher_done:
            self.stop.set()
            return
        if self.until_idle and self.idle_marker and self.idle_check is None:
            self.idle_check = asyncio.get_running_loop().create_task(self._check_idle())

    async def _check_idle(self) -> None:
        try:
            await self._flush()
            if self.buffer or self.in_flight or self.ctx.in_transit or not self.idle_marker:
                return
            has_work = await self.worker.backend.has_work(self.worker.settings.idle_horizon)
            if not has_work and not self.buffer and not self.in_flight:
                self.stop.set()
        finally:
            self.idle_check = None
