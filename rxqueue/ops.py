"""Operators for fetchers: pace, group, retry and watch a stream of tasks.

A fetcher is a cold :class:`reactivex.Observable` of claimed tasks, where
``None`` is an idle marker ("nothing to do right now") and never a task.
Compose it with the operators here, for example::

    backend.pipe(ops.throttle(50), ops.batch(10, 0.05), ops.retry(5))

They differ from their ``reactivex.operators`` look-alikes in one promise:
**no operator drops a task**. Where ``throttle_first`` would drop an item,
these delay it. ``None`` markers carry no task, so an operator may forward or
drop them, but never lets one overtake a task it still holds. On disposal an
operator discards what it holds (the worker releases the tasks it claimed),
cancels its timers and disposes its upstream subscription.

Time-based operators take ``scheduler=``. When it is omitted they use the
scheduler given to ``subscribe(..., scheduler=...)``, else an
:class:`~reactivex.scheduler.eventloop.AsyncIOScheduler` on the running event
loop; with neither, subscribing fails with a :class:`RuntimeError`. Operators
are meant for one event loop: they take no locks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import (
    CompositeDisposable,
    Disposable,
    SerialDisposable,
    SingleAssignmentDisposable,
)
from reactivex.scheduler import VirtualTimeScheduler
from reactivex.scheduler.eventloop import AsyncIOScheduler

from rxqueue.backoff import Backoff, exponential
from rxqueue.errors import FetcherTimeout

__all__ = ["batch", "queue_safe", "rate_limit", "retry", "throttle", "timeout"]

_T = TypeVar("_T")

# Timers may fire a hair early (asyncio's clock resolution, the microsecond
# rounding of reactivex's datetimes): anything this close to due counts as due.
# (So pacing intervals under a microsecond, above a million a second, do not pace.)
_EPSILON = 1e-6


# --- helpers ------------------------------------------------------------------------

_Op = TypeVar("_Op")


def queue_safe(operator: _Op) -> _Op:
    """Mark an operator as one that may hold tasks for a while but never drops one.

    ``backend.pipe`` trusts such operators to deliver every task eventually; any
    other operator (``reactivex.operators.filter``, ...) must pass each task on
    at once, or the task is taken as dropped and released to the store.
    """
    operator.queue_safe = True  # type: ignore[attr-defined]
    return operator


def _resolve_scheduler(
    explicit: abc.SchedulerBase | None, at_subscribe: abc.SchedulerBase | None, op: str
) -> abc.SchedulerBase:
    """The operator's ``scheduler=``, else the subscribe-time one, else the running loop's."""
    if explicit is not None:
        return explicit
    if at_subscribe is not None:
        return at_subscribe
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"ops.{op}() needs a scheduler: pass scheduler=... to ops.{op}() or to "
            "subscribe(), or subscribe inside a running asyncio event loop"
        ) from None
    return AsyncIOScheduler(loop)


def _clock(scheduler: abc.SchedulerBase) -> Callable[[], float]:
    """A monotonic clock in seconds consistent with ``scheduler``'s timers.

    ``scheduler.now`` is wall-clock time for real schedulers (it may jump), so
    real schedulers are measured with their event loop's clock or
    :func:`time.monotonic`; virtual-time schedulers with their virtual clock.
    """
    if isinstance(scheduler, VirtualTimeScheduler):
        to_seconds = scheduler.to_seconds
        return lambda: to_seconds(scheduler.now)
    loop = getattr(scheduler, "_loop", None)  # AsyncIOScheduler's loop (private attribute)
    if isinstance(scheduler, AsyncIOScheduler) and isinstance(loop, asyncio.AbstractEventLoop):
        return loop.time
    return time.monotonic


def _check_seconds(op: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"ops.{op}() needs {name} to be a number, got {value!r}")
    if not (0 < value < math.inf):
        raise ValueError(f"ops.{op}() needs {name} to be a finite number > 0, got {value!r}")


def _check_count(op: str, name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ops.{op}() needs {name} to be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"ops.{op}() needs {name} >= 1, got {value!r}")


# --- throttle / rate_limit ----------------------------------------------------------


class _Pacer(abc.ObserverBase[_T]):
    """Sliding window: at most ``n`` emissions in any ``per``-second window, FIFO.

    ``_sent`` holds the times of the last ``n`` emission slots; the next task may
    go once the oldest of them is ``per`` seconds old. One timer at a time,
    armed only while tasks wait. A late timer catches up on slots that passed,
    so the long-run rate holds even at rates above asyncio's timer resolution.
    """

    __slots__ = (
        "_n",
        "_now",
        "_observer",
        "_per",
        "_queue",
        "_scheduler",
        "_sent",
        "_stopped",
        "_terminal",
        "_timer",
    )

    def __init__(
        self, observer: abc.ObserverBase[_T], scheduler: abc.SchedulerBase, n: int, per: float
    ) -> None:
        self._observer = observer
        self._scheduler = scheduler
        self._now = _clock(scheduler)
        self._n = n
        self._per = per
        self._sent: deque[float] = deque(maxlen=n)
        self._queue: deque[_T] = deque()
        self._timer: abc.DisposableBase | None = None
        self._terminal: Callable[[], None] | None = None
        self._stopped = False

    def on_next(self, value: _T) -> None:
        if self._stopped:
            return
        queue = self._queue
        if queue:
            if value is not None:  # an idle marker never overtakes a waiting task
                queue.append(value)
            return
        if value is None:
            self._observer.on_next(value)
            return
        now = self._now()
        sent = self._sent
        if len(sent) == self._n:
            due = sent[0] + self._per
            if due > now + _EPSILON:
                queue.append(value)
                if self._timer is None:
                    self._timer = self._scheduler.schedule_relative(due - now, self._fire)
                return
            now = max(now, due)
        sent.append(now)
        self._observer.on_next(value)

    def _fire(self, _scheduler: abc.SchedulerBase, _state: Any = None) -> None:
        self._timer = None
        if self._stopped:
            return
        queue, sent, n, per = self._queue, self._sent, self._n, self._per
        now = self._now()
        while queue:
            if len(sent) == n:
                due = sent[0] + per
                if due > now + _EPSILON:
                    if self._timer is None:
                        self._timer = self._scheduler.schedule_relative(due - now, self._fire)
                    return
                # Record the slot's time, not `now`: asyncio wakes ~1 ms late, and
                # tasks whose slots passed meanwhile leave together, keeping the rate.
                sent.append(due)
            else:
                sent.append(now)
            self._observer.on_next(queue.popleft())
            if self._stopped:
                return
        terminal = self._terminal
        if terminal is not None:
            self._stopped = True
            terminal()

    def _finish(self, terminal: Callable[[], None]) -> None:
        if self._stopped:
            return
        if self._queue:
            self._terminal = terminal  # delivered once the queue drains
        else:
            self._stopped = True
            terminal()

    def on_error(self, error: Exception) -> None:
        self._finish(lambda: self._observer.on_error(error))

    def on_completed(self) -> None:
        self._finish(self._observer.on_completed)

    def dispose(self) -> None:
        self._stopped = True
        self._queue.clear()
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.dispose()


def _paced(
    op: str, n: int, per: float, scheduler: abc.SchedulerBase | None
) -> Callable[[Observable[_T]], Observable[_T]]:
    def operator(source: Observable[_T]) -> Observable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T], at_subscribe: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            pacer = _Pacer(observer, _resolve_scheduler(scheduler, at_subscribe, op), n, per)
            upstream = source.subscribe(pacer, scheduler=at_subscribe)
            return CompositeDisposable(upstream, Disposable(pacer.dispose))

        return reactivex.create(subscribe)

    return queue_safe(operator)


def throttle(
    rate_per_second: float, *, scheduler: abc.SchedulerBase | None = None
) -> Callable[[Observable[_T]], Observable[_T]]:
    """Emit tasks at most ``rate_per_second`` per second, delaying (never dropping) the excess.

    Consecutive tasks leave at least ``1 / rate_per_second`` seconds apart; the
    first passes at once and tasks that come too early wait in FIFO order.
    Completion and errors wait for the queued tasks, which keep their pace.
    ``None`` passes through when no task waits and is dropped otherwise; it
    does not count against the rate. Same as ``rate_limit(1, 1 / rate_per_second)``.

    Example::

        backend.pipe(ops.throttle(50))   # at most 50 tasks a second

    Marble (``throttle(0.5)``: one task per 2 time units; one character per unit)::

        source:   abcd|
        throttle: a-b-c-(d|)     completion waits for the queued tasks
    """
    _check_seconds("throttle", "rate_per_second", rate_per_second)
    return _paced("throttle", 1, 1.0 / rate_per_second, scheduler)


def rate_limit(
    n: int, per: float, *, scheduler: abc.SchedulerBase | None = None
) -> Callable[[Observable[_T]], Observable[_T]]:
    """Emit at most ``n`` tasks in any ``per`` seconds, delaying (never dropping) the rest.

    This is a *sliding window* over emission times, not a token bucket: a task
    leaves when fewer than ``n`` tasks left in the last ``per`` seconds, so no
    window of ``per`` seconds ever holds more than ``n`` emissions (a token
    bucket would let up to ``2 n`` through across a window boundary). Bursts of
    up to ``n`` pass at once; excess tasks wait in FIFO order. Completion and
    errors wait for the queued tasks. ``None`` passes through when no task
    waits, is dropped otherwise, and does not count against the limit.

    Example::

        backend.pipe(ops.rate_limit(100, per=60.0))   # 100 tasks a minute

    Marble (``rate_limit(2, per=4)``; one character per time unit)::

        source:     abc-d------|
        rate_limit: ab--cd-----|     c waits for a to leave the window, d for b
    """
    _check_count("rate_limit", "n", n)
    _check_seconds("rate_limit", "per", per)
    return _paced("rate_limit", n, float(per), scheduler)


# --- batch --------------------------------------------------------------------------


class _Batcher(abc.ObserverBase[_T | None]):
    """Groups tasks; one lazily re-armed timer serves every batch's deadline."""

    __slots__ = (
        "_buffer",
        "_deadline",
        "_now",
        "_observer",
        "_scheduler",
        "_size",
        "_stopped",
        "_timeout",
        "_timer",
    )

    def __init__(
        self,
        observer: abc.ObserverBase[list[_T] | None],
        scheduler: abc.SchedulerBase,
        size: int,
        timeout: float,
    ) -> None:
        self._observer = observer
        self._scheduler = scheduler
        self._now = _clock(scheduler)
        self._size = size
        self._timeout = timeout
        self._buffer: list[_T] = []
        self._deadline = 0.0  # of the current batch, while the buffer holds tasks
        self._timer: abc.DisposableBase | None = None
        self._stopped = False

    def on_next(self, value: _T | None) -> None:
        if self._stopped:
            return
        if value is None:
            if self._buffer:
                self._flush()
                if self._stopped:
                    return
            self._observer.on_next(None)
            return
        buffer = self._buffer
        buffer.append(value)
        count = len(buffer)
        if count >= self._size:
            self._flush()
        elif count == 1:
            self._deadline = self._now() + self._timeout
            if self._timer is None:
                # An armed timer for an earlier batch re-arms itself for this one.
                self._timer = self._scheduler.schedule_relative(self._timeout, self._fire)

    def _flush(self) -> None:
        full, self._buffer = self._buffer, []
        self._observer.on_next(full)

    def _fire(self, _scheduler: abc.SchedulerBase, _state: Any = None) -> None:
        self._timer = None
        if self._stopped or not self._buffer:
            return
        remaining = self._deadline - self._now()
        if remaining > _EPSILON:
            self._timer = self._scheduler.schedule_relative(remaining, self._fire)
        else:
            self._flush()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.dispose()

    def _finish(self, terminal: Callable[[], None]) -> None:
        if self._stopped:
            return
        self._cancel_timer()
        if self._buffer:
            self._flush()
            if self._stopped:
                return
        self._stopped = True
        terminal()

    def on_error(self, error: Exception) -> None:
        self._finish(lambda: self._observer.on_error(error))

    def on_completed(self) -> None:
        self._finish(self._observer.on_completed)

    def dispose(self) -> None:
        self._stopped = True
        self._buffer = []
        self._cancel_timer()


