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

from rxqueue.acks import AckBatch
from rxqueue.backends.base import Backend
from rxqueue.backends.sink import SinkObserver
from rxqueue.backoff import constant
from rxqueue.errors import BackendUnavailable, CodecError, WorkerError
from rxqueue.streams import ObservableIterator, to_async_iterable
from rxqueue.task import (
    Cancelled,
    Done,
    Killed,
    Outcome,
    Progress,
    Retry,
    Started,
    Task,
    TaskId,
    Update,
)
from rxqueue.worker import events as ev
from rxqueue.worker.context import TaskContext, WorkerContext
from rxqueue.worker.handler import HandlerSpec
from rxqueue.worker.layers import Layer, Next, compose, describe, failure_outcome
from rxqueue.worker.progress import ProgressBar, watch_progress

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
    window: int | None = None  # adaptive claims start here (None: claims fill prefetch)
    shutdown_timeout: float = 30.0
    heartbeat_interval: float = 10.0
    ack_batch: int = 256  # flush outcomes every this many tasks...
    ack_interval: float = 0.005  # ...or this many seconds
    idle_horizon: float = 60.0  # run_until_idle waits for tasks due this soon
    progress_interval: float = 0.25  # progress reports are written at most this often


_DONE = Done()  # shared by every handler that returns None


def _interrupted(task: Task[Any], now: float) -> Outcome:
    """An attempt cut short by a stop past the shutdown timeout: it counts, and the
    task runs again at once unless that was its last attempt."""
    return failure_outcome(task, WorkerStopped(), now=now, backoff=_AT_ONCE)


