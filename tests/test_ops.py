"""rxqueue.ops: marble tests in virtual time, a real-loop smoke test, and properties.

Virtual time: reactivex's TestScheduler counts absolute and relative time in
the same unit, one tick = one second (``schedule_relative(10.0)`` at 200 fires
at 210), so operator parameters in seconds read directly against the ticks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import reactivex
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reactivex import Observable, abc
from reactivex import operators as rxops
from reactivex.disposable import Disposable, SerialDisposable
from reactivex.scheduler import VirtualTimeScheduler
from reactivex.testing import ReactiveTest, TestScheduler
from reactivex.testing.mockobserver import MockObserver

from rxqueue import ops
from rxqueue.errors import FetcherTimeout
from rxqueue.task import Task

on_next = ReactiveTest.on_next
on_error = ReactiveTest.on_error
on_completed = ReactiveTest.on_completed
subscribe = ReactiveTest.subscribe

Event = tuple[float, str, Any]


class Sched(TestScheduler):
    """A TestScheduler that records when scheduled actions run and how many were scheduled."""

    def __init__(self) -> None:
        super().__init__()
        self.invoked: list[float] = []
        self.scheduled = 0

    def schedule_absolute(self, duetime: Any, action: Any, state: Any = None) -> Any:
        self.scheduled += 1
        return super().schedule_absolute(duetime, action, state)

    def invoke_action(self, action: Any, state: Any = None) -> abc.DisposableBase:
        self.invoked.append(self.to_seconds(self.now))
        return super().invoke_action(action, state)


def events(observer: MockObserver[Any]) -> list[Event]:
    """Recorded notifications as plain ``(time, kind, value)`` tuples."""
    out: list[Event] = []
    for message in observer.messages:
        note: Any = message.value
        if note.kind == "N":
            out.append((message.time, "N", note.value))
        elif note.kind == "E":
            out.append((message.time, "E", note.exception))
        else:
            out.append((message.time, "C", None))
    return out


def assert_quiet_after(scheduler: Sched, time: float) -> None:
    """Nothing scheduled ran after ``time`` (timers were cancelled on disposal)."""
    assert max(scheduler.invoked) <= time, scheduler.invoked


# --- throttle -----------------------------------------------------------------------


def test_throttle_spaces_tasks_and_drops_none() -> None:
    s = Sched()
    xs = s.create_hot_observable(
        on_next(210, "a"), on_next(211, "b"), on_next(212, "c"), on_completed(215)
    )
    res = s.start(lambda: xs.pipe(ops.throttle(0.1, scheduler=s)))
    assert events(res) == [
        (210, "N", "a"),
        (220, "N", "b"),
        (230, "N", "c"),
        (230, "C", None),  # completion waits for the queue, then goes at once
    ]
    assert xs.subscriptions == [subscribe(200, 215)]


def test_throttle_first_passes_at_once_and_spacing_counts_from_last_emission() -> None:
    s = Sched()
    xs = s.create_hot_observable(
        on_next(210, "a"), on_next(215, "b"), on_next(226, "c"), on_next(250, "d")
    )
    res = s.start(lambda: xs.pipe(ops.throttle(0.1, scheduler=s)))
    assert events(res) == [(210, "N", "a"), (220, "N", "b"), (230, "N", "c"), (250, "N", "d")]


def test_throttle_fractional_interval() -> None:
    s = Sched()
    xs = s.create_hot_observable(
        on_next(210, 1), on_next(210, 2), on_next(210, 3), on_completed(210)
    )
    res = s.start(lambda: xs.pipe(ops.throttle(4, scheduler=s)))
    assert events(res) == [
        (210, "N", 1),
        (210.25, "N", 2),
        (210.5, "N", 3),
        (210.5, "C", None),
    ]


def test_throttle_none_passes_when_idle_and_never_overtakes_a_task() -> None:
    s = Sched()
    xs: Observable[str | None] = s.create_hot_observable(
        on_next(205, None),  # nothing held: forwarded, and it uses no slot
        on_next(206, "a"),
        on_next(207, "b"),
        on_next(208, None),  # "b" is held: dropped
        on_next(240, None),  # nothing held again: forwarded
    )
    res = s.start(lambda: xs.pipe(ops.throttle(0.1, scheduler=s)))
    assert events(res) == [
        (205, "N", None),
        (206, "N", "a"),
        (216, "N", "b"),
        (240, "N", None),
    ]


def test_throttle_error_after_queued_tasks() -> None:
    s = Sched()
    err = RuntimeError("boom")
    xs = s.create_hot_observable(
        on_next(210, "a"), on_next(211, "b"), on_next(212, "c"), on_error(213, err)
    )
    res = s.start(lambda: xs.pipe(ops.throttle(0.1, scheduler=s)))
    assert events(res) == [
        (210, "N", "a"),
        (220, "N", "b"),
        (230, "N", "c"),
        (230, "E", err),
    ]


def test_throttle_terminal_with_empty_queue_is_immediate() -> None:
    s = Sched()
    xs = s.create_hot_observable(on_next(210, "a"), on_completed(211))
    res = s.start(lambda: xs.pipe(ops.throttle(0.1, scheduler=s)))
    assert events(res) == [(210, "N", "a"), (211, "C", None)]


def test_throttle_dispose_unsubscribes_and_cancels_timer() -> None:
    s = Sched()
    xs = s.create_hot_observable(on_next(210, "a"), on_next(211, "b"), on_next(212, "c"))
    res = s.start(lambda: xs.pipe(ops.throttle(0.1, scheduler=s)), disposed=215)
    assert events(res) == [(210, "N", "a")]
    assert xs.subscriptions == [subscribe(200, 215)]
    assert_quiet_after(s, 215)  # the timer for "b" at 220 never ran


def test_throttle_works_with_tasks() -> None:
    s = Sched()
    tasks = [Task(args=i) for i in range(3)]
    xs = s.create_cold_observable([on_next(1, t) for t in tasks] + [on_completed(2)])
    res = s.start(lambda: xs.pipe(ops.throttle(1, scheduler=s)))
    assert events(res) == [
        (201, "N", tasks[0]),
        (202, "N", tasks[1]),
        (203, "N", tasks[2]),
        (203, "C", None),
    ]


@pytest.mark.parametrize("rate", [0, -1, float("nan"), float("inf")])
def test_throttle_rejects_bad_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="rate_per_second"):
        ops.throttle(rate)


def test_throttle_rejects_non_number() -> None:
    with pytest.raises(TypeError, match="rate_per_second"):
        ops.throttle("5")  # type: ignore[arg-type]


# --- rate_limit ---------------------------------------------------------------------


def test_rate_limit_sliding_window() -> None:
    s = Sched()
    xs = s.create_hot_observable(
        on_next(210, "a"),
        on_next(210, "b"),
        on_next(210, "c"),
        on_next(212, "d"),
        on_completed(213),
    )
    res = s.start(lambda: xs.pipe(ops.rate_limit(2, 10, scheduler=s)))
    assert events(res) == [
        (210, "N", "a"),
        (210, "N", "b"),  # a burst of n passes at once
        (220, "N", "c"),  # "a" left the window
        (220, "N", "d"),  # "b" left the window too
        (220, "C", None),
    ]


def test_rate_limit_window_slides_per_emission() -> None:
    s = Sched()
    xs = s.create_hot_observable(
        on_next(210, "a"), on_next(215, "b"), on_next(216, "c"), on_next(217, "d")
    )
    res = s.start(lambda: xs.pipe(ops.rate_limit(2, 10, scheduler=s)))
    assert events(res) == [(210, "N", "a"), (215, "N", "b"), (220, "N", "c"), (225, "N", "d")]


def test_rate_limit_none_and_error() -> None:
    s = Sched()
    err = ValueError("x")
    xs = s.create_hot_observable(
        on_next(209, None),
        on_next(210, "a"),
        on_next(210, "b"),
        on_next(211, None),
        on_error(212, err),
    )
    res = s.start(lambda: xs.pipe(ops.rate_limit(1, 5, scheduler=s)))
    assert events(res) == [(209, "N", None), (210, "N", "a"), (215, "N", "b"), (215, "E", err)]


def test_rate_limit_dispose() -> None:
    s = Sched()
    xs = s.create_cold_observable(on_next(10, "a"), on_next(10, "b"), on_next(10, "c"))
    res = s.start(lambda: xs.pipe(ops.rate_limit(2, 100, scheduler=s)), disposed=250)
    assert events(res) == [(210, "N", "a"), (210, "N", "b")]
    assert xs.subscriptions == [subscribe(200, 250)]
    assert_quiet_after(s, 250)


@pytest.mark.parametrize(
    ("n", "per", "error"),
    [(0, 1.0, ValueError), (1, 0.0, ValueError), (1, -1.0, ValueError), (1.5, 1.0, TypeError)],
)
def test_rate_limit_rejects_bad_args(n: Any, per: float, error: type[Exception]) -> None:
    with pytest.raises(error, match="rate_limit"):
        ops.rate_limit(n, per)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    gaps=st.lists(st.integers(0, 12), max_size=25),
    n=st.integers(1, 4),
    per=st.integers(1, 10),
)
def test_pacing_matches_the_sliding_window_model(gaps: list[int], n: int, per: int) -> None:
    """Each task leaves at the earliest time FIFO order and the window allow."""
    s = Sched()
    times: list[int] = []
    t = 201
    for gap in gaps:
        t += gap
        times.append(t)
    msgs = [on_next(at, i) for i, at in enumerate(times)] + [on_completed(t + 1)]
    xs = s.create_hot_observable(msgs)
    op = ops.throttle(1 / per, scheduler=s) if n == 1 else ops.rate_limit(n, per, scheduler=s)
    res = s.start(lambda: xs.pipe(op), disposed=100_000)

    expected: list[float] = []
    for i, arrival in enumerate(times):
        slot = float(arrival)
        if i:
            slot = max(slot, expected[i - 1])
        if i >= n:
            slot = max(slot, expected[i - n] + per)
        expected.append(slot)
    end = max([float(t + 1), *expected])
    assert events(res) == [(at, "N", i) for i, at in enumerate(expected)] + [(end, "C", None)]


# --- batch --------------------------------------------------------------------------


def test_batch_emits_when_full() -> None:
    s = Sched()
    xs = s.create_hot_observable(
        on_next(210, "a"), on_next(211, "b"), on_next(212, "c"), on_next(213, "d")
    )
    res = s.start(lambda: xs.pipe(ops.batch(3, 50, scheduler=s)))
    assert events(res) == [(212, "N", ["a", "b", "c"]), (263, "N", ["d"])]


def test_batch_emits_on_timeout_from_first_task() -> None:
    s = Sched()
    xs = s.create_hot_observable(on_next(210, "a"), on_next(215, "b"), on_next(221, "c"))
    res = s.start(lambda: xs.pipe(ops.batch(3, 10, scheduler=s)))
    assert events(res) == [(220, "N", ["a", "b"]), (231, "N", ["c"])]


def test_batch_timer_rearms_for_the_next_batch_and_never_emits_empty() -> None:
    s = Sched()
    # [a, b] fills at 211 while the timer armed at 210 (due 220) is pending; "c"
    # starts a batch at 215 whose deadline is 225, not 220.
    xs = s.create_hot_observable(on_next(210, "a"), on_next(211, "b"), on_next(215, "c"))
    res = s.start(lambda: xs.pipe(ops.batch(2, 10, scheduler=s)))
    assert events(res) == [(211, "N", ["a", "b"]), (225, "N", ["c"])]


def test_batch_none_flushes_then_passes() -> None:
    s = Sched()
    xs: Observable[str | None] = s.create_hot_observable(
        on_next(205, None), on_next(210, "a"), on_next(211, None), on_next(212, None)
    )
    res = s.start(lambda: xs.pipe(ops.batch(3, 50, scheduler=s)))
    assert events(res) == [
        (205, "N", None),
        (211, "N", ["a"]),
        (211, "N", None),
        (212, "N", None),
    ]
    assert_quiet_after(s, 1000)


def test_batch_flushes_before_completion_and_error() -> None:
    s = Sched()
    xs = s.create_hot_observable(on_next(210, "a"), on_completed(212))
    res = s.start(lambda: xs.pipe(ops.batch(3, 50, scheduler=s)))
    assert events(res) == [(212, "N", ["a"]), (212, "C", None)]

    s = Sched()
    err = RuntimeError("down")
    xs = s.create_hot_observable(on_next(210, "a"), on_error(212, err))
    res = s.start(lambda: xs.pipe(ops.batch(3, 50, scheduler=s)))
    assert events(res) == [(212, "N", ["a"]), (212, "E", err)]
    assert_quiet_after(s, 1000)


def test_batch_size_one() -> None:
    s = Sched()
    xs = s.create_hot_observable(on_next(210, "a"), on_next(210, "b"), on_completed(211))
    res = s.start(lambda: xs.pipe(ops.batch(1, 5, scheduler=s)))
    assert events(res) == [(210, "N", ["a"]), (210, "N", ["b"]), (211, "C", None)]


def test_batch_dispose() -> None:
    s = Sched()
    xs = s.create_hot_observable(on_next(210, "a"))
    res = s.start(lambda: xs.pipe(ops.batch(3, 10, scheduler=s)), disposed=215)
    assert events(res) == []
    assert xs.subscriptions == [subscribe(200, 215)]
    assert_quiet_after(s, 215)


def test_batch_one_timer_not_one_per_batch() -> None:
    s = Sched()
    msgs = [on_next(201 + i, i) for i in range(100)]
    xs = s.create_hot_observable(msgs)
    res = s.start(lambda: xs.pipe(ops.batch(2, 10, scheduler=s)), disposed=400)
    assert [v for _, _, v in events(res)] == [[i, i + 1] for i in range(0, 100, 2)]
    timers = s.scheduled - len(msgs) - 3  # minus messages and create/subscribe/dispose
    assert timers <= 12  # about one per timeout period, not 50


def test_batch_exposes_batch_size() -> None:
    op = ops.batch(10, 0.05)
    assert getattr(op, "batch_size", None) == 10


@pytest.mark.parametrize(
    ("size", "timeout", "error"),
    [(0, 1.0, ValueError), (2, 0, ValueError), (2, -1, ValueError), (2.0, 1.0, TypeError)],
)
def test_batch_rejects_bad_args(size: Any, timeout: float, error: type[Exception]) -> None:
    with pytest.raises(error, match="batch"):
        ops.batch(size, timeout)


# --- retry --------------------------------------------------------------------------


def sequence_of(*sources: Observable[Any]) -> Observable[Any]:
    """An observable whose n-th subscription subscribes to ``sources[n]``."""
    it = iter(sources)
    return reactivex.defer(lambda _scheduler: next(it))


def test_retry_resubscribes_with_backoff_then_gives_up() -> None:
    s = Sched()
    err = RuntimeError("down")
    xs = s.create_cold_observable(on_error(5, err))
    calls: list[int] = []

    def backoff(n: int) -> float:
        calls.append(n)
        return 10.0 * n

    res = s.start(lambda: xs.pipe(ops.retry(3, backoff, scheduler=s)))
    assert events(res) == [(245, "E", err)]
    assert xs.subscriptions == [subscribe(200, 205), subscribe(215, 220), subscribe(240, 245)]
    assert calls == [1, 2]


def test_retry_passes_items_and_completion() -> None:
    s = Sched()
    xs = s.create_cold_observable(on_next(1, "a"), on_error(2, RuntimeError()), on_next(3, "never"))
    ys = s.create_cold_observable(on_next(1, "b"), on_next(2, None), on_completed(3))
    res = s.start(lambda: sequence_of(xs, ys).pipe(ops.retry(3, lambda n: 5.0, scheduler=s)))
    assert events(res) == [
        (201, "N", "a"),
        (208, "N", "b"),
        (209, "N", None),
        (210, "C", None),
    ]


def test_retry_count_resets_once_the_source_emits() -> None:
    s = Sched()
    err = RuntimeError("flaky")
    fail = [s.create_cold_observable(on_error(1, err)) for _ in range(4)]
    recover = s.create_cold_observable(on_next(1, None), on_error(2, err))
    calls: list[int] = []

    def backoff(n: int) -> float:
        calls.append(n)
        return 1.0

    src = sequence_of(fail[0], fail[1], recover, fail[2], fail[3])
    res = s.start(lambda: src.pipe(ops.retry(3, backoff, scheduler=s)))
    # 2 failures, then an item (None counts: the source answered) resets the count,
    # so 3 more failures are allowed before the error is forwarded.
    assert calls == [1, 2, 1, 2]
    assert [kind for _, kind, _ in events(res)] == ["N", "E"]
    assert events(res)[-1][2] is err


def test_retry_max_attempts_one_does_not_retry() -> None:
    s = Sched()
    err = RuntimeError("x")
    xs = s.create_cold_observable(on_error(5, err))
    res = s.start(lambda: xs.pipe(ops.retry(1, lambda n: 1.0, scheduler=s)))
    assert events(res) == [(205, "E", err)]
    assert xs.subscriptions == [subscribe(200, 205)]


def test_retry_forever_by_default() -> None:
    s = Sched()
    xs = s.create_cold_observable(on_error(5, RuntimeError("x")))
    res = s.start(lambda: xs.pipe(ops.retry(backoff=lambda n: 10.0, scheduler=s)), disposed=300)
    assert events(res) == []
    assert len(xs.subscriptions) == 7  # 200, 215, 230, ... 290
    assert xs.subscriptions[-1] == subscribe(290, 295)


def test_retry_default_backoff_starts_near_a_tenth_of_a_second() -> None:
    s = Sched()
    xs = s.create_cold_observable(on_error(5, RuntimeError("x")))
    s.start(lambda: xs.pipe(ops.retry(2, scheduler=s)))
    assert len(xs.subscriptions) == 2
    assert 205.09 <= xs.subscriptions[1].subscribe <= 205.11


def failing_at(
    s: TestScheduler, delay: float, error: BaseException
) -> tuple[Observable[Any], list[float]]:
    """A source failing with ``error`` as is (test notifications wrap a BaseException
    in an Exception), and the times it was subscribed at."""
    subscribed_at: list[float] = []

    def subscribe_(
        observer: abc.ObserverBase[Any], _: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        subscribed_at.append(s.clock)
        return s.schedule_relative(delay, lambda *_: observer.on_error(error))  # type: ignore[arg-type]

    return reactivex.create(subscribe_), subscribed_at


@pytest.mark.parametrize("error", [asyncio.CancelledError(), KeyboardInterrupt()])
def test_retry_never_retries_a_cancellation(error: BaseException) -> None:
    s = Sched()
    source, subscribed_at = failing_at(s, 5, error)
    got: list[tuple[float, BaseException]] = []
    retried = source.pipe(ops.retry(3, backoff=lambda n: 1.0, scheduler=s))
    retried.subscribe(on_error=lambda e: got.append((s.clock, e)), scheduler=s)
    VirtualTimeScheduler.start(s)
    assert got == [(5, error)]
    assert subscribed_at == [0]


async def test_retry_never_retries_a_cancelled_future() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()
    future.cancel()
    done: asyncio.Future[BaseException] = loop.create_future()
    subscriptions: list[int] = []

    def fetch(_: abc.SchedulerBase | None) -> Observable[int]:
        subscriptions.append(1)
        return reactivex.from_future(future)

    source = reactivex.defer(fetch)
    source.pipe(ops.retry(3, backoff=lambda n: 0.0)).subscribe(on_error=done.set_result)
    error = await asyncio.wait_for(done, 5)
    assert isinstance(error, asyncio.CancelledError)
    assert subscriptions == [1]


def test_retry_budgets_are_per_subscription() -> None:
    s = Sched()
    err = RuntimeError("x")
    xs = s.create_cold_observable(on_error(5, err))
    retried = xs.pipe(ops.retry(2, lambda n: 10.0, scheduler=s))
    first, second = s.create_observer(), s.create_observer()
    s.schedule_absolute(200, lambda *_: retried.subscribe(first))
    s.schedule_absolute(207, lambda *_: retried.subscribe(second))
    VirtualTimeScheduler.start(s)
    assert events(first) == [(220, "E", err)]
    assert events(second) == [(227, "E", err)]
    assert xs.subscriptions == [
        subscribe(200, 205),
        subscribe(207, 212),
        subscribe(215, 220),
        subscribe(222, 227),
    ]


def test_retry_dispose_cancels_pending_resubscribe() -> None:
    s = Sched()
    xs = s.create_cold_observable(on_error(5, RuntimeError("x")))
    res = s.start(lambda: xs.pipe(ops.retry(backoff=lambda n: 10.0, scheduler=s)), disposed=210)
    assert events(res) == []
    assert xs.subscriptions == [subscribe(200, 205)]
    assert_quiet_after(s, 210)


def test_retry_dispose_unsubscribes_current_source() -> None:
    s = Sched()
    xs = s.create_cold_observable(on_next(5, "a"))
    res = s.start(lambda: xs.pipe(ops.retry(3, scheduler=s)))
    assert events(res) == [(205, "N", "a")]
    assert xs.subscriptions == [subscribe(200, 1000)]


def test_retry_forwards_a_failing_backoff() -> None:
    s = Sched()
    bad = ZeroDivisionError("backoff")

    def backoff(n: int) -> float:
        raise bad

    xs = s.create_cold_observable(on_error(5, RuntimeError("x")))
    res = s.start(lambda: xs.pipe(ops.retry(3, backoff, scheduler=s)))
    assert events(res) == [(205, "E", bad)]


def test_retry_rejects_bad_args() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        ops.retry(0)
    with pytest.raises(TypeError, match="max_attempts"):
        ops.retry(2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backoff"):
        ops.retry(3, 1.0)  # type: ignore[arg-type]


# --- timeout ------------------------------------------------------------------------


def test_timeout_errors_after_silence_and_disposes_source() -> None:
    s = Sched()
    xs = s.create_cold_observable(on_next(5, "a"), on_next(100, "late"))
    res = s.start(lambda: xs.pipe(ops.timeout(10, scheduler=s)))
    got = events(res)
    assert got[0] == (205, "N", "a")
    time, kind, error = got[1]
    assert (time, kind, len(got)) == (215, "E", 2)  # 10 s after the last emission
    assert isinstance(error, FetcherTimeout)
    assert "10 seconds" in str(error)
    assert "ops.retry" in str(error)
    assert xs.subscriptions == [subscribe(200, 215)]
    assert_quiet_after(s, 1000)


def test_timeout_disposes_the_source_before_sending_the_error() -> None:
    s = Sched()
    state = {"disposed": False}

    def subscribe_(
        observer: abc.ObserverBase[Any], _: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        return Disposable(lambda: state.update(disposed=True))

    seen: list[bool] = []
    reactivex.create(subscribe_).pipe(ops.timeout(5, scheduler=s)).subscribe(
        on_error=lambda e: seen.append(state["disposed"]), scheduler=s
    )
    VirtualTimeScheduler.start(s)
    assert seen == [True]


def test_timeout_counts_from_subscription() -> None:
    s = Sched()
    res = s.start(lambda: reactivex.never().pipe(ops.timeout(7, scheduler=s)))
    [(time, kind, error)] = events(res)
    assert (time, kind) == (207, "E")
    assert isinstance(error, FetcherTimeout)


def test_timeout_quiet_while_items_and_none_flow() -> None:
    s = Sched()
    msgs = [on_next(200 + 5 * i, None if i % 2 else i) for i in range(1, 100)]
    xs = s.create_hot_observable([*msgs, on_completed(700)])
    res = s.start(lambda: xs.pipe(ops.timeout(10, scheduler=s)))
    assert len(events(res)) == 100
    assert events(res)[-1] == (700, "C", None)
    timers = s.scheduled - len(msgs) - 1 - 3
    assert timers <= 60  # re-armed when it fires early, not once per item (99)


def test_timeout_forwards_error_and_cancels_timer() -> None:
    s = Sched()
    err = RuntimeError("x")
    xs = s.create_hot_observable(on_error(205, err))
    res = s.start(lambda: xs.pipe(ops.timeout(10, scheduler=s)))
    assert events(res) == [(205, "E", err)]
    assert_quiet_after(s, 1000)
    assert 210 not in s.invoked


def test_timeout_dispose() -> None:
    s = Sched()
    xs = s.create_cold_observable(on_next(5, "a"))
    res = s.start(lambda: xs.pipe(ops.timeout(10, scheduler=s)), disposed=210)
    assert events(res) == [(205, "N", "a")]
    assert xs.subscriptions == [subscribe(200, 210)]
    assert_quiet_after(s, 210)


def test_timeout_then_retry_resubscribes() -> None:
    s = Sched()
    xs = s.create_cold_observable(on_next(2, "a"))
    pipeline = xs.pipe(ops.timeout(10, scheduler=s), ops.retry(3, lambda n: 5.0, scheduler=s))
    res = s.start(lambda: pipeline, disposed=240)
    assert events(res) == [(202, "N", "a"), (219, "N", "a"), (236, "N", "a")]
    assert xs.subscriptions == [subscribe(200, 212), subscribe(217, 229), subscribe(234, 240)]
    assert_quiet_after(s, 240)


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan")])
def test_timeout_rejects_bad_seconds(seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        ops.timeout(seconds)


# --- scheduler resolution -----------------------------------------------------------

ALL_OPS: list[Callable[[], Callable[[Observable[Any]], Observable[Any]]]] = [
    lambda: ops.throttle(10),
    lambda: ops.rate_limit(2, 1),
    lambda: ops.batch(2, 1),
    lambda: ops.retry(2),
    lambda: ops.timeout(1),
]


async def test_default_scheduler_is_the_running_loop() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[Any]] = loop.create_future()
    got: list[Any] = []
    start = loop.time()
    reactivex.from_iterable([1, 2, 3, 4, 5]).pipe(ops.throttle(1000)).subscribe(
        on_next=got.append,
        on_error=done.set_exception,
        on_completed=lambda: done.set_result(got),
    )
    assert got == [1]  # the first passes at once; the rest wait on loop timers
    assert await asyncio.wait_for(done, 5) == [1, 2, 3, 4, 5]
    assert loop.time() - start >= 0.004  # four gaps of 1 ms


async def test_all_operators_on_the_running_loop() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[Any]] = loop.create_future()
    got: list[Any] = []
    reactivex.from_iterable([1, 2, 3, 4, 5]).pipe(
        ops.timeout(5),
        ops.retry(2),
        ops.rate_limit(2, 0.01),
        ops.throttle(1000),
        ops.batch(2, 0.01),
    ).subscribe(
        on_next=got.append,
        on_error=done.set_exception,
        on_completed=lambda: done.set_result(got),
    )
    assert await asyncio.wait_for(done, 5) == [[1, 2], [3, 4], [5]]


def test_subscribe_time_scheduler_is_used() -> None:
    s = Sched()
    xs = s.create_hot_observable(on_next(210, "a"), on_next(211, "b"))
    res = s.start(lambda: xs.pipe(ops.throttle(0.1)))  # start() subscribes with scheduler=s
    assert events(res) == [(210, "N", "a"), (220, "N", "b")]


def test_explicit_scheduler_beats_subscribe_time_scheduler() -> None:
    s, other = Sched(), Sched()
    xs = s.create_hot_observable(on_next(210, "a"), on_next(211, "b"))
    res = s.start(lambda: xs.pipe(ops.throttle(0.1, scheduler=other)))
    assert events(res) == [(210, "N", "a")]  # "b" waits on the other scheduler's timer
    assert other.scheduled == 1


@pytest.mark.parametrize("make", ALL_OPS)
def test_no_loop_and_no_scheduler_is_a_clear_error(
    make: Callable[[], Callable[[Observable[Any]], Observable[Any]]],
) -> None:
    piped = reactivex.of(1).pipe(make())
    with pytest.raises(RuntimeError, match=r"pass scheduler=.*running asyncio event loop"):
        piped.subscribe()  # reactivex raises the error when there is no on_error
    errors: list[Exception] = []
    piped.subscribe(on_error=errors.append)
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)


# --- property: nothing lost, nothing reordered, for any composition -----------------


class QueueSource:
    """A resumable fetcher over scripted events, like a queue: every subscription
    continues where the previous one stopped (an event is consumed when emitted).

    ``events`` are ``(gap, kind)``: ``kind`` is "item", "none" or "error", and
    ``gap`` is the delay after the previous event (or the subscription); a
    trailing ``(gap, "complete")`` ends the stream.
    """

    def __init__(self, scheduler: TestScheduler, script: list[tuple[int, str]]) -> None:
        self.scheduler = scheduler
        self.script = script
        self.pos = 0
        self.items_emitted = 0
        self.subscriptions = 0
        self.active = 0
        self.observable: Observable[Any] = reactivex.create(self._subscribe)

    def _subscribe(
        self, observer: abc.ObserverBase[Any], _: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        self.subscriptions += 1
        self.active += 1
        timer = SerialDisposable()

        def step(_s: abc.SchedulerBase, _state: Any = None) -> None:
            kind = self.script[self.pos][1]
            self.pos += 1
            if kind == "complete":
                observer.on_completed()
            elif kind == "error":
                observer.on_error(RuntimeError(f"fetch failed at event {self.pos - 1}"))
            else:
                value = None
                if kind == "item":
                    value = self.items_emitted
                    self.items_emitted += 1
                observer.on_next(value)
                timer.disposable = self.scheduler.schedule_relative(self.script[self.pos][0], step)

        timer.disposable = self.scheduler.schedule_relative(self.script[self.pos][0], step)

        def dispose() -> None:
            self.active -= 1
            timer.dispose()

        return Disposable(dispose)


OpSpec = tuple[Any, ...]

op_specs = st.one_of(
    st.tuples(st.just("throttle"), st.floats(0.05, 50.0)),
    st.tuples(st.just("batch"), st.integers(1, 5), st.floats(0.01, 10.0)),
    st.tuples(st.just("rate_limit"), st.integers(1, 4), st.floats(0.01, 10.0)),
    st.tuples(st.just("retry"), st.sampled_from([None, 2, 3, 5]), st.integers(0, 5)),
    st.tuples(st.just("timeout"), st.floats(1.0, 2.0)),
)


def build(spec: OpSpec, s: TestScheduler, horizon: float) -> Callable[[Any], Any]:
    name = spec[0]
    if name == "throttle":
        return ops.throttle(spec[1], scheduler=s)
    if name == "batch":
        return ops.batch(spec[1], spec[2], scheduler=s)
    if name == "rate_limit":
        return ops.rate_limit(spec[1], spec[2], scheduler=s)
    if name == "retry":
        delay = float(spec[2])
        return ops.retry(spec[1], lambda n: delay * n, scheduler=s)
    # A timeout longer than any silence this run can have: it must never fire
    # here, since a timeout disposes (and so discards) what upstream holds.
    return ops.timeout(horizon * spec[1], scheduler=s)


def flatten(value: Any, out: list[Any], problems: list[str]) -> None:
    if isinstance(value, list):
        if not value:
            problems.append("empty batch")
        for inner in value:
            flatten(inner, out, problems)
    else:
        out.append(value)


FLAKY_FETCH = [(1, "error"), (0, "item"), (2, "error"), (1, "none"), (0, "error"), (1, "item")]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    specs=st.lists(op_specs, max_size=4),
    raw=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(["item", "item", "none", "error"])),
        max_size=30,
    ),
    last_gap=st.integers(0, 5),
)
@example(specs=[("retry", 2, 1)], raw=FLAKY_FETCH, last_gap=1)
@example(
    specs=[("throttle", 0.5), ("batch", 2, 3.0), ("retry", 2, 0), ("rate_limit", 1, 1.0)],
    raw=FLAKY_FETCH * 3,
    last_gap=0,
)
@example(
    specs=[("timeout", 1.5), ("rate_limit", 2, 0.3), ("retry", None, 2), ("batch", 3, 0.7)],
    raw=[(0, "item")] * 12 + FLAKY_FETCH + [(0, "none")] * 3,
    last_gap=2,
)
def test_every_task_comes_out_once_in_order(
    specs: list[OpSpec], raw: list[tuple[int, str]], last_gap: int
) -> None:
    has_retry = any(spec[0] == "retry" for spec in specs)
    script: list[tuple[int, str]] = []
    for gap, kind in raw:
        if kind == "error" and (not has_retry or (script and script[-1][1] == "error")):
            kind = "none"  # errors only where a retry can absorb them, never two in a row
        script.append((gap, kind))
    script.append((last_gap, "complete"))

    # An upper bound on the whole run, hence on any silence a timeout may see.
    delays = 0.0
    for spec in specs:
        if spec[0] == "throttle":
            delays += 1 / spec[1]
        elif spec[0] in ("batch", "rate_limit", "retry"):
            delays += spec[2]
    horizon = 2 * (1 + sum(g for g, _ in script) + (len(script) + 1) * delays)

    s = Sched()
    source = QueueSource(s, script)
    pipeline = source.observable.pipe(*(build(spec, s, horizon) for spec in specs))
    out: list[Any] = []
    problems: list[str] = []
    completed: list[float] = []

    def on_next(value: Any) -> None:
        if completed:
            problems.append("item after completion")
        if value is None:
            # A None never overtakes a task: every task the source emitted is out.
            if len(out) != source.items_emitted:
                problems.append(f"None overtook tasks: {len(out)} < {source.items_emitted}")
            return
        flatten(value, out, problems)

    def on_error(error: Exception) -> None:
        problems.append(f"error: {error!r}")

    pipeline.subscribe(on_next, on_error, lambda: completed.append(s.clock), scheduler=s)
    VirtualTimeScheduler.start(s)  # run everything (TestScheduler.start would add a never())

    assert problems == []
    assert out == list(range(source.items_emitted))
    assert source.items_emitted == sum(kind == "item" for _, kind in script)
    assert len(completed) == 1
    assert source.active == 0  # every source subscription ended
    assert_quiet_after(s, completed[0])  # no timer outlived the stream


def test_property_helpers_see_errors_absorbed_by_retry() -> None:
    """The property's source really resumes after a failure (sanity check)."""
    s = Sched()
    source = QueueSource(s, [(1, "item"), (1, "error"), (1, "item"), (1, "complete")])
    res = s.start(lambda: source.observable.pipe(ops.retry(2, lambda n: 1.0, scheduler=s)))
    assert events(res) == [(201, "N", 0), (204, "N", 1), (205, "C", None)]
    assert source.subscriptions == 2