class _BatchOperator(Generic[_T]):
    """The curried ``batch`` operator; ``batch_size`` tells backends how much to claim."""

    __slots__ = ("_scheduler", "batch_size", "timeout")
    queue_safe = True

    def __init__(self, size: int, timeout: float, scheduler: abc.SchedulerBase | None) -> None:
        self.batch_size = size
        self.timeout = timeout
        self._scheduler = scheduler

    def __call__(self, source: Observable[_T]) -> Observable[list[_T] | None]:
        size, timeout, scheduler = self.batch_size, self.timeout, self._scheduler

        def subscribe(
            observer: abc.ObserverBase[list[_T] | None],
            at_subscribe: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            batcher = _Batcher[_T](
                observer, _resolve_scheduler(scheduler, at_subscribe, "batch"), size, timeout
            )
            upstream = source.subscribe(batcher, scheduler=at_subscribe)
            return CompositeDisposable(upstream, Disposable(batcher.dispose))

        return reactivex.create(subscribe)

    def __repr__(self) -> str:
        return f"ops.batch({self.batch_size}, {self.timeout:g})"


def batch(
    size: int, timeout: float, *, scheduler: abc.SchedulerBase | None = None
) -> Callable[[Observable[_T]], Observable[list[_T] | None]]:
    """Group tasks into lists of at most ``size``; ``None`` markers pass through.

    A batch leaves when it holds ``size`` tasks, ``timeout`` seconds after its
    first task arrived, when a ``None`` arrives (no more tasks right now: the
    partial batch leaves, then the ``None``), or when the source completes or
    fails (the partial batch leaves first). Empty batches are never emitted.
    The returned operator has a ``batch_size`` attribute (backends read it to
    size their claims). Lists never contain ``None``, although their static
    element type is the source's item type.

    Example::

        backend.pipe(ops.batch(10, 0.05))   # lists of up to 10 tasks, 50 ms at most

    Marble (``batch(3, timeout=5)``; one character per time unit, ``N`` is ``None``)::

        source: a-b-c-d-----e-N-|
        batch:  ----x------y--(zN)|    x = [a, b, c]  full
                                       y = [d]        5 units after d arrived
                                       z = [e]        flushed by the None, then the None
    """
    _check_count("batch", "size", size)
    _check_seconds("batch", "timeout", timeout)
    return _BatchOperator[Any](size, float(timeout), scheduler)


# --- retry --------------------------------------------------------------------------


class _Retry(abc.ObserverBase[_T]):
    """One subscription's retry loop: its own failure count, timer and source subscription."""

    __slots__ = (
        "_at_subscribe",
        "_backoff",
        "_current",
        "_failures",
        "_max_attempts",
        "_observer",
        "_scheduler",
        "_source",
        "_stopped",
        "_timer",
    )

    def __init__(
        self,
        source: Observable[_T],
        observer: abc.ObserverBase[_T],
        scheduler: abc.SchedulerBase,
        at_subscribe: abc.SchedulerBase | None,
        max_attempts: int | None,
        backoff: Backoff,
    ) -> None:
        self._source = source
        self._observer = observer
        self._scheduler = scheduler
        self._at_subscribe = at_subscribe
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._failures = 0
        self._current = SerialDisposable()
        self._timer = SerialDisposable()
        self._stopped = False

    def subscribe_source(self, _scheduler: Any = None, _state: Any = None) -> None:
        if self._stopped:
            return
        subscription = SingleAssignmentDisposable()
        self._current.disposable = subscription
        subscription.disposable = self._source.subscribe(self, scheduler=self._at_subscribe)

    def on_next(self, value: _T) -> None:
        if self._stopped:
            return
        self._failures = 0  # the source answered: it recovered
        self._observer.on_next(value)

    def on_error(self, error: Exception) -> None:
        if self._stopped:
            return
        self._failures += 1
        if not isinstance(error, Exception) or (
            self._max_attempts is not None and self._failures >= self._max_attempts
        ):  # a cancellation (BaseException) is never retried
            self._stopped = True
            self._observer.on_error(error)
            return
        try:
            delay = max(0.0, float(self._backoff(self._failures)))
        except Exception as exc:
            self._stopped = True
            self._observer.on_error(exc)
            return
        self._timer.disposable = self._scheduler.schedule_relative(delay, self.subscribe_source)

    def on_completed(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._observer.on_completed()

    def dispose(self) -> None:
        self._stopped = True
        self._timer.dispose()
        self._current.dispose()


def retry(
    max_attempts: int | None = None,
    backoff: Backoff | None = None,
    *,
    scheduler: abc.SchedulerBase | None = None,
) -> Callable[[Observable[_T]], Observable[_T]]:
    """Resubscribe to the source when it fails, after ``backoff(n)`` seconds.

    ``n`` counts consecutive failures (1-based) and resets as soon as the
    resubscribed source emits anything (a task or ``None``). After
    ``max_attempts`` consecutive failures the error is forwarded; ``None``
    retries forever. The default backoff is
    ``exponential(base=0.1, factor=2.0, max=30.0, jitter=0.1)``. Cancellations
    (``asyncio.CancelledError`` or any other ``BaseException`` that is not an
    ``Exception``) are forwarded at once, never retried. Each subscription has
    its own failure count.

    Example::

        backend.pipe(ops.timeout(30), ops.retry(max_attempts=5))

    Marble (``retry(2, backoff=lambda n: 2 * n)``; ``#`` is an error)::

        source: -a#          1st subscription, at 0: a resets the count, # is failure 1
        source:     -#       2nd subscription, backoff(1) = 2 later: failure 2
        retry:  -a---#       2 consecutive failures: the error goes on
    """
    if max_attempts is not None:
        _check_count("retry", "max_attempts", max_attempts)
    if backoff is not None and not callable(backoff):
        raise TypeError(f"ops.retry() needs backoff to be a callable, got {backoff!r}")
    policy: Backoff = backoff or exponential(base=0.1, factor=2.0, max=30.0, jitter=0.1)

    def operator(source: Observable[_T]) -> Observable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T], at_subscribe: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            loop = _Retry(
                source,
                observer,
                _resolve_scheduler(scheduler, at_subscribe, "retry"),
                at_subscribe,
                max_attempts,
                policy,
            )
            loop.subscribe_source()
            return Disposable(loop.dispose)

        return reactivex.create(subscribe)

    return queue_safe(operator)


# --- timeout ------------------------------------------------------------------------


class _Timeout(abc.ObserverBase[_T]):
    """One timer, re-armed only when it fires before the silence is long enough."""

    __slots__ = (
        "_last",
        "_now",
        "_observer",
        "_scheduler",
        "_seconds",
        "_stopped",
        "_timer",
        "upstream",
    )

    def __init__(
        self, observer: abc.ObserverBase[_T], scheduler: abc.SchedulerBase, seconds: float
    ) -> None:
        self._observer = observer
        self._scheduler = scheduler
        self._now = _clock(scheduler)
        self._seconds = seconds
        self._stopped = False
        self.upstream = SingleAssignmentDisposable()
        self._last = self._now()
        self._timer: abc.DisposableBase | None = scheduler.schedule_relative(seconds, self._fire)

    def on_next(self, value: _T) -> None:
        if self._stopped:
            return
        self._last = self._now()
        self._observer.on_next(value)

    def _fire(self, _scheduler: abc.SchedulerBase, _state: Any = None) -> None:
        self._timer = None
        if self._stopped:
            return
        remaining = self._last + self._seconds - self._now()
        if remaining > _EPSILON:
            self._timer = self._scheduler.schedule_relative(remaining, self._fire)
            return
        self._stopped = True
        self.upstream.dispose()
        self._observer.on_error(
            FetcherTimeout(
                f"the fetcher emitted nothing (no task, no None) for {self._seconds:g} seconds; "
                "add ops.retry() after ops.timeout() to resubscribe"
            )
        )

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.dispose()

    def on_error(self, error: Exception) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._cancel_timer()
        self._observer.on_error(error)

    def on_completed(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._cancel_timer()
        self._observer.on_completed()

    def dispose(self) -> None:
        self._stopped = True
        self._cancel_timer()
        self.upstream.dispose()


def timeout(
    seconds: float, *, scheduler: abc.SchedulerBase | None = None
) -> Callable[[Observable[_T]], Observable[_T]]:
    """Fail with :class:`~rxqueue.errors.FetcherTimeout` if the source is silent for ``seconds``.

    Silence is measured from the subscription and from each emission (a task
    or ``None``). On timeout the source subscription is disposed, then the
    error is sent; put ``ops.retry`` after ``ops.timeout`` to resubscribe.

    Example::

        backend.pipe(ops.timeout(30), ops.retry())   # a stuck fetcher is restarted

    Marble (``timeout(4)``; one character per time unit, ``N`` is ``None``)::

        source:  a-b-N--------
        timeout: a-b-N---#        # = FetcherTimeout, 4 units after the last emission
    """
    _check_seconds("timeout", "seconds", seconds)
    limit = float(seconds)

    def operator(source: Observable[_T]) -> Observable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T], at_subscribe: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            resolved = _resolve_scheduler(scheduler, at_subscribe, "timeout")
            watch = _Timeout(observer, resolved, limit)
            watch.upstream.disposable = source.subscribe(watch, scheduler=at_subscribe)
            return Disposable(watch.dispose)

        return reactivex.create(subscribe)

    return queue_safe(operator)