OutcomeListener = Callable[[Task[Any], Outcome, float, float], None]
"""``listener(task, outcome, started_at, finished_at)``: see :meth:`Worker.on_outcome`."""


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """A snapshot of a worker (:meth:`Worker.statistics`): attempts running now and
    tasks claimed but not started yet, and the outcomes the store has recorded in
    this run so far (as :class:`~rxqueue.worker.events.RunSummary` counts them);
    all 0 while the worker is not running."""

    running: bool
    in_flight: int
    buffered: int
    done: int = 0
    retried: int = 0
    killed: int = 0
    cancelled: int = 0


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
        sources: Sequence[Observable[Any]] = (),
        invoke: Next | None = None,
    ) -> None:
        self.name = name
        self.backend = backend
        self.handler = handler
        self.settings = settings
        self.clock = backend.clock
        self._data = dict(data or {})
        # Observables (rxqueue.sources) each run subscribes to the backend's sink.
        self.sources: tuple[Observable[Any], ...] = tuple(sources)
        # invoke: the innermost call when it is not the handler's (workflows' Router).
        self._pipeline: Next = compose(layers, invoke or self._invoke)
        self._batch_pipeline: Next = compose(layers, self._invoke_batch)
        self._events: Subject[ev.Event] = Subject()
        self._outcome_listeners: list[OutcomeListener] = []
        self._running = False
        self._stop_requested: asyncio.Event | None = None
        self._run: _Run | None = None

    # --- public face -------------------------------------------------------------------

    @property
    def events(self) -> Observable[ev.Event]:
        """Hot Observable of :mod:`rxqueue.worker.events` records."""
        return self._events

    def on_outcome(self, listener: OutcomeListener) -> Callable[[], None]:
        """Call ``listener(task, outcome, started_at, finished_at)`` for every attempt's
        outcome, as it is recorded; returns a function that removes it.

        The cheap seam for per-task accounting (metrics): a plain call on the
        worker's hot path, where :attr:`events` builds an event object per step.
        ``started_at`` is when the attempt began (the record time for an attempt
        that never started); keep listeners short, they run on the event loop.
        """
        self._outcome_listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._outcome_listeners.remove(listener)

        return remove

    def iter_events(self, *, maxsize: int = 10_000) -> ObservableIterator[ev.Event]:
        """The events as an async iterator: ``async for event in worker.iter_events()``.

        Subscribes at once, so no event after this call is missed; holds at most
        ``maxsize`` unread events (the oldest are dropped first).
        """
        return to_async_iterable(self._events, maxsize=maxsize)

    @property
    def is_running(self) -> bool:
        return self._running

    def statistics(self) -> WorkerStatistics:
        """What the current run holds, read without side effects (safe from any thread)."""
        run = self._run
        if run is None:
            return WorkerStatistics(running=False, in_flight=0, buffered=0)
        return WorkerStatistics(
            True, run.in_flight, run.ctx.buffered, run.done, run.retried, run.killed, run.cancelled
        )

    def stop(self) -> None:
        """Ask a running worker to stop: no new claims; running handlers may finish."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    def cancel(self, task_id: TaskId, reason: str = "cancelled by request") -> bool:
        """Cancel one running attempt in this worker: its handler sees ``CancelledError``
        at its next await and the task ends Killed with ``reason``; the worker and its
        other tasks go on. False if the task is not running here."""
        run = self._run
        return run is not None and run.cancel_attempt(task_id, reason)

    async def run(
        self, *, handle_signals: bool = True, progress: bool | ProgressBar | None = None
    ) -> ev.RunSummary:
        """Run until :meth:`stop`, SIGINT/SIGTERM, or the fetcher completes.

        ``progress``: show a progress bar (tqdm); None shows one only when someone
        watches (a terminal or a notebook), see :mod:`rxqueue.worker.progress`.
        """
        run = _Run(self, until_idle=False, handle_signals=handle_signals)
        return await self._watched(run, progress)

    async def run_until_idle(self, *, progress: bool | ProgressBar | None = None) -> ev.RunSummary:
        """Run until nothing is ready, in flight, or due within ``idle_horizon`` seconds.

        ``progress`` as for :meth:`run`; the bar's total is the count of ready tasks.
        """
        return await self._watched(_Run(self, until_idle=True, handle_signals=False), progress)

    async def _watched(self, run: _Run, progress: bool | ProgressBar | None) -> ev.RunSummary:
        watch = await watch_progress(self, progress, until_idle=run.until_idle)
        if watch is None:
            return await run.execute()
        summary = None
        try:
            summary = await run.execute()
        finally:
            watch.close(summary)
        return summary

    def __repr__(self) -> str:
        return f"Worker({self.name!r}, backend={self.backend!r})"

    # --- the innermost call ------------------------------------------------------------

    async def _invoke(self, task: Task[Any], ctx: TaskContext) -> Outcome:
        args = self.handler.decode(task)
        result = await self.handler.call(args, ctx)
        return _DONE if result is None else Done(result)

    async def _invoke_batch(self, task: Task[Any], ctx: TaskContext) -> Outcome:
        spec = self.handler
        payloads = [spec.decode(each, spec.convert_item) for each in ctx.tasks]
        result = await spec.call(payloads, ctx)
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
        self.ended = asyncio.Event()
        self.fetcher_done = False
        self.fetcher_error: BaseException | None = None
        self.interrupt: BaseException | None = None  # KeyboardInterrupt/SystemExit of a handler
        self.idle_marker = False
        self.deliveries = 0  # claims that brought tasks: an idle check spanning one is void
        self.idle_check: asyncio.Task[None] | None = None
        self.updates: list[tuple[Task[Any], Update]] = []
        self.started: dict[TaskId, tuple[Task[Any], float]] = {}
        self.progress: dict[TaskId, tuple[Task[Any], Progress]] = {}  # latest, unwritten
        self.progress_timer: asyncio.TimerHandle | None = None
        self.to_release: list[Task[Any]] = []  # dropped inside the pipe: back to the store
        self.revoked: set[TaskId] = set()  # killed in the store while buffered: never start
        # Asked to cancel while buffered: they end Cancelled without starting.
        self.cancel_unstarted: dict[TaskId, str] = {}
        # Per-attempt cancel scopes: which consumer runs each task, and pending requests.
        self.running: dict[TaskId, asyncio.Task[Any]] = {}
        self.cancel_requests: dict[TaskId, str] = {}
        self.flush_now = asyncio.Event()
        self.flush_lock = asyncio.Lock()
        self.flush_timer: asyncio.TimerHandle | None = None
        self.closing = False
        # What the store recorded (acks that succeeded), so the summary is the truth.
        self.done = self.retried = self.killed = self.cancelled = self.released = self.lost = 0
        self.ctx = WorkerContext(
            worker.name,
            concurrency=worker.settings.concurrency,
            prefetch=worker.settings.prefetch,
            window=worker.settings.window,
            clock=worker.clock,
            data=worker._data,
            on_dropped=self._dropped,
        )
        self.ctx.on_progress = self._progress

    # --- lifecycle ----------------------------------------------------------------

    async def execute(self) -> ev.RunSummary:
        worker = self.worker
        if worker._running:
            raise WorkerError(f"worker {worker.name!r} is already running")
        worker._running = True
        worker._stop_requested = self.stop
        worker._run = self
        try:
            summary = await self._execute()
        finally:
            worker._running = False
            worker._stop_requested = None
            worker._run = None
            self.ended.set()
        if self.interrupt is not None:
            raise self.interrupt
        if self.fetcher_error is not None:
            raise WorkerError(
                f"worker {worker.name!r} stopped: its fetcher failed with "
                f"{describe(self.fetcher_error)}. Pipe the backend through ops.retry(...) "
                "to resubscribe after errors."
            ) from self.fetcher_error
        return summary

    async def _execute(self) -> ev.RunSummary:
        worker, ctx, backend = self.worker, self.ctx, self.worker.backend
        loop = asyncio.get_running_loop()
        began = loop.time()
        await backend.open()
        await backend.register_worker(worker.name)
        detach = backend.attach(self._stop_and_wait)
        undo_revoked = backend.on_revoked(self._on_revoked)
        undo_cancel = backend.on_cancel(self._cancel_requested)
        if worker._observed:
            worker._emit(ev.Started(worker.name, worker.clock()))
        consumers = [loop.create_task(self._consume()) for _ in range(worker.settings.concurrency)]
        ack_loop = loop.create_task(self._ack_loop())
        heartbeat = loop.create_task(self._heartbeat_loop())
        undo_signals = stop_on_signals(loop, self.stop.set) if self.handle_signals else _nothing
        subscription: DisposableBase = Disposable()
        sink = backend.sink(on_error=self._on_source_error) if worker.sources else None
        feeds: list[DisposableBase] = []
        cancelled = False
        try:
            scheduler = AsyncIOScheduler(loop)
            feeds.extend(source.subscribe(sink, scheduler=scheduler) for source in worker.sources)
            subscription = backend.fetcher(ctx).subscribe(
                on_next=self._on_next,
                on_error=self._on_error,
                on_completed=self._on_completed,
                scheduler=scheduler,
            )
            try:
                await self.stop.wait()
            except asyncio.CancelledError:
                cancelled = True  # a cancelled run stops as gracefully as a stopped one
        finally:
            undo_signals()
            undo_revoked()
            undo_cancel()
            ctx.stopping = True
            for feed in feeds:
                feed.dispose()
            subscription.dispose()
            if sink is not None:  # ticks already emitted are stored before the run ends
                await self._flush_sink(sink)
            await self._shutdown(consumers)
            heartbeat.cancel()
            # The ack loop is never cancelled mid-flush: it ends after a last, complete
            # flush, shielded so that a cancelled run still records every outcome.
            self.closing = True
            self.flush_now.set()
            await _shielded(ack_loop)
            await asyncio.gather(heartbeat, return_exceptions=True)
            with contextlib.suppress(Exception):
                await backend.unregister_worker(worker.name)
            detach()
        if cancelled:
            raise asyncio.CancelledError
        summary = ev.RunSummary(
            done=self.done,
            failed=self.retried + self.killed,
            retried=self.retried,
            killed=self.killed,
            cancelled=self.cancelled,
            elapsed=loop.time() - began,
            released=self.released,
            lost=self.lost,
        )
        if worker._observed:
            worker._emit(ev.Stopped(worker.name, worker.clock(), summary))
        return summary

    def _on_source_error(self, error: Exception) -> None:
        """A source failed or its task could not be stored: say so on the events stream."""
        if self.worker._observed:
            self.worker._emit(ev.SourceError(self.worker.name, describe(error)))

    async def _flush_sink(self, sink: SinkObserver) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.worker.settings.shutdown_timeout):
                await sink.flush()

    async def _stop_and_wait(self) -> None:
        """``backend.close()`` calls this: stop, and wait until the run has ended."""
        self.stop.set()
        if asyncio.current_task() in self.running.values():
            return  # closed from inside a handler: waiting would wait for ourselves
        await self.ended.wait()

    async def _shutdown(self, consumers: list[asyncio.Task[None]]) -> None:
        ctx = self.ctx
        # Claims in progress finish into the ledger; then unstarted tasks go back at once.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.worker.settings.shutdown_timeout):
                await ctx.wait_fetches_done()
        self.to_release.extend(ctx.in_transit.values())
        ctx.in_transit.clear()
        while self.buffer:
            item = self.buffer.popleft()
            self.to_release.extend(item if isinstance(item, list) else (item,))
        ctx.buffered = 0
        if self.to_release:
            await self._flush()
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
        ctx = self.ctx
        in_transit, dropped = ctx.in_transit, ctx.dropped_ids
        if isinstance(item, list):
            if dropped:
                item = [task for task in item if not _skip_dropped(dropped, task)]
            if not item:
                return
            for task in item:
                in_transit.pop(task.id, None)
            ctx.buffered += len(item)
        else:
            if dropped and _skip_dropped(dropped, item):
                return  # released already (an operator emitted it late)
            in_transit.pop(item.id, None)
            ctx.buffered += 1
        self.idle_marker = False
        self.deliveries += 1
        self.buffer.append(item)
        if self.runnable <= 0 and not ctx.stopping:
            self._wake_consumer()

    def _on_error(self, error: Exception) -> None:
        self.fetcher_error = error
        if self.worker._observed:
            self.worker._emit(ev.FetcherError(self.worker.name, describe(error)))
        self.stop.set()

    def _on_completed(self) -> None:
        self.fetcher_done = True
        self._maybe_idle()

    def _progress(self, task: Task[Any], progress: Progress) -> None:
        """``ctx.progress``: keep the latest per task; write it with a flush that
        comes anyway, or at most ``progress_interval`` from now."""
        if task.id not in self.running:
            return  # reported after its outcome: the outcome stands
        self.progress[task.id] = (task, progress)
        if self.progress_timer is None:
            self.progress_timer = asyncio.get_running_loop().call_later(
                self.worker.settings.progress_interval, self.flush_now.set
            )
        if self.worker._observed:
            self.worker._emit(
                ev.Progress(self.worker.name, task.id, progress.fraction, progress.note)
            )

    def _dropped(self, tasks: list[Task[Any]]) -> None:
        """The ledger's hook: claimed tasks left the pipe; release them at the next flush."""
        self.to_release.extend(tasks)
        self._flush_soon()

    def _held_unstarted(self) -> set[TaskId]:
        buffered = {
            task.id
            for item in self.buffer
            for task in (item if isinstance(item, list) else (item,))
        }
        return buffered | self.ctx.in_transit.keys()

    def _on_revoked(self, task_ids: list[TaskId]) -> None:
        """Tasks killed in the store: those claimed and not started here never start."""
        held = self._held_unstarted()
        self.revoked.update(task_id for task_id in task_ids if task_id in held)

    def _cancel_requested(self, requests: Sequence[tuple[TaskId, str]]) -> None:
        """Cancel requests (in-process at once, or from the heartbeat): a running
        attempt is cancelled; a task not started yet ends Cancelled without running."""
        held: set[TaskId] | None = None
        for task_id, reason in requests:
            self.ctx.cancelled.add(task_id)
            if self.cancel_attempt(task_id, reason):
                continue
            if held is None:
                held = self._held_unstarted()
            if task_id in held:
                self.cancel_unstarted[task_id] = reason
            else:
                self.ctx.cancelled.discard(task_id)  # not ours (any more)

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

    def cancel_attempt(self, task_id: TaskId, reason: str) -> bool:
        """Cancel the running attempt of ``task_id`` only: its handler sees
        ``CancelledError`` at its next await, the task ends Cancelled with ``reason``,
        and its consumer goes on. False if the task is not running here."""
        consumer = self.running.get(task_id)
        if consumer is None or task_id in self.cancel_requests:
            return consumer is not None
        self.ctx.cancelled.add(task_id)
        self.cancel_requests[task_id] = reason
        consumer.cancel()
        return True

    async def _consume(self) -> None:
        # The single-task path is written out here, not split into helper
        # coroutines: each extra frame costs ~0.3 us on a ~7 us per-task budget.
        buffer, ctx, worker = self.buffer, self.ctx, self.worker
        loop, clock, pipeline, started, running = (
            asyncio.get_running_loop(),
            worker.clock,
            worker._pipeline,
            self.started,
            self.running,
        )
        me = asyncio.current_task()
        assert me is not None
        self.runnable += 1
        while True:
            if not buffer or ctx.stopping:  # once stopping, unstarted tasks go back
                if self.updates and not self.in_flight:
                    # Nothing left to run: write outcomes now, not at the ack timer.
                    # They may release what runs next (a workflow's steps).
                    self.flush_now.set()
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
                if self.revoked and item.id in self.revoked:
                    self.revoked.discard(item.id)  # killed while buffered: it must not run
                    continue
                if self.cancel_unstarted and item.id in self.cancel_unstarted:
                    reason = self.cancel_unstarted.pop(item.id)
                    self._record(item, Cancelled(reason), clock())
                    continue
                started_at = clock()
                started[item.id] = (item, started_at)
                running[item.id] = me
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
                except asyncio.CancelledError as error:
                    outcome = self._cancelled(item, error, me, started_at)
                except (KeyboardInterrupt, SystemExit) as error:
                    outcome = self._interrupt(item, error)
                except (Exception, GeneratorExit) as error:
                    outcome = failure_outcome(item, error, now=clock())
                finally:
                    del running[item.id]
                if self.cancel_requests:
                    outcome = self._scope_ended(item, outcome, me)
                self._record(item, outcome, started_at)
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    if self.all_idle is not None:
                        self.all_idle.set()
                    if not buffer:
                        self._maybe_idle()

    def _cancelled(
        self, task: Task[Any], error: asyncio.CancelledError, me: asyncio.Task[Any], at: float
    ) -> Outcome:
        """A CancelledError out of an attempt: whose cancellation was it?"""
        reason = self.cancel_requests.pop(task.id, None)
        if reason is not None:  # this attempt's own cancel scope
            me.uncancel()
            return Cancelled(reason)
        if me.cancelling():
            # The worker is stopping past its shutdown timeout: the attempt ends here.
            self._record(task, _interrupted(task, self.worker.clock()), at)
            raise error
        # The handler raised CancelledError of its own: a failure of this task only.
        return failure_outcome(task, error, now=self.worker.clock())

    def _scope_ended(self, task: Task[Any], outcome: Outcome, me: asyncio.Task[Any]) -> Outcome:
        """A cancel requested as the attempt finished (or swallowed by the handler)."""
        reason = self.cancel_requests.pop(task.id, None)
        if reason is None:
            return outcome
        me.uncancel()
        return Cancelled(reason)

    def _interrupt(self, task: Task[Any], error: BaseException) -> Outcome:
        """KeyboardInterrupt/SystemExit from a handler: this attempt is interrupted and
        the worker stops gracefully; ``run`` raises the error once nothing is claimed."""
        if self.interrupt is None:
            self.interrupt = error
        self.stop.set()
        return _interrupted(task, self.worker.clock())

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
        """One call of a batch handler, through the same layers as single tasks."""
        worker, spec = self.worker, self.worker.handler
        started_at = worker.clock()
        if self.revoked or self.cancel_unstarted:
            kept = []
            for task in tasks:
                if task.id in self.revoked:
                    self.revoked.discard(task.id)
                elif task.id in self.cancel_unstarted:
                    reason = self.cancel_unstarted.pop(task.id)
                    self._record(task, Cancelled(reason), started_at)
                else:
                    kept.append(task)
            tasks = kept
        good: list[Task[Any]] = []
        for task in tasks:
            try:
                spec.decode(task, spec.convert_item)  # a bad payload fails alone
                good.append(task)
            except CodecError as error:
                self._record(task, failure_outcome(task, error, now=started_at), started_at)
        if not good:
            return
        me = asyncio.current_task()
        assert me is not None
        for task in good:
            self.started[task.id] = (task, started_at)
            self.running[task.id] = me
        first = good[0]
        outcomes: list[Outcome]
        try:
            outcome = await self._attempt(
                worker._batch_pipeline(first, TaskContext(first, self.ctx, good))
            )
            if type(outcome) is Done and outcome.result is not None:
                outcome = self._encoded(first, outcome)  # once for the whole batch
            outcomes = [_for_each(outcome, task) for task in good]
        except asyncio.CancelledError as error:
            outcomes = [self._cancelled(task, error, me, started_at) for task in good]
        except (KeyboardInterrupt, SystemExit) as error:
            outcomes = [self._interrupt(task, error) for task in good]
        except (Exception, GeneratorExit) as error:
            now = worker.clock()
            outcomes = [failure_outcome(task, error, now=now) for task in good]
        finally:
            for task in good:
                self.running.pop(task.id, None)
        for task, each in zip(good, outcomes, strict=True):
            if self.cancel_requests:
                each = self._scope_ended(task, each, me)
            self._record(task, each, started_at, encoded=True)

    def _record(
        self, task: Task[Any], outcome: Outcome, started_at: float, *, encoded: bool = False
    ) -> None:
        self.started.pop(task.id, None)
        if self.progress:
            self.progress.pop(task.id, None)  # the outcome supersedes it
        if self.ctx.cancelled:
            self.ctx.cancelled.discard(task.id)
        if type(outcome) is Done and outcome.result is not None and not encoded:
            outcome = self._encoded(task, outcome)
        self.updates.append((task, outcome))
        if len(self.updates) >= self.worker.settings.ack_batch:
            self.flush_now.set()
        else:
            self._flush_soon()
        worker = self.worker
        if worker._outcome_listeners:
            finished_at = worker.clock()
            for listener in worker._outcome_listeners:
                listener(task, outcome, started_at, finished_at)
        if worker._observed:
            self._emit_outcome(task, outcome, started_at)

    def _encoded(self, task: Task[Any], outcome: Done) -> Outcome:
        """Results follow the codec on every backend; one it cannot encode fails the attempt."""
        try:
            encoded = self.worker.handler.codec.encode(outcome.result)
            return Done(encoded, outcome.spawn, outcome.join)
        except CodecError as error:
            reason = CodecError(f"the handler's result cannot be stored: {error}")
            return failure_outcome(task, reason, now=self.worker.clock())

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
        if isinstance(outcome, Cancelled):
            worker._emit(ev.Cancelled(name, task.id, attempt, outcome.reason))
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
            if self.closing and not (
                self.updates or self.started or self.to_release or self.progress
            ):
                return

    async def _flush(self) -> int:
        """Write what is pending; returns how many updates and releases were sent."""
        async with self.flush_lock:
            self.flush_now.clear()
            if self.flush_timer is not None:
                self.flush_timer.cancel()
                self.flush_timer = None
            sent = len(self.to_release)
            if self.to_release:
                await self._release()
                # What went back may be claimable: only a later empty claim means idle.
                self.idle_marker = False
            updates = self.updates
            if self.progress:
                updates = [*self.progress.values(), *updates]
                self.progress.clear()
            if self.progress_timer is not None:
                self.progress_timer.cancel()
                self.progress_timer = None
            if self.started:
                # Tasks still running at flush time are marked Running, once.
                updates = [(task, Started(at)) for task, at in self.started.values()] + updates
                self.started.clear()
            if not updates:
                return sent
            self.updates = []
            for chunk in _one_update_per_task(updates):
                batch = AckBatch.of(self.worker.name, chunk)
                refused = await self._apply(batch)
                if refused is not None:
                    self._count(batch, refused)
                if batch.retried:
                    self.idle_marker = False
            return sent + len(updates)

    async def _apply(self, batch: AckBatch) -> Sequence[TaskId] | None:
        """Report the batch; retry only transient errors. None: it was not recorded."""
        backend = self.worker.backend
        for attempt in range(4):
            try:
                return await backend.report(batch)
            except BackendUnavailable as exc:
                if attempt == 3:
                    self._report_ack_error(exc, batch.outcomes)
            except Exception as exc:  # permanent: trying again cannot help
                self._report_ack_error(exc, batch.outcomes)
                break
            await asyncio.sleep(0.05 * 2**attempt)
        self.lost += batch.outcomes
        return None

    def _count(self, batch: AckBatch, refused: Sequence[TaskId]) -> None:
        """Count what the store recorded; a refused outcome is lost, and said so."""
        lost = set(refused)
        if lost:
            for task in batch.started:
                if task.id in lost:
                    self._emit_lease_lost(task.id, finished=False)
        self.done += self._recorded(batch.done, lost)
        self.retried += self._recorded(batch.retried, lost)
        self.killed += self._recorded(batch.killed, lost)
        self.cancelled += self._recorded(batch.cancelled, lost)

    def _recorded(self, entries: Sequence[tuple[Task[Any], Any]], lost: set[TaskId]) -> int:
        if not lost:
            return len(entries)
        recorded = 0
        for task, _ in entries:
            if task.id in lost:
                self.lost += 1
                self._emit_lease_lost(task.id, finished=True)
            else:
                recorded += 1
        return recorded

    def _emit_lease_lost(self, task_id: TaskId, *, finished: bool) -> None:
        if self.worker._observed:
            self.worker._emit(ev.LeaseLost(self.worker.name, task_id, finished))

    async def _release(self) -> None:
        tasks, self.to_release = self.to_release, []
        try:
            await self.worker.backend.release(tasks, self.worker.name)
            self.released += len(tasks)
        except Exception as exc:  # leases bring them back; never lose the stop
            self._report_ack_error(exc, len(tasks))

    def _report_ack_error(self, error: BaseException, count: int) -> None:
        if self.worker._observed:
            self.worker._emit(ev.AckError(self.worker.name, describe(error), count))

    async def _heartbeat_loop(self) -> None:
        backend, name = self.worker.backend, self.worker.name
        while True:
            await asyncio.sleep(self.worker.settings.heartbeat_interval)
            try:
                # The heartbeat carries cancel requests for the tasks this worker holds.
                requests = await backend.heartbeat(name)
                if requests:
                    self._cancel_requested(requests)
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
        seen = self.deliveries  # a task delivered since means no idle moment
        try:
            await self._flush()
            if self.buffer or self.in_flight or self.ctx.in_transit or not self.idle_marker:
                return
            backend = self.worker.backend
            # Tasks of a dead worker count as work: take them back before deciding.
            if await backend.reclaim():
                return
            has_work = await backend.has_work(self.worker.settings.idle_horizon)
            if not has_work and self.ctx.claiming:
                # A claim ran meanwhile (an ack that released a workflow's next step
                # rings the doorbell) and may hold what has_work no longer sees: let it
                # land; whatever it brings resets the idle marker.
                await self.ctx.wait_fetches_done()
            busy = self.buffer or self.in_flight or self.ctx.in_transit or self.updates
            if not has_work and not busy and self.idle_marker and self.deliveries == seen:
                self.stop.set()
        except Exception as exc:
            self._report_ack_error(exc, 0)
        finally:
            self.idle_check = None