def test_rxops_compose_with_ops() -> None:
    """Plain reactivex operators and ops mix in one pipe."""
    s = Sched()
    xs = s.create_cold_observable(on_next(1, 1), on_next(1, 2), on_next(1, 3), on_completed(2))

    def times_ten(v: int) -> int:
        return v * 10

    res = s.start(lambda: xs.pipe(rxops.map(times_ten), ops.batch(2, 5, scheduler=s)))
    assert events(res) == [(201, "N", [10, 20]), (202, "N", [30]), (202, "C", None)]


class LateSched(Sched):
    """Timers fire 5 time units late, as asyncio's ~1 ms timers do at high rates."""

    def schedule_absolute(self, duetime: Any, action: Any, state: Any = None) -> Any:
        return super().schedule_absolute(self.to_seconds(duetime) + 5, action, state)


def test_throttle_keeps_its_rate_when_timers_fire_late() -> None:
    s = LateSched()
    xs = s.create_hot_observable(*[on_next(210, n) for n in range(10)], on_completed(211))
    res = s.start(lambda: xs.pipe(ops.throttle(1.0, scheduler=s)))
    times = [time for time, kind, _ in events(res) if kind == "N"]
    assert [value for _, kind, value in events(res) if kind == "N"] == list(range(10))
    # The source is late too: the first task leaves at 215, the rest have slots
    # 216..224, and each late wake-up sends every task whose slot has passed.
    # Pacing on wake-up times instead ends at 269 (9 gaps of 6 units).
    assert times[0] == 215
    assert times[-1] <= 224 + 5