def _one_update_per_task(
    updates: list[tuple[Task[Any], Update]],
) -> list[list[tuple[Task[Any], Update]]]:
    """Split ``updates`` so that no batch holds two for one task, keeping their order.

    Two happen only after a lost lease (a late outcome, then the task's next claim
    here); apart, the ids a store refuses name exactly one update each.
    """
    chunks: list[list[tuple[Task[Any], Update]]] = [[]]
    seen: set[TaskId] = set()
    for entry in updates:
        task_id = entry[0].id
        if task_id in seen:  # (a store may apply one statement's two updates of a row as one)
            chunks.append([])
            seen.clear()
        seen.add(task_id)
        chunks[-1].append(entry)
    return chunks


def _skip_dropped(dropped: set[TaskId], task: Task[Any]) -> bool:
    if task.id in dropped:
        dropped.discard(task.id)
        return True
    return False


def _for_each(outcome: Outcome, task: Task[Any]) -> Outcome:
    """A batch call's outcome, for one of its tasks: a retry counts each task's attempts."""
    if isinstance(outcome, Retry) and task.attempts + 1 >= task.max_attempts:
        return Killed(f"{outcome.error} (attempt {task.attempts + 1} of {task.max_attempts})")
    return outcome


async def _shielded(task: asyncio.Task[None]) -> None:
    """Wait for ``task``; if we are cancelled meanwhile, it still runs to its end."""
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait({task})
        raise
